"""The staging of runs that died before their manifest (a claim and part files nothing will ever
read) is deleted by a later start-up of their own warehouse once a day old, a bounded number per
start-up; never another warehouse's, never one whose claim cannot be read, never one that staged,
and never one whose process is still alive. Found from the index, not by listing the root.

Real parts throughout: folders through Beam's FileSystems, DuckDB files, `prepare`, and a real
second process for a claim whose process is alive.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.lifecycle import prepare, release
from pipeline.staging import (
    CLAIMED,
    INDEX,
    RunStaging,
    delete_abandoned_staging,
    warehouse_identity,
)
from tests.support import local_config, outcome, stage, trade
from tests.test_shared_staging import new_warehouse

DAY = 86_400.0


def killed_mid_fetch(root: Path, run_id: str, warehouse, days_ago: float = 2.0) -> RunStaging:
    """What a run SIGKILLed mid-fetch leaves: its claim (for `warehouse`, `days_ago` old, as its
    index entry's name and the claim both say) and part files, no manifest."""
    run = RunStaging(str(root), run_id)
    run.claim(warehouse_identity(warehouse), f"{run_id} local pid 1 on elsewhere")
    stage(
        root,
        run_id,
        trades=[trade("0xa", f"{run_id}-1", run_id)],
        outcomes=[outcome("0xa", run_id, True, 10, trade_count=1)],
    )
    _age(run, days_ago)
    return run


def _age(run: RunStaging, days_ago: float) -> None:
    """Dates the run's claim `days_ago` back, in the claim and in its `claimed/` entry's name."""
    claim = json.loads(Path(run.claim_file).read_text())
    (entry,) = _claimed_entries(Path(run.root), run.run_id)
    entry.unlink()
    claim["claimed_at"] -= days_ago * DAY
    Path(run.claim_file).write_text(json.dumps(claim))
    key = entry.name.split(".")[-2]
    Path(run.claimed_entry(claim["claimed_at"], key)).touch()


def _claimed_entries(root: Path, run_id: str | None = None) -> list[Path]:
    folder = root / INDEX / "claimed"
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.endswith(".json") and (run_id is None or f"_{run_id}." in p.name)
    )


def test_start_up_deletes_only_its_own_warehouses_runs_that_died_before_staging(tmp_path, caplog):
    root = tmp_path / "staging"
    x_db, y_db = tmp_path / "x.duckdb", tmp_path / "y.duckdb"
    x, y = new_warehouse(x_db), new_warehouse(y_db)
    dead = killed_mid_fetch(root, "dead", x)
    recent = killed_mid_fetch(root, "recent", x, days_ago=0.1)  # may be a live run: kept
    theirs = killed_mid_fetch(root, "theirs", y)
    torn = killed_mid_fetch(root, "torn", x)
    Path(torn.claim_file).write_text("\x00 not a claim")
    staged = killed_mid_fetch(root, "staged", x)
    staged.write_manifest({})
    assert _claimed_entries(root, "staged") == []  # a staged run leaves `claimed/`
    alive = killed_mid_fetch(root, "alive", x)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        claim = json.loads(Path(alive.claim_file).read_text())
        claim.update(
            pid=sleeper.pid, holder=f"alive local pid {sleeper.pid} on {socket.gethostname()}"
        )
        Path(alive.claim_file).write_text(json.dumps(claim))

        config = local_config(x_db, root, "x-now")
        with caplog.at_level(logging.WARNING, logger="pipeline.staging"):
            prepare(config)
        release(config)
    finally:
        sleeper.kill()
        sleeper.wait(30)

    assert not Path(dead.folder).exists()
    assert _claimed_entries(root, "dead") == []
    deleted = [
        r.getMessage() for r in caplog.records if "deleted the staging of run" in r.getMessage()
    ]
    assert len(deleted) == 1 and deleted[0].startswith("deleted the staging of run dead:"), deleted
    for kept in (recent, theirs, torn, staged, alive):
        assert (Path(kept.folder) / "trades").is_dir(), kept.run_id
    assert "run torn has no manifest but its claim is unreadable" in caplog.text
    assert _claimed_entries(root, "theirs") and _claimed_entries(root, "alive")

    # Y's own start-up deletes its own (and leaves X's recent one alone).
    prepare(local_config(y_db, root, "y-now"))
    assert not Path(theirs.folder).exists() and Path(recent.folder).exists()


def test_a_start_up_deletes_a_bounded_number_oldest_first(tmp_path):
    root = tmp_path / "staging"
    x = new_warehouse(tmp_path / "x.duckdb")
    runs = [killed_mid_fetch(root, f"k{n}", x, days_ago=5 - n) for n in range(3)]
    ours = warehouse_identity(x)
    assert delete_abandoned_staging(str(root), ours, limit=2) == ["k0", "k1"]
    assert delete_abandoned_staging(str(root), ours, limit=2) == ["k2"]
    assert not any(Path(run.folder).exists() for run in runs)
    assert delete_abandoned_staging(str(root), ours) == []


def test_folders_claimed_before_the_index_are_found_once_by_one_scan(tmp_path):
    """Litter left by older code has no `claimed/` entry: the first sweep of a local root scans
    its folders once, then `claimed/BUILT` says it need not again."""
    root = tmp_path / "staging"
    x = new_warehouse(tmp_path / "x.duckdb")
    old = killed_mid_fetch(root, "old", x, days_ago=3)
    (entry,) = _claimed_entries(root, "old")
    entry.unlink()  # as older code left it: a claim, part files, no index entry
    nobody = root / "nobody"  # a claim that names no warehouse: nothing says whose
    (nobody / "trades").mkdir(parents=True)
    (nobody / CLAIMED).write_text(json.dumps({"pid": 1, "claimed_at": time.time() - 9 * DAY}))

    assert delete_abandoned_staging(str(root), warehouse_identity(x)) == ["old"]
    assert not Path(old.folder).exists() and nobody.is_dir()
    assert (root / INDEX / "claimed" / "BUILT").is_file()


def test_a_run_that_gives_its_id_back_leaves_no_claimed_entry(tmp_path):
    root = tmp_path / "staging"
    x = new_warehouse(tmp_path / "x.duckdb")
    run = RunStaging(str(root), "r1")
    run.claim(warehouse_identity(x), "r1 holder")
    assert len(_claimed_entries(root, "r1")) == 1
    assert run.release_claim("r1 holder")
    assert _claimed_entries(root) == [] and not os.path.exists(run.folder)
