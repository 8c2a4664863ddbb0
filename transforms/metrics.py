"""The job's counters: one namespace, counted from any thread, and the source client's telemetry.

Every step counts under `NAMESPACE`; `pipeline/run.py` reads the counters back by it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from apache_beam.metrics import Metrics

from pipeline.sources.http import Telemetry

NAMESPACE = "backfill"
UNKNOWN_FIELD = "unknown_field:"  # + kind:name, the count of one field the parser does not know
NAMED_FIELDS = 20  # per kind and process; the others are counted under OTHER_FIELDS
OTHER_FIELDS = "(others)"
log = logging.getLogger(__name__)


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


class CountingTelemetry(Telemetry):
    """The client's requests, retries, refusals and unknown fields, as counts."""

    def __init__(self) -> None:
        self.counters = ThreadCounters()
        self._named: set[tuple[str, str]] = set()  # unknown fields logged already
        self._lock = threading.Lock()

    def request(self, endpoint: str) -> None:
        self.counters.add("requests")
        self.counters.add(f"requests_{endpoint}")

    def retry(self, endpoint: str, reason: str) -> None:
        self.counters.add("retries")

    def throttled(self, endpoint: str, status: int) -> None:
        self.counters.add("http_429" if status == 429 else f"http_{status}_retry_after")

    def slowed(self, endpoint: str) -> None:
        self.counters.add("slowdowns")

    def unknown_fields(self, kind: str, counts: Counter[str]) -> None:
        """Counted per field (UNKNOWN_FIELD + kind:name), the first NAMED_FIELDS names of a
        kind, the rest together (a server could send any number), and each named in the log
        once per process: a count alone told nobody which field the API had added (Polymarket's
        rows keep it in `extra`; Dome's drop it)."""
        with self._lock:
            new = sorted(name for name in counts if (kind, name) not in self._named)
            room = NAMED_FIELDS - sum(1 for known, _ in self._named if known == kind)
            new = new[: max(room, 0)]  # past the cap, never named: nor logged again and again
            self._named.update((kind, name) for name in new)
            named = {name for known, name in self._named if known == kind}
        for name, amount in counts.items():
            label = name if name in named else OTHER_FIELDS
            self.counters.add(f"{UNKNOWN_FIELD}{kind}:{label}", amount)
        if new:
            log.warning("%s: fields the parser does not know: %s", kind, ", ".join(new))

    def outside_window(self, endpoint: str, rows: int) -> None:
        self.counters.add(f"{endpoint}_outside_window", rows)

    def malformed(self, kind: str, items: int) -> None:
        self.counters.add(f"{kind}_malformed", items)
