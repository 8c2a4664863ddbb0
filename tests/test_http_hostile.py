"""HttpClient against servers that misbehave on the wire, over a real loopback socket (requests).

Two failures that once stopped or hung a whole run: a 400 that merely mentioned "limit" (an expired
cursor's "time-limited", a "rate limit", an echoed title) was read as the API refusing the page
size, a run-level ConfigError; and a server trickling its body a byte at a time never timed out
(requests' read timeout bounds each receive, not the answer).
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from pipeline.sources.errors import (
    ConfigError,
    HTTPStatusError,
    SourceError,
    SourceUnavailable,
)
from pipeline.sources.http import (
    ANSWER_BUDGET_READ_TIMEOUTS,
    HttpClient,
    HttpSettings,
    Params,
    Telemetry,
)
from pipeline.sources.limiter import RateLimiter, Window
from tests.support import Loopback

# Half a second per receive: the answer's budget is ANSWER_BUDGET_READ_TIMEOUTS times that.
SETTINGS = HttpSettings(
    read_timeout_s=0.5, max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02
)
# How long a trickling server keeps trickling at most: far past the budget, so that a client
# without one ends on the server's close instead (a different error: the test fails, not hangs).
TRICKLE_CAP_S = 15.0
# A price with more digits than a float holds: parse_float=Decimal must keep them all.
PAGE_JSON = b'{"data": [{"price": 0.1234567890123456789, "size": 3}], "next_cursor": null}'
WITH_LIMIT: Params = [("user", "0xdd"), ("limit", 1000)]


Handler = http.server.BaseHTTPRequestHandler


@dataclass
class WireServer:
    """A loopback server whose every GET is answered by `answer(handler)`, which writes it whole
    (status, headers, body) however it likes; counts requests, connections and dropped answers."""

    answer: Callable[[Handler], None] = lambda handler: None
    requests: int = 0
    ports: set[int] = field(default_factory=set)
    dropped: int = 0  # answers the client hung up on before the server finished them
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        outer = self

        class Serve(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a reused connection is seen as one port

            def do_GET(self) -> None:
                with outer.lock:
                    outer.requests += 1
                    outer.ports.add(self.client_address[1])
                try:
                    outer.answer(self)
                except OSError:  # the client closed the connection mid-answer
                    with outer.lock:
                        outer.dropped += 1
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._loopback = Loopback(Serve)
        self.base_url = self._loopback.url

    def close(self) -> None:
        self._loopback.close()


@pytest.fixture
def wire() -> Iterator[WireServer]:
    server = WireServer()
    server.start()
    yield server
    server.close()


def send(handler: Handler, status: int, body: bytes, *headers: tuple[str, str]) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


class Retries(Telemetry):
    def __init__(self) -> None:
        self.retries: list[str] = []

    def retry(self, endpoint: str, reason: str) -> None:
        self.retries.append(reason)


def client_for(
    settings: HttpSettings = SETTINGS, secret: str | None = None
) -> tuple[HttpClient, RateLimiter, Retries]:
    limiter = RateLimiter([Window("data", 10_000, 10.0)])
    telemetry = Retries()
    return HttpClient(settings, limiter, telemetry, secret=secret), limiter, telemetry


def get(client: HttpClient, url: str, params: Params = WITH_LIMIT) -> object:
    return client.get_json(
        url,
        params,
        endpoint="trades",
        buckets=["data"],
        where="wallet 0xdd trades page 1",
        parse_float=Decimal,
    )


# --- a 400 is the page size's fault only when it names the `limit` parameter -----------------

NOT_THE_PAGE_SIZE = {
    "expired cursor": {
        "error": "cursor expired: cursors are time-limited, restart the walk",
        "code": "invalid_request",
        "retryable": False,
        "trace_id": "t",
    },
    "rate limit text": {"error": "rate limit exceeded for this cursor", "code": "invalid_request"},
    "echoed title": {"error": "no market 'Will the limit-order book close?' for this wallet"},
    "another parameter named": {"error": "limit of 20 ids per call", "parameter": "condition"},
    "an echoed pagination block": {"error": "bad cursor", "pagination": {"limit": 1000}},
}


@pytest.mark.parametrize("body", NOT_THE_PAGE_SIZE.values(), ids=NOT_THE_PAGE_SIZE)
def test_a_400_not_about_the_page_size_is_the_inputs_own_http_error(wire, body):
    wire.answer = lambda handler: send(handler, 400, json.dumps(body).encode())
    client, _, _ = client_for()
    with pytest.raises(SourceError) as raised:
        get(client, f"{wire.base_url}/v2/trades")
    error = raised.value
    assert type(error) is HTTPStatusError and error.status == 400, error
    assert not error.run_level  # the wallet's failure, not the run's
    assert "wallet 0xdd trades page 1: HTTP 400" in str(error)
    assert wire.requests == 1  # a 400 is not retried


PAGE_SIZE_REFUSED = {
    "the parameter field": {"error": "must be at most 1000", "parameter": "limit"},
    "the parameter field and the word": {
        "error": "limit must be at most 1000",
        "code": "invalid_request",
        "parameter": "limit",
    },
    "the word, Dome's shape": {
        "error": "invalid_limit",
        "message": "limit must be between 1 and 1000",
    },
    "the word in plain text": "Limit: 5000 is too large",
}


@pytest.mark.parametrize("body", PAGE_SIZE_REFUSED.values(), ids=PAGE_SIZE_REFUSED)
def test_a_400_naming_the_limit_parameter_is_a_configuration_error(wire, body):
    text = body if isinstance(body, str) else json.dumps(body)
    wire.answer = lambda handler: send(handler, 400, text.encode())
    client, _, _ = client_for()
    with pytest.raises(ConfigError, match="lower --page_limit"):
        get(client, f"{wire.base_url}/v2/trades")


def test_a_limit_refusal_to_a_request_that_sent_no_limit_is_not_the_page_size(wire):
    body = {"error": "limit must be at most 1000", "parameter": "limit"}
    wire.answer = lambda handler: send(handler, 400, json.dumps(body).encode())
    client, _, _ = client_for()
    with pytest.raises(HTTPStatusError) as raised:
        get(client, f"{wire.base_url}/v2/trades", [("user", "0xdd"), ("cursor", "c1")])
    assert raised.value.status == 400


# --- an answer has a wall-clock budget, not only a per-receive timeout -----------------------


def headers(handler: Handler, body: bytes, encoding: str | None) -> None:
    """A 200's headers for `body` (sent as `encoding`, if any), the body left to the caller."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    if encoding:
        handler.send_header("Content-Encoding", encoding)
    handler.end_headers()


