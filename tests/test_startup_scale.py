"""Start-up stays fast however many runs were staged before: it lists the staging index, never the
root, so the objects of committed runs are not even listed; a run whose commit keeps failing is
parked after MAX_FAILED_COMMITS tries; retention deletes only expired committed runs, a bounded
number per call.

Real parts: Beam's GCS filesystem against gcp-storage-emulator (its HTTP requests are watched, not
replaced), local folders, DuckDB, `prepare` and `python -m pipeline commit`. Speed itself is
measured by `bench/startup.py`, not here.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from apache_beam.io.filesystems import FileSystems
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from pipeline.__main__ import main as cli
from pipeline.lifecycle import prepare
from pipeline.staging import (
    INDEX,
    MAX_FAILED_COMMITS,
    RunStaging,
    commit_staged_run,
    delete_expired_staging,
    parked_runs,
    runs_to_recover,
)
from pipeline.warehouse import CommitReport, TableNames, WarehouseRef, open_warehouse
from tests.gcs_emulator import StorageEmulator
from tests.support import local_config, outcome, query, trade

PROJECT = "test-project"
BUCKET = "startup-scale"
DAY = 86_400.0
PARTS = 2  # part files per kind, as a small run stages (one per bundle)


def write_lines(path: str, rows: list[dict]) -> str:
    with FileSystems.create(path) as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows).encode())
    return path


def stage_run(root: str, run_id: str, trades: list[dict], outcomes: list[dict]) -> RunStaging:
    """A run's staging as the graph leaves it: claimed, every kind in PARTS part files (the rows
    in the first), then its manifest (and so its index entry)."""
    staging = RunStaging(root, run_id)
    staging.claim()
    rows = {"trades": trades, "outcomes": outcomes, "markets": [], "events": [], "rejects": []}
    files = {
        kind: [
            write_lines(
                f"{staging.file_prefix(kind)}-{n:05d}-of-{PARTS:05d}.json", kind_rows * (n == 0)
            )
            for n in range(PARTS)
        ]
        for kind, kind_rows in rows.items()
    }
    staging.write_manifest(files)
    return staging


def one_wallet_run(root: str, run_id: str, trades: int = 1) -> RunStaging:
    wallet = f"0x{run_id}"
    return stage_run(
        root,
        run_id,
        [trade(wallet, f"{run_id}-{n}", run_id) for n in range(trades)],
        [outcome(wallet, run_id, True, 10, trade_count=trades)],
    )


def new_warehouse(path: Path) -> WarehouseRef:
    with open_warehouse(f"duckdb:{path}") as warehouse:
        warehouse.ensure_tables()
    return WarehouseRef(f"duckdb:{path}", TableNames())


def committed_run_ids(ref: WarehouseRef) -> set[str]:
    with ref.open() as warehouse:
        return warehouse.committed_run_ids()


# -- on gs://: start-up lists the index only ----------------------------------------------------


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[StorageEmulator]:
    with StorageEmulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator


@pytest.fixture
def root(gcs, monkeypatch) -> str:
    """A staging root of its own on the emulator, with the environment that sends Beam there."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(gcs.credentials_file()))
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    client.lookup_bucket(BUCKET) or client.create_bucket(BUCKET)
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gcs_requests(monkeypatch) -> list[str]:
    """Every HTTP request our process sends, as "METHOD url" (unquoted). The requests still go
    out unchanged: the transport is watched, not replaced."""
    seen: list[str] = []
    send = requests.Session.send

    def watched(self: requests.Session, request: requests.PreparedRequest, **kwargs):
        seen.append(f"{request.method} {urllib.parse.unquote(request.url or '')}")
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", watched)
    return seen


def listed_prefixes(seen: list[str]) -> list[str]:
    """The `prefix` of every object listing among the requests."""
    prefixes = []
    for line in seen:
        method, address = line.split(" ", 1)
        url = urllib.parse.urlsplit(address)
        if method == "GET" and url.path.endswith(f"/b/{BUCKET}/o"):
            prefixes.extend(urllib.parse.parse_qs(url.query).get("prefix", [""]))
    return prefixes


