"""What every source shares on the wire: a pooled session, the limiter, retries, paging guards.

Roles are kept apart so that each can be tested and changed alone: the limiter (limiter.py) decides
when a request may go, `HttpClient._attempt` makes one request and classifies its failure, tenacity
repeats what is transient, `follow_cursor` walks a cursor refusing any loop the server could cause,
and each source's parser validates what comes back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import io
import json
import logging
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from pipeline.sources.errors import (
    ConfigError,
    HTTPStatusError,
    KeyEchoed,
    PaginationError,
    SourceError,
    SourceUnavailable,
    TransientError,
)
from pipeline.sources.limiter import QUEUED_S, RateLimiter, Slot, arrival_bound

log = logging.getLogger(__name__)

Params = list[tuple[str, Any]]

# A request sent while this many others await their answers counts its arrival to its answer, not
# within the handshake's bound of its send: a server that receives many requests at once counts
# some of them late, by a queueing delay of its own that no handshake measures (the simulator,
# under a 200-request burst, by more than 10 ms: two 429s in a 3,000-wallet run).
BUSY_IN_FLIGHT = 8

# An attempt's answer must be complete within this many read timeouts of its send. requests' read
# timeout bounds each wait for the next bytes, not the answer: a server trickling its body one
# byte a second would hold a worker (and its wallet) forever. Four leaves an honest slow page
# ample room (its headers may take one read timeout, a large body the rest). It is checked
# between reads of the body, each of which waits at most one read timeout, so an attempt whose
# headers came in time ends within this budget plus one read timeout. (The headers themselves are
# read by http.client, bounded per receive only: a server trickling header lines is not cut.)
ANSWER_BUDGET_READ_TIMEOUTS = 4.0
# Bytes asked for per read of a body: a read returns what one receive brings (read1), so a
# trickle is seen between reads however small this is; large enough that a fast page is a few.
_READ_CHUNK = 64 * 1024

# Where a 400 blames the page size: the word `limit` naming the parameter ("limit must be at
# most 1000", "invalid limit", "limit: 5000"), not a word or phrase built on it: "time-limited",
# "limited", "limit-order", "rate limit", "rate_limit", "ratelimit". What precedes it is not
# required to be a word boundary: a body may run text into the name ("...invalid_limit",
# "EEElimit:" in tests/test_key_never_leaks.py), and what follows is what tells the parameter.
_LIMIT_WORD = re.compile(r"(?<!-)(?<!rate )(?<!rate_)(?<!rate)limit(?![\w-])", re.IGNORECASE)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _same_origin_redirects(
    url: str, where: str, scrub: Callable[[str], str]
) -> Callable[..., None]:
    """A response hook refusing a redirect to another scheme, host or port: its answer would land
    as the API's without a word (and uncharged to the limiter). A redirect within the API's own
    origin (a trailing slash, a moved path) is followed as requests follows it."""
    origin = _origin(url)

    def check(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if not response.is_redirect:
            return
        target = urllib.parse.urljoin(response.url, response.headers.get("location", ""))
        if _origin(target) != origin:
            response.close()
            raise HTTPStatusError(
                f"{where}: HTTP {response.status_code} redirects to another origin "
                f"({scrub(target)[:200]}); not followed",
                response.status_code,
            )

    return check


@dataclass(frozen=True)
class HttpSettings:
    """How to talk to an API, whichever it is; travels in pipeline options (no secrets here)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 5
    pool_size: int = 16
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    # An answer slower than this many times the endpoint's usual latency (and over `slow_min_s`)
    # is read as the server queueing us: the limiter eases off a little.
    slow_ratio: float = 4.0
    slow_min_s: float = 2.0


