"""One backfill at a time per warehouse (issues 12 and 13): the lease, and commits that conflict.

The lease is one row of the lease table that a backfill takes for a while (`acquire_lease`) and
gives back (`release_lease`); every commit transaction writes that row first, so two commits at
once conflict, and re-checks inside the transaction that its run is not committed yet, so the
one that comes second changes nothing. Both engines, as in test_warehouse.py: a DuckDB file, and
BigQuery on bqemulator. bqemulator does not cancel concurrent transactions as BigQuery does (it
runs them one after the other): there the racing commit is caught by the re-check alone.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import lease
from pipeline import verify as verify_command
from pipeline.status_report import render_status
from pipeline.warehouse import CommitReport, Lease, Warehouse
from pipeline.warehouse.base import check_files
from tests import support
from tests.support import (
    COMMITTED_AT,
    Engine,
    busy_run,
    load_tables_left,
    snapshot,
    trade_ids,
)

# Both engines, with the fixtures of test_warehouse.py.
emulator, bq, db, wh = support.emulator, support.bq, support.db, support.wh


def twin(wh: Warehouse) -> Warehouse:
    """Another warehouse object on the same file or dataset, as another worker gets it."""
    return pickle.loads(pickle.dumps(wh))


# -- the lease -------------------------------------------------------------------------------------


def test_a_free_lease_is_taken_and_a_held_one_refused_with_its_holder(wh: Warehouse) -> None:
    free = wh.read_lease()  # ensure_tables made the row; nobody holds it
    assert free is not None and not free.held and free.holder is None
    assert wh.acquire_lease("run-a", ttl_seconds=60)
    lease = wh.read_lease()
    assert isinstance(lease, Lease) and lease.held and lease.holder == "run-a"
    assert lease.acquired_at is not None and lease.expires_at is not None
    assert (
        dt.timedelta(seconds=55) < lease.expires_at - lease.acquired_at <= dt.timedelta(seconds=61)
    )

    assert not wh.acquire_lease("run-b", ttl_seconds=60)
    held = wh.read_lease()
    assert held is not None and held.holder == "run-a"  # refused: the holder is unchanged
    assert held.describe().startswith("the backfill lease is held by run-a since ")

    assert wh.acquire_lease("run-a", ttl_seconds=120)  # its holder renews it
    renewed = wh.read_lease()
    assert renewed is not None and renewed.acquired_at == lease.acquired_at
    assert renewed.expires_at is not None and renewed.expires_at > lease.expires_at


def test_an_expired_lease_is_taken_over(wh: Warehouse) -> None:
    assert wh.acquire_lease("run-a", ttl_seconds=0.5)
    assert not wh.acquire_lease("run-b", ttl_seconds=60)
    time.sleep(1.0)
    expired = wh.read_lease()
    assert expired is not None and not expired.held and expired.holder == "run-a"
    assert expired.describe() == "the backfill lease is free"
    assert wh.acquire_lease("run-b", ttl_seconds=60)
    lease = wh.read_lease()
    assert lease is not None and lease.holder == "run-b" and lease.held


def test_release_frees_the_lease_for_its_holder_only(wh: Warehouse) -> None:
    assert wh.acquire_lease("run-a", ttl_seconds=60)
    wh.release_lease("run-b")  # not its lease: nothing happens
    assert not wh.acquire_lease("run-b", ttl_seconds=60)
    wh.release_lease("run-a")
    lease = wh.read_lease()
    assert lease is not None and not lease.held and lease.holder is None
    assert wh.acquire_lease("run-b", ttl_seconds=60)


def test_acquire_validates_its_arguments(wh: Warehouse) -> None:
    for holder, ttl in (("", 60), (None, 60), ("run-a", 0), ("run-a", -1), ("run-a", True)):
        with pytest.raises(ValueError):
            wh.acquire_lease(holder, ttl)  # type: ignore[arg-type]


# -- commits that conflict --------------------------------------------------------------------------


def test_the_commit_transaction_writes_the_lock_row_and_leaves_the_lease(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    assert wh.acquire_lease("r1", ttl_seconds=60)
    wh.commit_run("r1", busy_run(tmp_path, "r1"), committed_at=COMMITTED_AT)
    rows = db.rows(wh, "SELECT holder, commits, last_run_id FROM {lease}")
    assert rows == [("r1", 1, "r1")]
    wh.commit_run("r1", busy_run(tmp_path, "r1"), committed_at=COMMITTED_AT)  # skipped before
    assert db.rows(wh, "SELECT commits FROM {lease}") == [(1,)]


def test_a_commit_that_finds_its_run_committed_inside_the_transaction_changes_nothing(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    """A twin passed the check before the transaction too (both saw no runs row); the one whose
    transaction comes second must find the run inside it and roll back."""
    files = busy_run(tmp_path, "r1")
    first = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert not first.already_committed
    before = snapshot(db, wh)
    checked = check_files("r1", files, wh.remote_schemes)
    with wh._commit_session() as session:  # the steps of commit_run after its first check
        wh._load(session, "r1", checked, "00ff")
        try:
            counts = wh._transaction(session, "r1", COMMITTED_AT, "00ff")
        finally:
            wh._drop_load_tables(session, "r1", "00ff")
    assert counts is None  # rolled back: the run was committed
    assert snapshot(db, wh) == before
    assert db.rows(wh, "SELECT commits FROM {lease}") == [(1,)]  # the rollback undid its bump
    assert load_tables_left(db, wh) == []


def _race(warehouses: list[Warehouse], files: dict[str, list[str]]) -> list[Any]:
    """Commit run r1 from each warehouse in its own thread, all released at once."""
    start = threading.Barrier(len(warehouses))
    results: list[Any] = [None] * len(warehouses)

    def commit(i: int) -> None:
        start.wait()
        try:
            results[i] = warehouses[i].commit_run("r1", files, committed_at=COMMITTED_AT)
        except Exception as exc:  # recorded, asserted on below
            results[i] = exc

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(warehouses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_two_commits_of_one_run_racing_land_it_once(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    other = twin(wh)
    results = _race([wh, other], busy_run(tmp_path, "r1"))
    other.close()
    assert all(isinstance(r, CommitReport) for r in results), results
    landed = [r for r in results if not r.already_committed]
    assert len(landed) == 1, results  # exactly one landed the run; the other changed nothing
    assert landed[0].trades_inserted == 2 and landed[0].wallets_done == 1
    assert trade_ids(db, wh) == ["a1", "a2"]
    assert db.rows(wh, "SELECT COUNT(*) FROM {markets}") == [(1,)]
    assert db.rows(wh, "SELECT run_id FROM {runs}") == [("r1",)]
    assert db.rows(wh, "SELECT COUNT(*) FROM {checkpoint}") == [(2,)]
    assert load_tables_left(db, wh) == []


# -- who holds it, for operators; and verify's repair waits for no backfill ---------------------


def test_verify_takes_over_the_lease_of_a_killed_run_and_its_own_is_recognised_too(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    wh.commit_run("r1", busy_run(tmp_path, "r1"), committed_at=COMMITTED_AT)
    db.rows(wh, "INSERT INTO {trades} SELECT * FROM {trades} WHERE id = 'a1'")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert wh.acquire_lease(f"run-a local pid {dead.pid} on {socket.gethostname()}", 3600)
    report = verify_command.repair(wh)  # it said "a backfill runs" and repaired nothing
    assert not isinstance(report, str) and report.duplicates_removed == 1
    assert trade_ids(db, wh) == ["a1", "a2"]
    # A verify's holder names its process as a local run's does: killed midway, the next run
    # (or verify) of this machine sees it is gone instead of waiting out its 30 minutes.
    holder = lease.holder_name("verify-x", local=True)
    assert lease.holder_is_gone(holder.replace(f"pid {os.getpid()}", f"pid {dead.pid}"))


def test_status_shows_who_holds_the_lease(wh: Warehouse) -> None:
    assert wh.status().lease_holder is None
    assert "backfill lease" not in render_status(wh.status())
    assert wh.acquire_lease("run-a", ttl_seconds=60)
    report = wh.status()
    assert report.lease_holder == "run-a" and report.lease_expires_at is not None
    assert "backfill lease   held by run-a until " in render_status(report)
    wh.release_lease("run-a")
    assert wh.status().lease_holder is None


def test_verify_repairs_nothing_while_a_backfill_holds_the_lease(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    wh.commit_run("r1", busy_run(tmp_path, "r1"), committed_at=COMMITTED_AT)
    db.rows(wh, "INSERT INTO {trades} SELECT * FROM {trades} WHERE id = 'a1'")
    assert wh.acquire_lease("run-a", ttl_seconds=60)
    refused = verify_command.repair(wh)
    assert isinstance(refused, str) and "held by run-a" in refused
    assert trade_ids(db, wh) == ["a1", "a1", "a2"]  # nothing repaired

    wh.release_lease("run-a")
    report = verify_command.repair(wh)
    assert not isinstance(report, str) and report.reset and report.duplicates_removed == 1
    assert trade_ids(db, wh) == ["a1", "a2"]
    lease = wh.read_lease()
    assert lease is not None and not lease.held  # verify gave the lease back
