"""FetchTrades: each wallet's whole history, page by page, and one outcome per wallet.

It also decides when to stop starting wallets: when the source looks gone (RunHealth: a streak of
wallets failing as if refused or unreachable) or when the run's time budget is spent. A wallet not
started, or held when the source looked gone, gets no outcome: it stays pending for the next run.
A run too small for the streak is judged whole, once every worker is done (SourceVerdict): if the
source answered none of its wallets, the ones still held are dropped and the run stops all the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList, AsSingleton

from pipeline.rows import outcome_row
from pipeline.schema import format_timestamp
from pipeline.sources.errors import SourceError
from transforms.api import ApiHandle
from transforms.concurrent import ConcurrentFetchFn, Emit
from transforms.metrics import NAMESPACE
from transforms.run_health import Attempts, RunHealth, SourceVerdict

log = logging.getLogger(__name__)

OUTCOMES = "outcomes"
MARKET_REFS = "market_refs"
EVENT_SLUGS = "event_slugs"
RUN_FAILURES = "run_failures"  # why a worker stopped the run (the source looks gone), once each
HELD = "held"  # failed outcomes held at a bundle's end: failures unless the run's source is gone
ATTEMPTS = "attempts"  # what each bundle's wallets told about the source (Attempts)
GONE_TEMPLATE = (
    "all {gone} wallets the run tried failed as if the source were gone, none got an answer; "
    "the last: {last}"
)
SEEN_CAP = 200_000  # keys a worker remembers having named; past it, it forgets and starts again


class FirstSeen:
    """The keys this worker has not named yet, of those given: a cheap filter in front of the
    run-wide dedup (DedupFirst), so that each market or event travels once per worker instead of
    once per page. Thread-safe; bounded (forgetting only lets a repeat through to the dedup)."""

    def __init__(self, cap: int = SEEN_CAP) -> None:
        self._cap = cap
        self._seen: set[Any] = set()
        self._lock = threading.Lock()

    def new(self, keys: Iterable[Any], key=lambda item: item) -> list[Any]:
        out = []
        with self._lock:
            for item in keys:
                k = key(item)
                if k not in self._seen:
                    if len(self._seen) >= self._cap:
                        self._seen.clear()
                    self._seen.add(k)
                    out.append(item)
        return out


class _FetchWalletFn(ConcurrentFetchFn):
    """Main output: one list of trade rows per page; an API failure is an outcome, never a crash."""

    def __init__(
        self,
        api: ApiHandle,
        run_id: str,
        source_name: str,
        trades_folder: str,
        threads: int,
        deadline: float | None = None,
    ) -> None:
        super().__init__(api, threads)
        self._run_id, self._source, self._trades_folder = run_id, source_name, trades_folder
        self._deadline = deadline

    def setup(self) -> None:
        super().setup()
        # One per instance, shared by its threads: the streak is what this worker saw in a row.
        self.health = RunHealth()
        self._markets_named, self._events_named = FirstSeen(), FirstSeen()

    def should_start(self) -> bool:
        if self.health.stopped is not None:
            return False
        return self._deadline is None or time.time() < self._deadline

    def not_started(self, element: Any) -> None:
        self.counters.add("wallets_not_started")

    def end_of_bundle(self) -> Iterable[tuple[str | None, Any]]:
        # Held outcomes are not failures yet: only the run's whole tally can say (FetchTrades).
        held, attempts = self.health.end_bundle()
        outputs: list[tuple[str | None, Any]] = [(HELD, row) for row in held]
        if attempts:
            outputs.append((ATTEMPTS, attempts))
        return outputs

    def _outcomes(self, rows: list[dict]) -> list[tuple[str | None, Any]]:
        """Outcomes to emit now, counted as they become final."""
        for row in rows:
            self.counters.add("wallets_fetched" if row["upload_successful"] else "wallets_failed")
        return [(OUTCOMES, row) for row in rows]

    def fetch(self, request: tuple[str, int | None], emit: Emit) -> None:
        wallet, start_time = request
        count, newest, failure = 0, None, None
        try:
            for rows in self.api.source.trade_pages(wallet, start_time):
                if not rows:
                    continue
                emit(None, rows)
                refs = sorted({(r["condition_id"], r["market_slug"]) for r in rows})
                refs = self._markets_named.new(refs, key=lambda ref: ref[0])
                slugs = self._events_named.new(
                    sorted({r["event_slug"] for r in rows if r.get("event_slug")})
                )
                if refs:
                    emit(MARKET_REFS, refs)
                if slugs:
                    emit(EVENT_SLUGS, slugs)
                count += len(rows)
                page_newest = max(row["timestamp"] for row in rows)
                newest = page_newest if newest is None else max(newest, page_newest)
                self.counters.add("trades", len(rows))
        except SourceError as exc:
            failure = exc
            log.warning("wallet %s failed: %s", wallet, exc)
        outcome = outcome_row(
            wallet,
            run_id=self._run_id,
            processed_at=format_timestamp(time.time()),
            trade_count=count,
            last_trade_ts=newest,
            error=None if failure is None else str(failure),
            gcs_file=self._trades_folder,
            fetched_from=start_time,
            source=self._source,
        )
        if failure is None:
            ready = [outcome, *self.health.succeeded()]
        else:
            ready = self.health.failed(failure, outcome)
        for tag, row in self._outcomes(ready):
            emit(tag, row)
        reason = self.health.announce()
        if reason is not None:
            log.error("stopping the run: %s", reason)
            self.counters.add("run_stopped")
            emit(RUN_FAILURES, reason)


def _failed_unless_gone(row: dict, attempts: Attempts) -> Iterator[dict]:
    """A held outcome is the wallet's failure if the source answered anyone in the run; if it
    answered no one, the wallet gets no outcome and stays pending."""
    if not attempts.source_gone:
        Metrics.counter(NAMESPACE, "wallets_failed").inc()
        yield row


def _unless_stopped(reason: str, streaks: list[str]) -> Iterator[str]:
    """The run-wide reason only where no worker's streak already stopped the run (it says more:
    the wallets in a row); the run-wide one is for runs too small for a streak."""
    if not streaks:
        yield reason


class FetchTrades(beam.PTransform):
    """(wallet, start_time) requests -> `trade_pages` (lists of trade rows), `outcomes` (one row per
    wallet), `market_refs` ((condition_id, slug) pairs), `event_slugs` (strings) and
    `run_failures` (why the run stopped, if the source looked gone; else empty): a worker's streak,
    or the whole run's wallets failing as if the source were gone with not one answered.

    Each outcome names `trades_folder` (where the run stages trades) and the source it came from.
    No wallet starts after `deadline` (unix seconds; None: no time budget).
    """

    def __init__(
        self,
        api: ApiHandle,
        run_id: str,
        source_name: str,
        trades_folder: str,
        threads: int,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        self._fn = _FetchWalletFn(api, run_id, source_name, trades_folder, threads, deadline)

    def expand(self, wallets):
        fetched = wallets | "FetchPages" >> beam.ParDo(self._fn).with_outputs(
            OUTCOMES, MARKET_REFS, EVENT_SLUGS, RUN_FAILURES, HELD, ATTEMPTS, main="trade_pages"
        )
        verdict = fetched[ATTEMPTS] | "SourceVerdict" >> SourceVerdict(GONE_TEMPLATE)
        held = fetched[HELD] | "FailedUnlessGone" >> beam.FlatMap(
            _failed_unless_gone, AsSingleton(verdict["total"])
        )
        run_wide = verdict["reasons"] | "UnlessStopped" >> beam.FlatMap(
            _unless_stopped, AsList(fetched[RUN_FAILURES])
        )
        return {
            "trade_pages": fetched.trade_pages,
            OUTCOMES: (fetched[OUTCOMES], held) | "AllOutcomes" >> beam.Flatten(),
            MARKET_REFS: fetched[MARKET_REFS] | "OnePerRef" >> beam.FlatMap(lambda refs: refs),
            EVENT_SLUGS: fetched[EVENT_SLUGS] | "OnePerSlug" >> beam.FlatMap(lambda slugs: slugs),
            RUN_FAILURES: (fetched[RUN_FAILURES], run_wide) | "AllRunFailures" >> beam.Flatten(),
        }
