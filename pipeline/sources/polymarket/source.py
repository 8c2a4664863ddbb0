"""Polymarket's public APIs as a Source: Data API v2 trades and resolutions, Gamma markets and events.

What a complete backfill must send, each a trap when forgotten (polymarket-api.md, tests for each):
`start=1` (else three years only), `taker_only=false` (else no maker fills), a fixed `end` set once
per run behind `/v2/status`'s lag, the same filters on every page, `next_cursor` until null, never
stopping on a short or empty page; Gamma's `closed=true` and `closed=false` (its default drops
resolved markets), `after_cursor` (a parameter named `cursor` is ignored: page 1 forever).

Rate limits are per IP and per endpoint, in 10 s windows; a request draws from every bucket that
covers it (`ROUTES`). No key: none is sent.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from pipeline.schema import format_timestamp
from pipeline.sources import Lookup, MarketRef, Source, SourceSpec
from pipeline.sources.errors import HTTPStatusError, PageError, PaginationError, SourceUnavailable
from pipeline.sources.fields import Bad, shown
from pipeline.sources.http import HttpClient, Page, Params, Telemetry, follow_cursor
from pipeline.sources.limiter import RateLimiter, Window
from pipeline.sources.polymarket import ids, parse, rows, walk

log = logging.getLogger(__name__)

DATA_API_URL = "https://data-api.polymarket.com"
GAMMA_API_URL = "https://gamma-api.polymarket.com"

# Requests per 10 s per IP (api-reference/rate-limits). /v2 and keyset routes are not listed:
# /v2/trades is budgeted as /trades, keyset and slug lookups as /markets and /events.
LIMITS_PER_10S: dict[str, int] = {
    "all": 15_000,
    "data": 1_000,
    "trades": 200,
    "gamma": 4_000,
    "markets": 300,
    "events": 500,
    "listing": 900,
}
# Endpoint -> the buckets it draws from, narrowest first.
ROUTES: dict[str, tuple[str, ...]] = {
    "trades": ("trades", "data", "all"),
    "status": ("data", "all"),
    "resolutions": ("data", "all"),
    "markets_keyset": ("markets", "listing", "gamma", "all"),
    "markets_slug": ("markets", "gamma", "all"),
    "events_keyset": ("events", "listing", "gamma", "all"),
    "events_slug": ("events", "gamma", "all"),
}
# A keyset call refused with these is taken as too many keys (Unprocessable, URI Too Long).
BATCH_TOO_BIG = frozenset({414, 422})
MARKETS_PER_REQUEST = 50  # condition_ids per keyset call: the cap is undocumented, URLs stay short
EVENTS_PER_REQUEST = 50
KEYSET_LIMIT = 100  # Gamma's documented maximum page size for markets (two clients quote it)
RESOLUTIONS_PER_REQUEST = 20
LOOKUP_THREADS = 8  # a market batch's follow-ups (slug lookups, resolutions) in flight at once
WALK_THREADS = 32  # windows split off wallets' walks, in flight at once (walk.py)
MAX_PARTS = 8  # windows one split makes, at most
ROOM_PER_WALK = 2  # split only when the trades bucket has this much room per walk in flight
ROOM_WITHIN_S = 1.0  # ... over the next second (a walk takes ~4 pages a second at ~250 ms each)
END_MARGIN_S = 120  # the run's `end` trails the feed's own lag by this much more


def windows(overrides: dict[str, float] | None = None) -> tuple[Window, ...]:
    """The job's windows: the published limits, or lower ones from --bucket_limits."""
    limits = {**LIMITS_PER_10S, **(overrides or {})}
    return tuple(
        Window(bucket, limit, 10.0, margin_s=0.25, held_to_answer=True)
        for bucket, limit in limits.items()
    )


# The most /v2/status may say the feed lags. The run's `end` trails the lag, and every wallet
# whose history lies after `end` ends DONE with none of it: a lag of now+1000 s (a timestamp
# sent as a lag) or one in milliseconds made `end` negative or hours back, and each wallet was
# marked done with 0 trades. A feed a day behind is broken, not slow: the run does not start.
MAX_LAG_S = 86_400


