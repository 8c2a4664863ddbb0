"""A run's staging on gs://, through Beam's real GCS filesystem against gcp-storage-emulator: state
files written whole (temporary object, then a rename) with no temporary left, torn ones never a
crash, staging that contradicts itself refused and parked, and the (check-then-write) claim.

Files "written by hand" go in through the google-cloud-storage client, not through our code.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from pipeline.__main__ import main as cli
from pipeline.lifecycle import prepare
from pipeline.staging import (
    COMMITTED,
    INDEX,
    INDEX_BUILT,
    MANIFEST,
    REFUSED,
    RunIdTaken,
    RunStaging,
    commit_staged_run,
    parked_runs,
    runs_to_recover,
)
from pipeline.warehouse import CommitReport, TableNames, WarehouseRef, open_warehouse
from tests.gcs_emulator import StorageEmulator
from tests.support import local_config, outcome, query, trade

PROJECT = "test-project"
BUCKET = "staging-states"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[StorageEmulator]:
    with StorageEmulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator


@pytest.fixture
def bucket(gcs, monkeypatch) -> storage.Bucket:
    """The emulator's bucket, with the environment that sends Beam's GCS filesystem there."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(gcs.credentials_file()))
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return client.lookup_bucket(BUCKET) or client.create_bucket(BUCKET)


@pytest.fixture
def root(bucket) -> str:
    """A staging root of its own for each test."""
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}"


def put(bucket: storage.Bucket, path: str, text: str) -> None:
    bucket.blob(path.removeprefix(f"gs://{BUCKET}/")).upload_from_string(text)


def names_under(bucket: storage.Bucket, folder: str) -> set[str]:
    prefix = folder.removeprefix(f"gs://{BUCKET}/") + "/"
    return {blob.name.removeprefix(prefix) for blob in bucket.list_blobs(prefix=prefix)}


def stage_by_hand(bucket: storage.Bucket, staging: RunStaging, trades: list[dict]) -> dict:
    """0xa's outcome says 2 trades, 0xb's 1; `trades` is what is actually staged (and an empty
    shard beside it, as older staging writers left)."""
    run_id = staging.run_id
    files = {
        "trades": [f"{staging.kind_folder('trades')}part-{n}.json" for n in (0, 1)],
        "outcomes": [f"{staging.kind_folder('outcomes')}part-0.json"],
    }
    put(bucket, files["trades"][0], "".join(json.dumps(row) + "\n" for row in trades))
    put(bucket, files["trades"][1], "")
    outcomes = [
        outcome("0xa", run_id, True, 10, trade_count=2),
        outcome("0xb", run_id, True, 10, trade_count=1),
    ]
    put(bucket, files["outcomes"][0], "".join(json.dumps(row) + "\n" for row in outcomes))
    return files


