"""Who may take the warehouse's lease (pipeline/lease.py): a live holder keeps it, a local run whose
process has ended gives it up at once, a Dataflow holder only by expiry. A real DuckDB file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from pipeline import lease
from pipeline.warehouse import Warehouse, open_warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    with open_warehouse(f"duckdb:{tmp_path / 'w.duckdb'}") as opened:
        opened.ensure_tables()
        yield opened


def ended_pid() -> int:
    """The pid of a process that has run and ended (reaped, so nothing answers to it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def another_backfill_holds_the_lease(db: Path, run_id: str) -> str:
    """Run `run_id` of a live process (our parent) takes the lease of the DuckDB warehouse `db`,
    its tables made, for 10 minutes; its holder name."""
    holder = f"{run_id} local pid {os.getppid()} on {socket.gethostname()}"
    with open_warehouse(f"duckdb:{db}") as warehouse:
        warehouse.ensure_tables()
        assert warehouse.acquire_lease(holder, 600)
    return holder


def test_a_second_run_is_refused_naming_the_holder(warehouse):
    first = f"run-a local pid {os.getppid()} on {socket.gethostname()}"  # another live process
    lease.take(warehouse, first, 600)
    with pytest.raises(lease.WarehouseBusy, match="run-a local pid"):
        lease.take(warehouse, lease.holder_name("run-b", local=False), 600)
    assert warehouse.read_lease().holder == first


def test_a_local_holder_whose_process_ended_is_taken_over(warehouse):
    dead = f"run-a local pid {ended_pid()} on {socket.gethostname()}"
    assert warehouse.acquire_lease(dead, 3600)
    lease.take(warehouse, lease.holder_name("run-b", local=True), 600)
    assert warehouse.read_lease().holder.startswith("run-b local pid ")


def test_an_earlier_run_of_this_process_is_over(warehouse):
    # One process runs one run at a time: a lease its earlier run kept is taken over.
    assert warehouse.acquire_lease(f"run-a local pid {os.getpid()} on {socket.gethostname()}", 3600)
    lease.take(warehouse, lease.holder_name("run-b", local=True), 600)
    assert warehouse.read_lease().holder.startswith("run-b local pid ")


@pytest.mark.parametrize(
    "holder",
    [
        f"run-a local pid {os.getppid()} on {socket.gethostname()}",  # alive
        f"run-a local pid 1 on {socket.gethostname()}",  # alive, not ours to signal
        "run-a local pid 999999 on another-host",  # not this machine's to judge
        "run-a dataflow",  # its launcher exits once the job is submitted
    ],
)
def test_a_holder_that_may_be_alive_keeps_the_lease(warehouse, holder):
    assert warehouse.acquire_lease(holder, 3600)
    with pytest.raises(lease.WarehouseBusy):
        lease.take(warehouse, lease.holder_name("run-b", local=True), 600)
    assert warehouse.read_lease().holder == holder


def test_the_lease_lasts_the_budget_and_the_commit_margin():
    assert lease.ttl_seconds(20) == 20 * 60 + lease.COMMIT_MARGIN_S
    assert lease.ttl_seconds(None) == lease.UNBOUNDED_TTL_S
    assert lease.ttl_seconds(20, 29) == lease.ttl_seconds(None, 29) == 29 * 60  # --lease_minutes


def test_a_commit_by_hand_waits_for_the_backfill_that_holds_the_lease(tmp_path, capsys):
    from pipeline.__main__ import main as cli
    from pipeline.staging import RunStaging

    db, root = tmp_path / "w.duckdb", tmp_path / "staging"
    RunStaging(str(root), "r1").write_manifest({})  # staged, with nothing in it
    running = another_backfill_holds_the_lease(db, "run-b")
    argv = ["commit", f"--warehouse=duckdb:{db}", f"--staging_root={root}", "--run_id=r1"]
    assert cli(argv) == 3
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "run-b local pid" in out
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert warehouse.committed_run_ids() == set()
        warehouse.release_lease(running)
    assert cli(argv) == 0  # once it is free; and the commit gave the lease back
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert not warehouse.read_lease().held


def test_a_run_on_a_warehouse_another_backfill_holds_does_not_start(
    tmp_path, capsys, monkeypatch, sim_server
):
    """It claims nothing and leaves nothing: not even the temporary folder Beam makes for the
    graph that start-up builds meanwhile (its source answers), which only a run removes."""
    import tempfile

    from pipeline.__main__ import main as cli
    from tests.support import source_argv

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    server = sim_server(seed=3, wallets=2)
    db, root = tmp_path / "w.duckdb", tmp_path / "staging"
    another_backfill_holds_the_lease(db, "run-a")
    argv = ["run", f"--warehouse=duckdb:{db}", f"--staging_root={root}", "--run_id=second"]
    argv += source_argv(server, "polymarket")
    assert cli(argv) == 3
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "another backfill is using this warehouse" in printed[0]
    assert "run-a local pid" in printed[0]
    assert not (root / "second").exists()  # it claimed nothing
    assert list(temp.iterdir()) == []


def test_a_run_whose_source_is_gone_at_launch_gives_the_lease_back(tmp_path, capsys):
    from pipeline.__main__ import main as cli

    db, root = tmp_path / "w.duckdb", tmp_path / "staging"
    with open_warehouse(f"duckdb:{db}") as made:  # an existing warehouse (a missing file is a typo)
        made.ensure_tables()
    gone = "http://127.0.0.1:9"  # nothing listens on the discard port
    argv = ["run", f"--warehouse=duckdb:{db}", f"--staging_root={root}", f"--data_api_url={gone}"]
    argv += ["--max_attempts=1", "--connect_timeout=0.5"]
    assert cli(argv) == 1
    assert "could not start" in capsys.readouterr().out
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert not warehouse.read_lease().held


def test_status_tells_a_live_holder_from_one_whose_process_ended(tmp_path, warehouse):
    from pipeline.status import show_status

    spec = f"duckdb:{tmp_path / 'w.duckdb'}"
    alive = f"run-a local pid {os.getppid()} on {socket.gethostname()}"
    assert warehouse.acquire_lease(alive, 600)
    assert "(no other backfill starts before then)" in show_status(spec, warehouse.tables)
    warehouse.release_lease(alive)
    dead = f"run-b local pid {ended_pid()} on {socket.gethostname()}"
    assert warehouse.acquire_lease(dead, 600)
    report = show_status(spec, warehouse.tables)
    assert f"held by {dead}" in report and "that process has ended: the next run takes" in report


def test_a_finished_run_gave_the_lease_back_from_its_commit_step(tmp_path, sim_server, monkeypatch):
    """The commit step gives the lease back and says so (a counter), so `run` opens no warehouse
    session to give it back again; the lease is free, and a second run starts."""
    from pipeline.run import run_backfill
    from tests.support import run_argv, seed_traders
    from transforms.stage import LEASE_GIVEN_BACK

    server = sim_server(seed=5, wallets=3, max_trades=40)
    db, root = tmp_path / "w.duckdb", tmp_path / "staging"
    seed_traders(db, server.simulator.wallet_addresses())
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    report = run_backfill(run_argv(db, root, server))
    assert report.state == "DONE" and report.counters[LEASE_GIVEN_BACK] == 1
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert not warehouse.read_lease().held
    assert run_backfill(run_argv(db, root, server)).state == "DONE"


def test_a_run_id_the_warehouse_committed_is_refused_whatever_the_staging_root(
    tmp_path, capsys, sim_server
):
    """The claim sees only its staging root: under a new one, a committed id fetched every
    wallet, landed nothing (the commit found the run committed) and said DONE."""
    from pipeline.__main__ import main as cli
    from pipeline.warehouse.seed import seed_traders
    from tests.support import source_argv, trade_requests

    server = sim_server(seed=3, wallets=2)
    db = tmp_path / "w.duckdb"
    seed_traders(db, server.simulator.wallet_addresses())
    argv = ["run", f"--warehouse=duckdb:{db}", "--run_id=r1", *source_argv(server, "polymarket")]
    assert cli([*argv, f"--staging_root={tmp_path / 'a'}"]) == 0
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert "r1" in warehouse.committed_run_ids()
    with duckdb.connect(str(db)) as con:  # every wallet pending again: a run would fetch them
        con.execute("DELETE FROM backfill_checkpoint")
    asked = trade_requests(server, "polymarket")
    capsys.readouterr()
    assert cli([*argv, f"--staging_root={tmp_path / 'b'}"]) == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "run_id r1 is committed in this warehouse already" in line
    assert trade_requests(server, "polymarket") == asked  # it fetched nothing
    assert not (tmp_path / "b" / "r1").exists()  # and gave its claim back
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert not warehouse.read_lease().held
