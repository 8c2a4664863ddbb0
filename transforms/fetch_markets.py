"""FetchMarkets and FetchEvents: markets and events for keys that arrive as a PCollection, each key
requested once per run (a run-wide dedup, SkipKnown's anti-join, full batches).

The backfill graph does not use them: it looks the keys its trades name up inside the trades stage
(transforms/lookups.py), because these barriers made every lookup wait for the last trade page.
They stay for keys given as a collection; both share the batch lookup (`look_up`).

A failed lookup batch is retried by later runs (its keys stay pending). But when every batch of a
run failed as if the source were gone (RunHealth's classification: refused, unreachable, retries
run out), the run is failed (`run_failures`): it still commits its trades, then exits non-zero, so
that a Gamma API that is gone cannot read as success run after run.
"""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam

from pipeline.warehouse import WarehouseRef
from transforms.api import ApiHandle
from transforms.batch import BatchPerKey
from transforms.concurrent import ConcurrentFetchFn, Emit
from transforms.dedup import DedupFirst
from transforms.lookups import ATTEMPTS as LOOKUP_ATTEMPTS
from transforms.lookups import EVENT_SLUGS, GONE_TEMPLATE, MISSING, look_up
from transforms.run_health import SourceVerdict
from transforms.select_wallets import RefreshPolicy
from transforms.skip_known import SkipKnown

log = logging.getLogger(__name__)

ATTEMPTS = "attempts"  # one Attempts per batch: whether the source answered it
RUN_FAILURES = "run_failures"  # why the run failed: every lookup batch failed as if it were gone


class _LookupFn(ConcurrentFetchFn):
    """Looks one batch up (transforms.lookups.look_up: a failed batch is counted and emits no
    `missing` row, its keys stay pending); attempts go to ATTEMPTS, event slugs to EVENT_SLUGS."""

    def __init__(self, api: ApiHandle, threads: int, kind: str) -> None:
        super().__init__(api, threads)
        self._kind = kind

    def fetch(self, batch: list[Any], emit: Emit) -> None:
        def out(tag: str, value: Any) -> None:
            if tag == self._kind:
                emit(None, value)
            elif tag == LOOKUP_ATTEMPTS[self._kind]:
                emit(ATTEMPTS, value)
            else:
                emit(tag, value)

        look_up(self.api.source, self._kind, batch, self.counters, out)


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
