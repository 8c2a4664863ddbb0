"""The Polymarket view of the simulated world: Data API rows, Gamma markets and events, resolutions.

Everything is derived from the same Simulator the Dome API serves (same wallets, fills, markets,
events), so the two contracts always agree:

* A fill becomes a ``/v2/trades`` row of its wallet: size = shares_normalized, side and price as in
  the Dome row, transaction_hash = tx_hash, slug = market_slug, outcome = token_label,
  outcome_index 0/1 (the market's side_a/side_b). It is the wallet's MAKER fill when the Dome
  row's ``user`` is the wallet, its TAKER fill when ``taker`` is. Dust (< 0.01 shares) is never
  served. About 1% of rows (by transaction) are unenriched: ``event_slug`` and ``icon`` are "".
* Gamma: market j has id ``str(510000 + j)``, event g id ``str(20000 + g)``. A few traded markets
  are missing from ``/markets/keyset`` but found by ``/markets/slug/{slug}`` (pool index 2 and
  ~2% by digest), a very few are missing from Gamma altogether (pool index 5 and ~0.8%): they are
  left out of their event's ``markets`` too. The Dome view keeps every market.
* Resolutions: a closed market with a winning side pays [1000000, 0] or [0, 1000000] micro-USDC
  per share (side_a first); about half of the closed markets without a winner resolved 50/50
  [500000, 500000]; the rest, and open markets, are unresolved (payouts null).
* The feed trails the chain by ``lag_seconds``: fills newer than ``now - lag`` are not served.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from simulator.data import DAY, EXTRA_FIELD, Simulator, Wallet

THREE_YEARS = 3 * 365 * DAY
DUST_SHARES = 10_000  # raw shares: below this a fill is < 0.01 shares, never served
MARKET_ID_BASE = 510_000
EVENT_ID_BASE = 20_000
KEYSET_MISSING_INDEX = 2  # always missing from /markets/keyset (when the pool is that large)
GAMMA_MISSING_INDEX = 5  # always missing from Gamma altogether
_NAMES = ("Otter", "Heron", "Falcon", "Badger", "Lynx", "Marten", "Ibis", "Puffin", "Wombat")
_MOODS = ("Brisk", "Quiet", "Lucky", "Sly", "Bold", "Calm", "Witty", "Keen", "Rapid")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def iso_z(ts: int) -> str:
    """2025-01-31T12:00:00Z."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gamma_time(ts: int) -> str:
    """2025-02-01 12:00:00+00 (Gamma's closedTime format)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S+00")


@dataclass(frozen=True)
class TradeFilter:
    """What /v2/trades selects within a wallet's window: every field is part of a cursor."""

    taker_only: bool = True
    filter_type: str = "TOKENS"
    filter_amount: float = 0.01
    side: str | None = None
    conditions: tuple[str, ...] | None = None
    event_ids: tuple[str, ...] | None = None

    def matches(self, wallet: str, order: dict[str, Any], event_id: Callable[[str], str]) -> bool:
        shares = order["shares"]
        if shares < DUST_SHARES:
            return False
        if self.taker_only and order["taker"] != wallet:
            return False
        if self.side is not None and order["side"] != self.side:
            return False
        if self.conditions is not None and order["condition_id"] not in self.conditions:
            return False
        if self.event_ids is not None and event_id(order["condition_id"]) not in self.event_ids:
            return False
        amount = max(self.filter_amount, 0.01)
        # integers: shares are micro-shares, prices thousandths (Dome's grain)
        if self.filter_type == "CASH":
            return shares * round(order["price"] * 1000) >= round(amount * 1e9)
        return shares >= round(amount * 1e6)