class Telemetry:
    """Hooks the caller implements to count what happens (Beam Metrics in the pipeline); no-ops here."""

    def request(self, endpoint: str) -> None:
        pass

    def retry(self, endpoint: str, reason: str) -> None:
        pass

    def throttled(self, endpoint: str, status: int) -> None:
        pass

    def slowed(self, endpoint: str) -> None:
        pass

    def unknown_fields(self, kind: str, counts: Counter[str]) -> None:
        pass

    def outside_window(self, endpoint: str, rows: int) -> None:
        """Rows served outside the time window asked for (dropped, not landed)."""

    def malformed(self, kind: str, items: int) -> None:
        """Lookup items (markets, events) set aside for failing their checks: their keys count
        as not served (missing), the rest of their batch lands."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN: as if absent
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass
class _Latency:
    """A running typical latency per endpoint (exponentially weighted), to spot a slow-down."""

    typical: dict[str, float] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def is_slow(self, endpoint: str, seconds: float, settings: HttpSettings) -> bool:
        with self.lock:
            typical = self.typical.get(endpoint)
            self.seen[endpoint] += 1
            slow = (
                typical is not None
                and self.seen[endpoint] > 10
                and seconds > max(settings.slow_min_s, settings.slow_ratio * typical)
            )
            self.typical[endpoint] = seconds if typical is None else 0.9 * typical + 0.1 * seconds
            return slow


class _SendSeen(HTTPAdapter):
    """An adapter whose connections call `on_sent(handshake_s)` once a request is written to the
    socket (in the calling thread), with the time their TCP handshake took (None if not timed, or
    for a connection's first request):
    the limiter then counts the request's arrival from its send, within a bound the round trip
    gives (limiter.arrival_bound), not from its stamp (RateLimiter.sent). requests has no hook
    there, so the pools get connection classes of their own; through a proxy (another pool
    manager) no send is seen, and the limiter holds the slots to the answer as before."""

    def __init__(self, on_sent: Callable[[float | None], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)

        class SendSeen:
            """Mixed into urllib3's connections. `_new_conn` (the TCP connect, DNS included: a
            bound too long is only cautious) has been urllib3's since 1.x; were it renamed, no
            handshake would be timed and the limiter would keep the window's margin."""

            handshake_s: float | None = None
            fresh = True  # no request sent on this connection yet

            def _new_conn(self) -> Any:
                started = time.monotonic()
                sock = super()._new_conn()  # type: ignore[misc]
                self.handshake_s = time.monotonic() - started
                self.fresh = True
                return sock

            def request(self, *args: Any, **kw: Any) -> None:
                super().request(*args, **kw)  # type: ignore[misc]
                # A new connection's first request is counted only once the server has accepted
                # the connection and started to serve it, which the handshake (completed by the
                # kernel) does not time: 53-68 ms over loopback against the simulator's
                # threaded server, past the bound. Its arrival is left to the margin or the answer.
                fresh, self.fresh = self.fresh, False
                on_sent(None if fresh else self.handshake_s)

        class Connection(SendSeen, HTTPConnection):
            pass

        class SecureConnection(SendSeen, HTTPSConnection):
            pass

        class Pool(HTTPConnectionPool):
            ConnectionCls = Connection

        class SecurePool(HTTPSConnectionPool):
            ConnectionCls = SecureConnection

        self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": SecurePool}


# What a scrubbed key becomes.
SCRUBBED = "***"

# The characters that neither a URL encoder (RFC 3986 unreserved) nor a JSON encoder ever escapes:
# a key's longest run of them appears as is in every spelling an ordinary encoder writes.
_PLAIN_RUN = re.compile(r"[A-Za-z0-9._~-]+")
# A key's plain run must be this long for an answer holding it to be refused: a shorter one (a
# test key like "k123") turns up inside honest data (a transaction hash) and would fail wallets
# for nothing, where 12 hex digits turn up by chance in about one 1,000-order page in 10^9.
# Such a key is still scrubbed from every message.
MIN_ECHO_RUN = 12


def _spellings(char: str) -> str:
    """A regex for one character of a key as any echo may spell it: as is (behind any number of
    backslashes: JSON's \\" \\\\ \\/, repr's \\', escaped twice over), percent-encoded (any
    hex case, encoded again as %25..), as a \\uXXXX or \\xXX escape, or `+` for a space."""
    forms = [r"\\*" + re.escape(char)]
    forms.append("".join(f"%(?:25)*{byte:02x}" for byte in char.encode("utf-8")))
    forms.append(rf"\\+u{ord(char):04x}" if ord(char) <= 0xFFFF else "")
    if ord(char) <= 0xFF:
        forms.append(rf"\\+x{ord(char):02x}")
    if char == " ":
        forms.append(r"\+")
    return "(?:" + "|".join(form for form in forms if form) + ")"