def trickle(encoding: str | None) -> Callable[[Handler], None]:
    """Headers at once, then a body (gzip-encoded if asked) one byte every 0.1 s: each receive
    is well within the read timeout, the whole would take minutes."""
    payload = PAGE_JSON + b" " * 10_000
    body = gzip.compress(payload) if encoding == "gzip" else payload

    def answer(handler: Handler) -> None:
        headers(handler, body, encoding)
        handler.wfile.flush()
        stop = time.monotonic() + TRICKLE_CAP_S
        for byte in body:
            if time.monotonic() > stop:
                handler.close_connection = True
                return  # gives up: the connection closes with the body cut short
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.1)

    return answer


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_a_trickled_body_ends_the_attempt_at_its_budget_and_is_retried(wire, caplog, encoding):
    key = "sk_live_0123456789abcdef"
    wire.answer = trickle(encoding)
    client, limiter, telemetry = client_for(secret=key)
    url = f"{wire.base_url}/{key}/v2/trades"  # a URL that would carry the key, were it not scrubbed
    with caplog.at_level(logging.INFO), pytest.raises(SourceUnavailable) as raised:
        get(client, url)
    text = str(raised.value)
    budget = ANSWER_BUDGET_READ_TIMEOUTS * SETTINGS.read_timeout_s
    assert f"did not send its whole answer within {budget:g} s" in text, text
    assert f"{wire.base_url}/***/v2/trades" in text and "wallet 0xdd trades page 1" in text
    assert key not in text and key not in caplog.text
    # Every attempt was made, counted as a retry, and dropped by the client (not finished by the
    # server: it would give up only after TRICKLE_CAP_S).
    assert wire.requests == SETTINGS.max_attempts
    assert telemetry.retries == ["TransientError"] * (SETTINGS.max_attempts - 1)
    deadline = time.monotonic() + 10.0  # the server sees a hang-up at its next write
    while wire.dropped < SETTINGS.max_attempts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wire.dropped == SETTINGS.max_attempts
    # The limiter's books: every attempt's slot seen sent, nothing left in flight.
    slots = limiter._states[0].slots
    assert len(slots) == SETTINGS.max_attempts and all(slot[1] for slot in slots)
    assert client._in_flight == {}


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_a_body_in_pieces_within_the_budget_is_read_whole_and_the_connection_reused(wire, encoding):
    """Pieces that come over several receives are put together (gzip decoded once whole), the
    JSON parsed as before (parse_float), and the connection, read to its end, serves again."""
    payload = PAGE_JSON
    body = gzip.compress(payload) if encoding == "gzip" else payload

    def answer(handler: Handler) -> None:
        headers(handler, body, encoding)
        for start in range(0, len(body), 16):
            handler.wfile.write(body[start : start + 16])
            handler.wfile.flush()
            time.sleep(0.01)

    wire.answer = answer
    client, _, telemetry = client_for()
    for _ in range(2):
        page = get(client, f"{wire.base_url}/v2/trades")
        assert page == {
            "data": [{"price": Decimal("0.1234567890123456789"), "size": 3}],
            "next_cursor": None,
        }
    assert telemetry.retries == []
    assert wire.requests == 2 and len(wire.ports) == 1  # one connection, reused


