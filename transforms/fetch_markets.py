"""FetchMarkets and FetchEvents: what the trades refer to, each key requested once per run."""

from __future__ import annotations

import logging
import time

import apache_beam as beam

from pipeline.dome.errors import DomeError
from pipeline.options import BackfillConfig
from pipeline.rows import event_row, market_row
from pipeline.schema import format_timestamp
from transforms.api import ApiHandle
from transforms.batch import BatchPerKey
from transforms.concurrent import ConcurrentFetchFn, Emit
from transforms.dedup import DedupFirst
from transforms.skip_known import SkipKnown

log = logging.getLogger(__name__)

EVENT_SLUGS = "event_slugs"
BATCH_SIZE = 100  # condition_ids per markets request, the documented maximum


class _FetchMarketBatchFn(ConcurrentFetchFn):
    def __init__(self, api: ApiHandle, config: BackfillConfig) -> None:
        super().__init__(api, config.fetch_threads)
        self._run_id = config.run_id

    def fetch(self, batch: list[str], emit: Emit) -> None:
        condition_ids = sorted(batch)
        try:
            markets = self.api.client.markets(condition_ids)
        except DomeError as exc:
            # The trades still land; the market is fetched again by a later run's market refresh.
            self.counters.add("markets_failed", len(condition_ids))
            log.warning(
                "markets %s.. (%d ids) failed: %s", condition_ids[0], len(condition_ids), exc
            )
            return
        fetched_at = format_timestamp(time.time())
        asked = set(condition_ids)
        found = {market["condition_id"] for market in markets} & asked
        if len(found) < len(asked):
            missing = sorted(asked - found)
            self.counters.add("markets_missing", len(missing))
            log.warning(
                "the API has no market for %d condition_ids, e.g. %s", len(missing), missing[0]
            )
        for market in markets:
            if market["condition_id"] not in asked:
                continue
            emit(None, market_row(market, self._run_id, fetched_at))
            self.counters.add("markets")
            if market.get("event_slug"):
                emit(EVENT_SLUGS, market["event_slug"])


class _FetchEventFn(ConcurrentFetchFn):
    def __init__(self, api: ApiHandle, config: BackfillConfig) -> None:
        super().__init__(api, config.fetch_threads)
        self._run_id = config.run_id

    def fetch(self, event_slug: str, emit: Emit) -> None:
        try:
            event = self.api.client.event(event_slug)
        except DomeError as exc:
            self.counters.add("events_failed")
            log.warning("event %s failed: %s", event_slug, exc)
            return
        if event is None:
            self.counters.add("events_missing")
            log.warning("the API has no event %s", event_slug)
            return
        self.counters.add("events")
        emit(None, event_row(event, self._run_id, format_timestamp(time.time())))


class FetchMarkets(beam.PTransform):
    """condition_ids -> market rows (main) and the event slugs they name (`event_slugs`).

    Each id once per run, none that production holds settled or fresh, 100 per request.
    """

    def __init__(self, api: ApiHandle, config: BackfillConfig) -> None:
        super().__init__()
        self._api, self._config = api, config

    def expand(self, condition_ids):
        fetched = (
            condition_ids
            | "FirstPerId" >> DedupFirst()
            | "SkipKnown" >> SkipKnown(self._config, "read_known_markets")
            # One key: batches stay full (ceil(n/100) requests); markets are few next to trades.
            | "OneKey" >> beam.WithKeys(lambda _: "markets")
            | "Batch" >> BatchPerKey(BATCH_SIZE)
            | "Fetch"
            >> beam.ParDo(_FetchMarketBatchFn(self._api, self._config)).with_outputs(
                EVENT_SLUGS, main="markets"
            )
        )
        return {"markets": fetched.markets, EVENT_SLUGS: fetched[EVENT_SLUGS]}


class FetchEvents(beam.PTransform):
    """event slugs -> event rows, one request per distinct slug (no batch form is documented)."""

    def __init__(self, api: ApiHandle, config: BackfillConfig) -> None:
        super().__init__()
        self._api, self._config = api, config

    def expand(self, event_slugs):
        return (
            event_slugs
            | "FirstPerSlug" >> DedupFirst()
            | "SkipKnown" >> SkipKnown(self._config, "read_known_events")
            | "Fetch" >> beam.ParDo(_FetchEventFn(self._api, self._config))
        )
