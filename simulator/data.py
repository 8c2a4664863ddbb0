"""Deterministic synthetic Dome data: wallets, their fills, markets and events, all derived from a seed.

Nothing per generated trade is stored: original fill k of wallet w (k = 0 its newest) is a pure
function of (seed, w, k) built from two blake2b digests, and its timestamp is
``base_w - L*gap_w - jitter(L)`` (L = k, or k-1 when k shares its transaction with k-1, jitter <
gap), so timestamps never increase with k, a page costs O(limit), a time filter is two binary
searches and a 200,000-trade wallet costs no memory.

The world can move forward while a server runs (``add_trades``, ``settle_markets``):

* Added fills are numbered per wallet from the OLDEST added one (a = 0, 1, ...), so adding more
  never renumbers anything. Their content is a pure function of (seed, w, a) except for two
  numbers kept per added fill in compact arrays (16 bytes a fill): its timestamp and its market,
  both chosen from the state at the time of the call. In the API's newest-first order a wallet
  with n added fills shows position p < n = added fill n-1-p, position p >= n = original fill
  k = p - n; original fills keep their content byte for byte.
* A simulated clock (:meth:`Simulator.now`) starts at ``NOW`` (2025-11-23T00:00:00Z, later than
  every generated fill) and only moves forward: an add_trades call starts every wallet it names
  at the clock, each new fill 1..G_w seconds after the previous one (G_w per wallet, 60-3600 s),
  and then advances the clock to its newest new fill; settle_markets advances it by 60 s and
  stamps the markets it closes with it. So new fills are strictly newer than everything before
  them and later calls are later in simulated time; they lie after NOW and usually after the real
  wall clock too, which nothing here cares about.
* New fills trade the markets open at the time of the call (all markets if none is open), by the
  same Zipf popularity. The first new fill of every wallet in every call, and about a quarter of
  the others, go to a market no fill has traded yet when there is one (an open one if possible),
  so a refresh regularly has a market to fetch that it has never seen.
* Markets: status "open" or "closed", as the API. By default a market is closed iff its end_time
  is before NOW (a few percent of a pool is open: 2-7% across seeds); ``SimConfig.open_fraction``
  makes each market open with that probability instead (its end_time moved into the future or
  the past to match).
  Settling closes a market: winning_side (one of its sides, by digest), completed_time and
  close_time set where missing. Events are "open" while any of their markets is open, "closed"
  once all are.

Traps for a Polymarket client (polymarket_view.py serves the same fills as Data API rows):

* Old history: ~12% of wallets (wallet digest byte) have 3.3-3.9 years of history instead of
  1 week .. 2 years, so part of it is older than three years before the clock: `/v2/trades`
  serves it only with ``start=1``.
* Twins: of the fill pairs that share a transaction (~5% of even k), about half are exact twins:
  fill 2p+1 copies 2p's amounts, counterparty and roles too (only order_hash and log_index differ),
  so its Polymarket row is identical to 2p's. Both are real fills.
* Dust: ~2% of fills (fill digest byte 44) have 1..9,999 raw shares (< 0.01 shares): Dome serves
  them, Polymarket never does.
* The showcase wallet, the first (lowest index) with >= SHOWCASE_MIN generated fills, is always
  old, its fills 0 and 1 are twins and its fill 2 (and fill 3 when it shares fill 2's transaction) is dust, so even a small
  world (10 wallets) contains every trap whatever the seed.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import itertools
import math
import re
import threading
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from simulator.config import SimConfig

NOW = 1_763_856_000  # 2025-11-23T00:00:00Z: the simulated "present"
BLOCK_AT_NOW = 79_000_000  # Polygon block at NOW; one block every 2 s
DAY = 86_400
PAIR_THRESHOLD = 13  # digest byte below this (~5%): fills 2p and 2p+1 share one transaction
TWIN_THRESHOLD = 7  # of those, below this (~2.7%): 2p+1 is 2p's exact twin (amounts too)
DUST_THRESHOLD = 5  # digest byte below this (~2%): the fill is dust, under 0.01 shares
OLD_THRESHOLD = 31  # wallet digest byte below this (~12%): its history starts 3.3-3.9 years back
SHOWCASE_MIN = 8  # the first wallet with at least this many fills shows every trap (see above)
YEAR = 365 * DAY
ZIPF_EXPONENT = 1.1
NEW_MARKET_BYTE = 64  # digest byte below this (~25%): an added fill goes to an untraded market
SETTLE_STEP = 60  # seconds the clock moves on each settle_markets call
MAX_ADD = 1_000_000  # most fills one add_trades call may add to one wallet
EXTRA_FIELD = ("fee_rate_bps", 0)  # the unknown field `extra_fields=True` adds

_CRYPTO = ("Bitcoin", "Ethereum", "Solana", "XRP", "Dogecoin", "Cardano")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August")
_PEOPLE = ("Alex Carter", "Maria Lopez", "Sam Okafor", "Jin Park", "Rosa Meyer", "Tom Hale")
_OFFICES = ("mayoral", "senate", "gubernatorial", "presidential")
_TEAMS = ("Lakers", "Celtics", "Warriors", "Knicks", "Bulls", "Heat", "Suns", "Nets")
_COMPANIES = ("OpenAI", "Apple", "Tesla", "Nvidia", "SpaceX", "Google")
_THINGS = ("a new flagship model", "a stock split", "a merger", "record earnings")
_TAGS = ("crypto", "politics", "sports", "nba", "elections", "economy", "tech", "pop-culture")
_SOURCES = ("https://www.coinbase.com", "https://www.nba.com", "https://apnews.com", "")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


def _u(chunk: bytes) -> float:
    """A uniform float in [0, 1) from some digest bytes."""
    return int.from_bytes(chunk, "big") / float(1 << (8 * len(chunk)))


def _pick(seq: tuple[Any, ...], chunk: bytes) -> Any:
    return seq[int.from_bytes(chunk, "big") % len(seq)]


def _token_id(chunk: bytes) -> str:
    """A 77-digit decimal string, like Polymarket's uint256 outcome token ids."""
    return str(10**76 + int.from_bytes(chunk, "big") % (9 * 10**76))


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _heavy_tail(u: float, v: float, max_trades: int) -> int:
    """~10% none, most tens, a few percent hundreds to thousands, ~1% tens of thousands."""
    if u < 0.10:
        return 0
    if u < 0.96:
        low, high = 3, 300
    elif u < 0.99:
        low, high = 300, 5_000
    else:
        low, high = 10_000, 60_000
    return min(int(low * (high / low) ** v), max_trades)