class ImplausibleStatus(SourceUnavailable):
    """/v2/status answered a lag no working feed has, or one that puts the run's `end` before
    1970: the run must not start (walks up to that `end` would mark wallets done without their
    trades). A SourceUnavailable: run-level, and `run` says the run could not start."""

    heading = "the source's answer was refused"  # it answered: `run` must not say it did not


def run_end(lag_seconds: int, now: float | None = None) -> int:
    """The fixed `end` of every walk of a run: behind the feed's lag, with a margin.

    Raises ImplausibleStatus for a lag over MAX_LAG_S or an `end` of 1 or less (a clock at 1970):
    no walk may run up to such an `end`."""
    if lag_seconds > MAX_LAG_S:
        raise ImplausibleStatus(
            f"/v2/status: data.serving.lag_seconds is {lag_seconds}, "
            f"expected at most {MAX_LAG_S} seconds (one day)"
        )
    end = int(now if now is not None else time.time()) - max(0, lag_seconds) - END_MARGIN_S
    if end <= 1:
        raise ImplausibleStatus(
            f"/v2/status: the run's end would be {end} (lag {lag_seconds} s), "
            "expected a unix time after 1"
        )
    return end


Pair = tuple[dict[str, Any], dict[str, Any]]  # (checked item, raw item)


