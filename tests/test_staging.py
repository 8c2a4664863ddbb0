"""A run's staging in a local folder: state files written whole, torn ones never a crash, staging that
contradicts itself refused and parked, `commit --run_id` in one line, and a run id claimed once.

Real parts throughout: files on disk, Beam's FileSystems, a DuckDB warehouse, `prepare` and the
`python -m pipeline commit` entry point; the end-to-end case runs the graph against the simulator.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest

from pipeline.__main__ import main as cli
from pipeline.lifecycle import prepare
from pipeline.options import OptionsError
from pipeline.run import run_backfill
from pipeline.staging import (
    COMMITTED,
    INDEX,
    MANIFEST,
    REFUSED,
    RunIdTaken,
    RunStaging,
    check_staged_counts,
    commit_staged_run,
    parked_runs,
    runs_to_recover,
    staged_wallet,
)
from pipeline.warehouse import CommitReport, TableNames, WarehouseRef, open_warehouse
from tests.support import (
    assert_production_is_truth,
    local_config,
    local_pipeline,
    outcome,
    query,
    seed_traders,
    stage,
    trade,
)

TORN_MANIFESTS = {
    "empty": "",
    "cut short": '{"files": {"trades": ["/x/trades/part-0',
    "garbage": "\x00\x01 not json",
    "not an object": "[1, 2]",
    "another run's": json.dumps({"run_id": "r9", "files": {}}),
    "no files": json.dumps({"run_id": "r1"}),
    "files not lists": json.dumps({"run_id": "r1", "files": {"trades": "part-0.json"}}),
}


def staged_run(root: Path, run_id: str = "r1") -> RunStaging:
    """A whole staged run by hand, as the graph leaves it: wallet 0xa fetched 3 trades, 0xb 1,
    0xc failed after staging 1; manifest written, not committed."""
    files = stage(
        root,
        run_id,
        trades=[
            trade("0xa", "a1", run_id),
            trade("0xa", "a2", run_id),
            trade("0xb", "b1", run_id),
            trade("0xa", "a3", run_id),
            trade("0xc", "c1", run_id),
        ],
        outcomes=[
            outcome("0xa", run_id, True, 10, trade_count=3),
            outcome("0xb", run_id, True, 10, trade_count=1),
            outcome("0xc", run_id, False, 10, trade_count=1, error="HTTP 500 after 5 attempts"),
        ],
    )
    staging = RunStaging(str(root), run_id)
    staging.write_manifest(files)
    return staging


def commit_cli(db: Path, root: Path | str, run_id: str, capsys) -> tuple[int, list[str]]:
    """`python -m pipeline commit --run_id`, in process: its exit code and stdout lines."""
    code = cli(
        ["commit", f"--warehouse=duckdb:{db}", f"--staging_root={root}", f"--run_id={run_id}"]
    )
    return code, capsys.readouterr().out.strip().splitlines()


def production(db: Path) -> tuple[list[tuple], list[tuple]]:
    return (
        query(db, "SELECT wallet_address, id FROM trades ORDER BY id"),
        query(db, "SELECT wallet_address, upload_successful FROM backfill_checkpoint ORDER BY 1"),
    )


def new_warehouse(path: Path) -> WarehouseRef:
    with open_warehouse(f"duckdb:{path}") as warehouse:
        warehouse.ensure_tables()
    return WarehouseRef(f"duckdb:{path}", TableNames())


# -- state files: written whole, torn ones never a crash ------------------------------------------


def test_state_files_are_replaced_whole_and_a_killed_writes_temporary_is_ignored(tmp_path, caplog):
    staging = staged_run(tmp_path / "staging")
    staging.mark_committed(CommitReport("r1", already_committed=False, trades_inserted=4))
    marker = Path(staging.marker)
    with marker.open("rb") as reader:  # a reader that opened the marker before a rewrite ...
        staging.mark_committed(CommitReport("r1", already_committed=True))
        assert json.loads(reader.read())["trades_inserted"] == 4  # ... still reads it whole
    assert json.loads(marker.read_text())["already_committed"] is True
    names = {p.name for p in Path(staging.folder).iterdir()}
    assert names == {"trades", "outcomes", MANIFEST, COMMITTED}  # no temporary left behind

    # A write killed between its temporary file and the rename leaves only the temporary:
    # start-up sees a run without a manifest (fetched again), never a torn one.
    killed = tmp_path / "staging" / "r2"
    stage(tmp_path / "staging", "r2", trades=[trade("0xd", "d1", "r2")])
    (killed / f"{MANIFEST}.0123abcd.tmp").write_text('{"run_id": "r2", "fi')
    db = tmp_path / "wh.duckdb"
    new_warehouse(db)
    with caplog.at_level(logging.WARNING):
        assert [r.run_id for r in prepare(local_config(db, tmp_path / "staging"))] == []
    assert "r2" not in caplog.text


@pytest.mark.parametrize("content", TORN_MANIFESTS.values(), ids=TORN_MANIFESTS.keys())
def test_a_torn_manifest_is_not_staged_at_start_up_nor_for_commit(
    tmp_path, caplog, capsys, content
):
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    new_warehouse(db)
    staging = staged_run(root)
    Path(staging.manifest).write_text(content)
    with caplog.at_level(logging.WARNING):
        recovered = prepare(local_config(db, root))
    assert recovered == []
    assert staging.manifest in caplog.text  # the warning names the file
    assert production(db) == ([], [])

    code, lines = commit_cli(db, root, "r1", capsys)
    assert code == 2
    assert len(lines) == 1 and staging.manifest in lines[0], lines
    assert production(db) == ([], [])


@pytest.mark.parametrize("content", ["", '{"run_id": "r1", "trades_ins'], ids=["empty", "cut"])
def test_a_torn_marker_counts_as_not_committed_and_committing_again_is_safe(
    tmp_path, caplog, capsys, content
):
    root = tmp_path / "staging"
    staging = staged_run(root)
    first = tmp_path / "first.duckdb"
    assert commit_staged_run(staging, new_warehouse(first)).committed
    # The count check passed: 0xc failed, so its one partial trade is not counted against it.
    assert query(first, "SELECT wallet_address, COUNT(*) FROM trades GROUP BY 1 ORDER BY 1") == [
        ("0xa", 3),
        ("0xb", 1),
    ]
    landed = production(first)
    Path(staging.marker).write_text(content)

    # The warehouse that committed it knows the run: start-up does not even read the marker.
    assert runs_to_recover(str(root), {"r1"}) == []
    # By hand: the runs table answers "already committed", and the marker is written whole again.
    code, lines = commit_cli(first, root, "r1", capsys)
    assert code == 0 and json.loads("\n".join(lines))["already_committed"] is True
    assert production(first) == landed
    assert json.loads(Path(staging.marker).read_text())["run_id"] == "r1"

    # Start-up lists only runs not committed yet: once its marker was written, r1 left the index,
    # so a warehouse that does not know it gets it by hand, with `commit --run_id`.
    Path(staging.marker).write_text(content)
    by_hand = tmp_path / "by_hand.duckdb"
    new_warehouse(by_hand)
    assert prepare(local_config(by_hand, root, "start-1")) == []
    code, lines = commit_cli(by_hand, root, "r1", capsys)
    assert code == 0 and json.loads("\n".join(lines))["already_committed"] is False
    assert production(by_hand) == landed

    # A root staged by an older version has no index: the one-time scan that builds it takes the
    # torn marker as "not committed" (a warning naming it), and start-up commits the run there.
    Path(staging.marker).write_text(content)
    shutil.rmtree(root / INDEX)
    fresh = tmp_path / "fresh.duckdb"
    new_warehouse(fresh)
    with caplog.at_level(logging.WARNING):
        recovered = prepare(local_config(fresh, root, "start-2"))
    assert [(r.run_id, r.committed) for r in recovered] == [("r1", True)]
    assert staging.marker in caplog.text
    assert production(fresh) == landed


# -- staged counts: a run whose staging contradicts itself is refused and parked -------------------


def drop_line(path: Path, wallet: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if json.loads(line)["wallet_address"] == wallet)
    path.write_text("".join(lines[:index] + lines[index + 1 :]))


def copy_line(path: Path, wallet: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, next(x for x in lines if f'"{wallet}"' in x)]))


def garble_outcomes(path: Path, _wallet: str) -> None:
    path.write_text(path.read_text() + '{"wallet_address": "0xe", "trade_c\n')


W = "0x" + "ab" * 20


@pytest.mark.parametrize(
    ("line", "wallet"),
    [
        (json.dumps({"id": "t", "wallet_address": W}, separators=(",", ":")), W),  # as staged
        (json.dumps({"id": "t", "wallet_address": W}), W),  # spaced
        # The key's text inside a string is escaped, so the top-level key is the one found.
        (json.dumps({"title": '"wallet_address":"0xevil"', "wallet_address": W}), W),
        ('{"id":"t","wallet_address":"' + W[:20], None),  # cut short: the caller parses it
        ('{"id":"t","wallet_address":null}', None),
        ('{"id":"t","wallet_address":"0x\\u0041"}', None),  # an escape: the caller parses it
        ('{"id":"t"}', None),
    ],
    ids=["compact", "spaced", "key in a string", "cut", "null", "escaped", "absent"],
)
def test_a_staged_line_names_its_wallet_without_being_parsed(line, wallet):
    assert staged_wallet(line.encode() + b"\n") == wallet
    if wallet is not None:  # the fast path agrees with the parser
        assert json.loads(line)["wallet_address"] == wallet


@pytest.mark.parametrize(
    ("spoil", "wallet", "file", "named"),
    [
        (drop_line, "0xa", "trades/part-0.json", "0xa outcome 3, staged 2"),
        (copy_line, "0xb", "trades/part-0.json", "0xb outcome 1, staged 2"),
        (garble_outcomes, "0xe", "outcomes/part-1.json", "is not a JSON object"),
    ],
    ids=["short", "long", "outcomes line not JSON"],
)
def test_staging_that_disagrees_with_its_outcomes_is_refused_once_and_parked(
    tmp_path, capsys, spoil, wallet, file, named
):
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    staging = staged_run(root)
    folder = Path(staging.folder)
    spoil(folder / file, wallet)
    warehouse = new_warehouse(db)

    # By the graph's last step or start-up recovery: refused before the warehouse is touched.
    outcome_ = commit_staged_run(staging, warehouse)
    assert outcome_.refused and outcome_.report is None and named in outcome_.error
    assert production(db) == ([], [])
    assert named in json.loads((folder / REFUSED).read_text())["reason"]
    assert prepare(local_config(db, root)) == []  # parked: start-up does not even list it
    assert [(run.run_id, named in run.reason) for run in parked_runs(str(root))] == [("r1", True)]
    code, lines = commit_cli(db, root, "r1", capsys)
    assert code == 2 and len(lines) == 1 and "refused" in lines[0] and named in lines[0]

    # By hand first: the same refusal, in one line.
    (folder / REFUSED).unlink()
    code, lines = commit_cli(db, root, "r1", capsys)
    assert code == 2 and len(lines) == 1 and "is refused" in lines[0] and named in lines[0]
    assert (folder / REFUSED).exists()
    assert production(db) == ([], [])


def test_a_refusal_wins_over_a_load_that_fails_at_the_same_time(tmp_path):
    """When DuckDB's load fails, the count check reads the files instead of the load tables: if
    it refuses, the run is refused (as when the check ran first) and production is untouched."""
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    staging = staged_run(root)
    folder = Path(staging.folder)
    drop_line(folder / "trades/part-0.json", "0xa")
    with (folder / "trades/part-1.json").open("a") as unloadable:  # no id: the load fails
        unloadable.write(json.dumps({"wallet_address": "0xz"}) + "\n")
    warehouse = new_warehouse(db)
    outcome_ = commit_staged_run(staging, warehouse)
    assert outcome_.refused and "0xa outcome 3, staged 2" in outcome_.error
    assert production(db) == ([], []) and (folder / REFUSED).exists()


def test_duckdb_refuses_what_it_loaded_when_the_files_check_does_not_look(tmp_path):
    """DuckDB asks the count check of its load tables, and checks every wallet whose trades
    land: one whose outcome says its fetch succeeded yet carries an error (no source writes
    that; the files' check skips a wallet with an error) is counted there and refused."""
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    run_id = "r1"
    files = stage(
        root,
        run_id,
        trades=[trade("0xa", "a1", run_id), trade("0xb", "b1", run_id)],
        outcomes=[
            outcome("0xa", run_id, True, 10, trade_count=1),
            outcome("0xb", run_id, True, 10, trade_count=2, error="odd"),  # lands, 1 staged
        ],
    )
    staging = RunStaging(str(root), run_id)
    staging.write_manifest(files)
    check_staged_counts(run_id, files)  # the files' check alone passes it
    outcome_ = commit_staged_run(staging, new_warehouse(db))
    assert outcome_.refused and "the loaded trades of 1 of its wallets disagree" in outcome_.error
    assert production(db) == ([], []) and (Path(staging.folder) / REFUSED).exists()


def test_a_run_whose_staged_file_is_gone_is_refused_before_anything_loads(tmp_path):
    """The load never starts (a listed file is missing), so the load tables are never asked: the
    files' check runs instead and refuses the run, as when it ran first."""
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    staging = staged_run(root)
    (Path(staging.folder) / "trades/part-1.json").unlink()
    outcome_ = commit_staged_run(staging, new_warehouse(db))
    assert outcome_.refused and "staged files are gone" in outcome_.error
    assert production(db) == ([], []) and (Path(staging.folder) / REFUSED).exists()


def test_a_run_committed_already_is_still_refused_if_its_staging_contradicts_itself(tmp_path):
    """A run the warehouse holds is not loaded again, so the load tables are never asked: the
    files are read instead, and a staging that lost a line since is refused as before."""
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    staging = staged_run(root)
    warehouse = new_warehouse(db)
    assert commit_staged_run(staging, warehouse).committed
    (Path(staging.folder) / COMMITTED).unlink()  # as if the marker's write was cut
    drop_line(Path(staging.folder) / "trades/part-0.json", "0xa")
    outcome_ = commit_staged_run(staging, warehouse)
    assert outcome_.refused and "0xa outcome 3, staged 2" in outcome_.error


def test_staging_writes_one_whole_file_per_bundle_and_none_without_rows(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.stage import WriteStaging

    staging = RunStaging(str(tmp_path), "r1")
    with local_pipeline() as p:
        pages = p | "Pages" >> beam.Create([[{"id": "1"}, {"id": "2"}], [{"id": "3"}]])
        written = pages | "Trades" >> WriteStaging(staging, "trades", batched=True)
        none = p | "None" >> beam.Create([]) | "Rejects" >> WriteStaging(staging, "rejects")
        assert_that(none, equal_to([]), label="no file")
        lines = written | beam.FlatMap(lambda path: Path(path).read_text().splitlines())
        assert_that(
            lines | beam.Map(lambda line: json.loads(line)["id"]), equal_to(["1", "2", "3"])
        )
    assert not Path(staging.kind_folder("rejects")).exists()


@pytest.mark.world(seed=17, wallets=8, max_trades=400)
def test_a_real_run_whose_trades_were_cut_is_refused_then_the_next_run_fetches_it_exact(
    world, tmp_path, capsys
):
    """A crash between staging and commit (made deterministic: the marker removed), whose trades
    file then lost lines: the commit refuses it, and the next run refetches those wallets."""
    first = run_backfill(world.argv())
    staging = RunStaging(str(world.staging), first.run_id)
    Path(staging.marker).unlink()
    files = sorted(Path(staging.kind_folder("trades")).glob("*.json"))
    biggest = max(files, key=lambda p: len(p.read_text().splitlines()))
    lines = biggest.read_text().splitlines(keepends=True)
    cut = {json.loads(line)["wallet_address"] for line in lines[:3]}
    biggest.write_text("".join(lines[3:]))

    # Committed into its own warehouse (the run recorded which when it claimed its id; any other
    # would not take it): refused by the count check, before the warehouse is touched.
    landed = production(world.db)
    refused = commit_staged_run(staging, WarehouseRef(f"duckdb:{world.db}", TableNames()))
    assert refused.refused and all(wallet in refused.error for wallet in cut)
    assert production(world.db) == landed
    code, out = commit_cli(world.db, world.staging, first.run_id, capsys)
    assert code == 2 and len(out) == 1

    fresh = tmp_path / "fresh.duckdb"
    seed_traders(fresh, world.wallets)

    again = run_backfill(world.argv(db=fresh))
    assert again.recovered == []  # parked, not retried
    assert again.counters["wallets_fetched"] == len(world.wallets)
    assert_production_is_truth(world, fresh)


# -- commit --run_id: one line for what cannot be committed ----------------------------------------


def test_commit_of_a_run_that_does_not_exist_says_so_in_one_line(tmp_path, capsys):
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    new_warehouse(db)
    staged_run(root)
    code, lines = commit_cli(db, root, "r404", capsys)
    assert code == 2
    assert lines == [
        f"commit: run r404 has no staging under {root}: check --run_id and --staging_root"
    ]

    stage(root, "r2", trades=[trade("0xd", "d1", "r2")])  # staged, killed before its manifest
    code, lines = commit_cli(db, root, "r2", capsys)
    assert code == 2 and len(lines) == 1 and "not fully staged" in lines[0], lines


@pytest.mark.parametrize("kind", ["trades", "outcomes", "markets"])
def test_commit_of_a_run_whose_manifest_lists_a_folder_refuses_it_in_one_line(
    tmp_path, capsys, kind
):
    """A folder is never a staged file, whichever kind lists it: the run is refused and parked,
    as a gone file is, not a crash in the file's reader (nor, for markets, a warehouse error)."""
    root, db = tmp_path / "staging", tmp_path / "wh.duckdb"
    new_warehouse(db)
    staging = staged_run(root)
    folder = Path(staging.folder) / kind
    folder.mkdir(exist_ok=True)
    manifest = json.loads(Path(staging.manifest).read_text())
    manifest["files"][kind].append(str(folder))
    Path(staging.manifest).write_text(json.dumps(manifest))
    code, lines = commit_cli(db, root, "r1", capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("commit: run r1 is refused, production is untouched")
    assert lines[0].endswith(f"staged paths are folders, not files: ['{folder}']")
    assert production(db) == ([], []) and (Path(staging.folder) / REFUSED).exists()


# -- the run-id claim -------------------------------------------------------------------------------


def test_of_two_claims_of_one_run_id_exactly_one_wins(tmp_path):
    staging = RunStaging(str(tmp_path / "staging"), "r1")
    start = threading.Barrier(8)
    won: list[bool] = []

    def claim() -> None:
        start.wait()
        try:
            staging.claim()
            won.append(True)
        except RunIdTaken:
            won.append(False)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 7 + [True]

    config = local_config(
        new_warehouse(tmp_path / "wh.duckdb").spec[len("duckdb:") :], tmp_path / "staging", "r1"
    )
    with pytest.raises(OptionsError, match="r1"):
        prepare(config)
    assert Path(staging.claim_file).exists()  # a start-up refused the id gives back no claim
