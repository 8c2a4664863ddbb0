"""A run whose own commit does not land, and a DuckDB file another process holds open, each end in
one line that says what happened, never a traceback; start-up recovery meeting a held file goes on.

Real parts throughout: DuckDB files (a real second process holds the file open), folders, the
graph on the DirectRunner against the simulator, and the `python -m pipeline run` entry point in a
process of its own where the whole output is what is judged.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.run import _not_committed_line, find_commit_error, run_and_report, run_backfill
from pipeline.staging import RunStaging, recover_staged_run
from pipeline.warehouse import TableNames, WarehouseRef, duckdb_warehouse
from tests.support import (
    REPO,
    assert_landed_exact,
    checkpoint,
    query,
    run_argv,
    seed_traders,
)
from tests.test_staging import staged_run

HELD_TIMEOUT_S = 0.5  # the lock timeout the tests wait, instead of a minute


@pytest.fixture
def server(sim_server):
    """A small world: four wallets, each history one page."""
    return sim_server(seed=23, wallets=4, tier="unlimited", max_trades=300)


@contextlib.contextmanager
def _hold_open(path: Path) -> Iterator[subprocess.Popen]:
    """A second process holding the DuckDB file open (read-only, as a dashboard would)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('ready', flush=True); time.sleep(120)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.kill()
        holder.wait(30)


def test_a_run_whose_own_commit_fails_ends_in_one_line_and_exit_1(tmp_path, server):
    """The trades table gained a NOT NULL column nothing fills: the run's own transaction
    fails. Before, the runner's CommitError came out as three tracebacks and 119 lines."""
    db, staging = tmp_path / "wh.duckdb", tmp_path / "staging"
    wallets = server.simulator.wallet_addresses()
    seed_traders(db, wallets)
    argv = run_argv(db, staging, server, "--run_id=broken-commit", source="polymarket")
    with WarehouseRef(f"duckdb:{db}", TableNames()).open() as warehouse:
        warehouse.ensure_tables()
    query(db, "ALTER TABLE trades ADD COLUMN audit_tag VARCHAR NOT NULL DEFAULT 'x'")
    query(db, "ALTER TABLE trades ALTER COLUMN audit_tag DROP DEFAULT")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith("run broken-commit is staged but not committed"), lines[0]
    assert "the next run's start-up commits it" in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]

    query(db, "ALTER TABLE trades DROP COLUMN audit_tag")  # fixed: the next start-up lands it
    again = run_backfill(run_argv(db, staging, server, source="polymarket"))
    assert again.state == "DONE"
    assert [r.run_id for r in again.recovered if r.committed] == ["broken-commit"]
    assert_landed_exact(db, server, wallets, "polymarket")
    assert all(mark[:2] == (True, True) for mark in checkpoint(db).values())


def test_a_refused_own_commit_says_so_in_its_line(tmp_path):
    staging = staged_run(tmp_path / "staging")
    staging.mark_refused("staged files are gone: ['x']")
    error = RuntimeError(  # as a worker process sends it: the step's traceback, as text
        "Traceback (most recent call last):\n  File ...\n"
        "pipeline.warehouse.base.CommitError: run r1: staged files are gone: ['x'] "
        "[while running 'Commit/Commit']\n"
    )
    why = find_commit_error(error)
    assert why == "run r1: staged files are gone: ['x']"
    line = _not_committed_line(staging, why)
    assert "\n" not in line and line.startswith("run r1 was refused at its commit and parked")
    assert line.endswith(why)
    assert find_commit_error(RuntimeError("something else")) is None


def test_a_held_duckdb_file_at_start_up_is_one_line_naming_it_and_its_holder(
    tmp_path, server, monkeypatch, capsys
):
    monkeypatch.setattr(duckdb_warehouse, "LOCK_TIMEOUT_S", HELD_TIMEOUT_S)
    db, staging = tmp_path / "wh.duckdb", tmp_path / "staging"
    seed_traders(db, server.simulator.wallet_addresses())
    capsys.readouterr()
    with _hold_open(db) as holder:
        code, report = run_and_report(run_argv(db, staging, server, source="polymarket"))
        out = capsys.readouterr().out.strip().splitlines()
        assert (code, report) == (3, None), out
        assert len(out) == 1, out
        assert str(db) in out[0] and f"(PID {holder.pid})" in out[0], out[0]
        assert "stayed locked by another process" in out[0], out[0]
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]


def test_recovery_meeting_a_held_file_goes_on_and_does_not_count_it(tmp_path, monkeypatch):
    """A busy file says nothing about the run: no exception out of recovery, no failed commit
    counted (three of those park a sound run), the run still staged for the next start-up."""
    monkeypatch.setattr(duckdb_warehouse, "LOCK_TIMEOUT_S", HELD_TIMEOUT_S)
    db = tmp_path / "wh.duckdb"
    seed_traders(db, ["0x" + "a" * 40])
    run: RunStaging = staged_run(tmp_path / "staging")
    ref = WarehouseRef(f"duckdb:{db}", TableNames())
    with ref.open() as warehouse:
        warehouse.ensure_tables()
    with _hold_open(db):
        outcome = recover_staged_run(run, ref)
        assert outcome.failed and outcome.busy and not outcome.refused, outcome
        assert "stayed locked by another process" in (outcome.error or "")
    assert run.failed_commits() == 0
    assert run.staged_entries() and not run.is_committed()
    assert recover_staged_run(run, ref).committed  # let go: it lands
