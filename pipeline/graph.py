"""The backfill graph, top to bottom: read this function to read the job (design.md has the picture)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import BackfillConfig
from pipeline.sources import source_class
from transforms.api import ApiHandle
from transforms.fetch_markets import FetchEvents, FetchMarkets
from transforms.fetch_trades import FetchTrades
from transforms.read_wallets import ReadWallets
from transforms.select_wallets import SelectWallets
from transforms.stage import CommitRun, WriteStaging


def build_pipeline(options: PipelineOptions, config: BackfillConfig) -> beam.Pipeline:
    """Builds (does not run) the graph, so tests and the launcher construct the very same job."""
    pipeline = beam.Pipeline(options=options)
    api = ApiHandle(config.source)  # one source and rate limiter per worker process
    source = source_class(config.source.name)

    read = pipeline | "ReadWallets" >> ReadWallets(config.warehouse, config.tables, config.run_id)
    requests = read["wallets"] | "SelectWallets" >> SelectWallets(config)
    fetched = requests | "FetchTrades" >> FetchTrades(api, config)
    markets = fetched["market_refs"] | "FetchMarkets" >> FetchMarkets(
        api, config, source.markets_per_batch
    )
    # Polymarket's trades name their events: those need not wait for the markets.
    event_slugs = (fetched["event_slugs"], markets["event_slugs"]) | "EventSlugs" >> beam.Flatten()
    events = event_slugs | "FetchEvents" >> FetchEvents(api, config, source.events_per_batch)

    staged = {
        "trades": fetched["trade_pages"] | "StageTrades" >> WriteStaging(config, "trades", True),
        "markets": markets["markets"] | "StageMarkets" >> WriteStaging(config, "markets"),
        "events": events | "StageEvents" >> WriteStaging(config, "events"),
        "rejects": read["rejects"] | "StageRejects" >> WriteStaging(config, "rejects"),
    }
    staged["outcomes"] = fetched["outcomes"] | "StageOutcomes" >> WriteStaging(
        config, "outcomes", after=staged["trades"]
    )
    _ = staged | "Commit" >> CommitRun(config)
    return pipeline
