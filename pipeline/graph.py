"""The backfill graph, top to bottom: read this function to read the job (design.md has the picture)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner

from pipeline.options import BackfillConfig
from pipeline.sources import source_class
from transforms.api import ApiHandle
from transforms.fetch_trades import LOOKUP_FAILURES, FetchTrades
from transforms.lookups import LookupSettings
from transforms.read_wallets import ReadWallets
from transforms.select_wallets import RefreshPolicy, SelectWallets
from transforms.stage import CommitRun, WriteStaging

DIRECT_RUNNER_NAMES = (None, "DirectRunner", "direct", "SwitchingDirectRunner")


def local_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The DirectRunner's in-process runner (the FnApiRunner, in-memory or multi_processing), or
    None for any other runner (Dataflow). Why not the DirectRunner itself: given a graph with no
    stateful step (the lookups need none since they run inside the trades stage), it first tries
    Prism, which it downloads from GitHub (offline: a failed attempt per run; online: another
    runner than the one every test runs on)."""
    if options.view_as(StandardOptions).runner not in DIRECT_RUNNER_NAMES:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # As the DirectRunner does: multi_processing workers read the options from here.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


def build_pipeline(options: PipelineOptions, config: BackfillConfig) -> beam.Pipeline:
    """Builds (does not run) the graph, so tests and the launcher construct the very same job."""
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
    lookups = LookupSettings(warehouse, policy, source.markets_per_batch, source.events_per_batch)
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