def test_start_up_on_gcs_never_lists_nor_reads_the_objects_of_committed_runs(
    root, gcs_requests, tmp_path
):
    committed = [f"committed-{n:03d}" for n in range(20)]
    for run_id in committed:
        staging = one_wallet_run(root, run_id, trades=3)
        staging.mark_committed(CommitReport(run_id, already_committed=False, trades_inserted=3))
    db = tmp_path / "wh.duckdb"
    assert prepare(local_config(db, root, "start-0")) == []  # builds the index: a one-time scan

    # Staged after, and not committed: its trades are short, so recovery refuses and parks it.
    short = stage_run(
        root,
        "pending",
        [trade("0xp", "p1", "pending")],
        [outcome("0xp", "pending", True, 10, trade_count=2)],
    )
    gcs_requests.clear()
    recovered = prepare(local_config(db, root, "start-1"))

    assert gcs_requests  # guards the watch itself: Beam's GCS client did go through it
    assert [(r.run_id, r.refused) for r in recovered] == [("pending", True)]
    key = root.removeprefix(f"gs://{BUCKET}/")
    allowed = (f"{key}/{INDEX}/", f"{key}/start-1/")  # the index, and the new run's claim
    prefixes = listed_prefixes(gcs_requests)
    assert prefixes and all(prefix.startswith(allowed) for prefix in prefixes), prefixes
    touching = [line for line in gcs_requests if any(run_id in line for run_id in committed)]
    assert touching == []
    assert [run.run_id for run in parked_runs(root)] == ["pending"]
    assert short.refused_reason() is not None


def test_runs_staged_before_the_index_are_indexed_once_by_one_scan_of_the_root(
    root, gcs_requests, tmp_path
):
    """An older version wrote no index: the first start-up scans the root once and indexes each
    run by its state (committed, refused, staged); the next one lists only the index."""
    one_wallet_run(root, "old-committed").mark_committed(CommitReport("old-committed", False))
    one_wallet_run(root, "old-refused").mark_refused("staged trades disagree")
    pending = one_wallet_run(root, "old-pending")
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    key = root.removeprefix(f"gs://{BUCKET}/")
    for blob in client.bucket(BUCKET).list_blobs(prefix=f"{key}/{INDEX}/"):
        blob.delete()  # as an older version left the root

    assert runs_to_recover(root, set()) == [pending]
    assert f"{key}/" in listed_prefixes(gcs_requests)  # the one-time scan
    assert [(run.run_id, "disagree" in run.reason) for run in parked_runs(root)] == [
        ("old-refused", True)
    ]
    gcs_requests.clear()
    assert runs_to_recover(root, set()) == [pending]
    assert all(p.startswith(f"{key}/{INDEX}/") for p in listed_prefixes(gcs_requests))


def test_retention_on_gcs_deletes_every_object_of_an_expired_run_and_nothing_else(root):
    old, recent = one_wallet_run(root, "old"), one_wallet_run(root, "recent")
    old.mark_committed(CommitReport("old", already_committed=False), now=time.time() - 9 * DAY)
    recent.mark_committed(CommitReport("recent", already_committed=False))
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    key = root.removeprefix(f"gs://{BUCKET}/")

    def objects(prefix: str) -> int:
        return sum(1 for _ in client.bucket(BUCKET).list_blobs(prefix=f"{key}/{prefix}"))

    assert objects("old/") == objects("recent/") == 3 + 5 * PARTS  # claim, manifest, marker
    assert delete_expired_staging(root, {"old", "recent"}, 7) == ["old"]
    assert (objects("old/"), objects("recent/")) == (0, 3 + 5 * PARTS)
    assert objects(f"{INDEX}/committed/") == 1


# -- a commit that keeps failing: retried a few times, then parked -------------------------------


