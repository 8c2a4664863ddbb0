"""The Polymarket endpoints (Data API v2 and Gamma) on the simulator's port: params, cursors, buckets, faults.

Wire formats follow /work/shared/polymarket-api.md; the data come from PolymarketView (the same
world the Dome endpoints serve). No key: an Authorization header is accepted and ignored. Every
response carries ``x-trace-id``. A request goes: arrival counted -> per-IP buckets (429, 429
with an HTTP-date Retry-After, 503, or held: ``SimConfig.pm_throttle``) -> latency -> validation
-> fault rules -> answer.

Data API v2: ``GET /v2/trades``, ``GET /v2/status``, ``GET /v2/resolutions``; errors
``{error, code, retryable, trace_id, parameter?}``. A ``/v2/trades`` cursor is HMAC-signed and
carries the wallet, the resolved window (start, end, clamped to now - lag at the first page), the
filters, the page size, the wallet's added-fill view and the next position: a walk is a snapshot,
fills added meanwhile show on the next walk. A bad or tampered cursor, or one sent with filters
that differ from its own, is a 400.

Gamma: ``GET /markets/keyset``, ``/markets/slug/{slug}``, ``/markets/{id}``, ``/events/keyset``,
``/events/slug/{slug}``, ``/events/{id}``; errors ``{type, error}`` (422 for validation, 414 for
a URL over 8192 bytes). Keyset pages follow ``after_cursor``; a parameter named ``cursor`` is
ignored (page 1 again); ``next_cursor`` is present only on a full page.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from simulator.config import ADDRESS_RE, FaultRule, absurd, bend_fields, wrong_type
from simulator.dome_api import _dumps, _one
from simulator.polymarket_view import THREE_YEARS, TradeFilter

DAY = 86_400
MAX_TRADES_LIMIT = 1000
MAX_CONDITIONS = 20
MAX_GAMMA_IDS = 100
MAX_URL = 8192
CONDITION_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
# camelCase spellings the Data API accepts too
ALIASES = {
    "takerOnly": "taker_only",
    "filterType": "filter_type",
    "filterAmount": "filter_amount",
    "conditionId": "condition_id",
    "eventId": "event_id",
    "condition_id": "condition",
}
DATA_CODES = {
    400: "invalid_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
    500: "internal",
    503: "dependency_unavailable",
}
GAMMA_TYPES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    414: "uri_too_long",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}
_BUCKETS = {
    "trades": ("all", "data", "trades"),
    "status": ("all", "data"),
    "resolutions": ("all", "data"),
    "gamma_markets": ("all", "gamma", "markets", "listing"),
    "gamma_markets_slug": ("all", "gamma", "markets"),
    "gamma_events": ("all", "gamma", "events", "listing"),
    "gamma_events_slug": ("all", "gamma", "events"),
}


def is_polymarket_path(path: str) -> bool:
    return path == "/v2" or path.startswith(("/v2/", "/markets", "/events"))


def route(path: str) -> tuple[str, str, tuple[str, ...], str | None]:
    """(endpoint, api "data"|"gamma", buckets, path argument) of a Polymarket path."""
    if path == "/v2" or path.startswith("/v2/"):
        endpoint = {"/v2/trades": "trades", "/v2/status": "status"}.get(path)
        endpoint = endpoint or ("resolutions" if path == "/v2/resolutions" else "other")
        return endpoint, "data", _BUCKETS.get(endpoint, ("all", "data")), None
    kind = "markets" if path.startswith("/markets") else "events"
    rest = path[len("/" + kind) :]
    if rest == "/keyset":
        endpoint, arg = f"gamma_{kind}", None
    elif rest.startswith("/slug/") and len(rest) > len("/slug/"):
        endpoint, arg = f"gamma_{kind}_slug", "slug:" + unquote(rest[len("/slug/") :])
    elif rest.startswith("/") and rest[1:].isdigit():
        endpoint, arg = f"gamma_{kind}_slug", "id:" + rest[1:]
    else:
        return "other", "gamma", ("all", "gamma", kind), None
    return endpoint, "gamma", _BUCKETS[endpoint], arg


class PmError(Exception):
    """A Polymarket client error: the status, Data's `code` (or Gamma's `type`), the message."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter


