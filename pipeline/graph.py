"""The backfill graph, top to bottom: read this function to read the job (design.md has the picture)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import BackfillConfig
from transforms.api import ApiHandle
from transforms.fetch_markets import FetchEvents, FetchMarkets
from transforms.fetch_trades import FetchTrades
from transforms.read_wallets import ReadWallets
from transforms.select_wallets import SelectWallets
from transforms.stage import CommitRun, WriteStaging


def build_pipeline(options: PipelineOptions, config: BackfillConfig) -> beam.Pipeline:
    """Builds (does not run) the graph, so tests and the launcher construct the very same job."""
    pipeline = beam.Pipeline(options=options)
    api = ApiHandle(config)  # one client and rate limiter per worker process, for every fetch step

    read = pipeline | "ReadWallets" >> ReadWallets(config.warehouse, config.tables, config.run_id)
    requests = read["wallets"] | "SelectWallets" >> SelectWallets(config)
    fetched = requests | "FetchTrades" >> FetchTrades(api, config)
    markets = fetched["condition_ids"] | "FetchMarkets" >> FetchMarkets(api, config)
    events = markets["event_slugs"] | "FetchEvents" >> FetchEvents(api, config)

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
