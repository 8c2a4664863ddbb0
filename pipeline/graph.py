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
from transforms.select_wallets import RefreshPolicy, SelectWallets
from transforms.stage import CommitRun, WriteStaging


def build_pipeline(options: PipelineOptions, config: BackfillConfig) -> beam.Pipeline:
    """Builds (does not run) the graph, so tests and the launcher construct the very same job."""
    pipeline = beam.Pipeline(options=options)
    api = ApiHandle(config.source)  # one source and rate limiter per worker process
    source = source_class(config.source.name)
    warehouse, staging, run_id = config.warehouse_ref, config.staging, config.run_id
    policy = RefreshPolicy(config.started_at, config.refresh_after_s, config.refresh_overlap_s)
    threads = config.fetch_threads
    budget = config.max_run_minutes
    deadline = None if budget is None else config.started_at + 60 * budget  # then start no wallet

    read = pipeline | "ReadWallets" >> ReadWallets(warehouse, run_id)
    requests = read["wallets"] | "SelectWallets" >> SelectWallets(
        warehouse, policy, config.max_wallets
    )
    fetched = requests | "FetchTrades" >> FetchTrades(
        api, run_id, config.source.name, staging.kind_folder("trades"), threads, deadline
    )
    markets = fetched["market_refs"] | "FetchMarkets" >> FetchMarkets(
        api, warehouse, policy, source.markets_per_batch, threads
    )
    # Polymarket's trades name their events: those need not wait for the markets.
    event_slugs = (fetched["event_slugs"], markets["event_slugs"]) | "EventSlugs" >> beam.Flatten()
    events = event_slugs | "FetchEvents" >> FetchEvents(
        api, warehouse, policy, source.events_per_batch, threads
    )
    missing = (markets["missing"], events["missing"]) | "Missing" >> beam.Flatten()

    staged = {
        "trades": fetched["trade_pages"] | "StageTrades" >> WriteStaging(staging, "trades", True),
        "markets": markets["markets"] | "StageMarkets" >> WriteStaging(staging, "markets"),
        "events": events["events"] | "StageEvents" >> WriteStaging(staging, "events"),
        "missing": missing | "StageMissing" >> WriteStaging(staging, "missing"),
        "rejects": read["rejects"] | "StageRejects" >> WriteStaging(staging, "rejects"),
    }
    staged["outcomes"] = fetched["outcomes"] | "StageOutcomes" >> WriteStaging(
        staging, "outcomes", after=staged["trades"]
    )
    # Why the run must fail after its commit: its wallets' source, or its lookups', looks gone.
    run_failures = (
        fetched["run_failures"],
        markets["run_failures"],
        events["run_failures"],
    ) | "RunFailures" >> beam.Flatten()
    _ = staged | "Commit" >> CommitRun(staging, warehouse, run_failures, config.lease_holder)
    return pipeline