class Malformed:
    """Gamma items one lookup set aside because they failed their checks: the key each named
    (or None, for an item naming no usable key) and why, first reason kept. Filled from the
    lookup's threads (its slug lookups run on a pool), hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reasons: dict[str, str] = {}
        self.unkeyed: list[str] = []

    def add(self, key: str | None, reason: str) -> None:
        with self._lock:
            if key is None:
                self.unkeyed.append(reason)
            else:
                self.reasons.setdefault(key, reason)


class PolymarketClient:
    """The endpoints, each validated; no row mapping here."""

    def __init__(self, spec: SourceSpec, http: HttpClient) -> None:
        self._data = spec.data_api_url.rstrip("/")
        self._gamma = spec.gamma_api_url.rstrip("/")
        self._http = http
        self.page_limit = spec.page_limit
        self.max_pages = spec.max_pages
        # Keys per keyset call, per kind: lowered for the rest of the process when Gamma refuses
        # a batch as too big (its cap is undocumented; see _in_batches).
        self._caps = {"markets": MARKETS_PER_REQUEST, "events": EVENTS_PER_REQUEST}
        self._caps_lock = threading.Lock()

    def _get(self, url: str, params: Params, endpoint: str, where: str, priority: int = 0) -> Any:
        return self._http.get_json(
            url,
            params,
            endpoint=endpoint,
            buckets=ROUTES[endpoint],
            where=where,
            parse_float=Decimal,
            priority=priority,
        )

    def _unknown(self, kind: str, unknown: Any) -> None:
        if unknown:
            self._http.telemetry.unknown_fields(kind, unknown)

    def lag_seconds(self) -> int:
        """The feed's lag in whole seconds (a fraction rounds up), at least 0.

        Checked before any conversion: a bool is no number here, and int() of a Decimal like
        1E+10000000 would hold the GIL for minutes. Over MAX_LAG_S: ImplausibleStatus."""
        body = self._get(f"{self._data}/v2/status", [], "status", "/v2/status")
        try:
            served = body["data"]["serving"]["lag_seconds"]
        except (KeyError, TypeError):
            served = None
        lag = _as_decimal(served)
        if lag is None:
            raise PageError(
                "/v2/status: data.serving.lag_seconds is missing or not a number, got "
                f"{type(served).__name__} {shown(served)}"
            )
        if lag > MAX_LAG_S:  # compared as a Decimal: no int() of an absurd value
            raise ImplausibleStatus(
                f"/v2/status: data.serving.lag_seconds is {shown(served)}, "
                f"expected at most {MAX_LAG_S} seconds (one day)"
            )
        return 0 if lag <= 0 else math.ceil(lag)  # a lag below 0 (clock skew) is none

    def trade_pages(
        self, wallet: str, start: int, end: int, depth: int = 0
    ) -> Iterator[tuple[Page, list[dict[str, Any]]]]:
        """The wallet's rows in [start, end], page by page, with the raw rows (for `extra`).
        `depth`: the pages this wallet's walk had before this window (ranks it in the limiter)."""
        params: Params = [
            ("user", wallet),
            ("start", start),
            ("end", end),
            ("taker_only", "false"),
            ("filter_type", "TOKENS"),
            ("filter_amount", "0.01"),
            ("limit", self.page_limit),
        ]
        raws: dict[int, list[dict[str, Any]]] = {}
        pages = itertools.count(depth)  # deeper pages first: a long walk is not starved by new ones

        def get_page(cursor: str | None, where: str) -> Page:
            page_params = [*params, ("cursor", cursor)] if cursor else params
            url = f"{self._data}/v2/trades"
            body = self._get(url, page_params, "trades", where, priority=next(pages))
            page, raw = parse.trades_page(body, where)
            self._unknown("trades", page.unknown_fields)
            raws[id(page)] = raw
            return page

        for page in follow_cursor(
            get_page,
            max_pages=self.max_pages,
            where=f"wallet {wallet} trades",
            empty_pages_end=False,
            strict=True,
        ):
            yield page, raws.pop(id(page))

    def _checked(
        self,
        raw_items: Any,
        kind: str,
        where: str,
        malformed: Malformed | None,
        unknown_as: str | None = None,
    ) -> list[Pair]:
        """A Gamma answer's items that pass their checks; each that does not is set aside in
        `malformed` (its key is then one the source did not serve), never failing the others.
        `unknown_as`: the name unknown fields are counted under (default `kind`)."""
        fields, known_extra = parse.GAMMA_FIELDS[kind]
        pairs, unknown, bad = parse.parse_each(raw_items, fields, where, known_extra)
        self._unknown(unknown_as or kind, unknown)
        for raw, error in bad:
            if malformed is None:
                raise error
            malformed.add(parse.gamma_key(kind, raw), str(error))
        return pairs

    def _keyset(
        self,
        path: str,
        endpoint: str,
        params: Params,
        items_key: str,
        where: str,
        malformed: Malformed | None = None,
    ) -> list[Pair]:
        found: list[Pair] = []

        def get_page(cursor: str | None, page_where: str) -> Page:
            page_params = [*params, ("after_cursor", cursor)] if cursor else params
            body = self._get(f"{self._gamma}{path}", page_params, endpoint, page_where)
            raw_items, next_cursor = parse.keyset_page(body, items_key, page_where)
            pairs = self._checked(raw_items, items_key, page_where, malformed)
            found.extend(pairs)
            # Gamma sends next_cursor only on a full page, so a full last page is followed by
            # an empty one: an empty page ends the walk here. A page whose items were all
            # set aside is not empty: its cursor is followed.
            return Page([item for item, _ in pairs], None, next_cursor if raw_items else None)

        for _ in follow_cursor(
            get_page, max_pages=self.max_pages, where=where, empty_pages_end=False, strict=False
        ):
            pass
        return found

    def markets(
        self, condition_ids: Sequence[str], closed: bool, malformed: Malformed | None = None
    ) -> list[Pair]:
        """The markets Gamma's keyset serves for these ids. An item failing its checks is set
        aside in `malformed`; without one, it fails the call (PageError)."""
        return self._keyed("markets", "condition_ids", condition_ids, closed, malformed)

    def events(
        self, slugs: Sequence[str], closed: bool, malformed: Malformed | None = None
    ) -> list[Pair]:
        """The events Gamma's keyset serves for these slugs (`malformed` as for markets)."""
        return self._keyed("events", "slug", slugs, closed, malformed, named="slugs")

    def _keyed(
        self,
        kind: str,
        key_param: str,
        keys: Sequence[str],
        closed: bool,
        malformed: Malformed | None,
        named: str | None = None,
    ) -> list[Pair]:
        """`/<kind>/keyset` for `keys`, each repeated as `key_param`, in batches (_in_batches)."""

        def call(chunk: list[str]) -> list[Pair]:
            params: Params = [(key_param, key) for key in chunk]
            params += [("closed", "true" if closed else "false"), ("limit", KEYSET_LIMIT)]
            where = f"{kind} of {len(chunk)} {named or key_param} from {chunk[0]}"
            return self._keyset(f"/{kind}/keyset", f"{kind}_keyset", params, kind, where, malformed)

        return self._in_batches(kind, keys, call)

    def _in_batches(
        self, kind: str, keys: Sequence[str], call: Callable[[list[str]], list[Pair]]
    ) -> list[Pair]:
        """`call` on `keys` in chunks of the kind's cap. Gamma's cap on repeated keys is
        undocumented: a server answering 422 (or 414, URL too long) to a batch refused every
        batch of every run. Such a chunk is split in halves and each asked again, down to one
        key (whose refusal is then the batch's failure), and the half becomes the kind's cap
        for the rest of the process, so later batches are not refused first."""
        found: list[Pair] = []
        pending = [list(keys)]
        while pending:
            chunk = pending.pop(0)
            with self._caps_lock:
                cap = self._caps[kind]
            if len(chunk) > cap:
                pending[:0] = [chunk[i : i + cap] for i in range(0, len(chunk), cap)]
                continue
            try:
                found.extend(call(chunk))
            except HTTPStatusError as exc:
                if exc.status not in BATCH_TOO_BIG or len(chunk) == 1:
                    raise
                half = (len(chunk) + 1) // 2
                with self._caps_lock:
                    lowered = half < self._caps[kind]
                    self._caps[kind] = min(self._caps[kind], half)
                if lowered:
                    log.warning(
                        "%s keyset: HTTP %d to %d keys; asking %d at a time from now on",
                        kind,
                        exc.status,
                        len(chunk),
                        half,
                    )
                pending[:0] = [chunk[:half], chunk[half:]]
        return found

    def _one(
        self, path: str, endpoint: str, kind: str, where: str, malformed: Malformed | None
    ) -> Pair | None:
        try:
            body = self._get(f"{self._gamma}{path}", [], endpoint, where)
        except HTTPStatusError as exc:
            if exc.status == 404:
                return None
            raise
        pairs = self._checked([body], kind, where, malformed, unknown_as=endpoint)
        return pairs[0] if pairs else None

    def market_by_slug(self, slug: str, malformed: Malformed | None = None) -> Pair | None:
        where = f"market {slug}"
        return self._one(
            f"/markets/slug/{quote(slug, safe='')}", "markets_slug", "markets", where, malformed
        )

    def event_by_slug(self, slug: str, malformed: Malformed | None = None) -> Pair | None:
        return self._one(
            f"/events/slug/{quote(slug, safe='')}",
            "events_slug",
            "events",
            f"event {slug}",
            malformed,
        )

    def resolutions(self, condition_ids: Sequence[str]) -> dict[str, list[int] | None]:
        """condition_id -> payouts (None: not resolved), for up to 20 ids."""
        where = f"resolutions of {len(condition_ids)} condition_ids from {condition_ids[0]}"
        params: Params = [("condition", ",".join(condition_ids))]
        body = self._get(f"{self._data}/v2/resolutions", params, "resolutions", where)
        if not isinstance(body, dict):
            raise PageError(f"{where}: expected a JSON object")
        pairs, _ = parse.parse_items(
            body.get("data"), parse.RESOLUTION_FIELDS, where, frozenset({"payouts"})
        )
        out: dict[str, list[int] | None] = {}
        for index, (item, raw) in enumerate(pairs):
            try:
                paid = parse.payouts(raw.get("payouts"))
            except Bad as bad:
                raise PageError(f"{where}, item {index}: field 'payouts' should be {bad}") from None
            # Final only when the row pays something and does not say it is unresolved (the
            # docs name no `resolved` field: payouts decide when it says nothing). A row
            # answered `resolved: null, payouts: []` (or all zeros) made the market `resolved`,
            # never asked again, with no winner; it is `resolving` now: asked again (hourly).
            final = item.get("resolved") is not False and bool(paid) and sum(paid or ()) > 0
            out[item["condition_id"].lower()] = paid if final else None
        return out


