"""The simulator's HTTP server: the Dome API endpoints on 127.0.0.1, its rate limiter, faults and counters.

API (Bearer key, rate-limited, counted): ``GET /v1/polymarket/orders|markets|events``.
Test hooks (no key, not limited, not counted): ``GET /_sim/stats``, ``POST /_sim/reset_stats``,
``GET /_sim/truth[?wallet=0x..]``, ``GET|POST /_sim/faults``, ``GET /_sim/health``.
Admin calls that move the simulated world forward (no key, not limited, counted apart as
``requests.admin``, outside ``requests_total``; a bad body is a 400 ``invalid_admin`` and changes
nothing):

* ``POST /_sim/admin/add_trades`` ``{"wallet": "0x..", "count": n}`` or ``{"wallets": {"0x..": n,
  ...}}`` -> ``{"wallets": {address: new trade count}, "now": clock}`` (Simulator.add_trades_many).
* ``POST /_sim/admin/settle_markets`` ``{"condition_ids": [...]}`` or ``{"count": n}`` (the n
  lowest-index open markets, fewer if fewer are open) -> ``{"condition_ids": [settled],
  "closed_events": [event_slug closed by this call], "now": clock}``.

An orders pagination key carries the wallet's added-fill count at its first page (its "view"): a
walk begun before add_trades continues consistently on that snapshot (same total, no repeats,
no gaps); the new fills appear on the next walk from the first page. A key whose view is larger
than the wallet's added count was not minted here and is a 400.
A request goes: arrival counted -> auth (401) -> limiter (429) -> latency -> validation (400/404)
-> fault rules -> answer; every status is recorded before its first byte is sent, so a client that
reads /_sim/stats right after its answer sees it counted.

/_sim/stats: ``requests`` {orders, markets, events, other, admin}, ``requests_total`` (API
requests, admin calls excluded), ``http_429`` (every 429 sent), ``rate_limited`` (the limiter's share), ``responses_by_status`` {"200": n, ...,
"reset": n}, ``peak_1s``/``peak_10s`` (most API arrivals in any 1 s / 10 s window, rejected ones
included), ``peak_1s_accepted``/``peak_10s_accepted`` (those the limiter let through),
``faults_injected`` {kind: n}, ``orders_requests_by_wallet``, ``connections`` (TCP connections
accepted, hooks included), ``first_request_at``/``last_request_at`` (unix seconds or null).
/_sim/truth: ``{"totals": {wallets, trades, markets, events, traded_markets: [condition_id],
traded_events: [event_slug], now}, "wallets": {address: trade count}, "markets": [...], "events":
[...]}``; with ``?wallet=0x..``: ``{"wallet", "trade_count", "orders": [...]}``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pipeline.simulator.config import ADDRESS_RE, FAULT_KINDS, FaultRule, SimConfig
from pipeline.simulator.data import Simulator
from pipeline.simulator.faults import FaultEngine

API_PATHS = {
    "/v1/polymarket/orders": "orders",
    "/v1/polymarket/markets": "markets",
    "/v1/polymarket/events": "events",
}
MAX_FILTER_VALUES = 100
JSON = "application/json"


class ApiError(Exception):
    """A client error the API answers with `{"error", "message"}` and a 4xx status."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


# ---- rate limiting and counters ---------------------------------------------------------------
class RateLimiter:
    """Two sliding windows over the arrival times of accepted requests; rejections cost nothing."""

    def __init__(self, per_second: int | None, per_10s: int | None) -> None:
        self._lock = threading.Lock()
        self._windows = [
            (width, limit, collections.deque[float]())
            for width, limit in ((1.0, per_second), (10.0, per_10s))
            if limit is not None
        ]

    def acquire(self, now: float) -> float | None:
        """None if the request may pass (and is counted), else seconds until a slot frees."""
        with self._lock:
            wait = 0.0
            for width, limit, arrivals in self._windows:
                while arrivals and arrivals[0] <= now - width:
                    arrivals.popleft()
                if len(arrivals) >= limit:
                    wait = max(wait, arrivals[len(arrivals) - limit] + width - now)
            if wait > 0:
                return wait
            for _, _, arrivals in self._windows:
                arrivals.append(now)
            return None


