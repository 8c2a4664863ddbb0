"""Who may take the warehouse's lease (pipeline/lease.py): a live holder keeps it, a local run whose
process has ended gives it up at once, a Dataflow holder only by expiry. A real DuckDB file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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


def test_a_second_run_is_refused_naming_the_holder(warehouse):
    first = lease.holder_name("run-a", local=True)
    lease.take(warehouse, first, 600)
    with pytest.raises(lease.WarehouseBusy, match="run-a local pid"):
        lease.take(warehouse, lease.holder_name("run-b", local=False), 600)
    assert warehouse.read_lease().holder == first


def test_a_local_holder_whose_process_ended_is_taken_over(warehouse):
    dead = f"run-a local pid {ended_pid()} on {socket.gethostname()}"
    assert warehouse.acquire_lease(dead, 3600)
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