@dataclass(frozen=True)
class Wallet:
    """One simulated wallet: what its generated fills are derived from (added fills live apart)."""

    index: int
    address: str
    count: int  # generated ("original") fills; Simulator.trade_count adds the added ones
    base: int  # timestamp of fill 0 before jitter
    gap: int  # seconds between consecutive fills, before jitter (>= 2)
    old: bool = False  # history reaches further back than three years (a trap, see above)


@dataclass(frozen=True)
class _Market:
    """What a fill needs from its market, kept apart from the API dict for speed."""

    condition_id: str
    market_slug: str
    title: str
    tokens: tuple[str, str]
    labels: tuple[str, str]


class Simulator:
    """The simulated data set: wallets, fills on demand, markets and events, for one config."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._seed = config.seed
        counts = [self._wallet_count(i) for i in range(config.wallets)]
        self.showcase = next((i for i, c in enumerate(counts) if c >= SHOWCASE_MIN), -1)
        self._wallets = [self._make_wallet(i, counts[i]) for i in range(config.wallets)]
        self._by_address = {w.address: w for w in self._wallets}
        self._build_markets(config.market_pool_size())
        # One lock for every change (admin calls) and the lazy truth caches. Readers of pages take
        # no lock: an added-fill array only grows, so a snapshot of its length is a stable view.
        self._lock = threading.RLock()
        self._traded: tuple[frozenset[str], frozenset[str]] | None = None
        self._traded_idx: set[int] | None = None  # pool indices some fill trades
        self._clock = NOW
        # wallet index -> (timestamps, market indices) of its added fills, oldest added first
        self._added: dict[int, tuple[array[int], array[int]]] = {}

    # ---- wallets -------------------------------------------------------------------------
    def _wallet_count(self, index: int) -> int:
        count = self.config.trade_counts.get(index)
        if count is None:
            d = _digest(b"w|%d|%d" % (self._seed, index))
            count = _heavy_tail(_u(d[20:28]), _u(d[28:36]), self.config.max_trades)
        return count

    def _make_wallet(self, index: int, count: int) -> Wallet:
        d = _digest(b"w|%d|%d" % (self._seed, index))
        base = NOW - int.from_bytes(d[36:40], "big") % (30 * DAY)
        old = d[46] < OLD_THRESHOLD or index == self.showcase
        if old:  # 3.3 .. 3.9 years, spread so that fill count-2 is already that old
            span = int(3.3 * YEAR + 0.6 * YEAR * _u(d[40:44]))
            gap = max(2, span // max(count - 2 if count >= SHOWCASE_MIN else count, 1))
        else:
            span = int(7 * DAY * (730 / 7) ** _u(d[40:44]))  # 1 week .. 2 years of history
            gap = max(2, span // max(count, 1))
        return Wallet(index, "0x" + d[:20].hex(), count, base, gap, old)

    def wallet_addresses(self) -> list[str]:
        """All wallet addresses, in index order."""
        return [w.address for w in self._wallets]

    def wallet(self, address: str) -> Wallet | None:
        return self._by_address.get(address.lower())

    def trade_count(self, address: str) -> int:
        wallet = self.wallet(address)
        return 0 if wallet is None else wallet.count + self.added_count(wallet)

    def trade_counts(self) -> dict[str, int]:
        return {w.address: w.count + self.added_count(w) for w in self._wallets}

    def total_trades(self) -> int:
        return sum(w.count + self.added_count(w) for w in self._wallets)

    def added_count(self, w: Wallet) -> int:
        """How many fills add_trades has given wallet w (a snapshot: it only grows)."""
        added = self._added.get(w.index)
        return 0 if added is None else len(added[0])

    def now(self) -> int:
        """The simulated clock: NOW until an admin call moves it forward (never backward)."""
        return self._clock

    # ---- markets and events ---------------------------------------------------------------
    def _market_text(self, j: int, d: bytes) -> tuple[str, tuple[str, str], str, list[str]]:
        """Title, outcome labels, category and tags of market j."""
        year = 2024 + d[1] % 3
        kind = d[0] % 5
        if kind == 0:
            coin = _pick(_CRYPTO, d[2:4])
            price = (1 + d[4] % 20) * 5_000
            title = f"Will {coin} reach ${price:,} by {_pick(_MONTHS, d[5:6])} {year}?"
            return title, ("Yes", "No"), "crypto", ["crypto", coin.lower()]
        if kind == 1:
            title = (
                f"Will {_pick(_PEOPLE, d[2:4])} win the {year} {_pick(_OFFICES, d[4:5])} election?"
            )
            return title, ("Yes", "No"), "politics", ["politics", "elections"]
        if kind == 2:
            a = d[2] % len(_TEAMS)
            b = (a + 1 + d[3] % (len(_TEAMS) - 1)) % len(_TEAMS)
            title = f"{_TEAMS[a]} vs. {_TEAMS[b]} (game {j})"
            return title, (_TEAMS[a], _TEAMS[b]), "sports", ["sports", "nba"]
        if kind == 3:
            coin = _pick(_CRYPTO, d[2:4])
            title = f"{coin} Up or Down on {_pick(_MONTHS, d[5:6])} {1 + d[4] % 28}?"
            return title, ("Up", "Down"), "crypto", ["crypto"]
        title = f"Will {_pick(_COMPANIES, d[2:4])} announce {_pick(_THINGS, d[4:5])} in {year}?"
        return title, ("Yes", "No"), "tech", ["tech", _pick(_TAGS, d[5:6])]

    def _build_markets(self, size: int) -> None:
        """Build the market pool, group ~85% of it into events of 1-5, and the Zipf popularity."""
        seed = self._seed
        digests = [_digest(b"m|%d|%d" % (seed, j)) for j in range(size)]
        # Events: consecutive markets that have one are grouped, 1-5 per event.
        event_of: list[int | None] = []
        groups: list[list[int]] = []
        room = 0
        for j, d in enumerate(digests):
            if _u(d[6:8]) >= 0.85:
                event_of.append(None)
                continue
            if room == 0:
                groups.append([])
                room = 1 + _digest(b"g|%d|%d" % (seed, len(groups)))[0] % 5
            groups[-1].append(j)
            room -= 1
            event_of.append(len(groups) - 1)
        event_slugs: list[str] = []
        event_titles: list[str] = []
        for g, members in enumerate(groups):
            title = self._market_text(members[0], digests[members[0]])[0].rstrip("?")
            event_titles.append(title)
            tag = _digest(b"e|%d|%d" % (seed, g))[:3].hex()
            event_slugs.append(f"{_slugify(title)[:60].strip('-')}-{tag}")

        self._market_info: list[_Market] = []
        self._market_dicts: list[dict[str, Any]] = []
        fraction = self.config.open_fraction
        for j, d in enumerate(digests):
            e = _digest(b"n|%d|%d" % (seed, j))
            title, labels, category, tags = self._market_text(j, d)
            condition_id = "0x" + e[:32].hex()
            slug = f"{_slugify(title)[:70].strip('-')}-{d[8:11].hex()}"
            t = _digest(b"t|%d|%d" % (seed, j))
            tokens = (_token_id(t[:32]), _token_id(t[32:]))
            self._market_info.append(_Market(condition_id, slug, title, tokens, labels))
            group = event_of[j]
            slug_of_event = None if group is None else event_slugs[group]
            is_open = None if fraction is None else _u(self._status_digest(j)[0:8]) < fraction
            market = self._market_dict(
                d, condition_id, slug, title, tokens, labels, category, tags, is_open
            )
            self._market_dicts.append(
                market | ({} if slug_of_event is None else {"event_slug": slug_of_event})
            )
        if self.config.extra_fields:
            for market in self._market_dicts:
                market[EXTRA_FIELD[0]] = EXTRA_FIELD[1]
        self._by_condition = {m.condition_id: j for j, m in enumerate(self._market_info)}

        self._events: list[dict[str, Any]] = []
        self._event_members: dict[str, list[int]] = {}
        for g, members in enumerate(groups):
            markets = [self._market_dicts[j] for j in members]
            d = _digest(b"e|%d|%d" % (seed, g))
            slug = event_slugs[g]
            tags = sorted({t for m in markets for t in m["tags"]})
            event: dict[str, Any] = {
                "event_slug": slug,
                "title": event_titles[g],
                "subtitle": None if d[4] < 128 else f"{len(members)} markets",
                "status": "open" if any(m["status"] == "open" for m in markets) else "closed",
                "start_time": min(m["start_time"] for m in markets),
                "end_time": max(m["end_time"] for m in markets),
                "volume_fiat_amount": round(sum(m["volume_total"] for m in markets), 2),
                "settlement_sources": _pick(_SOURCES[:3], d[5:6]),
                "rules_url": f"https://polymarket.com/event/{slug}#rules",
                "image": None if d[6] < 40 else f"https://img.example.invalid/events/{slug}.png",
                "tags": tags,
                "market_count": len(members),
            }
            if self.config.extra_fields:
                event[EXTRA_FIELD[0]] = EXTRA_FIELD[1]
            self._events.append(event)
            self._event_members[slug] = members
        self._event_index = {e["event_slug"]: i for i, e in enumerate(self._events)}

        weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(size)]
        total = sum(weights)
        self._zipf_cdf = list(itertools.accumulate(w / total for w in weights))
        self._zipf_cdf[-1] = 1.0

    @staticmethod
    def _market_dict(
        d: bytes,
        condition_id: str,
        slug: str,
        title: str,
        tokens: tuple[str, str],
        labels: tuple[str, str],
        category: str,
        tags: list[str],
        is_open: bool | None = None,
    ) -> dict[str, Any]:
        """Every field of the markets section of dome-api.md, nullable ones sometimes null.

        is_open None: closed iff end_time < NOW (2-7% of a pool stays open). True/False
        (SimConfig.open_fraction) forces the status and moves end_time to match: into the next
        120 days, or 3-29 days before NOW.
        """
        start = NOW - (30 + int.from_bytes(d[12:15], "big") % 700) * DAY
        end = start + (1 + d[15] % 120) * DAY
        if is_open is True and end < NOW:
            end = NOW + (1 + d[15] % 120) * DAY
        elif is_open is False and end >= NOW:
            end = NOW - (3 + d[15] % 27) * DAY  # start is at least 30 days before NOW
        closed = end < NOW
        side_a = {"id": tokens[0], "label": labels[0]}
        side_b = {"id": tokens[1], "label": labels[1]}
        completed = end + (1 + d[16] % 48) * 3600 if closed else None
        winning = None
        if closed and d[17] >= 12:  # a few closed markets are not resolved yet
            winning = dict(side_a if d[18] & 1 else side_b)
        week = round(int.from_bytes(d[19:22], "big") / 100, 2)
        month = round(week + int.from_bytes(d[22:25], "big") / 50, 2)
        year = round(month + int.from_bytes(d[25:28], "big") / 10, 2)
        extra: dict[str, Any] = {}
        if d[28] % 3 == 0:
            extra["neg_risk"] = bool(d[29] & 1)
        if category == "sports":
            extra["game_id"] = int.from_bytes(d[30:33], "big")
        return {
            "market_slug": slug,
            "condition_id": condition_id,
            "title": title,
            "start_time": start,
            "end_time": end,
            "completed_time": completed,
            "close_time": completed if d[33] >= 20 else None,
            "game_start_time": (
                f"{_iso(end - 3 * 3600)}+00" if category == "sports" and d[34] >= 30 else None
            ),
            "tags": tags,
            "volume_1_week": week,
            "volume_1_month": month,
            "volume_1_year": year,
            "volume_total": round(year + int.from_bytes(d[35:37], "big") / 10, 2),
            "resolution_source": _pick(_SOURCES, d[37:38]),
            "image": f"https://img.example.invalid/markets/{slug}.png",
            "description": f"This market resolves according to its title: {title}",
            "negative_risk_id": None if d[38] < 200 else "0x" + d[39:63].hex().ljust(64, "0"),
            "side_a": side_a,
            "side_b": side_b,
            "winning_side": winning,
            "status": "closed" if closed else "open",
            "extra_fields": extra,
        }

    def _status_digest(self, j: int) -> bytes:
        """Market j's status coin (open_fraction) and its winning side once settled."""
        return _digest(b"st|%d|%d" % (self._seed, j))

    # ---- moving the world forward ----------------------------------------------------------
    def settle_markets(self, condition_ids: Iterable[str]) -> None:
        """Close these markets (unknown ids raise ValueError, nothing changes); see the module doc.

        Idempotent: an already closed market keeps what it has, only missing winning_side,
        completed_time and close_time are filled in. The clock moves SETTLE_STEP seconds first
        (not for an empty list).
        """
        wanted = [c.lower() for c in condition_ids]
        unknown = [c for c in wanted if c not in self._by_condition]
        if unknown:
            raise ValueError(f"unknown condition_id {unknown[0]!r}")
        if not wanted:
            return
        with self._lock:
            self._clock += SETTLE_STEP
            touched: set[int] = set()
            for cid in dict.fromkeys(wanted):
                j = self._by_condition[cid]
                market = _copy_market(self._market_dicts[j])
                if market["winning_side"] is None:
                    side = "side_a" if self._status_digest(j)[8] & 1 else "side_b"
                    market["winning_side"] = dict(market[side])
                for name in ("completed_time", "close_time"):
                    if market[name] is None:
                        market[name] = self._clock
                market["status"] = "closed"
                self._market_dicts[j] = market  # readers see the old dict or the new one
                slug = market.get("event_slug")
                if slug is not None:
                    touched.add(self._event_index[slug])
            for g in sorted(touched):
                members = self._event_members[self._events[g]["event_slug"]]
                if all(self._market_dicts[j]["status"] == "closed" for j in members):
                    self._events[g] = {**self._events[g], "status": "closed"}

    def open_market_ids(self) -> list[str]:
        """condition_ids of the open markets, in pool order (settle's {"count": n} takes a head)."""
        return [m["condition_id"] for m in self._market_dicts if m["status"] == "open"]

    def add_trades(self, address: str, count: int) -> None:
        """Give one wallet `count` new fills, newer than all it had (see the module docstring)."""
        self.add_trades_many({address: count})

    def add_trades_many(self, counts: Mapping[str, int]) -> None:
        """One add_trades call for many wallets: all start at the same clock, taken in wallet
        index order (so the mapping's order does not matter). Unknown wallets or counts outside
        0..MAX_ADD raise ValueError and change nothing."""
        plan: dict[int, int] = {}
        for address, count in counts.items():
            w = self.wallet(str(address))
            if w is None:
                raise ValueError(f"unknown wallet {address!r}")
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError(f"count for {address} must be an integer, got {count!r}")
            if not 0 <= count <= MAX_ADD:
                raise ValueError(f"count for {address} must be within 0..{MAX_ADD}")
            plan[w.index] = plan.get(w.index, 0) + count
        with self._lock:
            traded = self._traded_indices()
            size = len(self._market_info)
            pool = [j for j, m in enumerate(self._market_dicts) if m["status"] == "open"]
            pool = pool or list(range(size))
            cdf = list(itertools.accumulate(1.0 / (j + 1) ** ZIPF_EXPONENT for j in pool))
            cdf = [c / cdf[-1] for c in cdf]
            open_set = set(pool)
            start, newest = self._clock, self._clock
            for index in sorted(plan):
                gap = self._add_gap(self._wallets[index])
                stamps, markets = self._added.setdefault(index, (array("q"), array("q")))
                t = start
                for i in range(plan[index]):
                    d = self._ad(index, len(stamps))
                    t += 1 + int.from_bytes(d[40:44], "big") % gap
                    j = -1
                    if (i == 0 or d[30] < NEW_MARKET_BYTE) and len(traded) < size:
                        untraded = [m for m in range(size) if m not in traded]
                        choices = [m for m in untraded if m in open_set] or untraded
                        j = choices[int.from_bytes(d[31:35], "big") % len(choices)]
                    if j < 0:
                        j = pool[min(bisect.bisect_right(cdf, _u(d[0:8])), len(pool) - 1)]
                    traded.add(j)
                    markets.append(j)  # the market first: a reader bounds by len(stamps)
                    stamps.append(t)
                newest = max(newest, t)
            self._clock = newest
            self._traded = None

    def _add_gap(self, w: Wallet) -> int:
        """G_w: an added fill comes 1..G_w seconds after the one before (60 <= G_w <= 3600)."""
        d = _digest(b"w|%d|%d" % (self._seed, w.index))  # the wallet's own digest, unused bytes
        return 60 + int.from_bytes(d[44:46], "big") % 3541

    def markets(self) -> list[dict[str, Any]]:
        """Every market of the pool, as the API returns it (copies)."""
        return [_copy_market(m) for m in self._market_dicts]

    def market_count(self) -> int:
        return len(self._market_dicts)

    def market_at(self, index: int) -> dict[str, Any]:
        return _copy_market(self._market_dicts[index])

    def market_indices(
        self,
        condition_ids: list[str] | None = None,
        market_slugs: list[str] | None = None,
        event_slugs: list[str] | None = None,
        token_ids: list[str] | None = None,
    ) -> list[int]:
        """Pool indices matching the filters: OR within one filter, AND across filters."""
        out = []
        cids = None if condition_ids is None else {c.lower() for c in condition_ids}
        mslugs = None if market_slugs is None else set(market_slugs)
        eslugs = None if event_slugs is None else set(event_slugs)
        tokens = None if token_ids is None else set(token_ids)
        for j, (info, market) in enumerate(zip(self._market_info, self._market_dicts, strict=True)):
            if cids is not None and info.condition_id not in cids:
                continue
            if mslugs is not None and info.market_slug not in mslugs:
                continue
            if eslugs is not None and market.get("event_slug") not in eslugs:
                continue
            if tokens is not None and not tokens.intersection(info.tokens):
                continue
            out.append(j)
        return out

    def events(self, include_markets: bool = False) -> list[dict[str, Any]]:
        """Every event, as the API returns it (with `markets` only when asked)."""
        return [self.event_at(i, include_markets) for i in range(len(self._events))]

    def event_count(self) -> int:
        return len(self._events)

    def event_index(self, slug: str) -> int | None:
        return self._event_index.get(slug)

    def event_at(self, index: int, include_markets: bool = False) -> dict[str, Any]:
        event = dict(self._events[index])
        event["tags"] = list(event["tags"])
        if include_markets:
            members = self._event_members[event["event_slug"]]
            event["markets"] = [self.market_at(j) for j in members]
        return event

    # ---- fills -----------------------------------------------------------------------------
    def _od(self, w: int, k: int) -> bytes:
        return hashlib.blake2b(b"o|%d|%d|%d" % (self._seed, w, k), digest_size=64).digest()

    def _oe(self, w: int, k: int) -> bytes:
        return hashlib.blake2b(b"x|%d|%d|%d" % (self._seed, w, k), digest_size=64).digest()

    def _leader(self, w: Wallet, k: int) -> tuple[int, bytes, bytes]:
        """(leader index, leader digest, amounts digest): k shares k-1's tx when k-1 says so;
        a twin takes its amounts from the leader's digest too (the third item is then ld)."""
        d = self._od(w.index, k)
        if k & 1:
            prev = self._od(w.index, k - 1)
            forced = k == 1 and w.index == self.showcase
            if prev[21] < TWIN_THRESHOLD or forced:
                return k - 1, prev, prev
            if prev[21] < PAIR_THRESHOLD:
                return k - 1, prev, d
        return k, d, d

    def _ts(self, w: Wallet, k: int) -> int:
        lead, ld, _ = self._leader(w, k)
        return w.base - lead * w.gap - int.from_bytes(ld[17:21], "big") % w.gap

    def _market_index(self, ld: bytes) -> int:
        return bisect.bisect_right(self._zipf_cdf, _u(ld[0:8]))

    def _ad(self, w: int, a: int) -> bytes:
        """Digest of added fill a (0 = the first ever added) of wallet index w."""
        return hashlib.blake2b(b"a|%d|%d|%d" % (self._seed, w, a), digest_size=64).digest()

    def _ae(self, w: int, a: int) -> bytes:
        return hashlib.blake2b(b"y|%d|%d|%d" % (self._seed, w, a), digest_size=64).digest()

    def _fill(
        self,
        w: Wallet,
        j: int,
        ld: bytes,
        d: bytes,
        ts: int,
        tx: bytes,
        own: bytes,
        log: int,
        dust: bool = False,
    ) -> dict[str, Any]:
        """The API dict of a fill on market j: roles and outcome from ld, amounts from d."""
        market = self._market_info[j]
        outcome = (ld[8] >> 1) & 1
        if dust or d[44] < DUST_THRESHOLD:  # under 0.01 shares: Polymarket never serves it
            shares = 1 + int.from_bytes(d[45:47], "big") % 9_999
        else:
            shares = max(1, round(math.exp(_u(d[13:17]) * math.log(20_000)) * 100)) * 10_000
        counterparty = "0x" + d[24:44].hex()
        if ld[9] < 154:  # ~60%: the wallet is the maker
            user, taker = w.address, (None if d[10] < 13 else counterparty)
        else:
            user, taker = counterparty, w.address
        order: dict[str, Any] = {
            "token_id": market.tokens[outcome],
            "token_label": market.labels[outcome],
            "side": "BUY" if ld[8] & 1 else "SELL",
            "market_slug": market.market_slug,
            "condition_id": market.condition_id,
            "shares": shares,
            "shares_normalized": shares / 1_000_000,
            "price": (1 + int.from_bytes(d[11:13], "big") % 998) / 1000,
            "tx_hash": "0x" + tx[:32].hex(),
            "title": market.title,
            "timestamp": ts,
            "order_hash": "0x" + own[32:64].hex(),
            "user": user,
            "taker": taker,
        }
        if not self.config.omit_log_index:
            order["block_number"] = BLOCK_AT_NOW - (NOW - ts) // 2
            order["log_index"] = log
        if self.config.extra_fields:
            order[EXTRA_FIELD[0]] = EXTRA_FIELD[1]
        return order

    def order(self, w: Wallet, k: int) -> dict[str, Any]:
        """Generated fill k (0 = the newest generated one) of wallet w, as the API returns it."""
        lead, ld, d = self._leader(w, k)
        j = min(self._market_index(ld), len(self._market_info) - 1)
        ts = w.base - lead * w.gap - int.from_bytes(ld[17:21], "big") % w.gap
        own = self._oe(w.index, k)
        tx = own if lead == k else self._oe(w.index, lead)
        log = int.from_bytes(ld[22:24], "big") % 400 + (k - lead)
        dust = lead == 2 and w.index == self.showcase
        return self._fill(w, j, ld, d, ts, tx, own, log, dust)

    def added_order(self, w: Wallet, a: int) -> dict[str, Any]:
        """Added fill a (0 = the oldest added) of wallet w: its own transaction, never shared."""
        stamps, markets = self._added[w.index]
        d = self._ad(w.index, a)
        own = self._ae(w.index, a)
        log = int.from_bytes(d[22:24], "big") % 400
        return self._fill(w, markets[a], d, d, stamps[a], own, own, log)

    # Positions: p = 0 is the newest fill of a view of n added fills (n <= added_count, a snapshot).
    def _pos_ts(self, w: Wallet, n: int, p: int) -> int:
        return self._added[w.index][0][n - 1 - p] if p < n else self._ts(w, p - n)

    def _pos_order(self, w: Wallet, n: int, p: int) -> dict[str, Any]:
        return self.added_order(w, n - 1 - p) if p < n else self.order(w, p - n)

    def _pos_market(self, w: Wallet, n: int, p: int) -> tuple[int, int]:
        """(pool index, outcome 0/1) of the fill at position p."""
        if p < n:
            a = n - 1 - p
            return self._added[w.index][1][a], (self._ad(w.index, a)[8] >> 1) & 1
        _, ld, _ = self._leader(w, p - n)
        return min(self._market_index(ld), len(self._market_info) - 1), (ld[8] >> 1) & 1

    def k_range(
        self, w: Wallet, start_time: int | None, end_time: int | None, view: int | None = None
    ) -> range:
        """The positions with start_time <= timestamp <= end_time, by binary search."""
        n = self.added_count(w) if view is None else view
        total = w.count + n
        lo = 0 if end_time is None else self._first_k(w, n, total, lambda ts: ts <= end_time)
        hi = total if start_time is None else self._first_k(w, n, total, lambda ts: ts < start_time)
        return range(lo, max(lo, hi))

    def _first_k(self, w: Wallet, n: int, total: int, pred: Any) -> int:
        """The first position whose timestamp satisfies pred (timestamps never rise with it)."""
        lo, hi = 0, total
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(self._pos_ts(w, n, mid)):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _k_matches(self, w: Wallet, n: int, ks: range, market_filter: tuple[str, str]) -> list[int]:
        """Positions in ks whose market matches (condition_id|market_slug|token_id, value)."""
        key, value = market_filter
        out = []
        for p in ks:
            j, outcome = self._pos_market(w, n, p)
            market = self._market_info[j]
            if key == "condition_id":
                hit = market.condition_id == value.lower()
            elif key == "market_slug":
                hit = market.market_slug == value
            else:
                hit = market.tokens[outcome] == value
            if hit:
                out.append(p)
        return out

    def orders_view(self, address: str) -> int:
        """The view a first page is served from: the wallet's added-fill count right now."""
        w = self.wallet(address)
        return 0 if w is None else self.added_count(w)

    def orders_page(
        self,
        address: str,
        offset: int,
        limit: int,
        start_time: int | None = None,
        end_time: int | None = None,
        market_filter: tuple[str, str] | None = None,
        view: int | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a wallet's fills, newest first, and the filtered total: O(limit) work.

        view: how many added fills the page sees (default all): a pagination key carries the
        view of its first page, so a walk begun before an add_trades continues exactly as if
        there had been none (the fills added meanwhile show up on the next walk).
        """
        w = self.wallet(address)
        if w is None:
            return [], 0
        n = self.added_count(w) if view is None else min(view, self.added_count(w))
        ks = self.k_range(w, start_time, end_time, n)
        if market_filter is not None:
            matched = self._k_matches(w, n, ks, market_filter)
            page = matched[offset : offset + limit]
            return [self._pos_order(w, n, p) for p in page], len(matched)
        return [self._pos_order(w, n, p) for p in ks[offset : offset + limit]], len(ks)

    def orders(self, address: str) -> list[dict[str, Any]]:
        """Every fill of a wallet, newest first, exactly as the API pages them (the truth)."""
        w = self.wallet(address)
        if w is None:
            return []
        n = self.added_count(w)
        return [self._pos_order(w, n, p) for p in range(w.count + n)]

    def iter_orders(self) -> Iterator[dict[str, Any]]:
        """Every fill of every wallet (tests' uniqueness checks); generated lazily."""
        for w in self._wallets:
            n = self.added_count(w)
            for p in range(w.count + n):
                yield self._pos_order(w, n, p)

    # ---- truth -----------------------------------------------------------------------------
    def _traded_indices(self) -> set[int]:
        """The pool indices some fill trades (call with the lock held; kept up to date)."""
        if self._traded_idx is None:
            indices: set[int] = set()
            last = len(self._market_info) - 1
            for w in self._wallets:
                for k in range(w.count):
                    lead, ld, _ = self._leader(w, k)
                    if lead == k:
                        indices.add(min(self._market_index(ld), last))
            for _, markets in self._added.values():
                indices.update(markets)
            self._traded_idx = indices
        return self._traded_idx

    def _traded_sets(self) -> tuple[frozenset[str], frozenset[str]]:
        with self._lock:
            if self._traded is None:
                indices = self._traded_indices()
                cids = frozenset(self._market_info[j].condition_id for j in indices)
                slugs = frozenset(
                    self._market_dicts[j]["event_slug"]
                    for j in indices
                    if "event_slug" in self._market_dicts[j]
                )
                self._traded = (cids, slugs)
            return self._traded

    def traded_condition_ids(self) -> set[str]:
        """The distinct condition_ids of all fills: the markets a full backfill must land."""
        return set(self._traded_sets()[0])

    def traded_event_slugs(self) -> set[str]:
        """The event_slugs of the traded markets: the events a full backfill must land."""
        return set(self._traded_sets()[1])


def _copy_market(market: dict[str, Any]) -> dict[str, Any]:
    out = dict(market)
    for key in ("side_a", "side_b", "winning_side", "extra_fields"):
        if isinstance(out.get(key), dict):
            out[key] = dict(out[key])
    out["tags"] = list(out["tags"])
    return out


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