def test_torn_manifests_and_a_killed_writes_temporary_on_gcs_are_not_staged(
    bucket, root, tmp_path, caplog, capsys
):
    torn = {"r1": "", "r2": "\x00 not json", "r3": json.dumps({"run_id": "r9", "files": {}})}
    for run_id, content in torn.items():
        staging = RunStaging(root, run_id)
        stage_by_hand(bucket, staging, [trade("0xb", "b1", run_id)])
        put(bucket, staging.manifest, content)
    killed = RunStaging(root, "r4")  # killed between its temporary manifest and the rename
    stage_by_hand(bucket, killed, [trade("0xb", "b1", "r4")])
    put(bucket, f"{killed.manifest}.0123abcd.tmp", '{"run_id": "r4", "fi')

    db = tmp_path / "wh.duckdb"
    with open_warehouse(f"duckdb:{db}") as warehouse:
        warehouse.ensure_tables()
    config = local_config(db, root, "now")
    with caplog.at_level(logging.WARNING):
        assert prepare(config) == []
    for run_id in torn:
        assert RunStaging(root, run_id).manifest in caplog.text
    assert "r4" not in caplog.text
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]

    code = cli(["commit", f"--warehouse=duckdb:{db}", f"--staging_root={root}", "--run_id=r2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and RunStaging(root, "r2").manifest in lines[0], lines


def test_state_files_on_gcs_are_written_whole_and_a_torn_marker_means_not_committed(
    bucket, root, caplog
):
    staging = RunStaging(root, "r1")
    files = stage_by_hand(bucket, staging, [trade("0xa", "a1", "r1"), trade("0xa", "a2", "r1")])
    staging.write_manifest(files)
    staging.mark_committed(CommitReport("r1", already_committed=False, trades_inserted=2))
    staging.mark_committed(CommitReport("r1", already_committed=True))  # replaced whole
    assert names_under(bucket, staging.folder) == {
        "trades/part-0.json",
        "trades/part-1.json",
        "outcomes/part-0.json",
        MANIFEST,
        COMMITTED,
    }  # no temporary object left behind
    assert staging.read_manifest()["trades"] == files["trades"]
    assert staging.is_committed() and runs_to_recover(root, set()) == []

    index = names_under(bucket, f"{root}/{INDEX}")
    assert (
        index - {f"staged/{INDEX_BUILT}"}
        == {n for n in index if n.startswith("committed/")}
        != set()
    )

    put(bucket, staging.marker, '{"run_id": "r1", "trades_ins')
    assert runs_to_recover(root, set()) == []  # committed: start-up lists only uncommitted runs
    for blob in bucket.list_blobs(prefix=f"{root.removeprefix(f'gs://{BUCKET}/')}/{INDEX}/"):
        blob.delete()  # as an older version left it: no index, so a one-time scan builds it
    with caplog.at_level(logging.WARNING):
        assert not staging.is_committed()
        assert runs_to_recover(root, set()) == [staging]  # committed again: safe, idempotent
    assert staging.marker in caplog.text
    assert runs_to_recover(root, {"r1"}) == []  # the warehouse's runs table knows it


def test_short_staging_on_gcs_is_refused_and_parked(bucket, root, tmp_path):
    staging = RunStaging(root, "r1")
    short = [trade("0xa", "a1", "r1"), trade("0xb", "b1", "r1")]  # 0xa's second trade is missing
    staging.write_manifest(stage_by_hand(bucket, staging, short))
    db = tmp_path / "wh.duckdb"
    refused = commit_staged_run(staging, WarehouseRef(f"duckdb:{db}", TableNames()))
    assert refused.refused and "0xa outcome 2, staged 1" in refused.error
    assert not db.exists()  # the warehouse was never opened
    assert REFUSED in names_under(bucket, staging.folder)
    assert runs_to_recover(root, set()) == []
    assert [(run.run_id, "0xa outcome 2" in run.reason) for run in parked_runs(root)] == [
        ("r1", True)
    ]


def test_a_second_claim_of_a_run_id_on_gcs_is_refused(root):
    RunStaging(root, "r1").claim()
    with pytest.raises(RunIdTaken, match="r1"):
        RunStaging(root, "r1").claim()


def test_a_claim_on_gcs_records_its_warehouse_and_only_its_holder_gives_it_back(bucket, root):
    staging = RunStaging(root, "r1")
    staging.claim("bigquery:my-project.polymarket", holder="r1 dataflow")
    assert staging.recorded_warehouse() == "bigquery:my-project.polymarket"
    assert not staging.release_claim("r2 dataflow")
    put(bucket, f"{staging.folder}/trades/part-0.json", "")  # staged something: kept
    assert not staging.release_claim("r1 dataflow")
    bucket.blob(f"{staging.folder}/trades/part-0.json".removeprefix(f"gs://{BUCKET}/")).delete()
    assert staging.release_claim("r1 dataflow")
    assert not staging.has_files()
    RunStaging(root, "r1").claim()  # the id is free again
    assert RunStaging(root, "r1").recorded_warehouse() is None  # a claim that names none


def test_the_lookup_plan_staged_on_gcs_reads_back_and_goes_with_the_claim(root):
    """Start-up stages it for a run of several processes (Dataflow's workers), which read it
    there instead of each querying production; a run that staged nothing else gives both back."""
    staging = RunStaging(root, "r1")
    staging.claim("bigquery:my-project.polymarket", holder="r1 dataflow")
    rows = {"markets": {"known": [["0xc", "closed", 1.5]], "unlanded": [], "missing": [["0xm"]]}}
    staging.write_lookup_plan(rows)
    assert RunStaging(root, "r1").read_lookup_plan() == rows
    assert staging.release_claim("r1 dataflow")
    assert not staging.has_files()