class Secret:
    """An API key as every echo of it may be spelled, to scrub it from text or to spot it in data.

    A server, a proxy or an error page can send the key back: as is, JSON-escaped, URL-encoded,
    upper-cased. Each of these spellings is the key to whoever reads it, so every one of them is
    matched (case-insensitively) and replaced whole: text is scrubbed before it is ever cut, or a
    cut would leave the key's first characters behind. Never shown and never pickled.
    """

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("an empty secret matches everywhere")
        self._pattern = re.compile("".join(map(_spellings, value)), re.IGNORECASE)
        runs = _PLAIN_RUN.findall(value)
        self._plain = max(runs, key=len).lower() if runs else ""  # "": every text is searched

    def __repr__(self) -> str:
        return "Secret(***)"

    def __getstate__(self) -> None:
        raise TypeError("a secret is never pickled")

    def scrub(self, text: str) -> str:
        """`text` with every spelling of the key replaced by *** (the whole text, never a part)."""
        return self._pattern.sub(SCRUBBED, text)

    def echoed_in(self, text: str) -> bool:
        """Whether `text` (a whole answer) holds the key as an ordinary encoder would write it.

        Runs on every page, so a plain substring test (a fraction of a millisecond for 1,000
        orders) comes first and the pattern (tens of milliseconds) only where it could match; a
        key spelled letter by letter as \\u escapes, which no encoder writes, passes here (and
        is still scrubbed from messages)."""
        if len(self._plain) < MIN_ECHO_RUN or self._plain not in text.lower():
            return False
        return self._pattern.search(text) is not None