def _as_decimal(value: Any) -> Decimal | None:
    """A served number (or numeric string) as a finite Decimal; None for anything else, a bool
    included (Python's True is 1, a lag of one second)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except ArithmeticError:
            return None
    elif isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        return None
    return value


def has_slug(slug: str | None) -> bool:
    """Whether `slug` can be asked for by `/<kind>/slug/{slug}`. Not a slug of dots only: `..`
    is a path step, not a name (requests sends `%2E%2E` as `..` too), and a server normalising
    the path answers `/markets/` (the list route), which failed the batch on every run."""
    return bool(slug and slug.strip().strip("."))


def _look_up(
    wanted: list[str],
    keyset: Callable[[list[str], bool], list[Pair]],
    key_of: Callable[[dict[str, Any]], str],
    one: Callable[[str], Pair | None],
    pool: Executor,
    closed_found: Callable[[dict[str, Pair]], None] = lambda pairs: None,
) -> dict[str, Pair]:
    """Keys found by Gamma's keyset, closed ones first then open ones (its `closed` default
    drops resolved ones; for events it is undocumented), then one by one (at once, on `pool`);
    the rest is missing. `closed_found` hears of the closed pass's keys as soon as it ends, so
    that their follow-ups (resolutions) overlap the open pass."""
    found: dict[str, Pair] = {}
    asked = set(wanted)
    for closed in (True, False):
        missing = [key for key in wanted if key not in found]
        if not missing:
            break
        for item, raw in keyset(missing, closed):
            if key_of(item) in asked:
                found[key_of(item)] = (item, raw)
        if closed:
            closed_found(dict(found))
    rest = [key for key in wanted if key not in found]
    for key, pair in zip(rest, pool.map(one, rest), strict=True):
        if pair is not None and key_of(pair[0]) == key:
            found[key] = pair
    return found


class PolymarketSource(Source):
    name = "polymarket"
    markets_per_batch = MARKETS_PER_REQUEST
    events_per_batch = EVENTS_PER_REQUEST

    def __init__(
        self, spec: SourceSpec, limiter: RateLimiter, telemetry: Telemetry | None = None
    ) -> None:
        self._http = HttpClient(spec.http, limiter, telemetry)
        self._limiter = limiter
        self._split = spec.split_walks
        self._walks_lock = threading.Lock()
        self._walks_active = 0  # window walks in progress in this process
        self.client = PolymarketClient(spec, self._http)
        self._run_id = spec.run_id
        self._end = spec.trades_end
        self._end_lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()  # (kind, key) of malformed items, logged once
        self._logged_lock = threading.Lock()
        # A batch's follow-up requests go out together, not one after another. Submitted to only
        # from a batch's own thread and never from the pool's, so it cannot deadlock.
        self._pool = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="polymarket-lookup")
        self._walk_pool = ThreadPoolExecutor(WALK_THREADS, thread_name_prefix="polymarket-walk")

    def trades_end(self) -> int:
        """The run's fixed `end` (set at launch; asked of /v2/status once if not)."""
        with self._end_lock:
            if self._end is None:
                self._end = run_end(self.client.lag_seconds())
            return self._end

    def trade_pages(self, wallet: str, start_time: int | None) -> Iterator[list[dict[str, Any]]]:
        """The wallet's walk, split into windows walked at once when the trades bucket has room
        (walk.py says why and when)."""
        start = 1 if start_time is None else max(1, int(start_time))
        span = walk.Span(start, self.trades_end())
        if span.start > span.end:
            # A refresh whose start is past this run's end (its last trade came after the
            # feed's lag): nothing to ask; a request with start > end would be the API's to judge.
            return

        def walk_window(window: walk.Span, depth: int, whole: walk.Walk) -> Iterator[list[dict]]:
            return self._walk_window(wallet, window, depth, whole)

        yield from walk.Walk(walk_window, self._walk_pool, self._room).pages(span)

    def _room(self) -> int:
        """Windows a walk may split into now: only while the trades bucket has more room than
        the walks in flight will take (the run's tail, or a dip), never in the steady state."""
        if not self._split:
            return 0
        with self._walks_lock:
            active = max(1, self._walks_active)
        return min(
            MAX_PARTS,
            self._limiter.room(ROUTES["trades"], ROOM_WITHIN_S) // (ROOM_PER_WALK * active),
        )

    def _walk_window(
        self, wallet: str, window: walk.Span, depth: int, whole: walk.Walk
    ) -> Iterator[list[dict[str, Any]]]:
        """One window by cursor; after a page that says more, it may hand its rest to windows."""
        ordinals = ids.Ordinals()  # no group of identical rows crosses a window's bounds
        served = walk.ServedOrder()  # a window splits only once all it served shows one order
        gaps = walk.Gaps()  # empty pages that said more: their ranges are asked again at the end
        order = walk.UNKNOWN
        with self._walks_lock:
            self._walks_active += 1
        pages = self.client.trade_pages(wallet, window.start, window.end, depth)
        strays = 0  # rows served outside the window: counted, logged once, never kept
        try:
            for number, (page, raws) in enumerate(pages):
                items, raws = self._inside(window, page.items, raws)
                stamps = [int(i["timestamp"]) for i in items]
                gaps.add(stamps, not page.items and bool(page.has_more))
                order = served.add(stamps)
                ordered = order != walk.UNKNOWN and not gaps.seen  # a gap's window is walked whole
                cut = None
                if len(items) < len(page.items):  # the server ignored the bounds: no split
                    strays += len(page.items) - len(items)
                elif ordered and page.has_more and page.next_cursor is not None and items:
                    parts = whole.parts()
                    if parts >= 2:
                        cut = walk.cut(window, stamps, parts)
                if cut is None:
                    yield self._rows(wallet, items, raws, ordinals)
                    continue
                whole.split(cut.windows, depth + number + 1)
                yield self._rows(wallet, items[: cut.keep], raws[: cut.keep], ordinals)
                return
            for span, served_rows in gaps.ranges(window, order):
                self._check_gap(wallet, span, served_rows, depth)
        finally:
            pages.close()
            with self._walks_lock:
                self._walks_active -= 1
            if strays:
                self._http.telemetry.outside_window("trades", strays)
                log.warning(
                    "wallet %s trades: %d rows served outside the window asked for (%d-%d), "
                    "not kept (another window or run lands them)",
                    wallet,
                    strays,
                    window.start,
                    window.end,
                )

    def _check_gap(self, wallet: str, span: walk.Span, served: int, depth: int) -> None:
        """Asks the range of an empty page that said more again (walk.Gaps): more rows there
        than the walk served means the page skipped them, and the wallet fails, naming it (its
        next run fetches it whole), rather than landing a history with a hole."""
        found = 0
        for page, _ in self.client.trade_pages(wallet, span.start, span.end, depth):
            found += sum(
                1 for item in page.items if span.start <= int(item["timestamp"]) <= span.end
            )
        if found > served:
            raise PaginationError(
                f"wallet {wallet} trades: an empty page said more was to come, and the API "
                f"skipped rows: asked again, {span.start}-{span.end} holds {found} rows, the "
                f"walk served {served}"
            )
        log.info(
            "wallet %s trades: an empty page said more was to come; %d-%d asked again: "
            "nothing was skipped (%d rows)",
            wallet,
            span.start,
            span.end,
            found,
        )

    @staticmethod
    def _inside(
        window: walk.Span, items: list[dict[str, Any]], raws: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The page's rows inside the window asked for. A row outside breaks the API's contract
        (`start`/`end` are inclusive bounds); it is another window's, or another run's, to land,
        never this one's (else a split walk would land it twice)."""
        inside = [window.start <= int(item["timestamp"]) <= window.end for item in items]
        if all(inside):
            return items, raws
        kept = [i for i, ok in enumerate(inside) if ok]
        return [items[i] for i in kept], [raws[i] for i in kept]

    def _rows(
        self,
        wallet: str,
        items: list[dict[str, Any]],
        raws: list[dict[str, Any]],
        ordinals: ids.Ordinals,
    ) -> list[dict[str, Any]]:
        fetched_at = format_timestamp(time.time())
        out = []
        for index, (item, raw) in enumerate(zip(items, raws, strict=True)):
            if item["proxy_wallet"].lower() != wallet:
                raise PageError(
                    f"wallet {wallet} trades: item {index} belongs to {item['proxy_wallet']}"
                )
            key = ids.fill_key(wallet, item)
            ordinal = ordinals.next(key)
            trade_id = ids.trade_id(key, ordinal)
            out.append(
                rows.trade_row(wallet, item, raw, trade_id, ordinal, self._run_id, fetched_at)
            )
        return out

    def markets(self, refs: Sequence[MarketRef]) -> Lookup:
        slugs = {cid.lower(): slug for cid, slug in refs}
        asked: list[Future] = []  # resolutions, 20 closed markets a request
        asked_ids: set[str] = set()

        def resolve(pairs: dict[str, Pair], last: bool) -> None:
            """Asks the resolutions of closed markets not asked yet, all at once: full requests
            only, until `last` (the closed pass overlaps the open one and the slug lookups)."""
            closed_ids = sorted(
                cid for cid, (item, _) in pairs.items() if item["closed"] and cid not in asked_ids
            )
            step = RESOLUTIONS_PER_REQUEST
            for start in range(0, len(closed_ids), step):
                chunk = closed_ids[start : start + step]
                if len(chunk) == step or last:
                    asked_ids.update(chunk)
                    asked.append(self._pool.submit(self.client.resolutions, chunk))

        malformed = Malformed()
        found = _look_up(
            sorted(slugs),
            lambda cids, closed: self.client.markets(cids, closed, malformed),
            lambda item: item["conditionId"].lower(),
            lambda cid: (
                self.client.market_by_slug(slugs[cid], malformed) if has_slug(slugs[cid]) else None
            ),
            self._pool,
            closed_found=lambda pairs: resolve(pairs, last=False),
        )
        self._set_aside("markets", malformed, set(slugs), found)
        resolve(found, last=True)
        payouts: dict[str, list[int] | None] = {}
        for future in asked:
            payouts.update(future.result())
        wanted = sorted(slugs)
        fetched_at = format_timestamp(time.time())
        lookup = Lookup(missing=[cid for cid in wanted if cid not in found])
        for cid in sorted(found):
            item, raw = found[cid]
            row = rows.market_row(item, raw, payouts.get(cid), self._run_id, fetched_at)
            lookup.rows.append(row)
            if row["event_slug"]:
                lookup.event_slugs.append(row["event_slug"])
        return lookup

    def events(self, slugs: Sequence[str]) -> Lookup:
        wanted = sorted(set(slugs))
        malformed = Malformed()
        found = _look_up(
            wanted,
            lambda keys, closed: self.client.events(keys, closed, malformed),
            lambda item: item["slug"],
            lambda slug: self.client.event_by_slug(slug, malformed) if has_slug(slug) else None,
            self._pool,
        )
        self._set_aside("events", malformed, set(wanted), found)
        fetched_at = format_timestamp(time.time())
        lookup = Lookup(missing=[slug for slug in wanted if slug not in found])
        for slug in sorted(found):
            item, raw = found[slug]
            lookup.rows.append(rows.event_row(item, raw, self._run_id, fetched_at))
        return lookup

    def _set_aside(
        self, kind: str, malformed: Malformed, asked: set[str], found: dict[str, Pair]
    ) -> None:
        """Counts (`<kind>_malformed`) and logs the items a lookup set aside: an asked key none
        of whose answers passed its checks (it is then in the Lookup's `missing`, like a key
        the source did not serve: recorded, and asked again by later runs up to the limit),
        and each item that named no usable key. Each key is logged once per process, naming
        the field, so that a market Gamma serves broken on every run does not flood the log.
        A key that another answer served well (say its slug lookup) is not counted."""
        keys = sorted(k for k in malformed.reasons if k in asked and k not in found)
        count = len(keys) + len(malformed.unkeyed)
        if not count:
            return
        self._http.telemetry.malformed(kind, count)
        with self._logged_lock:
            new = [k for k in keys if (kind, k) not in self._logged]
            self._logged.update((kind, k) for k in new)
        for key in new:
            log.warning(
                "%s %s: served malformed, set aside (counted missing, asked again by later "
                "runs): %s",
                kind,
                key,
                malformed.reasons[key],
            )
        for reason in malformed.unkeyed:
            log.warning("%s: an item naming no usable key was set aside: %s", kind, reason)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._walk_pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