class PolymarketView:
    """Reads the Simulator as Polymarket serves it; holds nothing that the world can change."""

    def __init__(self, sim: Simulator, lag_seconds: int) -> None:
        self.sim = sim
        self.lag_seconds = lag_seconds
        seed = sim.config.seed
        self._flags = [_digest(b"pm|%d|%d" % (seed, j)) for j in range(sim.market_count())]
        self._event_ids = {
            e["event_slug"]: str(EVENT_ID_BASE + g) for g, e in enumerate(sim._events)
        }
        self._profiles: dict[str, dict[str, str]] = {}

    # ---- time -------------------------------------------------------------------------------
    def now(self) -> int:
        return self.sim.now()

    def served_until(self) -> int:
        """The newest timestamp /v2/trades serves right now."""
        return self.sim.now() - self.lag_seconds

    # ---- market flags --------------------------------------------------------------------------
    def gamma_missing(self, j: int) -> bool:
        """Missing from Gamma altogether (keyset and slug lookups, event market lists)."""
        return j == GAMMA_MISSING_INDEX or self._flags[j][1] < 2

    def keyset_missing(self, j: int) -> bool:
        """Missing from /markets/keyset only: /markets/slug/{slug} finds it."""
        if self.gamma_missing(j):
            return True
        return j == KEYSET_MISSING_INDEX or self._flags[j][0] < 5

    def market_index(self, condition_id: str) -> int | None:
        return self.sim._by_condition.get(condition_id.lower())

    def event_id_of(self, condition_id: str) -> str:
        j = self.market_index(condition_id)
        slug = None if j is None else self.sim._market_dicts[j].get("event_slug")
        return "" if slug is None else self._event_ids[slug]

    # ---- rows ---------------------------------------------------------------------------------
    def profile(self, wallet: str) -> dict[str, str]:
        found = self._profiles.get(wallet)
        if found is None:
            d = _digest(b"profile|" + wallet.encode())
            pseudonym = f"{_MOODS[d[0] % len(_MOODS)]}-{_NAMES[d[1] % len(_NAMES)]}"
            image = "" if d[2] < 128 else f"https://img.example.invalid/profiles/{wallet}.png"
            found = {
                "name": "" if d[3] < 160 else f"{pseudonym.lower()}{d[4]}",
                "pseudonym": pseudonym,
                "bio": "" if d[5] < 200 else "Trading since the last cycle.",
                "profile_image": image,
                "profile_image_optimized": image.replace(".png", "-256.webp"),
            }
            self._profiles[wallet] = found
        return found

    def row(self, wallet: str, order: dict[str, Any]) -> dict[str, Any]:
        """The /v2/trades row of one Dome order of `wallet` (every field, in the doc's order)."""
        j = self.sim._by_condition[order["condition_id"]]
        market = self.sim._market_dicts[j]
        unenriched = int(order["tx_hash"][2:4], 16) < 3 and not self.gamma_missing(j)
        profile = self.profile(wallet)
        return {
            "proxy_wallet": wallet,
            "side": order["side"],
            "token_id": order["token_id"],
            "condition_id": order["condition_id"],
            "size": order["shares_normalized"],
            "price": order["price"],
            "timestamp": order["timestamp"],
            "title": order["title"],
            "slug": order["market_slug"],
            "icon": "" if unenriched else market["image"],
            "event_slug": "" if unenriched else market.get("event_slug", ""),
            "outcome": order.get("token_label", ""),
            "outcome_index": 0 if order["token_id"] == market["side_a"]["id"] else 1,
            **profile,
            "transaction_hash": order["tx_hash"],
            **({EXTRA_FIELD[0]: EXTRA_FIELD[1]} if self.sim.config.extra_fields else {}),
        }

    def window(self, w: Wallet, view: int, start: int, end: int) -> range:
        """Positions of wallet w (view = its added-fill snapshot) with start <= ts <= end."""
        return self.sim.k_range(w, start, end, view)

    def scan(
        self, w: Wallet, view: int, positions: Iterable[int], filt: TradeFilter
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position, row) of every served fill in positions, in their order."""
        wallet = w.address
        for p in positions:
            order = self.sim._pos_order(w, view, p)
            if filt.matches(wallet, order, self.event_id_of):
                yield p, self.row(wallet, order)

    def wallet_rows(self, wallet: str) -> list[dict[str, Any]]:
        """What a complete backfill of this wallet must land: taker_only=false, start=1, up to
        now - lag, no dust (the truth)."""
        w = self.sim.wallet(wallet)
        if w is None:
            return []
        view = self.sim.added_count(w)
        positions = self.window(w, view, 1, self.served_until())
        return [row for _, row in self.scan(w, view, positions, TradeFilter(taker_only=False))]

    # ---- Gamma ---------------------------------------------------------------------------------
    def gamma_market(self, j: int) -> dict[str, Any]:
        m = self.sim._market_dicts[j]
        closed = m["status"] == "closed"
        winner = m["winning_side"]
        resolution = self.resolution_at(j)
        if winner is not None:
            prices = ["1", "0"] if winner["id"] == m["side_a"]["id"] else ["0", "1"]
        elif resolution["resolved"]:
            prices = ["0.5", "0.5"]
        else:
            a = 1 + self._flags[j][3] % 98
            prices = [f"{a / 100:g}", f"{(100 - a) / 100:g}"]
        slug = m.get("event_slug")
        events = []
        if slug is not None:
            g = self.sim._event_index[slug]
            events = [
                {"id": self._event_ids[slug], "slug": slug, "title": self.sim._events[g]["title"]}
            ]
        uma = "resolved" if resolution["resolved"] else ("proposed" if closed else None)
        out: dict[str, Any] = {
            "id": str(MARKET_ID_BASE + j),
            "question": m["title"],
            "conditionId": m["condition_id"],
            "slug": m["market_slug"],
            "description": m["description"],
            "startDate": iso_z(m["start_time"]),
            "endDate": iso_z(m["end_time"]),
            "image": m["image"],
            "icon": m["image"],
            "outcomes": json.dumps([m["side_a"]["label"], m["side_b"]["label"]]),
            "outcomePrices": json.dumps(prices),
            "clobTokenIds": json.dumps([m["side_a"]["id"], m["side_b"]["id"]]),
            "volume": str(m["volume_total"]),
            "volumeNum": m["volume_total"],
            "active": True,
            "closed": closed,
            "archived": False,
            "negRisk": m["negative_risk_id"] is not None,
            "umaResolutionStatus": uma,
            "events": events,
        }
        if closed:
            out["closedTime"] = gamma_time(m["completed_time"] or m["end_time"])
        return out

    def gamma_market_indices(self, keyset: bool) -> list[int]:
        """Pool indices Gamma knows: the keyset listing's, or the slug/id lookups'."""
        missing = self.keyset_missing if keyset else self.gamma_missing
        return [j for j in range(self.sim.market_count()) if not missing(j)]

    def market_by_slug(self, slug: str) -> int | None:
        for j, info in enumerate(self.sim._market_info):
            if info.market_slug == slug:
                return None if self.gamma_missing(j) else j
        return None

    def market_by_id(self, market_id: str) -> int | None:
        if not market_id.isdigit():
            return None
        j = int(market_id) - MARKET_ID_BASE
        ok = 0 <= j < self.sim.market_count() and not self.gamma_missing(j)
        return j if ok else None

    def event_closed(self, g: int) -> bool:
        return self.sim._events[g]["status"] == "closed"

    def gamma_event(self, g: int) -> dict[str, Any]:
        e = self.sim._events[g]
        slug = e["event_slug"]
        members = self.sim._event_members[slug]
        markets = [self.gamma_market(j) for j in members if not self.gamma_missing(j)]
        return {
            "id": self._event_ids[slug],
            "slug": slug,
            "title": e["title"],
            "description": f"{e['title']}: {e['market_count']} market(s).",
            "startDate": iso_z(e["start_time"]),
            "endDate": iso_z(e["end_time"]),
            "image": e["image"],
            "active": True,
            "closed": e["status"] == "closed",
            "archived": False,
            "negRisk": any(m["negRisk"] for m in markets),
            "volume": e["volume_fiat_amount"],
            "tags": [
                {
                    "id": str(int.from_bytes(_digest(t.encode())[:3], "big")),
                    "label": t.title(),
                    "slug": t,
                }
                for t in e["tags"]
            ],
            "markets": markets,
        }

    def event_by_slug(self, slug: str) -> int | None:
        return self.sim._event_index.get(slug)

    def event_by_id(self, event_id: str) -> int | None:
        if not event_id.isdigit():
            return None
        g = int(event_id) - EVENT_ID_BASE
        return g if 0 <= g < self.sim.event_count() else None

    # ---- resolutions ---------------------------------------------------------------------------
    def resolution_at(self, j: int) -> dict[str, Any]:
        m = self.sim._market_dicts[j]
        winner = m["winning_side"]
        payouts: list[int] | None = None
        if m["status"] == "closed":
            if winner is not None:
                payouts = [1_000_000, 0] if winner["id"] == m["side_a"]["id"] else [0, 1_000_000]
            elif self._flags[j][2] & 1:
                payouts = [500_000, 500_000]
        return {
            "condition_id": m["condition_id"],
            "resolved": payouts is not None,
            "payouts": payouts,
        }

    # ---- truth ---------------------------------------------------------------------------------
    def truth(self, rows: bool = True) -> dict[str, Any]:
        """What a complete Polymarket backfill must land (call with the simulator's lock held)."""
        sim = self.sim
        wallets: dict[str, Any] = {}
        traded: set[int] = set()
        total = 0
        for address in sim.wallet_addresses():
            wallet_rows = self.wallet_rows(address)
            total += len(wallet_rows)
            traded.update(sim._by_condition[r["condition_id"]] for r in wallet_rows)
            wallets[address] = {"count": len(wallet_rows)}
            if rows:
                wallets[address]["rows"] = wallet_rows
        indices = sorted(traded)
        found = [j for j in indices if not self.gamma_missing(j)]
        event_slugs = {sim._market_dicts[j].get("event_slug") for j in indices} - {None}
        events = sorted(sim._event_index[s] for s in event_slugs)
        return {
            "source": "polymarket",
            "now": self.now(),
            "lag_seconds": self.lag_seconds,
            "served_until": self.served_until(),
            "totals": {
                "wallets": len(wallets),
                "trades": total,
                "markets": len(found),
                "missing_markets": len(indices) - len(found),
                "events": len(events),
            },
            "wallets": wallets,
            "markets": [self.gamma_market(j) for j in found],
            "keyset_missing_markets": [
                sim._market_info[j].condition_id for j in found if self.keyset_missing(j)
            ],
            "missing_markets": [
                sim._market_info[j].condition_id for j in indices if self.gamma_missing(j)
            ],
            "events": [self.gamma_event(g) for g in events],
            "resolutions": [self.resolution_at(j) for j in indices],
        }

    def wallet_truth(self, wallet: str) -> dict[str, Any]:
        rows = self.wallet_rows(wallet)
        return {
            "wallet": wallet.lower(),
            "source": "polymarket",
            "trade_count": len(rows),
            "rows": rows,
        }
