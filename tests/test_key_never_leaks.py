"""The Dome API key never leaves the source: no error text, log line or row holds it, however the
server echoes it back (in a field, in an error body across the 200-character cut, JSON-escaped,
URL-encoded). The real client (requests) talks to a hostile server on 127.0.0.1 that echoes the
Authorization header it received; the scrubbing itself is tested directly as a pure function."""

from __future__ import annotations

import http.server
import json
import logging
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pipeline.sources import SourceSpec
from pipeline.sources.dome.client import DomeClient, DomeSettings, RateLimit
from pipeline.sources.dome.source import DomeSource
from pipeline.sources.errors import (
    ConfigError,
    HTTPStatusError,
    KeyEchoed,
    PageError,
    PaginationError,
    SourceError,
    SourceUnavailable,
)
from pipeline.sources.http import HttpSettings, Secret
from pipeline.sources.limiter import RateLimiter
from tests.support import Loopback
from tests.test_dome_parse import ORDER

UNLIMITED = RateLimit(10_000, 100_000)
FAST = HttpSettings(read_timeout_s=2.0, max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02)
CUT = 200  # characters of an error body a message keeps
SHORTEST_PREFIX = 6  # a prefix this long of the key is already a leak


def make_key() -> str:
    """A key with the characters that JSON and URL encoders spell differently (all a header
    carries), random on both sides so that no text holds it or its prefix by chance."""
    return f'sk_{secrets.token_urlsafe(9)}/+"\\%&={secrets.token_urlsafe(9)}'


SPELLINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda key: key,
    "json-escaped": lambda key: json.dumps(key)[1:-1],
    "json-escaped, slashes too": lambda key: json.dumps(key)[1:-1].replace("/", "\\/"),
    "url-encoded": urllib.parse.quote,
    "url-encoded, slashes too": lambda key: urllib.parse.quote(key, safe=""),
    "url-encoded for a form": urllib.parse.quote_plus,
    "url-encoded, lower-case hex": lambda key: urllib.parse.quote(key, safe="").lower(),
    "url-encoded twice": lambda key: urllib.parse.quote(urllib.parse.quote(key, safe=""), safe=""),
    "upper-cased": str.upper,
    "python repr": lambda key: repr(key)[1:-1],
}
# How a server writes what it echoes into a JSON string: json.dumps spells what needs it.
ECHOED = {name: spell for name, spell in SPELLINGS.items() if "json" not in name}


def leak(text: str, key: str) -> str | None:
    """The key, or a prefix of it of 6 or more characters, in any spelling, if `text` holds it."""
    lowered = text.lower()
    for length in range(len(key), SHORTEST_PREFIX - 1, -1):
        for spell in SPELLINGS.values():
            piece = spell(key[:length])
            if piece.lower() in lowered:
                return piece
    return None


# --- the scrubbing, a pure function ---------------------------------------------------------


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_the_key_is_scrubbed_whole(spelling):
    key = make_key()
    scrubbed = Secret(key).scrub(f"refused key={SPELLINGS[spelling](key)}; try again")
    assert scrubbed == "refused key=***; try again"


def test_text_without_the_key_is_left_as_it_is():
    text = 'HTTP 404 {"error": "no such wallet 0xdd", "path": "/v1/polymarket/orders?user=0xdd"}'
    assert Secret(make_key()).scrub(text) == text


@pytest.mark.parametrize("spelling", ECHOED)
def test_an_answer_echoing_the_key_is_spotted_in_its_json_text(spelling):
    key = make_key()
    secret = Secret(key)
    clean = {"orders": [ORDER] * 50, "pagination": {"has_more": False}}
    assert not secret.echoed_in(json.dumps(clean))
    echoed = {"orders": [ORDER] * 49 + [{**ORDER, "title": ECHOED[spelling](key)}]}
    assert secret.echoed_in(json.dumps(echoed))


