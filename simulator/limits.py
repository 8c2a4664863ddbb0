"""Rate limiting and counters: Dome's two-window limiter, Polymarket's per-IP buckets, and the stats."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from typing import Any

from simulator.config import FAULT_KINDS, PM_ENDPOINTS


class DomeLimiter:
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


class BucketLimiter:
    """Polymarket's per-IP buckets: sliding windows over accepted arrivals, one per (ip, bucket).

    A request names every bucket that covers it and passes only if all have room; then it is
    counted in all of them. A rejected request costs nothing.
    """

    def __init__(self, limits: Mapping[str, int | None], window: float) -> None:
        self._lock = threading.Lock()
        self._limits = dict(limits)
        self._window = window
        self._arrivals: dict[tuple[str, str], collections.deque[float]] = {}

    def acquire(self, ip: str, buckets: tuple[str, ...], now: float) -> tuple[float, str] | None:
        """None if the request may pass (and is counted), else (seconds to wait, the bucket)."""
        with self._lock:
            wait, worst = 0.0, ""
            queues = []
            for bucket in buckets:
                limit = self._limits.get(bucket)
                if limit is None:
                    continue
                arrivals = self._arrivals.setdefault((ip, bucket), collections.deque())
                while arrivals and arrivals[0] <= now - self._window:
                    arrivals.popleft()
                if len(arrivals) >= limit:
                    need = arrivals[len(arrivals) - limit] + self._window - now
                    if need > wait:
                        wait, worst = need, bucket
                queues.append(arrivals)
            if wait > 0:
                return wait, worst
            for arrivals in queues:
                arrivals.append(now)
            return None


class PmStats:
    """What the Polymarket routes saw: requests per endpoint, statuses, faults and each bucket."""

    def __init__(self, limits: Mapping[str, int | None], window: float) -> None:
        self._lock = threading.Lock()
        self._limits = dict(limits)
        self._window = window
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = dict.fromkeys((*PM_ENDPOINTS, "other"), 0)
            self._statuses: collections.Counter[str] = collections.Counter()
            self._faults = dict.fromkeys(FAULT_KINDS, 0)
            self._by_wallet: collections.Counter[str] = collections.Counter()
            # Unix time of each endpoint's first and last arrival: benches time start-up by them.
            self._first_at: dict[str, float] = {}
            self._last_at: dict[str, float] = {}
            self._buckets = {
                name: {
                    "limit": limit,
                    "requests": 0,
                    "http_429": 0,
                    "http_503": 0,
                    "delayed": 0,
                    "delay_seconds": 0.0,
                }
                for name, limit in self._limits.items()
            }
            self._peaks = {name: _Peak(self._window) for name in self._limits}

    def arrive(self, endpoint: str, buckets: tuple[str, ...], wallet: str | None) -> None:
        at = time.time()
        with self._lock:
            self._requests[endpoint] += 1
            self._first_at.setdefault(endpoint, at)
            self._last_at[endpoint] = at
            for bucket in buckets:
                self._buckets[bucket]["requests"] += 1
            if wallet is not None:
                self._by_wallet[wallet] += 1

    def accept(self, buckets: tuple[str, ...], now: float) -> None:
        with self._lock:
            for bucket in buckets:
                self._peaks[bucket].add(now)

    def throttled(self, bucket: str, status: int) -> None:
        with self._lock:
            self._buckets[bucket][f"http_{status}"] += 1

    def delayed(self, bucket: str, seconds: float) -> None:
        """One request held `seconds` in all, counted against the bucket that was full first."""
        with self._lock:
            entry = self._buckets[bucket]
            entry["delayed"] += 1
            entry["delay_seconds"] += seconds

    def respond(self, status: int | str) -> None:
        with self._lock:
            self._statuses[str(status)] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            buckets = {}
            for name, entry in self._buckets.items():
                buckets[name] = {
                    **entry,
                    "delay_seconds": round(entry["delay_seconds"], 3),
                    "peak_accepted": self._peaks[name].peak,
                }
            return {
                "requests": dict(self._requests),
                "requests_total": sum(self._requests.values()),
                "responses_by_status": dict(sorted(self._statuses.items())),
                "faults_injected": dict(self._faults),
                "trades_requests_by_wallet": dict(sorted(self._by_wallet.items())),
                "first_request_at": dict(self._first_at),
                "last_request_at": dict(self._last_at),
                "window_s": self._window,
                "buckets": buckets,
            }
