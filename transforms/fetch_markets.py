"""FetchMarkets and FetchEvents: what the trades refer to, each key requested once per run.

A failed lookup batch is retried by later runs (its keys stay pending). But when every batch of a
run failed as if the source were gone (RunHealth's classification: refused, unreachable, retries
run out), the run is failed (`run_failures`): it still commits its trades, then exits non-zero, so
that a Gamma API that is gone cannot read as success run after run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import apache_beam as beam

from pipeline.schema import format_timestamp
from pipeline.sources.errors import SourceError
from pipeline.warehouse import WarehouseRef
from transforms.api import ApiHandle
from transforms.batch import BatchPerKey
from transforms.concurrent import ConcurrentFetchFn, Emit
from transforms.dedup import DedupFirst
from transforms.run_health import Attempts, SourceVerdict
from transforms.select_wallets import RefreshPolicy
from transforms.skip_known import SkipKnown

log = logging.getLogger(__name__)

EVENT_SLUGS = "event_slugs"
MISSING = "missing"  # rows of the staged kind "missing" (pipeline.schema.MISSING_COLUMNS)
ATTEMPTS = "attempts"  # one Attempts per batch: whether the source answered it
RUN_FAILURES = "run_failures"  # why the run failed: every lookup batch failed as if it were gone
GONE_TEMPLATE = (
    "{kind}: all {{gone}} lookup batches failed as if the source were gone ({kind} not fetched "
    "stay pending: the next run asks again); the last: {{last}}"
)


class _LookupFn(ConcurrentFetchFn):
    """Looks one batch up; a failed batch is counted and logged, and later runs ask again (its
    keys stay named by production trades and absent from production). A key the source answered
    without is emitted as a `missing` row: the warehouse counts the runs that found it missing,
    and after enough of them no run asks again. A failed batch emits none: a failure says nothing
    about whether the source has the key."""

    def __init__(self, api: ApiHandle, threads: int, kind: str) -> None:
        super().__init__(api, threads)
        self._kind = kind

    def fetch(self, batch: list[Any], emit: Emit) -> None:
        keys = [item[0] if isinstance(item, tuple) else item for item in batch]
        try:
            if self._kind == "markets":
                found = self.api.source.markets(batch)
            else:
                found = self.api.source.events(batch)
        except SourceError as exc:
            self.counters.add(f"{self._kind}_failed", len(keys))
            log.warning("%s %s.. (%d keys) failed: %s", self._kind, keys[0], len(keys), exc)
            emit(ATTEMPTS, Attempts.of(exc))
            return
        emit(ATTEMPTS, Attempts.of(None))
        if found.missing:
            self.counters.add(f"{self._kind}_missing", len(found.missing))
            seen_at = format_timestamp(time.time())
            for key in found.missing:
                emit(MISSING, {"kind": self._kind, "key": key, "seen_at": seen_at})
            log.warning(
                "the source has no %s for %d keys, e.g. %s",
                self._kind,
                len(found.missing),
                found.missing[0],
            )
        self.counters.add(self._kind, len(found.rows))
        for row in found.rows:
            emit(None, row)
        for slug in found.event_slugs:
            emit(EVENT_SLUGS, slug)


class FetchMarkets(beam.PTransform):
    """(condition_id, slug) refs -> market rows (`markets`), the event slugs they name
    (`event_slugs`), a `missing` row per id the source has not got, and `run_failures` (one
    reason if every batch failed as if the source were gone; else empty).

    Each id once per run, none that production holds settled or fresh, a source's batch per
    request (Dome 100, Polymarket 50).
    """

    def __init__(
        self,
        api: ApiHandle,
        warehouse: WarehouseRef,
        policy: RefreshPolicy,
        batch_size: int,
        threads: int,
    ) -> None:
        super().__init__()
        self._warehouse, self._policy, self._batch_size = warehouse, policy, batch_size
        self._fn = _LookupFn(api, threads, "markets")

    def expand(self, refs):
        known = SkipKnown(
            self._warehouse,
            self._policy,
            "read_known_markets",
            "read_unlanded_markets",
            "read_missing_markets",
        )
        fetched = (
            refs
            | "FirstPerId" >> DedupFirst()
            | "SkipKnown" >> known
            # One key: batches stay full; markets are few next to trades.
            | "OneKey" >> beam.WithKeys(lambda _: "markets")
            | "Batch" >> BatchPerKey(self._batch_size)
            | "Fetch"
            >> beam.ParDo(self._fn).with_outputs(EVENT_SLUGS, MISSING, ATTEMPTS, main="markets")
        )
        verdict = fetched[ATTEMPTS] | "SourceVerdict" >> SourceVerdict(
            GONE_TEMPLATE.format(kind="markets")
        )
        return {
            "markets": fetched.markets,
            EVENT_SLUGS: fetched[EVENT_SLUGS],
            MISSING: fetched[MISSING],
            RUN_FAILURES: verdict["reasons"],
        }


class FetchEvents(beam.PTransform):
    """Event slugs (from trades and from markets) -> event rows (`events`), each slug once per
    run, a `missing` row per slug the source has not got, and `run_failures` (one reason if every
    batch failed as if the source were gone; else empty)."""

    def __init__(
        self,
        api: ApiHandle,
        warehouse: WarehouseRef,
        policy: RefreshPolicy,
        batch_size: int,
        threads: int,
    ) -> None:
        super().__init__()
        self._warehouse, self._policy, self._batch_size = warehouse, policy, batch_size
        self._fn = _LookupFn(api, threads, "events")

    def expand(self, slugs):
        known = SkipKnown(
            self._warehouse,
            self._policy,
            "read_known_events",
            "read_unlanded_events",
            "read_missing_events",
        )
        fetched = (
            slugs
            | "Keyed" >> beam.Map(lambda slug: (slug, None))
            | "FirstPerSlug" >> DedupFirst()
            | "SkipKnown" >> known
            | "SlugOnly" >> beam.Map(lambda pair: pair[0])
            | "OneKey" >> beam.WithKeys(lambda _: "events")
            | "Batch" >> BatchPerKey(self._batch_size)
            | "Fetch" >> beam.ParDo(self._fn).with_outputs(MISSING, ATTEMPTS, main="events")
        )
        verdict = fetched[ATTEMPTS] | "SourceVerdict" >> SourceVerdict(
            GONE_TEMPLATE.format(kind="events")
        )
        return {
            "events": fetched.events,
            MISSING: fetched[MISSING],
            RUN_FAILURES: verdict["reasons"],
        }