def test_a_run_whose_commit_keeps_failing_is_retried_by_a_few_start_ups_then_parked(
    tmp_path, capsys
):
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    rows = [trade("0xg", "g1", "r1"), trade("0xg", "g2", "r1", tx_hash=None)]  # loads refuse g2
    staging = stage_run(str(root), "r1", rows, [outcome("0xg", "r1", True, 50, trade_count=2)])

    tries = []
    for n in range(MAX_FAILED_COMMITS + 1):
        tries.append(
            [(r.run_id, r.failed, r.parked) for r in prepare(local_config(db, root, f"s{n}"))]
        )
    assert tries == [[("r1", True, False)]] * (MAX_FAILED_COMMITS - 1) + [[("r1", True, True)], []]
    [parked] = parked_runs(str(root))
    assert (parked.run_id, parked.failed_commits) == ("r1", MAX_FAILED_COMMITS)
    assert "loading its trades" in parked.reason
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]  # its wallet stays pending
    capsys.readouterr()
    assert cli(["status", f"--warehouse=duckdb:{db}", f"--staging_root={root}"]) == 0
    shown = capsys.readouterr().out
    assert (
        "parked runs      1" in shown and f"r1 after {MAX_FAILED_COMMITS} failed commits" in shown
    )

    # Fixed by hand, `commit --run_id` still lands a parked run, which then leaves the parked list.
    write_lines(
        f"{staging.file_prefix('trades')}-00000-of-{PARTS:05d}.json",
        [rows[0], trade("0xg", "g2", "r1")],
    )
    code = cli(["commit", f"--warehouse=duckdb:{db}", f"--staging_root={root}", "--run_id=r1"])
    assert code == 0, capsys.readouterr().out
    assert parked_runs(str(root)) == []
    assert query(db, "SELECT COUNT(*) FROM trades") == [(2,)]
    assert prepare(local_config(db, root, "after")) == []


# -- retention --------------------------------------------------------------------------------------


def test_retention_deletes_only_expired_committed_runs_a_bounded_number_per_call(tmp_path):
    root = str(tmp_path / "staging")
    warehouse = new_warehouse(tmp_path / "wh.duckdb")
    start = time.time()
    for run_id in ("a", "b", "c"):
        assert commit_staged_run(one_wallet_run(root, run_id), warehouse).committed
    again = RunStaging(root, "c")  # committed again by hand three days later: dated by that
    again.mark_committed(CommitReport("c", already_committed=True), now=start + 3 * DAY)
    empty = stage_run(root, "empty", [], [])  # nothing to commit: only its marker says done
    assert commit_staged_run(empty, warehouse).report.nothing_to_commit
    stranger = one_wallet_run(root, "stranger")  # a marker this warehouse knows nothing of
    stranger.mark_committed(CommitReport("stranger", already_committed=False, trades_inserted=1))
    one_wallet_run(root, "pending")  # staged, never committed
    committed = committed_run_ids(warehouse)
    assert committed == {"a", "b", "c"}

    def left() -> set[str]:
        return {p.name for p in Path(root).iterdir()} - {INDEX}

    def expire(days_later: float) -> list[str]:
        return delete_expired_staging(root, committed, 2, limit=2, now=start + days_later * DAY)

    assert expire(1) == []
    assert expire(4) == ["a", "b"]  # the oldest first, two per call
    assert expire(4) == ["empty"]  # the stranger is kept; c was committed again a day ago
    assert left() == {"c", "stranger", "pending"}
    assert expire(10) == ["c"]
    assert left() == {"stranger", "pending"}
    entries = {p.name.split("_", 1)[1] for p in (Path(root) / INDEX / "committed").iterdir()}
    assert entries == {"stranger.json"}
    assert [run.run_id for run in runs_to_recover(root, committed)] == ["pending"]
    with pytest.raises(ValueError, match="positive"):
        delete_expired_staging(root, committed, 0)


def test_prepare_deletes_expired_staging_only_when_given_retention_days(tmp_path):
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    warehouse = new_warehouse(db)
    old = one_wallet_run(str(root), "old")
    with warehouse.open() as opened:  # what commit_staged_run does, with the marker 40 days old
        report = opened.commit_run("old", old.read_manifest())
    old.mark_committed(report, now=time.time() - 40 * DAY)
    prepare(local_config(db, root, "keep"))
    assert (root / "old").exists()
    prepare(dataclasses.replace(local_config(db, root, "delete"), staging_retention_days=30))
    assert not (root / "old").exists() and (root / "delete").exists()