def test_a_secret_is_never_shown_nor_pickled():
    import pickle

    key = make_key()
    assert key not in repr(Secret(key)) and leak(repr(Secret(key)), key) is None
    with pytest.raises(TypeError):
        pickle.dumps(Secret(key))


# --- a hostile server over a loopback socket --------------------------------------------------


@dataclass
class Answer:
    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()


class HostileServer:
    """Answers every request with `answer(endpoint, key)`, `key` being the one the client sent
    (the Authorization header): what a reflecting proxy or a hostile API could send back."""

    def __init__(self) -> None:
        self.answer: Callable[[str, str], Answer] = lambda endpoint, key: Answer(404, "")
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                endpoint = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                answer = outer.answer(endpoint, key)
                payload = answer.body.encode("utf-8")
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._loopback = Loopback(Handler)
        self.base_url = f"{self._loopback.url}/v1"

    def close(self) -> None:
        self._loopback.close()


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


def client_for(server: HostileServer, key: str) -> DomeClient:
    settings = DomeSettings(base_url=server.base_url)
    return DomeClient.build(settings, key, RateLimiter(UNLIMITED.windows()), None, FAST)


def orders_page(*orders: dict, **pagination: object) -> str:
    return json.dumps({"orders": list(orders), "pagination": {"has_more": False, **pagination}})


def raised(call: Callable[[], object], kind: type[SourceError]) -> SourceError:
    with pytest.raises(kind) as error:
        call()
    return error.value


def assert_no_leak(error: SourceError, key: str, caplog: pytest.LogCaptureFixture) -> None:
    for text in (str(error), repr(error), caplog.text):
        assert leak(text, key) is None, text


@pytest.mark.parametrize("spelling", ECHOED)
def test_a_wrong_typed_field_echoing_the_key_fails_the_wallet_without_it(hostile, caplog, spelling):
    key = make_key()
    hostile.answer = lambda endpoint, sent: Answer(
        200, orders_page({**ORDER, "shares": f"key={ECHOED[spelling](sent)}"})
    )
    client = client_for(hostile, key)
    error = raised(lambda: list(client.order_pages("0xdd")), PageError)
    assert "wallet 0xdd orders page 0" in str(error)
    assert_no_leak(error, key, caplog)


@pytest.mark.parametrize("spelling", ECHOED)
def test_a_key_echoed_in_a_plain_text_field_is_refused_so_it_lands_in_no_table(
    hostile, caplog, spelling
):
    """(A title is a string, so the page would parse: refused whole, no row is made of it.)"""
    key = make_key()
    hostile.answer = lambda endpoint, sent: Answer(
        200, orders_page(ORDER, {**ORDER, "title": f"Will {ECHOED[spelling](sent)} rain?"})
    )
    spec = SourceSpec("dome", "run-1", UNLIMITED.windows(), FAST, dome_base_url=hostile.base_url)
    source = DomeSource(spec, key, RateLimiter(UNLIMITED.windows()))
    try:
        error = raised(lambda: list(source.trade_pages("0xdd", None)), KeyEchoed)
    finally:
        source.close()
    assert "wallet 0xdd orders page 0" in str(error) and "holds the API key" in str(error)
    assert_no_leak(error, key, caplog)


def straddling(text: str, at: int = CUT - 10) -> str:
    """`text` placed so that it starts `at` characters in: across the cut of an error body."""
    return "E" * at + text + " and more"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(404, HTTPStatusError), (401, HTTPStatusError), (503, SourceUnavailable)],
)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_an_error_body_echoing_the_key_across_the_cut_keeps_none_of_it(
    hostile, caplog, spelling, status, kind
):
    key = make_key()
    hostile.answer = lambda endpoint, sent: Answer(status, straddling(SPELLINGS[spelling](sent)))
    client = client_for(hostile, key)
    with caplog.at_level(logging.INFO):
        error = raised(lambda: list(client.order_pages("0xdd")), kind)
    assert f"HTTP {status} EEEE" in str(error)
    assert_no_leak(error, key, caplog)


