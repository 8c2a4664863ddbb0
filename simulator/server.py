"""The running simulator: SimServer (the HTTP server on a daemon thread, its state and hooks) and serve().

One port serves two contracts from one seeded world: the Dome API under ``/v1`` (Bearer key,
two-window tiers; simulator/dome_api.py) and Polymarket's Data API v2 (``/v2/*``) and Gamma
(``/markets*``, ``/events*``; no key, per-IP buckets; simulator/polymarket_api.py), plus the test
hooks under ``/_sim/`` (simulator/hooks.py).

/_sim/stats: ``requests`` {orders, markets, events, other, admin}, ``requests_total`` (Dome API
requests, admin calls excluded), ``http_429`` (every Dome 429 sent), ``rate_limited`` (the
limiter's share), ``responses_by_status`` {"200": n, ..., "reset": n}, ``peak_1s``/``peak_10s``
(most Dome arrivals in any 1 s / 10 s window, rejected ones included),
``peak_1s_accepted``/``peak_10s_accepted`` (those the limiter let through), ``faults_injected``
{kind: n}, ``orders_requests_by_wallet``, ``connections`` (TCP connections accepted, hooks
included), ``first_request_at``/``last_request_at`` (unix seconds or null), and ``polymarket``:
``{requests: {trades, status, resolutions, gamma_markets, gamma_markets_slug, gamma_events,
gamma_events_slug, other}, requests_total, responses_by_status, faults_injected,
trades_requests_by_wallet, window_s, buckets: {all|data|trades|gamma|markets|events|listing:
{limit, requests, peak_accepted, http_429, http_503, delayed, delay_seconds}}}`` (a bucket's
``requests`` counts every request it covers, rejected ones included; ``peak_accepted`` the most
accepted arrivals in any window; ``delayed`` the requests held with pm_throttle="delay" by that
bucket and ``delay_seconds`` their total hold).

/_sim/truth (source=dome, the default): ``{"totals": {wallets, trades, markets, events,
traded_markets: [condition_id], traded_events: [event_slug], now}, "wallets": {address: trade
count}, "markets": [...], "events": [...]}``; with ``?wallet=0x..``: ``{"wallet", "trade_count",
"orders": [...]}``.
/_sim/truth?source=polymarket[&rows=false]: ``{"source": "polymarket", "now", "lag_seconds",
"served_until", "totals": {wallets, trades, markets, missing_markets, events}, "wallets":
{address: {"count": n, "rows": [/v2/trades rows, newest first]}}, "markets": [Gamma markets found
by keyset or slug], "keyset_missing_markets": [condition_id found only by slug],
"missing_markets": [condition_id missing from Gamma], "events": [Gamma events of the traded
markets], "resolutions": [{condition_id, resolved, payouts}]}``; with ``&wallet=0x..``:
``{"wallet", "source", "trade_count", "rows"}``. The rows are what /v2/trades serves with
taker_only=false, start=1 and the default end: every non-dust fill up to now - lag.
"""

from __future__ import annotations

import contextlib
import math
import random
import secrets
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from simulator.config import FaultRule, SimConfig
from simulator.data import Simulator
from simulator.dome_api import _scope, decode_key, encode_key
from simulator.faults import FaultEngine
from simulator.http import SimHTTPServer
from simulator.limits import BucketLimiter, DomeLimiter, PmStats, Stats
from simulator.polymarket_api import Signer
from simulator.polymarket_view import PolymarketView

__all__ = ["SimServer", "_scope", "decode_key", "encode_key", "serve"]


class SimServer:
    """A running simulator: the HTTP server on a daemon thread plus the hooks tests drive it by."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.api_key = config.api_key or secrets.token_urlsafe(24)
        self.simulator = Simulator(config)
        self._stats = Stats()
        self._limiter = DomeLimiter(*config.rate_limits())
        self._faults = FaultEngine(config.faults, config.seed)
        self.pm = PolymarketView(self.simulator, config.lag_seconds)
        self._pm_limiter = BucketLimiter(config.bucket_limits(), config.pm_window_s)
        self._pm_stats = PmStats(config.bucket_limits(), config.pm_window_s)
        self._signer = Signer(config.seed)
        self._latency_rng = random.Random(f"latency|{config.seed}")
        self._latency_lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._closed = False
        self._httpd = SimHTTPServer((host, port), self)
        self.host, self.port = self._httpd.server_address[:2]
        self.root_url = f"http://{self.host}:{self.port}"
        self.base_url = f"{self.root_url}/v1"  # Dome
        # Polymarket: the Data API and Gamma are both served from the root.
        self.data_api_url = self.gamma_api_url = self.root_url
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
        """The counters (see GET /_sim/stats): Dome's keys, plus ``polymarket``."""
        return {**self._stats.snapshot(), "polymarket": self._pm_stats.snapshot()}

    def reset_stats(self) -> None:
        self._stats.reset()
        self._pm_stats.reset()

    def set_faults(
        self, rules: str | Iterable[FaultRule | Mapping[str, Any]] | None
    ) -> list[FaultRule]:
        """Replace the fault rules at runtime (a spec string, FaultRules or dicts; [] = none)."""
        return self._faults.set_rules(rules)

    def faults(self) -> list[FaultRule]:
        return self._faults.rules()

    def truth(self, source: str = "dome", rows: bool = True) -> dict[str, Any]:
        """Everything a complete backfill must land (see GET /_sim/truth): the Dome view, or
        with source="polymarket" the Polymarket one (rows=False leaves out the rows)."""
        sim = self.simulator
        with sim._lock:  # one consistent state, even while admin calls come in
            if source == "polymarket":
                return self.pm.truth(rows)
            if source != "dome":
                raise ValueError(f"source must be dome or polymarket, got {source!r}")
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

    def wallet_truth(self, wallet: str, source: str = "dome") -> dict[str, Any]:
        """One wallet's truth: Dome orders, or (source="polymarket") the rows /v2/trades owes."""
        if source == "polymarket":
            with self.simulator._lock:
                return self.pm.wallet_truth(wallet)
        if source != "dome":
            raise ValueError(f"source must be dome or polymarket, got {source!r}")
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
