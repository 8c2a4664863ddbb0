"""The Dome API as a Source: orders pages become trade rows, markets 100 per request, events one each."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.schema import format_timestamp
from pipeline.sources import Lookup, MarketRef, Source, SourceSpec
from pipeline.sources.dome.client import MARKETS_PER_REQUEST, DomeClient, DomeSettings
from pipeline.sources.dome.rows import event_row, market_row, trade_row
from pipeline.sources.http import Telemetry
from pipeline.sources.limiter import RateLimiter


class DomeSource(Source):
    name = "dome"
    markets_per_batch = MARKETS_PER_REQUEST
    events_per_batch = 1  # the API documents no way to ask for many events in one request

    def __init__(
        self,
        spec: SourceSpec,
        api_key: str,
        limiter: RateLimiter,
        telemetry: Telemetry | None = None,
    ) -> None:
        settings = DomeSettings(spec.dome_base_url, spec.page_limit, spec.max_pages)
        self.client = DomeClient.build(settings, api_key, limiter, telemetry, spec.http)
        self._run_id = spec.run_id

    def trade_pages(self, wallet: str, start_time: int | None) -> Iterator[list[dict[str, Any]]]:
        for page in self.client.order_pages(wallet, start_time=start_time):
            fetched_at = format_timestamp(time.time())
            yield [trade_row(wallet, order, self._run_id, fetched_at) for order in page.items]

    def markets(self, refs: Sequence[MarketRef]) -> Lookup:
        asked = sorted({condition_id for condition_id, _ in refs})
        found = self.client.markets(asked)
        fetched_at = format_timestamp(time.time())
        lookup = Lookup()
        wanted = set(asked)
        for market in found:
            if market["condition_id"] not in wanted:
                continue
            wanted.discard(market["condition_id"])
            lookup.rows.append(market_row(market, self._run_id, fetched_at))
            if market.get("event_slug"):
                lookup.event_slugs.append(market["event_slug"])
        lookup.missing = sorted(wanted)
        return lookup

    def events(self, slugs: Sequence[str]) -> Lookup:
        lookup = Lookup()
        for slug in slugs:
            event = self.client.event(slug)
            if event is None:
                lookup.missing.append(slug)
            else:
                fetched_at = format_timestamp(time.time())
                lookup.rows.append(event_row(event, self._run_id, fetched_at))
        return lookup

    def close(self) -> None:
        self.client.close()