@dataclass
class PmAnswer:
    """One answer before serialization, so fault rules can bend it."""

    body: dict[str, Any]
    items: list[dict[str, Any]]  # the objects missing_field / wrong_type bend
    page: int | None = None
    wallet: str | None = None
    repeat: Callable[[], None] | None = None  # repeat_key: the same cursor again
    empty: Callable[[], None] | None = None  # empty_has_more: no items, yet more to come
    blank: Callable[[], None] | None = None  # empty_page: the same, skipping nothing


# ---- cursors -----------------------------------------------------------------------------------
class Signer:
    """HMAC-signed opaque cursors: base64url(JSON) "." base64url(MAC), keyed by the seed."""

    def __init__(self, seed: int) -> None:
        self._key = hashlib.blake2b(b"pm-cursor|%d" % seed, digest_size=32).digest()

    def encode(self, kind: str, state: Mapping[str, Any]) -> str:
        raw = json.dumps({"k": kind, **state}, separators=(",", ":"), sort_keys=True).encode()
        mac = hmac.new(self._key, raw, hashlib.sha256).digest()[:12]
        return f"{_b64(raw)}.{_b64(mac)}"

    def decode(self, kind: str, cursor: str) -> dict[str, Any] | None:
        """The state, or None if the cursor was not minted here for this kind."""
        try:
            body, _, mac = cursor.partition(".")
            raw = _unb64(body)
            good = hmac.new(self._key, raw, hashlib.sha256).digest()[:12]
            if not hmac.compare_digest(good, _unb64(mac)):
                return None
            state = json.loads(raw)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(state, dict) or state.pop("k", None) != kind:
            return None
        return state


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---- parameters ------------------------------------------------------------------------------
def _data_query(query: Mapping[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in query.items():
        key = ALIASES.get(name, name)
        key = ALIASES.get(key, key) if key == "condition_id" else key
        out.setdefault(key, []).extend(values)
    return out


def _data_int(query: Mapping[str, list[str]], name: str) -> int | None:
    value = _one(query, name)
    if value is None or value.strip() == "":
        return None
    if not re.fullmatch(r"-?[0-9]+", value.strip()):
        raise PmError(400, f"{name} must be an integer, got {value!r}", name)
    number = int(value)
    if number < 0:
        raise PmError(400, f"{name} must be >= 0", name)
    return number


def _data_list(query: Mapping[str, list[str]], name: str) -> list[str] | None:
    values = query.get(name)
    if values is None:
        return None
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if len(items) > MAX_CONDITIONS:
        raise PmError(400, f"at most {MAX_CONDITIONS} {name} values", name)
    return items


def _conditions(query: Mapping[str, list[str]], name: str = "condition") -> tuple[str, ...] | None:
    items = _data_list(query, name)
    if items is None:
        return None
    for item in items:
        if not CONDITION_RE.match(item):
            raise PmError(400, f"{name}: not a condition id: {item!r}", name)
    return tuple(dict.fromkeys(i.lower() for i in items))


def _trade_filter(query: Mapping[str, list[str]]) -> tuple[TradeFilter, set[str]]:
    """The filters and the names of those given explicitly."""
    values: dict[str, Any] = {}
    taker = _one(query, "taker_only")
    if taker is not None:
        if taker.lower() not in ("true", "false"):
            raise PmError(400, "taker_only must be true or false", "taker_only")
        values["taker_only"] = taker.lower() == "true"
    kind = _one(query, "filter_type")
    if kind is not None:
        if kind.upper() not in ("TOKENS", "CASH"):
            raise PmError(400, "filter_type must be TOKENS or CASH", "filter_type")
        values["filter_type"] = kind.upper()
    amount = _one(query, "filter_amount")
    if amount is not None:
        try:
            number = float(amount)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise PmError(400, "filter_amount must be a number >= 0", "filter_amount")
        values["filter_amount"] = number if number > 0 else 0.01
    side = _one(query, "side")
    if side is not None:
        if side.upper() not in ("BUY", "SELL"):
            raise PmError(400, "side must be BUY or SELL", "side")
        values["side"] = side.upper()
    conditions = _conditions(query)
    if conditions is not None:
        values["conditions"] = conditions
    events = _data_list(query, "event_id")
    if events is not None:
        if not all(e.isdigit() for e in events):
            raise PmError(400, "event_id must be numeric ids", "event_id")
        values["event_ids"] = tuple(dict.fromkeys(events))
    given = set(values)
    return TradeFilter(**values), given


def _filter_state(filt: TradeFilter) -> list[Any]:
    return [
        filt.taker_only,
        filt.filter_type,
        filt.filter_amount,
        filt.side,
        None if filt.conditions is None else list(filt.conditions),
        None if filt.event_ids is None else list(filt.event_ids),
    ]


def _filter_from_state(state: Any) -> TradeFilter:
    taker, kind, amount, side, conditions, events = state
    if not isinstance(taker, bool) or kind not in ("TOKENS", "CASH"):
        raise ValueError("bad filter state")
    return TradeFilter(
        taker,
        kind,
        float(amount),
        side,
        None if conditions is None else tuple(conditions),
        None if events is None else tuple(events),
    )


def _gamma_limit(query: Mapping[str, list[str]], maximum: int) -> int:
    value = _one(query, "limit")
    if value is None:
        return 20
    if not re.fullmatch(r"[0-9]+", value.strip()) or not 1 <= int(value) <= maximum:
        raise PmError(422, f"limit must be an integer between 1 and {maximum}")
    return int(value)


def _gamma_closed(query: Mapping[str, list[str]]) -> bool:
    value = (_one(query, "closed") or "false").lower()
    if value not in ("true", "false"):
        raise PmError(422, "closed must be true or false")
    return value == "true"


def _gamma_many(query: Mapping[str, list[str]], name: str) -> list[str] | None:
    values = query.get(name)
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _gamma_one(
    what: str,
    arg: str | None,
    by_slug: Callable[[str], int | None],
    by_id: Callable[[str], int | None],
    render: Callable[[int], dict[str, Any]],
) -> PmAnswer:
    """Gamma's one market or event, by `arg`: `slug:VALUE`, else by id; 404 if none is known."""
    how, _, value = (arg or "").partition(":")
    index = by_slug(value) if how == "slug" else by_id(value)
    if index is None:
        raise PmError(404, f"{what} {value!r} not found")
    item = render(index)
    return PmAnswer(item, [item])


class PolymarketRoutes:
    """The Polymarket endpoints, mixed into the HTTP handler (simulator/http.py)."""

    # -- entry --
    def _polymarket(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        sim = self.server.sim
        endpoint, api, buckets, arg = route(path)
        self._pm_kind = api
        self._pm_trace = secrets.token_hex(8)
        self._recorder = sim._pm_stats.respond
        self._extra_headers = [("x-trace-id", self._pm_trace)]
        user = _one(query, "user") if endpoint == "trades" else None
        wallet = user.lower() if user is not None and ADDRESS_RE.match(user) else None
        sim._pm_stats.arrive(endpoint, buckets, wallet)
        if not self._pm_admit(buckets):
            return
        if sim._sleep(sim._latency()):
            self.close_connection = True  # shutting down: drop the request unanswered
            return
        if endpoint == "other":
            self._pm_error(404, f"no such endpoint: {path}")
            return
        if method != "GET":
            self._pm_error(405, f"{method} is not supported here")
            return
        if api == "gamma" and len(self.path) > MAX_URL:
            self._pm_error(414, f"URL longer than {MAX_URL} bytes")
            return
        try:
            answer = getattr(self, f"_pm_{endpoint}")(query, arg)
        except PmError as exc:
            self._pm_error(exc.status, exc.message, parameter=exc.parameter)
            return
        rule = sim._faults.pick(endpoint, answer.wallet, answer.page)
        if rule is None:
            self._send(200, _dumps(answer.body))
        else:
            sim._pm_stats.fault(rule.kind)
            self._pm_inject(rule, answer)

    def _pm_error(
        self,
        status: int,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        parameter: str | None = None,
        code: str | None = None,
    ) -> None:
        if self._pm_kind == "gamma":
            body: dict[str, Any] = {"type": GAMMA_TYPES.get(status, "error"), "error": message}
        else:
            body = {
                "error": message,
                "code": code
                or DATA_CODES.get(status, "invalid_request" if status < 500 else "internal"),
                "retryable": status == 429 or status >= 500,
                "trace_id": self._pm_trace,
            }
            if parameter is not None:
                body["parameter"] = parameter
        self._send(status, _dumps(body), headers)

    def _pm_admit(self, buckets: tuple[str, ...]) -> bool:
        """Pass the request through every bucket covering it, or answer the excess."""
        sim = self.server.sim
        ip = self.client_address[0]
        mode = sim.config.pm_throttle
        held, held_by = 0.0, ""
        while True:
            now = time.monotonic()
            got = sim._pm_limiter.acquire(ip, buckets, now)
            if got is None:
                sim._pm_stats.accept(buckets, now)
                if held_by:
                    sim._pm_stats.delayed(held_by, held)
                return True
            wait, bucket = got
            if mode == "delay":
                held_by = held_by or bucket
                step = wait + 0.001
                held += step
                if sim._sleep(step):
                    self.close_connection = True
                    return False
                continue
            seconds = max(1, math.ceil(wait))
            if mode == "429_date":
                retry = email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)
            else:
                retry = str(seconds)
            status = 503 if mode == "503" else 429
            sim._pm_stats.throttled(bucket, status)
            code = "request_timeout" if status == 503 else "rate_limited"
            self._pm_error(status, "rate limit exceeded", (("Retry-After", retry),), code=code)
            return False

    # -- Data API v2 --
    def _pm_status(self, query: dict[str, list[str]], arg: str | None) -> PmAnswer:
        serving = {"lag_seconds": self.server.sim.pm.lag_seconds}
        return PmAnswer({"data": {"serving": serving}}, [serving])

    def _pm_resolutions(self, query: dict[str, list[str]], arg: str | None) -> PmAnswer:
        q = _data_query(query)
        ids = _conditions(q)
        if not ids:
            raise PmError(400, "condition is required", "condition")
        view = self.server.sim.pm
        rows = []
        for cid in ids:
            j = view.market_index(cid)
            if j is not None:
                rows.append(view.resolution_at(j))
        return PmAnswer({"data": rows}, rows)

    def _pm_trades(self, query: dict[str, list[str]], arg: str | None) -> PmAnswer:
        sim = self.server.sim
        view = sim.pm
        q = _data_query(query)
        if "offset" in q:
            raise PmError(400, "offset is not supported: page with cursor", "offset")
        user = _one(q, "user")
        if user is None or not user.strip():
            raise PmError(400, "user is required", "user")
        if not ADDRESS_RE.match(user):
            raise PmError(400, "user must be a proxy wallet address", "user")
        wallet = user.lower()
        filt, given = _trade_filter(q)
        limit = _data_int(q, "limit")
        if limit is not None and limit > MAX_TRADES_LIMIT:
            raise PmError(400, f"limit must be at most {MAX_TRADES_LIMIT}", "limit")
        start, end = _data_int(q, "start"), _data_int(q, "end")
        cursor = _one(q, "cursor")
        now = view.now()
        if cursor is None:
            state = {
                "u": wallet,
                "l": limit or 100,
                "s": start or now - THREE_YEARS,
                "end": end or now + DAY,
                "v": sim.simulator.orders_view(wallet),
                "n": 0,
                "f": _filter_state(filt),
            }
            state["e"] = min(state["end"], view.served_until())
            state["p"] = None
        else:
            state = self._pm_cursor_state(cursor, wallet)
            stored = _filter_from_state(state["f"])
            conflict = any(getattr(filt, name) != getattr(stored, name) for name in given)
            conflict = conflict or (start not in (None, 0) and start != state["s"])
            conflict = conflict or (end not in (None, 0) and end != state["end"])
            if conflict:
                raise PmError(400, "cursor does not match the request's filters", "cursor")
            filt = stored
        w = sim.simulator.wallet(wallet)
        rows: list[dict[str, Any]] = []
        next_pos: int | None = None
        window = range(0)
        oldest_first = sim.config.pm_oldest_first
        if w is not None:
            if sim.config.pm_ignore_bounds:
                window = view.window(w, state["v"], 1, view.served_until())
            else:
                window = view.window(w, state["v"], state["s"], state["e"])
            shuffled: dict[int, int] = {}  # pm_unsorted: position -> its place in the shuffle
            if sim.config.pm_unsorted:  # the cursor holds a place in a seeded shuffle
                order = list(window)
                random.Random(f"{wallet}:{window.start}:{window.stop}").shuffle(order)
                shuffled = {pos: place for place, pos in enumerate(order)}
                positions = order[0 if state["p"] is None else state["p"] :]
            elif oldest_first:  # positions run newest first: walk them backwards
                first = window.stop - 1 if state["p"] is None else state["p"]
                positions = range(first, window.start - 1, -1)
            else:
                first = window.start if state["p"] is None else state["p"]
                positions = range(first, window.stop)
            for pos, row in view.scan(w, state["v"], positions, filt):
                if len(rows) < state["l"]:
                    rows.append(row)
                else:
                    next_pos = shuffled.get(pos, pos)
                    break

        def mint(pos: int, page: int) -> str:
            return sim._signer.encode("trades", {**state, "p": pos, "n": page})

        page = state["n"]
        body: dict[str, Any] = {
            "data": rows,
            "pagination": {
                "limit": state["l"],
                "offset": page * state["l"],
                "has_more": next_pos is not None,
                "next_cursor": None if next_pos is None else mint(next_pos, page + 1),
            },
        }
        answer = PmAnswer(body, rows, page=page, wallet=wallet)
        here = state["p"]
        if here is None:  # the walk's first position (pm_unsorted: the shuffle's first place)
            if sim.config.pm_unsorted:
                here = 0
            else:
                here = window.stop - 1 if oldest_first else window.start

        def repeat() -> None:
            body["pagination"]["has_more"] = True
            body["pagination"]["next_cursor"] = cursor or mint(here, page)

        def empty() -> None:  # the rows of this page are skipped: a gap the client must notice
            body["data"] = answer.items = []
            body["pagination"]["has_more"] = True
            past_end = window.start - 1 if oldest_first else max(here, window.stop)
            target = past_end if next_pos is None else next_pos
            body["pagination"]["next_cursor"] = mint(target, page + 1)

        def blank() -> None:  # no rows, more to come, nothing skipped (a filter emptied it)
            body["data"] = answer.items = []
            body["pagination"]["has_more"] = True
            body["pagination"]["next_cursor"] = mint(here, page + 1)

        answer.repeat, answer.empty, answer.blank = repeat, empty, blank
        return answer

    def _pm_cursor_state(self, cursor: str, wallet: str) -> dict[str, Any]:
        state = self.server.sim._signer.decode("trades", cursor)
        keys = {"u", "l", "s", "end", "e", "v", "n", "f", "p"}
        try:
            if state is None or set(state) != keys or state["u"] != wallet:
                raise ValueError("foreign cursor")
            if not all(_nat(state[k]) for k in ("l", "s", "end", "e", "v", "n", "p")):
                raise ValueError("bad numbers")
            _filter_from_state(state["f"])
        except (ValueError, TypeError, KeyError):
            raise PmError(400, "cursor is not valid for this request", "cursor") from None
        if state["v"] > self.server.sim.simulator.orders_view(wallet):
            raise PmError(400, "cursor is not valid for this request", "cursor")
        return state

    # -- Gamma --
    def _gamma_page(
        self,
        kind: str,
        candidates: list[int],
        make: Callable[[int], dict[str, Any]],
        limit: int,
        query: dict[str, list[str]],
    ) -> PmAnswer:
        if "offset" in query:
            raise PmError(422, "offset is not supported on keyset listings: use after_cursor")
        signer = self.server.sim._signer
        after = _one(query, "after_cursor")  # a parameter named `cursor` is ignored, as on Gamma
        start, page = 0, 0
        if after is not None:
            state = signer.decode(kind, after)
            if (
                state is None
                or set(state) != {"i", "n"}
                or not _nat(state["i"])
                or not _nat(state["n"])
            ):
                raise PmError(422, "after_cursor is not valid")
            start, page = state["i"], state["n"]
        chosen = [i for i in candidates if i >= start][:limit]
        items = [make(i) for i in chosen]
        key = "markets" if kind == "gamma_markets" else "events"
        body: dict[str, Any] = {key: items}
        if len(items) == limit:
            body["next_cursor"] = signer.encode(kind, {"i": chosen[-1] + 1, "n": page + 1})
        answer = PmAnswer(body, items, page=page)

        def repeat() -> None:
            body["next_cursor"] = after or signer.encode(kind, {"i": start, "n": page})

        def empty() -> None:
            body[key] = answer.items = []
            nxt = chosen[-1] + 1 if chosen else start
            body["next_cursor"] = signer.encode(kind, {"i": nxt, "n": page + 1})

        answer.repeat, answer.empty = repeat, empty
        return answer

    def _pm_gamma_markets(self, query: dict[str, list[str]], arg: str | None) -> PmAnswer:
        view = self.server.sim.pm
        limit = _gamma_limit(query, 100)
        closed = _gamma_closed(query)
        ids = _gamma_many(query, "condition_ids")
        if ids is not None and len(ids) > MAX_GAMMA_IDS:
            raise PmError(422, f"at most {MAX_GAMMA_IDS} condition_ids")
        wanted = None if ids is None else {i.lower() for i in ids}
        candidates = [
            j
            for j in view.gamma_market_indices(keyset=True)
            if (view.sim._market_dicts[j]["status"] == "closed") == closed
            and (wanted is None or view.sim._market_info[j].condition_id in wanted)
        ]
        return self._gamma_page("gamma_markets", candidates, view.gamma_market, limit, query)

    def _pm_gamma_events(self, query: dict[str, list[str]], arg: str | None) -> PmAnswer:
        view = self.server.sim.pm
        limit = _gamma_limit(query, 500)
        closed = _gamma_closed(query)
        slugs, ids = _gamma_many(query, "slug"), _gamma_many(query, "id")
        if slugs is None and ids is None:
            wanted = None
        else:
            found = {view.event_by_slug(s) for s in slugs or []}
            found |= {view.event_by_id(i) for i in ids or []}
            wanted = found - {None}
        candidates = [
            g
            for g in range(view.sim.event_count())
            if view.event_closed(g) == closed and (wanted is None or g in wanted)
        ]
        return self._gamma_page("gamma_events", candidates, view.gamma_event, limit, query)

    def _pm_gamma_markets_slug(self, query: dict[str, list[str]], arg: str | None) -> PmAnswer:
        view = self.server.sim.pm
        return _gamma_one("market", arg, view.market_by_slug, view.market_by_id, view.gamma_market)

    def _pm_gamma_events_slug(self, query: dict[str, list[str]], arg: str | None) -> PmAnswer:
        view = self.server.sim.pm
        return _gamma_one("event", arg, view.event_by_slug, view.event_by_id, view.gamma_event)

    # -- faults --
    def _pm_inject(self, rule: FaultRule, answer: PmAnswer) -> None:
        sim = self.server.sim
        kind = rule.kind
        if kind == "http_5xx":
            self._pm_error(rule.status or 503, "injected server error")
        elif kind == "http_4xx":
            self._pm_error(rule.status or 403, "injected client error")
        elif kind == "storm_429":
            self._pm_error(429, "rate limit exceeded", (("Retry-After", "1"),))
        elif kind == "slow":
            self._record(200)
            if sim._sleep(rule.delay_s):
                self.close_connection = True
                return
            self._send(200, _dumps(answer.body), record=False)
        elif kind == "reset":
            self._record("reset")
            self._reset()
        elif kind == "malformed_json":
            self._send(200, b'{"data": [{"size": 12,,} <html>')
        elif kind == "truncated":
            self._send_truncated(_dumps(answer.body))
        else:
            self._pm_bend(rule, answer)
            self._send(200, _dumps(answer.body))

    def _pm_bend(self, rule: FaultRule, answer: PmAnswer) -> None:
        """The faults that answer 200 with a wrong body: loops, gaps and bad fields."""
        endpoint = rule.endpoint
        if rule.kind == "empty_has_more" and answer.empty is not None:
            answer.empty()
        elif rule.kind == "empty_page" and answer.blank is not None:
            answer.blank()
        elif rule.kind == "repeat_key" and answer.repeat is not None:
            answer.repeat()
        elif rule.kind == "missing_field":
            default = {"status": "lag_seconds", "gamma_events": "slug", "gamma_events_slug": "slug"}
            if endpoint.startswith("gamma_markets"):
                default[endpoint] = "conditionId"
            name = rule.field or default.get(endpoint, "condition_id")
            for item in answer.items:
                item.pop(name, None)
        elif rule.kind == "wrong_type":
            default = {
                "trades": "size",
                "status": "lag_seconds",
                "resolutions": "resolved",
                "gamma_markets": "volumeNum",
                "gamma_markets_slug": "volumeNum",
                "gamma_events": "id",
                "gamma_events_slug": "id",
            }
            bend_fields(answer.items, rule.field or default[endpoint], wrong_type)
        elif rule.kind == "absurd_value":
            bend_fields(answer.items, rule.field or "timestamp", absurd)
