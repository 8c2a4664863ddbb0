"""One Dome client per worker process, shared by every fetching DoFn, with its counts for Metrics.

The rate limit belongs to the API key, so the orders, markets and events steps of one process must
draw from one limiter: a `Shared` handle, pickled into each DoFn, gives them the same client.
"""

from __future__ import annotations

import threading
from collections import Counter

from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from pipeline.api_key import load_api_key
from pipeline.dome.client import ClientEvents, DomeClient
from pipeline.dome.limiter import RateLimiter
from pipeline.options import BackfillConfig

NAMESPACE = "backfill"


class ThreadCounters:
    """Counts from any thread; the bundle's thread moves them into Beam counters with `flush`.

    Beam's Metrics record only on the thread that runs the bundle, and fetching happens on other
    threads, so counts wait here until the bundle's thread calls `flush`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        for name, amount in counts.items():
            Metrics.counter(NAMESPACE, name).inc(amount)


class CountingEvents(ClientEvents):
    """The client's events (requests, retries, 429s, unknown fields) as counts."""

    def __init__(self) -> None:
        self.counters = ThreadCounters()

    def request(self, endpoint: str) -> None:
        self.counters.add("requests")
        self.counters.add(f"requests_{endpoint}")

    def retry(self, endpoint: str, reason: str) -> None:
        self.counters.add("retries")

    def throttled(self, endpoint: str) -> None:
        self.counters.add("http_429")

    def unknown_fields(self, kind: str, counts: Counter[str]) -> None:
        self.counters.add(f"unknown_fields_{kind}", sum(counts.values()))


class ProcessApi:
    """What a process shares: the client (session + limiter) and its event counts."""

    def __init__(self, config: BackfillConfig) -> None:
        self.events = CountingEvents()
        limiter = RateLimiter(config.process_rate_limit)
        self.client = DomeClient(
            config.client, load_api_key(config.api_key_secret), limiter, self.events
        )


class ApiHandle:
    """Picklable; `acquire()` in `DoFn.setup` returns the process's one ProcessApi."""

    def __init__(self, config: BackfillConfig) -> None:
        self._config = config
        self._shared = Shared()

    def acquire(self) -> ProcessApi:
        return self._shared.acquire(lambda: ProcessApi(self._config), tag=repr(self._config))
