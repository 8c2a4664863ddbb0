"""The backfill graph, top to bottom: read this function to read the job (design.md has the picture)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.local_runner import local_runner
from pipeline.options import BackfillConfig
from pipeline.sources import source_class
from transforms.api import ApiHandle
from transforms.fetch_trades import LOOKUP_FAILURES, FetchTrades
from transforms.lookups import LookupSettings
from transforms.read_wallets import ReadWallets
from transforms.select_wallets import RefreshPolicy, SelectWallets
from transforms.stage import CommitRun, WriteStaging


def build_pipeline(options: PipelineOptions, config: BackfillConfig) -> beam.Pipeline:
    """Builds (does not run) the graph, so tests and the launcher construct the very same job.
    Locally on LocalRunner (the DirectRunner's FnApiRunner, never Prism: pipeline/local_runner.py)."""
    pipeline = beam.Pipeline(runner=local_runner(options), options=options)
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
    # Markets and events are looked up inside the trades stage, as the pages name them: they draw
    # from other rate buckets, so they cost no trade throughput and end with the trades.
    staged_plan = staging if config.stage_lookup_plan else None  # start-up staged it
    lookups = LookupSettings(
        warehouse, policy, source.markets_per_batch, source.events_per_batch, staged_plan
    )
    fetched = requests | "FetchTrades" >> FetchTrades(
        api, run_id, config.source.name, staging.kind_folder("trades"), threads, deadline, lookups
    )

    staged = {
        "trades": fetched["trade_pages"] | "StageTrades" >> WriteStaging(staging, "trades", True),
        "markets": fetched["markets"] | "StageMarkets" >> WriteStaging(staging, "markets"),
        "events": fetched["events"] | "StageEvents" >> WriteStaging(staging, "events"),
        "missing": fetched["missing"] | "StageMissing" >> WriteStaging(staging, "missing"),
        "rejects": read["rejects"] | "StageRejects" >> WriteStaging(staging, "rejects"),
    }
    staged["outcomes"] = fetched["outcomes"] | "StageOutcomes" >> WriteStaging(
        staging, "outcomes", after=staged["trades"]
    )
    # Why the run must fail after its commit: its wallets' source, or its lookups', looks gone.
    run_failures = (
        fetched["run_failures"],
        fetched[LOOKUP_FAILURES],
    ) | "RunFailures" >> beam.Flatten()
    _ = staged | "Commit" >> CommitRun(staging, warehouse, run_failures, config.lease_holder)
    return pipeline