def test_a_body_that_is_not_the_gzip_it_says_is_a_counted_transient_failure(wire):
    wire.answer = lambda handler: send(
        handler, 200, b"not gzip at all", ("Content-Encoding", "gzip")
    )
    client, _, telemetry = client_for()
    with pytest.raises(SourceUnavailable, match=r"wallet 0xdd trades page 1: \w*Decod\w*Error"):
        get(client, f"{wire.base_url}/v2/trades")
    assert wire.requests == SETTINGS.max_attempts
    assert telemetry.retries == ["TransientError"] * (SETTINGS.max_attempts - 1)


def test_the_simulators_page_size_refusal_still_stops_the_run_and_a_bad_cursor_does_not(
    sim_server,
):
    """The documented Data API v2 shape end to end (the real source, the simulator): a page
    size over 1000 is refused naming `parameter: "limit"`, the run's setting to fix; a cursor
    the server will not take (here, one it never minted) is that wallet's own 400."""
    from tests.test_polymarket_source import make_source, walk

    server = sim_server(seed=4, wallets=3)
    wallet = server.simulator.wallet_addresses()[0]
    with pytest.raises(ConfigError, match="lower --page_limit"):
        walk(make_source(server, page_limit=5000), wallet)

    client, _, _ = client_for()
    url = f"{server.root_url}/v2/trades"
    with pytest.raises(HTTPStatusError) as raised:
        get(client, url, [("user", wallet), ("limit", 1000), ("cursor", "not-a-cursor")])
    assert raised.value.status == 400 and not raised.value.run_level


# --- a redirect to another origin is not followed ----------------------------------------------


def test_a_redirect_to_another_origin_is_the_inputs_error_and_one_within_it_is_followed(wire):
    other = WireServer(answer=lambda h: send(h, 200, PAGE_JSON))
    other.start()
    try:

        def answer(handler: Handler) -> None:
            if handler.path.startswith("/elsewhere"):
                send(handler, 302, b"", ("Location", f"{other.base_url}/v2/trades?user=0xdd"))
            elif handler.path.startswith("/moved"):
                send(handler, 301, b"", ("Location", "/v2/trades"))
            else:
                send(handler, 200, PAGE_JSON)

        wire.answer = answer
        client, _, _ = client_for()
        with pytest.raises(HTTPStatusError, match="redirects to another origin") as caught:
            get(client, f"{wire.base_url}/elsewhere")
        assert other.base_url in str(caught.value) and caught.value.status == 302
        assert other.requests == 0  # the other host's answer never landed as the API's
        assert get(client, f"{wire.base_url}/moved") == {
            "data": [{"price": Decimal("0.1234567890123456789"), "size": 3}],
            "next_cursor": None,
        }
        assert client._in_flight == {}
    finally:
        other.close()