class HttpClient:
    """One per worker process, shared by its threads (the session and the limiter are thread-safe).

    `secret` is the API key when the source has one: it is scrubbed, in every spelling, from the
    messages made here and (`keeping_secret`) from every error a source's walk raises; an answer
    that echoes it is refused (KeyEchoed); and the client refuses to be pickled so that it can
    never travel inside a pipeline's graph.
    """

    def __init__(
        self,
        settings: HttpSettings,
        limiter: RateLimiter,
        telemetry: Telemetry | None = None,
        *,
        headers: dict[str, str] | None = None,
        secret: str | None = None,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.telemetry = telemetry or Telemetry()
        self._secret = Secret(secret) if secret else None
        self._latency = _Latency()
        self._sending = threading.local()  # the slots of the request this thread is sending
        self._in_flight: dict[int, float] = {}  # thread -> when its unanswered request was sent
        self._in_flight_lock = threading.Lock()
        self._session = requests.Session()
        adapter = _SendSeen(
            self._on_sent, pool_connections=4, pool_maxsize=settings.pool_size, max_retries=0
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Accept"] = "application/json"
        self._session.headers.update(headers or {})

    def __repr__(self) -> str:
        return "HttpClient()"

    def __getstate__(self) -> None:
        raise TypeError("an API client is never pickled: build it in DoFn.setup()")

    def close(self) -> None:
        self._session.close()

    def _on_sent(self, handshake_s: float | None) -> None:
        slots = getattr(self._sending, "slots", None)
        if slots:  # once per attempt: a redirect's request was never stamped
            self._sending.slots = None
            self._sending.in_flight = True
            now = time.monotonic()
            with self._in_flight_lock:
                busy = len(self._in_flight) >= BUSY_IN_FLIGHT
                queued = sum(now - sent < QUEUED_S for sent in self._in_flight.values())
                self._in_flight[threading.get_ident()] = now
            bound = None if handshake_s is None or busy else arrival_bound(handshake_s, queued)
            self.limiter.sent(slots, bound)

    def scrub(self, text: str) -> str:
        return self._secret.scrub(text) if self._secret else text

    @contextlib.contextmanager
    def keeping_secret(self) -> Iterator[None]:
        """Scrubs the key from every SourceError raised inside, whoever composed its message.

        A source wraps each of its walks in this, so that no error leaves it with the key: the
        messages hold what the server sent (a field's value, a body) and what the caller passed
        (a slug), and it is here, not at each place that composes one, that the key is known.
        The error keeps its type and attributes; only its text changes."""
        try:
            yield
        except SourceError as error:
            error.args = tuple(self.scrub(a) if isinstance(a, str) else a for a in error.args)
            raise

    def _brief(self, response: requests.Response) -> str:
        # Scrubbed whole before it is cut: a key straddling the cut would leave its start behind.
        text = " ".join(self.scrub(response.text).split())[:200]
        trace = response.headers.get("x-trace-id")
        return self.scrub(f"{text} (trace {trace})" if trace else text)

    @staticmethod
    def _refuses_page_size(response: requests.Response, params: Params) -> bool:
        """Whether a 400 says the page size (`limit`) is what the API refused.

        Only then is it the run's setting to fix (ConfigError, `--page_limit`); any other 400 (an
        expired cursor, a bad wallet, a body echoing a title) is this input's own error. A request
        that sent no `limit` cannot have had it refused. Data API v2 errors may name the refused
        parameter (`{error, code, ..., parameter?}`): when a body names one, it alone decides.
        Otherwise the word `limit` must stand alone in the error's text (its `error`/`message`
        fields when the body is a JSON object, so that an echoed `"limit": 1000` of a pagination
        block does not count; the whole text otherwise)."""
        if not any(name == "limit" for name, _ in params):
            return False
        try:
            body = json.loads(response.text)
        except ValueError:
            body = None
        if isinstance(body, dict):
            parameter = body.get("parameter")
            if isinstance(parameter, str):
                return parameter.strip().lower() == "limit"
            texts = [body.get(name) for name in ("error", "message", "detail")]
            text = " ".join(value for value in texts if isinstance(value, str))
        else:
            text = response.text
        return _LIMIT_WORD.search(text) is not None

    def _read_body(
        self, response: requests.Response, deadline: float, where: str, url: str
    ) -> None:
        """Reads the body of a streamed response by `deadline` (time.monotonic) and keeps it on the
        response (`.content`, `.text`, `.json()` then work as for an unstreamed one).

        Each read takes what one receive brings (`read1`), so the deadline is checked between
        receives however slowly the bytes come; the body is read as sent and only then decoded
        (gzip, deflate: urllib3's decoders, chosen by Content-Encoding), so a trickled encoded
        body cannot hold a read inside the decoder either. Past the deadline the connection is
        dropped (a half-read answer can never be reused) and a TransientError names the URL: the
        retries and their counting apply as to any slow answer."""
        raw = response.raw
        chunks: list[bytes] = []
        while True:
            if time.monotonic() > deadline:
                response.close()
                budget = ANSWER_BUDGET_READ_TIMEOUTS * self.settings.read_timeout_s
                raise TransientError(
                    f"{where}: {self.scrub(url)} did not send its whole answer within {budget:g} s "
                    f"({sum(map(len, chunks))} bytes came); dropped"
                )
            chunk = raw.read1(_READ_CHUNK, decode_content=False)
            if not chunk:
                break
            chunks.append(chunk)
        encoding = raw.headers.get("Content-Encoding")
        encoded = b"".join(chunks)
        if encoding:
            decoder = urllib3.HTTPResponse(
                body=io.BytesIO(encoded),
                headers={"Content-Encoding": encoding},
                preload_content=False,
                decode_content=True,
            )
            encoded = decoder.read()
        # requests keeps a read body here; setting it is how a body read by other means is
        # handed back to `.text`/`.json()` (requests' own `.content` does the same).
        response._content = encoded
        response._content_consumed = True
        raw.release_conn()  # read to its end: the connection goes back to the pool

    def _attempt(
        self,
        url: str,
        params: Params,
        endpoint: str,
        buckets: Sequence[str],
        where: str,
        parse_float: Callable[[str], Any] | None,
        priority: int = 0,
    ) -> Any:
        slots: list[Slot] = []
        self.limiter.acquire(buckets, priority, slots)
        self.telemetry.request(endpoint)
        timeout = (self.settings.connect_timeout_s, self.settings.read_timeout_s)
        started = time.monotonic()
        deadline = started + ANSWER_BUDGET_READ_TIMEOUTS * self.settings.read_timeout_s
        self._sending.slots = slots
        response: requests.Response | None = None
        try:
            response = self._session.get(
                url,
                params=params,
                timeout=timeout,
                stream=True,
                hooks={"response": _same_origin_redirects(url, where, self.scrub)},
            )
            self.limiter.answered(slots)  # it arrived by now: its slots may free sooner
            self._read_body(response, deadline, where, url)
        except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
            if response is not None:
                response.close()
            raise TransientError(f"{where}: no answer within {timeout[1]:g} s") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # Covers resets, refused connections, bodies cut short or badly encoded; the text
            # has no headers.
            if response is not None:
                response.close()
            raise TransientError(f"{where}: {type(exc).__name__}") from None
        finally:
            self._sending.slots = None
            if getattr(self._sending, "in_flight", False):
                self._sending.in_flight = False
                with self._in_flight_lock:
                    del self._in_flight[threading.get_ident()]
        if self._latency.is_slow(endpoint, time.monotonic() - started, self.settings):
            self.limiter.slowed(buckets)
            self.telemetry.slowed(endpoint)
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            retry_after = min(retry_after, self.settings.retry_after_max_s)
        if status == 429 or (status == 503 and retry_after is not None):
            # Every thread drawing on these buckets holds off now, not only the refused one.
            self.limiter.throttled(buckets, retry_after if retry_after is not None else 1.0)
            self.telemetry.throttled(endpoint, status)
            raise TransientError(f"{where}: HTTP {status}", retry_after=retry_after, throttled=True)
        if status >= 500:
            raise TransientError(f"{where}: HTTP {status} {self._brief(response)}")
        if status == 400 and self._refuses_page_size(response, params):
            raise ConfigError(
                f"{where}: the API refused the page size (HTTP 400 {self._brief(response)}); "
                "lower --page_limit"
            )
        if status >= 400:
            raise HTTPStatusError(f"{where}: HTTP {status} {self._brief(response)}", status)
        try:
            body = response.json(parse_float=parse_float) if parse_float else response.json()
        except ValueError:
            raise TransientError(
                f"{where}: the body is not valid JSON ({len(response.content)} bytes)"
            ) from None
        self.limiter.succeeded(buckets)
        if self._secret is not None and self._secret.echoed_in(response.text):
            # Whatever field holds it, it would land in a table or a staging file: refused whole.
            raise KeyEchoed(f"{where}: the answer holds the API key; refused, nothing of it kept")
        return body

    def _backoff(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TransientError) and error.retry_after is not None:
            return error.retry_after + random.uniform(0, 0.25)
        ceiling = self.settings.backoff_initial_s * 2 ** (state.attempt_number - 1)
        return random.uniform(0, min(self.settings.backoff_max_s, ceiling))  # full jitter

    def get_json(
        self,
        url: str,
        params: Params,
        *,
        endpoint: str,
        buckets: Sequence[str],
        where: str,
        parse_float: Callable[[str], Any] | None = None,
        priority: int = 0,
    ) -> Any:
        """One GET, retried while transient; raises SourceError naming `where` when it gives up.

        `priority`: the limiter serves higher first among requests for the same buckets (a
        walk's page number: see RateLimiter.acquire)."""

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            self.telemetry.retry(endpoint, type(error).__name__)
            text = self.scrub(str(error))  # `where` may hold what the caller was given
            log.info("retrying in %.2f s (attempt %d): %s", wait, state.attempt_number, text)

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._backoff,
            retry=retry_if_exception_type(TransientError),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(
                self._attempt, url, params, endpoint, buckets, where, parse_float, priority
            )
        except TransientError as exc:
            attempts = self.settings.max_attempts
            raise SourceUnavailable(f"gave up after {attempts} attempts: {exc}") from None


@dataclass
class Page:
    """One validated page: its items, whether and where the next one starts, fields we did not know.

    `has_more` is None for APIs that say it only through the cursor (Gamma's keyset pages).
    """

    items: list[dict[str, Any]]
    has_more: bool | None
    next_cursor: str | None
    total: int | None = None
    unknown_fields: Counter[str] = field(default_factory=Counter)


def follow_cursor(
    get_page: Callable[[str | None, str], Page],
    *,
    max_pages: int,
    where: str,
    empty_pages_end: bool,
    strict: bool,
) -> Iterator[Page]:
    """Walks a cursor until the server says the end, refusing any loop it could cause.

    `get_page(cursor, page_where)` fetches one page. `empty_pages_end`: an empty page that says
    has_more is an error (Dome) rather than a page to step over (Polymarket, whose docs say never
    to stop on a short or empty page). `strict`: has_more and the cursor must agree.
    """
    seen: set[str] = set()
    cursor: str | None = None
    for page_no in range(max_pages):
        page_where = f"{where} page {page_no}"
        page = get_page(cursor, page_where)
        yield page
        more = page.has_more if page.has_more is not None else page.next_cursor is not None
        if strict and page.has_more is not None and page.has_more != (page.next_cursor is not None):
            raise PaginationError(
                f"{page_where}: has_more={page.has_more} but next_cursor is "
                f"{'set' if page.next_cursor else 'null'}: the API disagrees with itself"
            )
        if not more:
            return
        if not page.items and empty_pages_end:
            raise PaginationError(f"{page_where}: empty page that says has_more")
        if page.next_cursor is None:
            raise PaginationError(f"{page_where}: has_more without a cursor")
        if page.next_cursor in seen or page.next_cursor == cursor:
            raise PaginationError(f"{page_where}: cursor repeated, the server would loop")
        seen.add(page.next_cursor)
        cursor = page.next_cursor
    raise PaginationError(f"{where}: more than {max_pages} pages (--max_pages)")


__all__ = [
    "HttpClient",
    "HttpSettings",
    "Page",
    "Params",
    "Secret",
    "SourceError",
    "Telemetry",
    "follow_cursor",
    "parse_retry_after",
]