def test_a_json_error_body_echoing_the_key_across_the_cut_keeps_none_of_it(hostile, caplog):
    key = make_key()
    # json.dumps escapes the key's quote and backslash: the JSON-escaped spelling, at the cut.
    hostile.answer = lambda endpoint, sent: Answer(
        400, json.dumps({"error": straddling(f"invalid key {sent}", CUT - 30)})
    )
    error = raised(lambda: list(client_for(hostile, key).order_pages("0xdd")), HTTPStatusError)
    assert json.dumps(key)[1:-1] != key  # the spelling differs from the key itself
    assert_no_leak(error, key, caplog)


def test_a_page_size_refusal_echoing_the_key_keeps_none_of_it(hostile, caplog):
    key = make_key()
    hostile.answer = lambda endpoint, sent: Answer(400, straddling(f"limit:{sent}", CUT - 16))
    error = raised(lambda: list(client_for(hostile, key).order_pages("0xdd")), ConfigError)
    assert "lower --page_limit" in str(error)
    assert_no_leak(error, key, caplog)


def test_a_trace_header_echoing_the_key_keeps_none_of_it(hostile, caplog):
    key = make_key()
    hostile.answer = lambda endpoint, sent: Answer(
        404, "not found", (("x-trace-id", urllib.parse.quote(sent)),)
    )
    error = raised(lambda: list(client_for(hostile, key).order_pages("0xdd")), HTTPStatusError)
    assert "not found (trace ***)" in str(error)
    assert_no_leak(error, key, caplog)


# --- the one place every error of the Dome client passes ------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (Answer(404, "no such event"), HTTPStatusError),
        (Answer(503, "busy"), SourceUnavailable),
        (
            Answer(200, json.dumps({"events": [], "pagination": {"has_more": True}})),
            PaginationError,
        ),
        (Answer(200, json.dumps({"events": {}, "pagination": {"has_more": False}})), PageError),
    ],
)
def test_any_error_naming_what_it_was_asked_for_is_scrubbed_where_it_leaves_the_client(
    hostile, caplog, answer, kind
):
    """The messages name their input (here an event slug holding the key, however it got there),
    composed in many places: they are scrubbed where every one of them leaves the client, and the
    retry lines logged on the way."""
    key = make_key()
    hostile.answer = lambda endpoint, sent: answer
    client = client_for(hostile, key)
    with caplog.at_level(logging.INFO):
        error = raised(lambda: client.event(f"slug-{key}"), kind)
    assert "event slug-*** page 0" in str(error)
    assert_no_leak(error, key, caplog)
    if kind is SourceUnavailable:
        assert "retrying" in caplog.text  # the log line was written, and scrubbed


def test_a_scrubbed_error_keeps_its_type_and_attributes(hostile):
    key = make_key()
    hostile.answer = lambda endpoint, sent: Answer(403, f"forbidden: {sent}")
    error = raised(lambda: list(client_for(hostile, key).order_pages("0xdd")), HTTPStatusError)
    assert error.status == 403 and error.run_level
    assert str(error) == "wallet 0xdd orders page 0: HTTP 403 forbidden: ***"


def test_an_honest_server_is_not_refused(hostile):
    """Guards the tests above from passing by refusing everything."""
    key = make_key()
    hostile.answer = lambda endpoint, sent: Answer(
        200, orders_page(ORDER, {**ORDER, "log_index": 5})
    )
    orders = [o for page in client_for(hostile, key).order_pages("0xdd") for o in page.items]
    assert [order["log_index"] for order in orders] == [4, 5]


def test_a_short_key_is_scrubbed_but_never_refuses_an_answer():
    """A short key (or one of hex digits) turns up inside honest data, a transaction hash: an
    answer holding it is not refused for that, though messages are still scrubbed of it."""
    short = Secret("abc123")  # under MIN_ECHO_RUN
    page = '{"orders": [{"tx_hash": "0x9fabc123de"}]}'
    assert not short.echoed_in(page)
    assert short.scrub("key abc123 here") == "key *** here"
