"""The production path on its closest stand-ins: the whole graph on the DirectRunner, staging on
`gs://` through Beam's real GCS filesystem (gcp-storage-emulator), the BigQuery warehouse through
the official client (bqemulator), the Dome API simulator. What this covers: the staging writer on gs://,
FileSystems.match/exists/create on gs://, BigQuery load jobs from those gs:// URIs, the
parameterised commit transaction, reads in the graph through the BigQuery client. What it cannot:
Dataflow itself, real IAM and quotas, BigQuery's own SQL engine (bqemulator runs DuckDB)."""

from __future__ import annotations

import pytest

from pipeline.run import run_backfill
from pipeline.staging import RunStaging, commit_staged_run
from pipeline.warehouse import TableNames, WarehouseRef
from pipeline.warehouse import sql as q
from tests.support import (
    COMMITTED_TABLES,
    INVALID_TRADERS,
    assert_production_is_truth,
    trade_requests,
)

# The junk among the traders: the invalid addresses but the null and the empty one.
JUNK = INVALID_TRADERS[2:]
pytestmark = pytest.mark.world(
    seed=31,
    wallets=12,
    max_trades=1200,
    warehouse="bigquery",
    traders=lambda wallets: [*wallets, *JUNK],
)


def test_whole_graph_on_gcs_and_bigquery_then_nothing_fetched_twice(world):
    summary = run_backfill(world.argv())
    assert summary.state == "DONE"
    assert summary.counters["wallets_rejected"] == len(JUNK)
    assert_production_is_truth(world)

    world.server.reset_stats()
    run_backfill(world.argv())
    assert trade_requests(world.server, "dome") == 0
    assert_production_is_truth(world)

    # Commit run twice on the same staging: production unchanged.
    before = world.rows("SELECT * FROM {trades} ORDER BY id")
    warehouse = WarehouseRef(f"bigquery:{world.dataset}", TableNames())
    outcome = commit_staged_run(RunStaging(world.staging, summary.run_id), warehouse)
    assert outcome.already_committed is True
    assert world.rows("SELECT * FROM {trades} ORDER BY id") == before


def test_a_failed_commit_changes_nothing_and_the_next_run_repairs_it(world):
    server, bq, dataset = world.server, world.bq, world.dataset
    # Make the transaction fail after its trades INSERT: an events table that refuses the null
    # subtitles some simulated events have (the MERGE into events comes after the INSERT).
    strict = q.render(q.CREATE_EVENTS, TableNames(), dataset=dataset).replace(
        "`subtitle` STRING", "`subtitle` STRING NOT NULL"
    )
    bq.query(f"DROP TABLE `{dataset}.events`").result()
    bq.query(strict).result()
    assert any(e["subtitle"] is None for e in server.simulator.events())

    failed = run_backfill(world.argv())  # one line, not a traceback
    assert failed.state == "NOT COMMITTED"
    assert "is staged but not committed" in failed.render() and "rolled back" in failed.render()
    for table in COMMITTED_TABLES:
        assert world.rows(f"SELECT COUNT(*) FROM {{{table}}}") == [(0,)], table

    bq.query(f"DROP TABLE `{dataset}.events`").result()  # the repair; ensure_tables recreates it
    server.reset_stats()
    repaired = run_backfill(world.argv())
    assert len(repaired.recovered) == 1  # the failed run's staging, committed at start-up
    assert trade_requests(server, "dome") == 0
    assert_production_is_truth(world)
