"""FetchTrades: each wallet's whole history, page by page, and one outcome per wallet.

It also decides when to stop starting wallets: when the source looks gone (RunHealth: a streak of
wallets failing as if refused or unreachable) or when the run's time budget is spent. A wallet not
started, or held when the source looked gone, gets no outcome: it stays pending for the next run.
A run too small for the streak is judged whole, once every worker is done (SourceVerdict): if the
source answered none of its wallets, the ones still held are dropped and the run stops all the same.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList, AsSingleton, TaggedOutput

from pipeline.rows import outcome_row
from pipeline.schema import format_timestamp
from pipeline.sources.errors import SourceError
from transforms.api import ApiHandle
from transforms.concurrent import ConcurrentFetchFn, Emit
from transforms.lookups import (
    ATTEMPTS,
    EVENTS,
    MARKETS,
    MISSING,
    Lookups,
    LookupSettings,
    LookupSpec,
    ReadLookupPlan,
)
from transforms.lookups import GONE_TEMPLATE as LOOKUPS_GONE_TEMPLATE
from transforms.metrics import NAMESPACE
from transforms.run_health import Attempts, RunHealth, SourceVerdict

log = logging.getLogger(__name__)

OUTCOMES = "outcomes"
RUN_FAILURES = "run_failures"  # why a worker stopped the run (the source looks gone), once each
LOOKUP_FAILURES = (
    "lookup_failures"  # every markets (events) batch failed as if the source were gone
)
HELD = "held"  # failed outcomes held at a bundle's end: failures unless the run's source is gone
WALLETS = "wallets"  # the kind of a bundle's wallets' attempts ({WALLETS: Attempts} under ATTEMPTS)
# One element besides the wallets: where the keys production wants whoever names them are queued,
# once per run (also when no wallet is fetched at all).
LOOKUPS_START = None
GONE_TEMPLATE = (
    "all {gone} wallets the run tried failed as if the source were gone, none got an answer; "
    "the last: {last}"
)


class _FetchWalletFn(ConcurrentFetchFn):
    """Main output: one list of trade rows per page; an API failure is an outcome, never a crash.

    With `lookups`, the markets and events the pages name are looked up here too, as the pages
    come (transforms/lookups.py says why): the plan of what production holds is read as the
    stage starts, and the bundle ends once its lookups have."""

    def __init__(
        self,
        api: ApiHandle,
        run_id: str,
        source_name: str,
        trades_folder: str,
        threads: int,
        deadline: float | None = None,
        lookups: LookupSpec | None = None,
    ) -> None:
        super().__init__(api, threads)
        self._run_id, self._source, self._trades_folder = run_id, source_name, trades_folder
        self._deadline = deadline
        self._lookup_spec = lookups

    def setup(self) -> None:
        super().setup()
        # One per instance, shared by its threads: the streak is what this worker saw in a row.
        self.health = RunHealth()
        self.lookups: Lookups | None = None
        if self._lookup_spec is not None:
            self.lookups = Lookups(self._lookup_spec, self.api.source, self.counters)

    def teardown(self) -> None:
        if getattr(self, "lookups", None) is not None:
            self.lookups.close()
        super().teardown()

    def start_bundle(self) -> None:
        super().start_bundle()
        if self.lookups is not None:
            self.lookups.start_bundle()

    def process(self, element: Any) -> Iterator[Any]:
        if element is LOOKUPS_START:
            if self.lookups is not None:
                self.lookups.start()
        else:
            yield from super().process(element)
        yield from self._lookup_outputs(self.lookups.take() if self.lookups else (), False)

    def finish_bundle(self) -> Iterator[Any]:
        if self.lookups is None:
            yield from super().finish_bundle()
            return
        self.lookups.drain()  # no wallet starts any more: partial batches need not wait to fill
        yield from super().finish_bundle()
        yield from self._lookup_outputs(self.lookups.wait(), True)
        self.api.telemetry.counters.flush()
        self.counters.flush()

    def _lookup_outputs(self, outputs: Iterable[tuple[str, Any]], windowed: bool) -> Iterator[Any]:
        for tag, value in outputs:
            yield TaggedOutput(tag, self._windowed(value) if windowed else value)

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
            outputs.append((ATTEMPTS, {WALLETS: attempts}))
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
                if self.lookups is not None:
                    refs = sorted({(r["condition_id"], r["market_slug"]) for r in rows})
                    self.lookups.named(MARKETS, refs)
                    slugs = sorted({r["event_slug"] for r in rows if r.get("event_slug")})
                    self.lookups.named(EVENTS, slugs)
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
            if count == 0 and start_time is None:
                # Landed done with nothing: true of a wallet that never traded, and of every
                # wallet if the source matched `user` in another case than the lowercase sent
                # (undocumented): the run's summary shows how many, so the second stands out.
                self.counters.add("wallets_empty")
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


def _failed_unless_gone(row: dict, total: dict[str, Attempts]) -> Iterator[dict]:
    """A held outcome is the wallet's failure if the source answered any wallet in the run; if
    it answered none, the wallet gets no outcome and stays pending."""
    if not total.get(WALLETS, Attempts()).source_gone:
        Metrics.counter(NAMESPACE, "wallets_failed").inc()
        yield row


def _unless_stopped(reason: str, streaks: list[str]) -> Iterator[str]:
    """The run-wide reason only where no worker's streak already stopped the run (it says more:
    the wallets in a row); the run-wide one is for runs too small for a streak."""
    if not streaks:
        yield reason


class FetchTrades(beam.PTransform):
    """(wallet, start_time) requests -> `trade_pages` (lists of trade rows), `outcomes` (one row per
    wallet) and `run_failures` (why the run stopped, if the source looked gone; else empty): a
    worker's streak, or the whole run's wallets failing as if the source were gone with not one
    answered.

    With `lookups`, also what the trades name, looked up while the trades are fetched
    (transforms/lookups.py): `markets` and `events` rows, `missing` rows (keys the source has
    not got) and `lookup_failures` (one reason per kind whose every batch failed as if the source
    were gone; else empty). Without, those are empty.

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
        lookups: LookupSettings | None = None,
    ) -> None:
        super().__init__()
        self._lookups = lookups
        spec = None
        if lookups is not None:
            # A fresh tag per graph: each process's claims are this run's only.
            tag = f"lookups-{run_id}-{uuid.uuid4().hex}"
            read_plan = ReadLookupPlan(lookups.warehouse, lookups.policy, lookups.staged_plan)
            spec = LookupSpec(
                lookups.markets_per_batch, lookups.events_per_batch, threads, tag, read_plan
            )
        self._fn = _FetchWalletFn(
            api, run_id, source_name, trades_folder, threads, deadline, lookups=spec
        )

    def expand(self, wallets):
        if self._lookups is not None:
            start = wallets.pipeline | "LookupsStart" >> beam.Create([LOOKUPS_START])
            wallets = (start, wallets) | "AndLookupsStart" >> beam.Flatten()
        fetched = wallets | "FetchPages" >> beam.ParDo(self._fn).with_outputs(
            OUTCOMES,
            RUN_FAILURES,
            HELD,
            ATTEMPTS,
            MARKETS,
            EVENTS,
            MISSING,
            main="trade_pages",
        )
        # The wallets' and the lookups' attempts, summed by kind over the whole run.
        verdict = fetched[ATTEMPTS] | "SourceVerdict" >> SourceVerdict(
            {
                WALLETS: GONE_TEMPLATE,
                **{kind: LOOKUPS_GONE_TEMPLATE.format(kind=kind) for kind in (MARKETS, EVENTS)},
            }
        )
        held = fetched[HELD] | "FailedUnlessGone" >> beam.FlatMap(
            _failed_unless_gone, AsSingleton(verdict["total"])
        )
        run_wide = verdict[WALLETS] | "UnlessStopped" >> beam.FlatMap(
            _unless_stopped, AsList(fetched[RUN_FAILURES])
        )
        return {
            "trade_pages": fetched.trade_pages,
            OUTCOMES: (fetched[OUTCOMES], held) | "AllOutcomes" >> beam.Flatten(),
            RUN_FAILURES: (fetched[RUN_FAILURES], run_wide) | "AllRunFailures" >> beam.Flatten(),
            MARKETS: fetched[MARKETS],
            EVENTS: fetched[EVENTS],
            MISSING: fetched[MISSING],
            # Why the lookups fail the run: every batch of a kind failed as if the source were gone.
            LOOKUP_FAILURES: (verdict[MARKETS], verdict[EVENTS])
            | "LookupFailures" >> beam.Flatten(),
        }
