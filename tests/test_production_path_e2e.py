"""The production path on its closest stand-ins: the whole graph on the DirectRunner, staging on
`gs://` through Beam's real GCS filesystem (gcp-storage-emulator), the BigQuery warehouse through
the official client (bqemulator), the Dome API simulator. What this covers: Beam's WriteToText,
FileSystems.match/exists/create on gs://, BigQuery load jobs from those gs:// URIs, the
parameterised commit transaction, reads in the graph through the BigQuery client. What it cannot:
Dataflow itself, real IAM and quotas, BigQuery's own SQL engine (bqemulator runs DuckDB)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, storage

from pipeline.run import run_backfill
from pipeline.sources.dome.ids import trade_id
from pipeline.staging import RunStaging, commit_staged_run
from pipeline.warehouse import TableNames, WarehouseRef, open_warehouse
from pipeline.warehouse import sql as q
from tests.bq_emulator import BigQueryEmulator
from tests.gcs_emulator import StorageEmulator
from tests.support import INVALID_TRADERS

PROJECT = "test-project"
BUCKET = "backfill-staging"


@pytest.fixture(scope="module")
def emulators(tmp_path_factory) -> Iterator[tuple[StorageEmulator, BigQueryEmulator]]:
    gcs = StorageEmulator(tmp_path_factory.mktemp("gcs"))
    with gcs, BigQueryEmulator(gcs.objects_root, project=PROJECT) as bq:
        yield gcs, bq


@pytest.fixture
def world(emulators, sim_server, monkeypatch):
    gcs, bq_emulator = emulators
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(gcs.credentials_file()))
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.endpoint)
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)

    server = sim_server(seed=31, wallets=12, tier="unlimited", max_trades=1200)
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    dataset = f"{PROJECT}.e2e_{uuid.uuid4().hex[:8]}"
    with open_warehouse(f"bigquery:{dataset}") as warehouse:
        warehouse.ensure_tables()
    bq = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=bq_emulator.endpoint),
    )
    wallets = server.simulator.wallet_addresses()
    bq.query(
        f"INSERT INTO `{dataset}.traders` (wallet_address) SELECT w FROM UNNEST(@w) AS w",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ArrayQueryParameter("w", "STRING", [*wallets, *INVALID_TRADERS[2:]])
            ]
        ),
    ).result()
    argv = [
        f"--warehouse=bigquery:{dataset}",
        f"--staging_root=gs://{BUCKET}/{dataset.split('.')[1]}",
        "--source=dome",
        f"--api_base_url={server.base_url}",
        "--tier=pro",
    ]
    return server, wallets, bq, dataset, argv


def rows(bq, sql):
    return [tuple(row.values()) for row in bq.query(sql).result()]


def assert_production_is_truth(server, wallets, bq, dataset):
    simulator = server.simulator
    landed = Counter(rows(bq, f"SELECT wallet_address, id FROM `{dataset}.trades`"))
    truth = Counter((w, trade_id(w, o)) for w in wallets for o in simulator.orders(w))
    assert landed == truth
    markets = {r[0] for r in rows(bq, f"SELECT condition_id FROM `{dataset}.markets`")}
    assert markets == set(simulator.traded_condition_ids())
    events = {r[0] for r in rows(bq, f"SELECT event_slug FROM `{dataset}.events`")}
    assert events == set(simulator.traded_event_slugs())
    marks = {
        r[0]: r[1:]
        for r in rows(
            bq,
            "SELECT wallet_address, completed, upload_successful, trade_count "
            f"FROM `{dataset}.backfill_checkpoint`",
        )
    }
    assert marks == {w: (True, True, len(simulator.orders(w))) for w in wallets}


def test_whole_graph_on_gcs_and_bigquery_then_nothing_fetched_twice(world):
    server, wallets, bq, dataset, argv = world
    summary = run_backfill(argv)
    assert summary.state == "DONE"
    assert summary.counters["wallets_rejected"] == len(INVALID_TRADERS[2:])
    assert_production_is_truth(server, wallets, bq, dataset)

    server.reset_stats()
    run_backfill(argv)
    assert server.stats()["requests"].get("orders", 0) == 0
    assert_production_is_truth(server, wallets, bq, dataset)

    # Commit run twice on the same staging: production unchanged.
    before = rows(bq, f"SELECT * FROM `{dataset}.trades` ORDER BY id")
    staging_root = argv[1].split("=", 1)[1]
    warehouse = WarehouseRef(f"bigquery:{dataset}", TableNames())
    outcome = commit_staged_run(RunStaging(staging_root, summary.run_id), warehouse)
    assert outcome.already_committed is True
    assert rows(bq, f"SELECT * FROM `{dataset}.trades` ORDER BY id") == before


def test_a_failed_commit_changes_nothing_and_the_next_run_repairs_it(world):
    server, wallets, bq, dataset, argv = world
    # Make the transaction fail after its trades INSERT: an events table that refuses the null
    # subtitles some simulated events have (the MERGE into events comes after the INSERT).
    strict = q.render(q.CREATE_EVENTS, TableNames(), dataset=dataset).replace(
        "`subtitle` STRING", "`subtitle` STRING NOT NULL"
    )
    bq.query(f"DROP TABLE `{dataset}.events`").result()
    bq.query(strict).result()
    assert any(e["subtitle"] is None for e in server.simulator.events())

    with pytest.raises(Exception, match="rolled back"):
        run_backfill(argv)
    for table in ("trades", "markets", "events", "backfill_checkpoint", "backfill_runs"):
        assert rows(bq, f"SELECT COUNT(*) FROM `{dataset}.{table}`") == [(0,)], table

    bq.query(f"DROP TABLE `{dataset}.events`").result()  # the repair; ensure_tables recreates it
    server.reset_stats()
    repaired = run_backfill(argv)
    assert len(repaired.recovered) == 1  # the failed run's staging, committed at start-up
    assert server.stats()["requests"].get("orders", 0) == 0
    assert_production_is_truth(server, wallets, bq, dataset)
