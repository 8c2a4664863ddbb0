"""One staging root, several warehouses: each recovers, deletes and commits only its own runs.

The default `./staging` serves every local DuckDB file, so two warehouses sharing a root is the
ordinary case, not a mistake: a run records its warehouse when it claims its id, start-up and
retention act only on their own warehouse's runs, `commit --run_id` refuses another's in one line,
and a start-up that fails gives its run id back instead of leaving a folder that holds only a claim.

Real parts throughout: DuckDB files, folders through Beam's FileSystems, `prepare`, the
`python -m pipeline` entry point, and (for the scenario a reviewer ran) a run killed by a failpoint
between staging and commit, against the simulator on the DirectRunner.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline import failpoints, lease
from pipeline.__main__ import main as cli
from pipeline.lifecycle import prepare
from pipeline.run import run_backfill
from pipeline.staging import (
    CLAIMED,
    INDEX,
    RunStaging,
    commit_staged_run,
    delete_expired_staging,
    parked_runs,
    recover_staged_run,
    runs_to_recover,
    warehouse_identity,
)
from pipeline.warehouse import TableNames, WarehouseRef, open_warehouse
from tests.support import (
    assert_landed_exact,
    assert_production_is_truth,
    local_config,
    outcome,
    query,
    run_subprocess,
    seed_traders,
    stage,
    trade,
)

DAY = 86_400.0


def new_warehouse(path: Path) -> WarehouseRef:
    with open_warehouse(f"duckdb:{path}") as warehouse:
        warehouse.ensure_tables()
    return WarehouseRef(f"duckdb:{path}", TableNames())


def claimed_run(root: Path, run_id: str, warehouse: WarehouseRef | None) -> RunStaging:
    """A whole staged run as the graph leaves it: claimed for `warehouse` (None: as a version
    before runs recorded their warehouse), wallet 0x<run_id> with 2 trades, manifest written."""
    staging = RunStaging(str(root), run_id)
    staging.claim(None if warehouse is None else warehouse_identity(warehouse))
    wallet = f"0x{run_id}"
    files = stage(
        root,
        run_id,
        trades=[trade(wallet, f"{run_id}-1", run_id), trade(wallet, f"{run_id}-2", run_id)],
        outcomes=[outcome(wallet, run_id, True, 10, trade_count=2)],
    )
    staging.write_manifest(files)
    return staging


def commit_cli(db: Path, root: Path, run_id: str, capsys) -> tuple[int, list[str]]:
    code = cli(
        ["commit", f"--warehouse=duckdb:{db}", f"--staging_root={root}", f"--run_id={run_id}"]
    )
    return code, capsys.readouterr().out.strip().splitlines()


def runs_in(db: Path) -> list[str]:
    return [row[0] for row in query(db, "SELECT run_id FROM backfill_runs ORDER BY run_id")]


# -- the scenario a reviewer ran: X killed between staging and commit, then Y starts --------------


@pytest.mark.world(seed=7, wallets=10, max_trades=400)
@pytest.mark.parametrize("source", ["polymarket"])
def test_a_run_staged_for_one_warehouse_is_recovered_by_it_and_never_by_another(
    world, tmp_path, capsys, caplog
):
    x, y = world.db, tmp_path / "y.duckdb"
    seed_traders(y, world.wallets[:2])

    killed = run_subprocess(
        world.argv("--run_id=xa"),
        world.server.api_key,
        env={failpoints.ENVIRONMENT_VARIABLE: failpoints.STAGED},
    )
    output, _ = killed.communicate(timeout=300)
    assert killed.returncode == failpoints.KILLED_EXIT_CODE, output
    xa = RunStaging(str(world.staging), "xa")
    assert xa.recorded_warehouse() == f"duckdb:{x.resolve()}"

    # Y, started on the same root, leaves X's run alone (one INFO line says so) and lands its own.
    with caplog.at_level(logging.INFO, logger="pipeline.staging"):
        summary = run_backfill(world.argv("--run_id=yb", db=y))
    assert summary.recovered == []
    assert "1 staged runs under" in caplog.text and "other warehouses" in caplog.text
    assert runs_in(y) == ["yb"]
    assert_landed_exact(y, world.server, world.wallets[:2], world.source)
    assert runs_in(x) == [] and not xa.is_committed()

    # By hand, into Y: refused in one line naming both warehouses, exit 2, nothing touched.
    code, lines = commit_cli(y, world.staging, "xa", capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"duckdb:{x.resolve()}" in lines[0] and f"duckdb:{y.resolve()}" in lines[0]
    assert runs_in(y) == ["yb"]

    # X's next start-up recovers it, and X ends exact.
    summary = run_backfill(world.argv("--run_id=xc"))
    assert [(r.run_id, r.committed) for r in summary.recovered] == [("xa", True)]
    assert_production_is_truth(world)
    assert "xa" in runs_in(x) and runs_in(y) == ["yb"]


# -- identity, commit by hand, start-up and retention, with runs staged by hand ------------------


def test_two_spellings_of_one_warehouse_are_one_identity_and_tables_tell_two_apart(
    tmp_path, monkeypatch
):
    db = tmp_path / "wh.duckdb"
    (tmp_path / "link").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path)
    spellings = [
        f"duckdb:{db}",
        f"duckdb:{tmp_path}/sub/../wh.duckdb",
        f"duckdb:{tmp_path}/link/wh.duckdb",
        "duckdb:wh.duckdb",
        "duckdb:./wh.duckdb",
    ]
    identities = {warehouse_identity(WarehouseRef(spec, TableNames())) for spec in spellings}
    assert identities == {f"duckdb:{db.resolve()}"}
    other_tables = WarehouseRef(f"duckdb:{db}", TableNames(trades="trades_b", runs="runs_b"))
    assert warehouse_identity(other_tables) == (
        f"duckdb:{db.resolve()} tables runs=runs_b,trades=trades_b"
    )
    assert warehouse_identity(WarehouseRef("bigquery:my-project.polymarket", TableNames())) == (
        "bigquery:my-project.polymarket"
    )


def test_commit_by_hand_of_another_warehouses_run_is_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / "staging"
    x, y = new_warehouse(tmp_path / "x.duckdb"), new_warehouse(tmp_path / "y.duckdb")
    claimed_run(root, "xa", x)

    code, lines = commit_cli(tmp_path / "y.duckdb", root, "xa", capsys)
    assert code == 2
    assert lines == [
        f"commit: run xa belongs to warehouse {warehouse_identity(x)}, not to "
        f"{warehouse_identity(y)}: commit it with that warehouse's --warehouse (and table names)"
    ]
    assert runs_in(tmp_path / "y.duckdb") == []
    # The function every commit goes through says the same, and touches nothing either.
    refused = commit_staged_run(RunStaging(str(root), "xa"), y)
    assert refused.foreign and refused.report is None and not refused.refused
    assert parked_runs(str(root)) == []

    code, _ = commit_cli(tmp_path / "x.duckdb", root, "xa", capsys)  # its own: committed
    assert code == 0 and runs_in(tmp_path / "x.duckdb") == ["xa"]


def test_start_up_reads_nothing_of_another_warehouses_runs(tmp_path, monkeypatch, caplog):
    root = tmp_path / "staging"
    x, y = new_warehouse(tmp_path / "x.duckdb"), new_warehouse(tmp_path / "y.duckdb")
    theirs = [claimed_run(root, f"x{n:02d}", x).run_id for n in range(20)]
    ours = claimed_run(root, "y00", y)
    assert runs_to_recover(str(root), set()) != []  # builds the index (and BUILT) once

    touched: list[str] = []
    for name in ("exists", "open"):
        real = getattr(FileSystems, name)

        def watched(path, *args, _real=real, **kwargs):
            touched.append(path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(FileSystems, name, watched)
    with caplog.at_level(logging.INFO, logger="pipeline.staging"):
        assert runs_to_recover(str(root), set(), warehouse_identity(y)) == [ours]
    assert [path for path in touched if any(f"/{run_id}" in path for run_id in theirs)] == []
    assert "20 staged runs under" in caplog.text and "other warehouses" in caplog.text
    assert runs_to_recover(str(root), set(), warehouse_identity(x)) == [
        RunStaging(str(root), run_id) for run_id in theirs
    ]


def test_retention_deletes_only_the_runs_committed_into_its_own_warehouse(tmp_path):
    root = tmp_path / "staging"
    x, y = new_warehouse(tmp_path / "x.duckdb"), new_warehouse(tmp_path / "y.duckdb")
    for run_id, warehouse in (("xa", x), ("yb", y)):
        assert commit_staged_run(claimed_run(root, run_id, warehouse), warehouse).committed
    later = time.time() + 9 * DAY
    # Even told that its runs table holds both, Y deletes only what was committed into Y.
    assert delete_expired_staging(
        str(root), {"xa", "yb"}, 7, now=later, warehouse=warehouse_identity(y)
    ) == ["yb"]
    assert (root / "xa").is_dir() and not (root / "yb").exists()
    assert delete_expired_staging(
        str(root), {"xa"}, 7, now=later, warehouse=warehouse_identity(x)
    ) == ["xa"]
    assert not (root / "xa").exists()


def test_a_run_staged_before_runs_recorded_their_warehouse(tmp_path, capsys, caplog):
    """Recovered as it always was on a root only one warehouse uses; parked (for a commit by hand
    into its own warehouse) once the root is known to be shared, rather than guessed."""
    root = tmp_path / "staging"
    x_db, y_db = tmp_path / "x.duckdb", tmp_path / "y.duckdb"
    new_warehouse(x_db), new_warehouse(y_db)
    claimed_run(root, "old1", None)
    recovered = prepare(local_config(x_db, root, "x1"))
    assert [(r.run_id, r.committed) for r in recovered] == [("old1", True)]

    claimed_run(root, "old2", None)
    with caplog.at_level(logging.WARNING):
        assert prepare(local_config(y_db, root, "y1")) == []  # X has claimed runs here: shared
    x_identity = warehouse_identity(WarehouseRef(f"duckdb:{x_db}", TableNames()))
    assert "old2" in caplog.text and x_identity in caplog.text
    [parked] = parked_runs(str(root))
    assert parked.run_id == "old2" and "commit it by hand" in parked.reason
    assert prepare(local_config(x_db, root, "x2")) == []  # parked: neither tries again
    code, _ = commit_cli(y_db, root, "old2", capsys)  # it recorded no warehouse: any may land it
    assert code == 0 and runs_in(y_db) == ["old2"] and parked_runs(str(root)) == []


# -- a start-up that fails gives its run id back -------------------------------------------------


def run_cli(db: Path, root: Path, run_id: str, *extra: str) -> int:
    return cli(
        ["run", f"--warehouse=duckdb:{db}", f"--staging_root={root}", f"--run_id={run_id}", *extra]
    )


def test_a_run_whose_source_is_gone_leaves_no_claim_and_its_id_can_be_used_again(tmp_path, capsys):
    db, root = tmp_path / "w.duckdb", tmp_path / "staging"
    new_warehouse(db)
    gone = ["--data_api_url=http://127.0.0.1:9", "--max_attempts=1", "--connect_timeout=0.5"]
    for _ in range(2):  # the second would be "run id taken" (exit 2) if the first kept its claim
        assert run_cli(db, root, "dead", *gone) == 1
        assert "could not start" in capsys.readouterr().out
        assert not (root / "dead").exists()
    assert sorted(p.name for p in root.iterdir()) == [INDEX]


def test_a_run_refused_by_the_lease_claims_nothing(tmp_path, capsys):
    db, root = tmp_path / "w.duckdb", tmp_path / "staging"
    new_warehouse(db)
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert warehouse.acquire_lease("other dataflow", 600)
    assert run_cli(db, root, "busy") == 3
    assert not (root / "busy").exists()


def test_a_start_up_that_fails_after_the_claim_gives_it_back(tmp_path, monkeypatch):
    db, root = tmp_path / "w.duckdb", tmp_path / "staging"
    new_warehouse(db)

    def broken(*_args, **_kwargs):
        raise RuntimeError("the index cannot be listed")

    monkeypatch.setattr("pipeline.lifecycle.runs_to_recover", broken)
    with pytest.raises(RuntimeError, match="cannot be listed"):
        prepare(local_config(db, root, "r1"))
    assert not (root / "r1").exists()
    with open_warehouse(f"duckdb:{db}") as warehouse:
        assert not warehouse.read_lease().held


def test_a_claim_is_given_back_only_by_its_holder_and_never_with_staging(tmp_path):
    root = tmp_path / "staging"
    mine = RunStaging(str(root), "r1")
    mine.claim("duckdb:/w.duckdb", holder=lease.holder_name("r1", local=True))
    assert not mine.release_claim("r1 local pid 1 on elsewhere")  # another holder's claim
    assert not mine.release_claim("")
    (root / "r1" / "trades").mkdir()
    (root / "r1" / "trades" / "part-0.json").write_text("")
    assert not mine.release_claim(lease.holder_name("r1", local=True))  # it holds staging
    assert (root / "r1" / CLAIMED).exists()
    (root / "r1" / "trades" / "part-0.json").unlink()
    (root / "r1" / "trades").rmdir()
    assert mine.release_claim(lease.holder_name("r1", local=True))
    assert not (root / "r1").exists()
    old = RunStaging(str(root), "r2")
    old.claim()  # as a claim that names no holder: never given back by anyone
    assert not old.release_claim(lease.holder_name("r2", local=True))
    assert (root / "r2" / CLAIMED).exists()


def test_status_lists_only_its_own_warehouses_parked_runs(tmp_path):
    from pipeline.status import show_parked

    root = tmp_path / "staging"
    x, y = new_warehouse(tmp_path / "x.duckdb"), new_warehouse(tmp_path / "y.duckdb")
    for run_id, warehouse in (("xa", x), ("yb", y), ("old", None)):
        claimed_run(root, run_id, warehouse).mark_refused(f"{run_id} is short")
    assert {run.run_id for run in parked_runs(str(root))} == {"xa", "yb", "old"}

    shown = show_parked(str(root), warehouse_identity(y))
    # Its own, and the one nothing tells the owner of; the other warehouse's only counted.
    assert "parked runs      2 " in shown and "1 of other warehouses sharing this root" in shown
    assert "yb is short" in shown and "old is short" in shown and "xa" not in shown


def test_status_does_not_say_none_for_a_staging_folder_that_is_not_there(tmp_path, capsys):
    """Production stages on gs://: `status` run without --staging_root looked in ./staging, found
    nothing and said "none", whatever was parked."""
    from pipeline.__main__ import main as cli

    db = tmp_path / "x.duckdb"
    new_warehouse(db)
    missing = tmp_path / "staging"
    assert cli(["status", f"--warehouse=duckdb:{db}", f"--staging_root={missing}"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("parked runs      not known: no staging folder") and str(missing) in line
    claimed_run(missing, "xa", new_warehouse(db)).mark_refused("xa is short")
    assert cli(["status", f"--warehouse=duckdb:{db}", f"--staging_root={missing}"]) == 0
    assert "xa is short" in capsys.readouterr().out


def test_status_lists_its_own_runs_staged_and_waiting_with_their_failed_commits(tmp_path, capsys):
    """A run killed after its manifest (xa), and one whose commit failed in the warehouse and
    waits for its next try (xb), are shown with the failed count and last error; a run whose
    commit landed though its index entry was left behind (xc), and another warehouse's (ya),
    are not. Before, status named neither: "0 done, nothing parked" over a whole staged run."""
    root = tmp_path / "staging"
    db = tmp_path / "x.duckdb"
    x, y = new_warehouse(db), new_warehouse(tmp_path / "y.duckdb")
    claimed_run(root, "xa", x)
    failing, landed = claimed_run(root, "xb", x), claimed_run(root, "xc", x)
    claimed_run(root, "ya", y)
    left_behind = {Path(path): Path(path).read_bytes() for path in landed.staged_entries()}
    assert commit_staged_run(landed, x).committed
    for path, content in left_behind.items():  # a commit cut short before its entry moved
        path.write_bytes(content)
    query(db, "ALTER TABLE trades ADD COLUMN audit_tag VARCHAR NOT NULL DEFAULT 'x'")
    query(db, "ALTER TABLE trades ALTER COLUMN audit_tag DROP DEFAULT")
    tried = recover_staged_run(failing, x)
    assert tried.failed and not tried.refused and not tried.parked
    query(db, "ALTER TABLE trades DROP COLUMN audit_tag")

    files_before = sorted(str(p) for p in root.rglob("*"))
    capsys.readouterr()
    assert cli(["status", f"--warehouse=duckdb:{db}", f"--staging_root={root}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(str(p) for p in root.rglob("*")) == files_before  # status only reads
    start = next(i for i, line in enumerate(out) if line.startswith("staged runs"))
    section = [out[start], *[line for line in out[start + 1 :] if line.startswith("  ")][:2]]
    assert section[0].startswith("staged runs      2 staged, not committed yet: the next run"), out
    assert "1 of other warehouses sharing this root" in section[0], section[0]
    assert section[1] == "  xa", section
    assert section[2].startswith("  xb: commit failed 1 time, last error: "), section
    assert "NOT NULL" in section[2] or "audit_tag" in section[2], section[2]
    assert not any("xc" in line or "ya" in line for line in section), section

    assert commit_staged_run(RunStaging(str(root), "xa"), x).committed
    assert commit_staged_run(failing, x).committed
    assert cli(["status", f"--warehouse=duckdb:{db}", f"--staging_root={root}"]) == 0
    shown = capsys.readouterr().out
    assert "staged runs      none waiting for a commit; 1 of other warehouses" in shown, shown
