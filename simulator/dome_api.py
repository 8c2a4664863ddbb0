"""The Dome API endpoints (`/v1/polymarket/orders|markets|events`): pagination keys, query parsing, faults.

A request goes: arrival counted -> auth (401) -> limiter (429) -> latency -> validation (400/404)
-> fault rules -> answer. An orders pagination key carries the wallet's added-fill count at its
first page (its "view"): a walk begun before add_trades continues consistently on that snapshot
(same total, no repeats, no gaps); the new fills appear on the next walk from the first page. A
key whose view is larger than the wallet's added count was not minted here and is a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.config import ADDRESS_RE, FaultRule, absurd, bend_fields, wrong_type

API_PATHS = {
    "/v1/polymarket/orders": "orders",
    "/v1/polymarket/markets": "markets",
    "/v1/polymarket/events": "events",
}
MAX_FILTER_VALUES = 100
JSON = "application/json"


# Items of a long list encoded per json.dumps call. One call holds the GIL throughout: a page of
# 1,000 orders (~680 KB) took ~10 ms, and a request that reached the server meanwhile was counted
# that much later (two such pages back to back: past the client's arrival bound, then 20 ms; the
# likely cause of a 429 in a 3,000-wallet Dome run). A real API counts at its edge, not behind its page
# encoding; in chunks of 100 the wait is ~1 ms. The bytes are the same.
ENCODE_CHUNK = 100


def _dumps(obj: Any) -> bytes:
    """Compact JSON; a top-level object's lists (every page's rows) a chunk at a time."""
    if not isinstance(obj, dict):
        return json.dumps(obj, separators=(",", ":")).encode()
    parts = []
    for key, value in obj.items():
        if isinstance(value, list):
            chunks = (
                json.dumps(value[i : i + ENCODE_CHUNK], separators=(",", ":"))[1:-1]
                for i in range(0, len(value), ENCODE_CHUNK)
            )
            encoded = "[" + ",".join(chunks) + "]"
        else:
            encoded = json.dumps(value, separators=(",", ":"))
        parts.append(json.dumps(str(key)) + ":" + encoded)
    return ("{" + ",".join(parts) + "}").encode()


class ApiError(Exception):
    """A client error the API answers with `{"error", "message"}` and a 4xx status."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


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


class DomeRoutes:
    """The Dome endpoints, mixed into the HTTP handler (simulator/http.py gives _send, _error, ...)."""

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
            self._record(200)
            if sim._sleep(rule.delay_s):
                self.close_connection = True
                return
            self._send(200, _dumps(page.body()), record=False)
        elif kind == "reset":
            self._record("reset")
            self._reset()
        elif kind == "malformed_json":
            self._send(200, b'{"' + page.items_key.encode() + b'": [{"token_id": 12,,} <html>')
        elif kind == "truncated":
            self._send_truncated(_dumps(page.body()))
        else:
            self._bend(rule, page)
            self._send(200, _dumps(page.body()))

    def _bend(self, rule: FaultRule, page: _Page) -> None:
        """The faults that answer 200 with a wrong page: loops, gaps and bad fields."""
        if rule.kind == "empty_has_more":
            page.items = []
            page.has_more = True
            page.next_key = page.key_for(page.offset + page.limit)
        elif rule.kind == "empty_page":  # nothing skipped: the next page serves these rows
            page.items = []
            page.has_more = True
            page.next_key = page.key_for(page.offset)
        elif rule.kind == "repeat_key":
            page.has_more = True
            page.next_key = page.given_key or page.key_for(page.offset)
        elif rule.kind == "missing_field":
            name = rule.field or ("event_slug" if page.items_key == "events" else "condition_id")
            for item in page.items:
                item.pop(name, None)
        elif rule.kind == "wrong_type":
            default = {"orders": "shares", "markets": "volume_total", "events": "market_count"}
            bend_fields(page.items, rule.field or default[page.items_key], wrong_type)
        elif rule.kind == "absurd_value":
            bend_fields(page.items, rule.field or "timestamp", absurd)