class _Peak:
    """The most arrivals seen in any window of `width` seconds (windows ending at an arrival)."""

    def __init__(self, width: float) -> None:
        self.width = width
        self.arrivals: collections.deque[float] = collections.deque()
        self.peak = 0

    def add(self, now: float) -> None:
        self.arrivals.append(now)
        while self.arrivals[0] <= now - self.width:
            self.arrivals.popleft()
        self.peak = max(self.peak, len(self.arrivals))


class Stats:
    """What the server saw: the numbers tests and benchmarks judge a client by."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = dict.fromkeys(("orders", "markets", "events", "other"), 0)
            self._admin = 0
            self._statuses: collections.Counter[str] = collections.Counter()
            self._http_429 = 0
            self._rate_limited = 0
            self._faults = dict.fromkeys(FAULT_KINDS, 0)
            self._by_wallet: collections.Counter[str] = collections.Counter()
            self._all = (_Peak(1.0), _Peak(10.0))
            self._accepted = (_Peak(1.0), _Peak(10.0))
            self._connections = 0
            self._first: float | None = None
            self._last: float | None = None

    def arrive(self, now: float, endpoint: str, wallet: str | None) -> None:
        with self._lock:
            self._requests[endpoint] += 1
            for peak in self._all:
                peak.add(now)
            if wallet is not None:
                self._by_wallet[wallet] += 1
            wall = time.time()
            self._first = wall if self._first is None else self._first
            self._last = wall

    def admin(self) -> None:
        with self._lock:
            self._admin += 1

    def accept(self, now: float) -> None:
        with self._lock:
            for peak in self._accepted:
                peak.add(now)

    def rate_limited(self) -> None:
        with self._lock:
            self._rate_limited += 1

    def respond(self, status: int | str) -> None:
        with self._lock:
            self._statuses[str(status)] += 1
            if status == 429:
                self._http_429 += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def connection(self) -> None:
        with self._lock:
            self._connections += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": {**self._requests, "admin": self._admin},
                "requests_total": sum(self._requests.values()),
                "http_429": self._http_429,
                "rate_limited": self._rate_limited,
                "responses_by_status": dict(sorted(self._statuses.items())),
                "peak_1s": self._all[0].peak,
                "peak_10s": self._all[1].peak,
                "peak_1s_accepted": self._accepted[0].peak,
                "peak_10s_accepted": self._accepted[1].peak,
                "faults_injected": dict(self._faults),
                "orders_requests_by_wallet": dict(sorted(self._by_wallet.items())),
                "connections": self._connections,
                "first_request_at": self._first,
                "last_request_at": self._last,
            }


# ---- pagination keys and query parsing --------------------------------------------------------
def _scope(*parts: object) -> str:
    """A short digest of a request's filters: a key minted for other filters is refused."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def encode_key(endpoint: str, scope: str, offset: int, view: int | None = None) -> str:
    body: dict[str, Any] = {"e": endpoint, "s": scope, "o": offset}
    if view is not None:
        body["v"] = view
    raw = json.dumps(body, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _bad_key() -> ApiError:
    return ApiError(400, "invalid_pagination_key", "pagination_key is not valid for this request")


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_key_view(key: str, endpoint: str, scope: str) -> tuple[int, int | None]:
    """(offset, view) inside a key, if it was minted for this endpoint and these filters."""
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
        data = json.loads(raw)
        offset, view = data["o"], data.get("v")
        valid = data["e"] == endpoint and data["s"] == scope
    except (binascii.Error, ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        valid, offset, view = False, None, None
    if not valid or not _natural(offset) or not (view is None or _natural(view)):
        raise _bad_key()
    return offset, view


def decode_key(key: str, endpoint: str, scope: str) -> int:
    """The offset inside a key, if it was minted for this endpoint and these filters."""
    return decode_key_view(key, endpoint, scope)[0]


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _int(query: Mapping[str, list[str]], name: str, error: str) -> int | None:
    value = _one(query, name)
    if value is None:
        return None
    text = value.strip()
    if not re.fullmatch(r"-?[0-9]+", text):
        raise ApiError(400, error, f"{name} must be an integer, got {value!r}")
    return int(text)


def _limit(query: Mapping[str, list[str]], default: int, maximum: int) -> int:
    value = _int(query, "limit", "invalid_limit")
    if value is None:
        return default
    if not 1 <= value <= maximum:
        raise ApiError(400, "invalid_limit", f"limit must be between 1 and {maximum}")
    return value


def _many(query: Mapping[str, list[str]], name: str) -> list[str] | None:
    values = query.get(name)
    if values is None:
        return None
    values = [v for item in values for v in item.split(",")]
    if len(values) > MAX_FILTER_VALUES:
        raise ApiError(
            400, "too_many_values", f"at most {MAX_FILTER_VALUES} {name} values per request"
        )
    return values


@dataclass
class _Page:
    """One listing answer before serialization, so fault rules can bend it."""

    items_key: str
    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int
    key_for: Callable[[int], str]
    given_key: str | None
    wallet: str | None = None
    with_offset: bool = False
    has_more: bool = field(init=False)
    next_key: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.has_more = self.offset + self.limit < self.total
        self.next_key = self.key_for(self.offset + self.limit) if self.has_more else None

    @property
    def index(self) -> int:
        return self.offset // self.limit

    def body(self) -> dict[str, Any]:
        pagination: dict[str, Any] = {
            "limit": self.limit,
            "total": self.total,
            "has_more": self.has_more,
        }
        if self.with_offset:
            pagination["offset"] = self.offset
        if self.has_more and self.next_key is not None:
            pagination["pagination_key"] = self.next_key
        return {self.items_key: self.items, "pagination": pagination}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- the HTTP layer ---------------------------------------------------------------------------
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck on a client never blocks shutdown
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: SimServer) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, resets) are normal here: only real bugs are printed."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a pooled client reuses its connections
    server_version = "DomeSimulator/1.0"
    timeout = 300  # an idle keep-alive connection frees its thread eventually
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK
        # would add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.sim._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request logs would swamp tests and benchmarks."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing --
    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        record: bool = True,
        content_type: str = JSON,
    ) -> None:
        if record:
            self.server.sim._stats.respond(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(
        self,
        status: int,
        error: str,
        message: str,
        headers: Iterable[tuple[str, str]] = (),
        record: bool = True,
    ) -> None:
        self._send(status, _dumps({"error": error, "message": message}), headers, record)

    def _dispatch(self, method: str) -> None:
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            path = url.path.rstrip("/") or "/"
            query = parse_qs(url.query, keep_blank_values=True)
            if path.startswith("/_sim/"):
                self._sim_endpoint(method, path, query, body)
            else:
                self._api(method, path, query)
        except OSError:
            self.close_connection = True
            raise
        except Exception:  # a bug must not kill the connection silently
            traceback.print_exc()
            self.close_connection = True
            self._error(500, "internal_error", "simulator bug, see its stderr")

    # -- the API --
    def _api(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        sim = self.server.sim
        endpoint = API_PATHS.get(path, "other")
        user = _one(query, "user") if endpoint == "orders" else None
        wallet = user.lower() if user is not None and ADDRESS_RE.match(user) else None
        now = time.monotonic()
        sim._stats.arrive(now, endpoint, wallet)
        auth = self.headers.get("Authorization") or ""
        expected = f"Bearer {sim.api_key}"
        if not hmac.compare_digest(auth.encode(), expected.encode()):
            self._error(401, "unauthorized", "missing or invalid API key")
            return
        wait = sim._limiter.acquire(now)
        if wait is not None:
            sim._stats.rate_limited()
            self._too_many(wait)
            return
        sim._stats.accept(now)
        if sim._sleep(sim._latency()):
            self.close_connection = True  # shutting down: drop the request unanswered
            return
        if endpoint == "other":
            self._error(404, "not_found", f"no such endpoint: {path}")
            return
        if method != "GET":
            self._error(405, "method_not_allowed", f"{method} is not supported here")
            return
        try:
            page = getattr(self, f"_{endpoint}")(query)
        except ApiError as exc:
            self._error(exc.status, exc.error, exc.message)
            return
        rule = sim._faults.pick(endpoint, page.wallet, page.index)
        if rule is None:
            self._send(200, _dumps(page.body()))
        else:
            sim._stats.fault(rule.kind)
            self._inject(rule, page)

    def _too_many(self, wait: float) -> None:
        headers = []
        if self.server.sim.config.retry_after:
            headers.append(("Retry-After", str(max(1, math.ceil(wait)))))
        self._error(429, "rate_limited", "rate limit exceeded", headers)

    def _orders(self, query: dict[str, list[str]]) -> _Page:
        user = _one(query, "user")
        if user is None or not ADDRESS_RE.match(user):
            raise ApiError(400, "invalid_user", "user must be a wallet address (0x + 40 hex)")
        wallet = user.lower()
        limit = _limit(query, 100, 1000)
        start = _int(query, "start_time", "invalid_start_time")
        end = _int(query, "end_time", "invalid_end_time")
        chosen = [
            (name, value)
            for name in ("market_slug", "condition_id", "token_id")
            if (value := _one(query, name)) is not None
        ]
        if len(chosen) > 1:
            raise ApiError(
                400, "invalid_filter", "only one of market_slug, condition_id, token_id at a time"
            )
        market_filter = chosen[0] if chosen else None
        scope = _scope(wallet, start, end, market_filter)
        given = _one(query, "pagination_key")
        simulator = self.server.sim.simulator
        current = simulator.orders_view(wallet)
        if given is None:
            offset, view = 0, current
        else:
            offset, view = decode_key_view(given, "orders", scope)
            if view is None or view > current:
                raise _bad_key()
        items, total = simulator.orders_page(wallet, offset, limit, start, end, market_filter, view)
        return _Page(
            "orders", items, total, offset, limit,
            lambda o: encode_key("orders", scope, o, view), given, wallet,
        )  # fmt: skip

    def _markets(self, query: dict[str, list[str]]) -> _Page:
        filters = {
            name: _many(query, name)
            for name in ("condition_id", "market_slug", "event_slug", "token_id")
        }
        limit = _limit(query, 10, 100)
        scope = _scope(sorted((k, tuple(v)) for k, v in filters.items() if v is not None))
        given = _one(query, "pagination_key")
        offset = 0 if given is None else decode_key(given, "markets", scope)
        simulator = self.server.sim.simulator
        indices = simulator.market_indices(
            filters["condition_id"], filters["market_slug"], filters["event_slug"],
            filters["token_id"],
        )  # fmt: skip
        items = [simulator.market_at(j) for j in indices[offset : offset + limit]]
        return _Page(
            "markets", items, len(indices), offset, limit,
            lambda o: encode_key("markets", scope, o), given,
        )  # fmt: skip

    def _events(self, query: dict[str, list[str]]) -> _Page:
        slugs = _many(query, "event_slug")
        status = _one(query, "status")
        if status is not None and status not in ("open", "closed"):
            raise ApiError(400, "invalid_status", "status must be open or closed")
        tags = _many(query, "tags")
        flag = (_one(query, "include_markets") or "false").lower()
        if flag not in ("true", "false", "1", "0"):
            raise ApiError(400, "invalid_include_markets", "include_markets must be true or false")
        include = flag in ("true", "1")
        limit = _limit(query, 10, 100)
        scope = _scope(slugs, status, tags, include)
        given = _one(query, "pagination_key")
        if given is not None:
            offset = decode_key(given, "events", scope)
        else:
            offset = _int(query, "offset", "invalid_offset") or 0
            if offset < 0:
                raise ApiError(400, "invalid_offset", "offset must be >= 0")
        simulator = self.server.sim.simulator
        if slugs is None:
            indices = list(range(simulator.event_count()))
        else:
            found = {simulator.event_index(s) for s in slugs}
            indices = sorted(i for i in found if i is not None)
        events = [simulator.event_at(i) for i in indices]
        keep = [
            i
            for i, event in zip(indices, events, strict=True)
            if (status is None or event["status"] == status)
            and (tags is None or set(tags).intersection(event["tags"]))
        ]
        items = [simulator.event_at(i, include) for i in keep[offset : offset + limit]]
        return _Page(
            "events", items, len(keep), offset, limit,
            lambda o: encode_key("events", scope, o), given, with_offset=True,
        )  # fmt: skip

    # -- faults --
    def _inject(self, rule: FaultRule, page: _Page) -> None:
        sim = self.server.sim
        kind = rule.kind
        if kind == "http_5xx":
            self._error(rule.status or 503, "service_unavailable", "injected server error")
        elif kind == "http_4xx":
            status = rule.status or 403
            names = {400: "bad_request", 403: "forbidden", 404: "not_found", 410: "gone"}
            self._error(status, names.get(status, "client_error"), "injected client error")
        elif kind == "storm_429":
            self._too_many(1.0)
        elif kind == "slow":
            sim._stats.respond(200)
            if sim._sleep(rule.delay_s):
                self.close_connection = True
                return
            self._send(200, _dumps(page.body()), record=False)
        elif kind == "reset":
            sim._stats.respond("reset")
            self._reset()
        elif kind == "malformed_json":
            self._send(200, b'{"' + page.items_key.encode() + b'": [{"token_id": 12,,} <html>')
        elif kind == "truncated":
            body = _dumps(page.body())
            sim._stats.respond(200)
            self.send_response(200)
            self.send_header("Content-Type", JSON)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
        else:
            self._bend(rule, page)
            self._send(200, _dumps(page.body()))

    def _bend(self, rule: FaultRule, page: _Page) -> None:
        """The faults that answer 200 with a wrong page: loops, gaps and bad fields."""
        if rule.kind == "empty_has_more":
            page.items = []
            page.has_more = True
            page.next_key = page.key_for(page.offset + page.limit)
        elif rule.kind == "repeat_key":
            page.has_more = True
            page.next_key = page.given_key or page.key_for(page.offset)
        elif rule.kind == "missing_field":
            name = rule.field or ("event_slug" if page.items_key == "events" else "condition_id")
            for item in page.items:
                item.pop(name, None)
        elif rule.kind == "wrong_type":
            default = {"orders": "shares", "markets": "volume_total", "events": "market_count"}
            name = rule.field or default[page.items_key]
            for item in page.items:
                if name in item:
                    item[name] = str(item[name])

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.rfile.close()  # the makefile reference would otherwise keep the fd open
            self.connection.close()

    # -- test hooks --
    def _sim_endpoint(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        sim = self.server.sim
        if method == "GET" and path == "/_sim/stats":
            self._send(200, _dumps(sim.stats()), record=False)
        elif method == "POST" and path == "/_sim/reset_stats":
            sim.reset_stats()
            self._send(200, _dumps({"ok": True}), record=False)
        elif method == "GET" and path == "/_sim/health":
            self._send(200, _dumps({"ok": True}), record=False)
        elif method == "GET" and path == "/_sim/truth":
            wallet = _one(query, "wallet")
            truth = sim.truth() if wallet is None else sim.wallet_truth(wallet)
            self._send(200, _dumps(truth), record=False)
        elif path == "/_sim/faults" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    payload = json.loads(body or b"[]")
                    if isinstance(payload, dict) and set(payload) == {"spec"}:
                        payload = payload["spec"]
                    if not isinstance(payload, (list, str)):
                        raise ValueError("expected a list of rules or {'spec': '...'}")
                    sim.set_faults(payload)
                except ValueError as exc:
                    self._error(400, "invalid_faults", str(exc), record=False)
                    return
            rules = [rule.to_dict() for rule in sim.faults()]
            self._send(200, _dumps({"faults": rules}), record=False)
        elif method == "POST" and path in ("/_sim/admin/add_trades", "/_sim/admin/settle_markets"):
            sim._stats.admin()
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("expected a JSON object")
                if path.endswith("add_trades"):
                    answer = self._admin_add_trades(payload)
                else:
                    answer = self._admin_settle(payload)
            except ValueError as exc:  # json.JSONDecodeError is one
                self._error(400, "invalid_admin", str(exc), record=False)
                return
            self._send(200, _dumps(answer), record=False)
        else:
            self._error(404, "not_found", f"no such simulator endpoint: {path}", record=False)

    def _admin_add_trades(self, payload: dict[str, Any]) -> dict[str, Any]:
        sim = self.server.sim
        if set(payload) == {"wallet", "count"}:
            if not isinstance(payload["wallet"], str):
                raise ValueError("wallet must be an address")
            counts = {payload["wallet"]: payload["count"]}
        elif set(payload) == {"wallets"} and isinstance(payload["wallets"], dict):
            counts = payload["wallets"]
        else:
            raise ValueError('expected {"wallet": "0x..", "count": n} or {"wallets": {"0x..": n}}')
        return {"wallets": sim._add_trades(counts), "now": sim.simulator.now()}

    def _admin_settle(self, payload: dict[str, Any]) -> dict[str, Any]:
        sim = self.server.sim
        if set(payload) == {"condition_ids"}:
            ids = payload["condition_ids"]
            if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
                raise ValueError("condition_ids must be a list of strings")
            settled, closed = sim._settle(ids, None)
        elif set(payload) == {"count"}:
            settled, closed = sim._settle(None, payload["count"])
        else:
            raise ValueError('expected {"condition_ids": [...]} or {"count": n}')
        return {"condition_ids": settled, "closed_events": closed, "now": sim.simulator.now()}


class SimServer:
    """A running simulator: the HTTP server on a daemon thread plus the hooks tests drive it by."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.api_key = config.api_key or secrets.token_urlsafe(24)
        self.simulator = Simulator(config)
        self._stats = Stats()
        self._limiter = RateLimiter(*config.rate_limits())
        self._faults = FaultEngine(config.faults, config.seed)
        self._latency_rng = random.Random(f"latency|{config.seed}")
        self._latency_lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._closed = False
        self._httpd = _HTTPServer((host, port), self)
        self.host, self.port = self._httpd.server_address[:2]
        self.root_url = f"http://{self.host}:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dome-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        return f"SimServer(base_url={self.base_url!r}, seed={self.config.seed})"

    # -- hooks --
    def stats(self) -> dict[str, Any]:
        """The counters (see GET /_sim/stats)."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def set_faults(
        self, rules: str | Iterable[FaultRule | Mapping[str, Any]] | None
    ) -> list[FaultRule]:
        """Replace the fault rules at runtime (a spec string, FaultRules or dicts; [] = none)."""
        return self._faults.set_rules(rules)

    def faults(self) -> list[FaultRule]:
        return self._faults.rules()

    def truth(self) -> dict[str, Any]:
        """Everything a complete backfill must land (see GET /_sim/truth)."""
        sim = self.simulator
        with sim._lock:  # one consistent state, even while admin calls come in
            return self._truth(sim)

    def _truth(self, sim: Simulator) -> dict[str, Any]:
        traded_markets = sorted(sim.traded_condition_ids())
        traded_events = sorted(sim.traded_event_slugs())
        return {
            "totals": {
                "wallets": len(sim.wallet_addresses()),
                "trades": sim.total_trades(),
                "markets": sim.market_count(),
                "events": sim.event_count(),
                "traded_markets": traded_markets,
                "traded_events": traded_events,
                "now": sim.now(),
            },
            "wallets": sim.trade_counts(),
            "markets": sim.markets(),
            "events": sim.events(),
        }

    def add_trades(
        self, wallet: str | Mapping[str, int], count: int | None = None
    ) -> dict[str, int]:
        """New fills, newer than all before: ``add_trades("0x..", n)`` or ``add_trades({"0x..":
        n, ...})`` (one call, like POST /_sim/admin/add_trades). Returns the new trade counts of
        the wallets named; unknown wallets or bad counts raise ValueError and change nothing."""
        self._stats.admin()
        if isinstance(wallet, str):
            if count is None:
                raise ValueError("add_trades(wallet, count): count is missing")
            return self._add_trades({wallet: count})
        if count is not None:
            raise ValueError("add_trades(mapping) takes no count")
        return self._add_trades(wallet)

    def settle_markets(
        self, condition_ids: Iterable[str] | None = None, count: int | None = None
    ) -> list[str]:
        """Close these markets, or the `count` lowest-index open ones (one of the two): see
        Simulator.settle_markets. Returns the condition_ids settled."""
        self._stats.admin()
        if (condition_ids is None) == (count is None):
            raise ValueError("settle_markets takes condition_ids or count, exactly one")
        return self._settle(condition_ids, count)[0]

    def _add_trades(self, counts: Mapping[str, int]) -> dict[str, int]:
        sim = self.simulator
        sim.add_trades_many(counts)
        return {str(a).lower(): sim.trade_count(str(a)) for a in counts}

    def _settle(
        self, condition_ids: Iterable[str] | None, count: int | None
    ) -> tuple[list[str], list[str]]:
        """(condition_ids settled, event_slugs this call closed)."""
        sim = self.simulator
        with sim._lock:  # the choice of the open markets and the settling are one step
            if condition_ids is None:
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise ValueError(f"count must be an integer >= 0, got {count!r}")
                ids = sim.open_market_ids()[:count]
            else:
                ids = list(dict.fromkeys(c.lower() for c in condition_ids))
            before = {e["event_slug"] for e in sim.events() if e["status"] == "closed"}
            sim.settle_markets(ids)
            after = [e["event_slug"] for e in sim.events() if e["status"] == "closed"]
        return ids, [slug for slug in after if slug not in before]

    def wallet_truth(self, wallet: str) -> dict[str, Any]:
        orders = self.simulator.orders(wallet)
        return {"wallet": wallet.lower(), "trade_count": len(orders), "orders": orders}

    def close(self) -> None:
        """Stop serving: sleeping handlers wake and drop, open keep-alive connections are shut."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    # -- used by the handler --
    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._conn_lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
        if opened:
            self._stats.connection()

    def _latency(self) -> float:
        median = self.config.latency_ms / 1000.0
        if median <= 0:
            return 0.0
        with self._latency_lock:
            sample = self._latency_rng.lognormvariate(math.log(median), self.config.latency_sigma)
        return min(sample, 50 * median)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopping; True means it is (the caller should drop out)."""
        if seconds <= 0:
            return self._stopping.is_set()
        return self._stopping.wait(seconds)


def serve(config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> SimServer:
    """Start a simulator on a background daemon thread; port 0 picks a free one."""
    return SimServer(config or SimConfig(), host, port)
