"""Both warehouses held to one suite: the commit's exactly-once semantics, its guards, the reads,
status and verify, on a DuckDB file and on BigQuery (bqemulator, through the official client).

One emulator serves the module (it takes a second or two to start); every BigQuery test gets a
dataset of its own, every DuckDB test a file of its own. What only one engine has (partitioning,
load jobs from gs://, transient retries; file locks) is in test_warehouse_bigquery.py and
test_warehouse_duckdb.py.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.schema import CHECKPOINT_COLUMNS, Column
from pipeline.status_report import StatusReport, render_status
from pipeline.warehouse import CommitError, TableNames, Warehouse, base
from pipeline.warehouse import sql as wsql
from pipeline.warehouse.base import MISSING_AFTER
from tests import support
from tests.support import (
    COMMITTED_AT,
    OLD_CHECKPOINT,
    T0,
    Engine,
    assert_rich_run_landed,
    busy_run,
    checkpoint_rows,
    event,
    load_tables_left,
    market,
    old_ddl,
    outcome,
    pm_trade,
    rich_run,
    snapshot,
    stage,
    trade,
    trade_ids,
    ts,
    write_ndjson,
)

# The engines both suites of warehouse guarantees run on (this one and test_warehouse_lease.py).
emulator, bq, db, wh = support.emulator, support.bq, support.db, support.wh


def q(db: Engine, wh: Warehouse, sql: str) -> list[tuple]:
    return db.rows(wh, sql)


def land_t2_of_wallet_a(wh: Warehouse, tmp_path: Path) -> None:
    """What `rich_run` starts from: an earlier run, r0, already landed t2 for wallet A."""
    files = stage(
        tmp_path, "r0", trades=[trade("0xa", "t2", "r0")], outcomes=[outcome("0xa", "r0", True, 5)]
    )
    wh.commit_run("r0", files, committed_at=COMMITTED_AT)


def commit_done_wallets(wh: Warehouse, tmp_path: Path, trades: dict[str, list[str]]) -> None:
    """Commit run r1 in which each wallet of `trades` is done with those trade ids (processed at
    T0 + its count of trades: a fixed clock)."""
    files = stage(
        tmp_path,
        "r1",
        trades=[trade(wallet, i, "r1") for wallet, ids in trades.items() for i in ids],
        outcomes=[outcome(wallet, "r1", True, len(ids)) for wallet, ids in trades.items()],
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)


# -- tables ---------------------------------------------------------------------------------------


def test_ensure_tables_is_idempotent_and_keeps_traders(db: Engine) -> None:
    wh = db.new()
    assert not db.exists(wh)
    wh.ensure_tables()  # creates the file and its folder, or the dataset
    q(db, wh, "INSERT INTO {traders} VALUES ('0xaaa'), (NULL)")
    wh.ensure_tables()
    assert sorted(wh.read_traders(), key=repr) == ["0xaaa", None]
    assert db.table_names(wh) == {
        "traders",
        "backfill_checkpoint",
        "trades",
        "markets",
        "events",
        "backfill_runs",
        "backfill_lease",
        "backfill_missing",
    }


def test_custom_table_names(db: Engine, tmp_path: Path) -> None:
    wh = db.new(TableNames(trades="fills", runs="commits"))
    wh.ensure_tables()
    files = stage(
        tmp_path, "r1", trades=[trade("0xa", "t1", "r1")], outcomes=[outcome("0xa", "r1", True, 10)]
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert "fills" in db.table_names(wh) and "trades" not in db.table_names(wh)
    assert q(db, wh, "SELECT id FROM {trades}") == [("t1",)]
    assert wh.committed_run_ids() == {"r1"}


def test_the_users_existing_checkpoint_table_gains_the_missing_columns(db: Engine) -> None:
    """The monitoring's checkpoint table predates run_id, attempts, error, last_trade_at, ..."""
    wh = db.new()
    db.run_ddl(wh, old_ddl("checkpoint"))
    q(db, wh, "INSERT INTO {checkpoint} VALUES ('0xold', TRUE, TRUE, 3, 'gs://x', NULL)")
    wh.ensure_tables()
    wh.ensure_tables()  # idempotent
    # Read back through a query: bqemulator applies ALTER TABLE to its storage, not to the
    # table metadata that get_table returns.
    row = checkpoint_rows(db, wh)["0xold"]
    assert list(row)[: len(OLD_CHECKPOINT)] == list(OLD_CHECKPOINT)
    assert set(row) == {c.name for c in CHECKPOINT_COLUMNS}
    assert (row["trade_count"], row["attempts"], row["last_refreshed_at"]) == (3, None, None)
    assert list(wh.read_checkpoint_states()) == [("0xold", True, None, None)]


# -- the commit -----------------------------------------------------------------------------------


def test_commit_lands_exactly_the_successful_wallets_trades_once(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    land_t2_of_wallet_a(wh, tmp_path)
    report = wh.commit_run("r1", stage(tmp_path, "r1", **rich_run("r1")), committed_at=COMMITTED_AT)
    assert_rich_run_landed(db, wh, report)


def test_failed_wallet_is_flipped_by_a_later_success(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path,
        "r1",
        trades=[trade("0xb", "b1", "r1")],
        outcomes=[outcome("0xb", "r1", False, 10, trade_count=1, error="timeout")],
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert trade_ids(db, wh) == []
    assert list(wh.read_done_wallets()) == []

    files = stage(
        tmp_path,
        "r2",
        trades=[trade("0xb", "b1", "r2"), trade("0xb", "b2", "r2")],
        outcomes=[outcome("0xb", "r2", True, 20, trade_count=2)],
    )
    wh.commit_run("r2", files, committed_at=COMMITTED_AT)
    assert trade_ids(db, wh) == ["b1", "b2"]
    b = checkpoint_rows(db, wh)["0xb"]
    assert (b["upload_successful"], b["error"], b["attempts"], b["trade_count"]) == (
        True,
        None,
        2,
        2,
    )
    assert list(wh.read_done_wallets()) == ["0xb"]


def test_a_success_beats_a_failure_of_the_same_wallet_in_one_run(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path,
        "r1",
        trades=[trade("0xa", "a1", "r1")],
        outcomes=[outcome("0xa", "r1", False, 30, error="retried"), outcome("0xa", "r1", True, 10)],
    )
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert (report.wallets_done, report.wallets_failed) == (1, 0)
    assert trade_ids(db, wh) == ["a1"]
    assert checkpoint_rows(db, wh)["0xa"]["upload_successful"] is True


def test_committing_twice_changes_nothing(db: Engine, wh: Warehouse, tmp_path: Path) -> None:
    files = busy_run(tmp_path)
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    before = snapshot(db, wh)
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT + dt.timedelta(hours=1))
    assert report.already_committed
    assert (report.trades_inserted, report.markets_merged, report.events_merged) == (0, 0, 0)
    assert snapshot(db, wh) == before
    assert q(db, wh, "SELECT title FROM {markets}") == [("m",)]  # the newest staged version won


def test_the_sql_guards_alone_make_a_recommit_a_no_op(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    files = busy_run(tmp_path)
    first = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert (first.trades_inserted, first.markets_merged, first.events_merged) == (2, 1, 1)
    before = snapshot(db, wh)
    q(db, wh, "DELETE FROM {runs} WHERE run_id = 'r1'")
    assert wh.committed_run_ids() == set()

    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert not report.already_committed
    assert (report.trades_inserted, report.markets_merged, report.events_merged) == (0, 0, 0)
    assert snapshot(db, wh) == before  # attempts not bumped, nothing duplicated, same runs row
    assert wh.committed_run_ids() == {"r1"}


def test_an_older_run_committed_late_does_not_overwrite_newer_state(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    newer = stage(
        tmp_path,
        "r2",
        trades=[trade("0xd", "d1", "r2")],
        outcomes=[
            outcome("0xf", "r2", False, 200, error="new failure"),
            outcome("0xd", "r2", True, 200),
        ],
        markets=[market("0xc1", "r2", 200, title="new")],
        events=[event("weather", "r2", 200, title="new")],
    )
    older = stage(
        tmp_path,
        "r1",
        trades=[trade("0xf", "f1", "r1"), trade("0xe", "e1", "r1")],
        outcomes=[
            outcome("0xf", "r1", False, 100, error="old failure"),
            outcome("0xd", "r1", False, 100, error="old failure"),
            outcome("0xe", "r1", True, 100),
        ],
        markets=[market("0xc1", "r1", 100, title="old"), market("0xc2", "r1", 100)],
        events=[event("weather", "r1", 100, title="old")],
    )
    wh.commit_run("r2", newer, committed_at=COMMITTED_AT)
    wh.commit_run("r1", older, committed_at=COMMITTED_AT)

    ckpt = checkpoint_rows(db, wh)
    assert (ckpt["0xf"]["error"], ckpt["0xf"]["run_id"], ckpt["0xf"]["attempts"]) == (
        "new failure",
        "r2",
        1,
    )
    assert (ckpt["0xd"]["upload_successful"], ckpt["0xd"]["run_id"]) == (True, "r2")
    assert ckpt["0xe"]["upload_successful"] is True  # new to the checkpoint: inserted
    assert sorted(q(db, wh, "SELECT condition_id, title FROM {markets}")) == [
        ("0xc1", "new"),
        ("0xc2", "m"),
    ]
    assert q(db, wh, "SELECT title FROM {events}") == [("new",)]
    assert trade_ids(db, wh) == ["d1", "e1"]


def refresh(wallet: str, run_id: str, processed: float, trade_count: int) -> dict:
    """A successful refresh's outcome: it fetched only from `fetched_from` on."""
    return {**outcome(wallet, run_id, True, processed, trade_count), "fetched_from": int(T0) - 3600}


def test_a_refresh_after_rows_were_lost_resets_the_wallet_instead_of_taking_the_count(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    commit_done_wallets(wh, tmp_path, {"0xa": ["a1", "a2", "a3"], "0xb": ["b1"]})
    q(db, wh, "DELETE FROM {trades} WHERE id = 'a1'")  # a dropped partition, an old snapshot
    files = stage(
        tmp_path,
        "r2",
        trades=[trade("0xa", "a4", "r2"), trade("0xb", "b2", "r2")],
        outcomes=[refresh("0xa", "r2", 20, 1), refresh("0xb", "r2", 20, 1)],
    )
    wh.commit_run("r2", files, committed_at=COMMITTED_AT)
    ckpt = checkpoint_rows(db, wh)
    a, b = ckpt["0xa"], ckpt["0xb"]
    # The refresh's new trade landed, but production held 2 where the checkpoint counted 3:
    # taking production's count would hide the loss from verify forever. The wallet is reset.
    assert "a4" in trade_ids(db, wh)
    assert (a["completed"], a["upload_successful"], a["trade_count"]) == (True, False, 3)
    assert a["error"] == (
        "a refresh found 2 trades in production where the checkpoint counted 3: "
        "the wallet is fetched whole next run"
    )
    assert (a["last_trade_at"], a["last_refreshed_at"]) == (None, None)
    # An intact wallet's refresh keeps it done with production's count, as always.
    assert (b["upload_successful"], b["trade_count"], b["error"]) == (True, 2, None)
    assert sorted(wh.read_done_wallets()) == ["0xb"]
    # The next run walks it whole: done again, with everything the source serves.
    files = stage(
        tmp_path,
        "r3",
        trades=[trade("0xa", i, "r3") for i in ("a1", "a2", "a3", "a4")],
        outcomes=[outcome("0xa", "r3", True, 30, 4)],
    )
    wh.commit_run("r3", files, committed_at=COMMITTED_AT)
    a = checkpoint_rows(db, wh)["0xa"]
    assert (a["upload_successful"], a["trade_count"], a["error"]) == (True, 4, None)
    assert wh.verify(reset=False).mismatches == ()


def test_a_refresh_staged_before_a_verify_reset_does_not_undo_it(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    commit_done_wallets(wh, tmp_path, {"0xa": ["a1", "a2"]})
    refreshed = stage(
        tmp_path, "r2", trades=[trade("0xa", "a3", "r2")], outcomes=[refresh("0xa", "r2", 20, 1)]
    )  # a run killed after staging: recovered by a later start-up
    q(db, wh, "DELETE FROM {trades} WHERE id = 'a1'")
    assert wh.verify().reset
    wh.commit_run("r2", refreshed, committed_at=COMMITTED_AT)
    a = checkpoint_rows(db, wh)["0xa"]
    assert (a["upload_successful"], a["trade_count"]) == (False, 2)  # a2 and a3
    assert a["error"].startswith("verify:")  # the reset's reason stands
    assert list(wh.read_done_wallets()) == []


def test_a_whole_walk_marks_a_wallet_done_whatever_time_its_checkpoint_says(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    # A run on a machine whose clock ran two days ahead failed the wallet: its processed_at is
    # in the future. A whole walk that lands its trades makes it done all the same.
    files = stage(tmp_path, "r1", outcomes=[outcome("0xa", "r1", False, 2 * 86400, error="x")])
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    files = stage(
        tmp_path,
        "r2",
        trades=[trade("0xa", "a1", "r2"), trade("0xa", "a2", "r2")],
        outcomes=[outcome("0xa", "r2", True, 20, 2)],
    )
    wh.commit_run("r2", files, committed_at=COMMITTED_AT)
    a = checkpoint_rows(db, wh)["0xa"]
    assert (a["upload_successful"], a["trade_count"], a["error"]) == (True, 2, None)
    assert a["processed_at"] == dt.datetime.fromtimestamp(T0 + 2 * 86400, dt.UTC)  # never back
    assert list(wh.read_done_wallets()) == ["0xa"]


def test_an_older_refresh_committed_late_counts_what_it_landed(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    commit_done_wallets(wh, tmp_path, {"0xa": ["a1"]})
    older = stage(
        tmp_path, "r2", trades=[trade("0xa", "a2", "r2")], outcomes=[refresh("0xa", "r2", 20, 1)]
    )
    newer = stage(
        tmp_path, "r3", trades=[trade("0xa", "a3", "r3")], outcomes=[refresh("0xa", "r3", 30, 1)]
    )
    wh.commit_run("r3", newer, committed_at=COMMITTED_AT)
    wh.commit_run("r2", older, committed_at=COMMITTED_AT)
    a = checkpoint_rows(db, wh)["0xa"]
    assert (a["upload_successful"], a["trade_count"], a["run_id"]) == (True, 3, "r3")
    assert a["processed_at"] == dt.datetime.fromtimestamp(T0 + 30, dt.UTC)
    assert wh.verify(reset=False).mismatches == ()


def test_a_done_wallet_is_never_turned_into_a_failed_one(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path, "r1", trades=[trade("0xa", "a1", "r1")], outcomes=[outcome("0xa", "r1", True, 10)]
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    files = stage(
        tmp_path, "r2", outcomes=[outcome("0xa", "r2", False, 20, error="late retry failed")]
    )
    wh.commit_run("r2", files, committed_at=COMMITTED_AT)
    a = checkpoint_rows(db, wh)["0xa"]
    # A failed refresh of a done wallet keeps it done and records only its error; its unchanged
    # last_refreshed_at makes the next refresh try again.
    assert (a["upload_successful"], a["error"], a["run_id"]) == (True, "late retry failed", "r1")
    assert a["last_refreshed_at"] == a["processed_at"]
    assert list(wh.read_done_wallets()) == ["0xa"]
    # The users' failed-wallets number cannot show it; status says so beside it.
    report = wh.status()
    assert (report.failed_wallets, report.refresh_failing) == (0, 1)
    assert report.oldest_fetch_at == dt.datetime.fromtimestamp(T0 + 10, dt.UTC)
    assert (
        "current since    2026-09-21 14:13:30 UTC (a done wallet's oldest fetch); 1 done wallets "
        "whose last refresh failed"
    ) in render_status(report)


def test_a_failing_transaction_rolls_everything_back(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    # Production refuses what staging allows: the events MERGE fails after the trades INSERT
    # and the markets MERGE have run inside the transaction.
    db.require(wh, "events", "subtitle")
    wh.commit_run("r0", busy_run(tmp_path, "r0"), committed_at=COMMITTED_AT)
    before = snapshot(db, wh)
    assert before["trades"] and before["markets"] and before["checkpoint"]
    rows: dict[str, Any] = {
        "trades": [trade("0xg", "g1", "r1")],
        "outcomes": [outcome("0xg", "r1", True, 50), outcome("0xb", "r1", True, 50)],
        "markets": [market("0xc9", "r1", 50)],
    }
    bad = stage(tmp_path, "r1", events=[event("storm", "r1", 50, subtitle=None)], **rows)
    with pytest.raises(CommitError, match=r"run r1.*rolled back"):
        wh.commit_run("r1", bad, committed_at=COMMITTED_AT)
    assert snapshot(db, wh) == before
    assert wh.committed_run_ids() == {"r0"}
    assert load_tables_left(db, wh) == []

    fixed = stage(tmp_path, "r1", events=[event("storm", "r1", 50)], **rows)
    report = wh.commit_run("r1", fixed, committed_at=COMMITTED_AT)
    assert (report.trades_inserted, report.markets_merged, report.events_merged) == (1, 1, 1)
    assert trade_ids(db, wh) == ["a1", "a2", "g1"]
    assert set(wh.read_done_wallets()) == {"0xa", "0xb", "0xg"}
    assert wh.committed_run_ids() == {"r0", "r1"}


def test_a_staged_row_missing_a_required_column_fails_the_load(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    wh.commit_run("r0", busy_run(tmp_path, "r0"), committed_at=COMMITTED_AT)
    before = snapshot(db, wh)
    bad = stage(
        tmp_path,
        "r1",
        trades=[trade("0xg", "g1", "r1"), trade("0xg", "g2", "r1", tx_hash=None)],
        outcomes=[outcome("0xg", "r1", True, 50)],
    )
    with pytest.raises(CommitError, match="run r1: loading its trades staging"):
        wh.commit_run("r1", bad, committed_at=COMMITTED_AT)
    assert snapshot(db, wh) == before
    assert wh.committed_run_ids() == {"r0"}
    assert load_tables_left(db, wh) == []


def test_empty_staging_kinds(db: Engine, wh: Warehouse, tmp_path: Path) -> None:
    report = wh.commit_run("r0", {}, committed_at=COMMITTED_AT)
    assert (report.trades_inserted, report.wallets_done, report.wallets_failed) == (0, 0, 0)
    assert report.nothing_to_commit and not report.already_committed
    assert q(db, wh, "SELECT * FROM {runs}") == []  # nothing to commit: not even a runs row

    files = stage(tmp_path, "r1", trades=[], outcomes=[outcome("0xz", "r1", True, 5)], events=[])
    files["markets"] = []
    files["rejects"] = [write_ndjson(tmp_path / "r1" / "rejects" / "part-0.json", [])]
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert report.wallets_done == 1
    z = checkpoint_rows(db, wh)["0xz"]
    assert (z["upload_successful"], z["trade_count"]) == (True, 0)  # a wallet with no trades
    assert trade_ids(db, wh) == []


def test_commit_validates_its_arguments(wh: Warehouse, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run_id"):
        wh.commit_run("bad id!", {})
    with pytest.raises(ValueError, match="unknown staging kinds"):
        wh.commit_run("r1", {"trade": []})
    with pytest.raises(TypeError, match="list of paths"):
        wh.commit_run("r1", {"trades": str(tmp_path / "a.json")})  # type: ignore[dict-item]
    with pytest.raises(CommitError, match="missing"):
        wh.commit_run("r1", {"trades": [str(tmp_path / "nope.json")]})
    with pytest.raises(ValueError, match="timezone-aware"):
        wh.commit_run("r1", {}, committed_at=dt.datetime(2026, 1, 1))
    assert wh.committed_run_ids() == set()


# -- two sources: cross-source dedup, the checkpoint's source -------------------------------------

# One fill key: the same fill as each source describes it (the hash's case and the price's last
# digits differ; shares are millionths in both).
FILL = {"tx_hash": "0xfeed", "shares": 2_500_000, "price": 0.37}
PM_FILL = {"tx_hash": "0xFEED", "shares": 2_500_000, "price": 0.3700000001}


def dome_fill(trade_id: str, log_index: int, legacy: bool = False, **extra: Any) -> dict:
    row = trade("0xw", trade_id, "r", log_index=log_index, **{**FILL, **extra})
    if not legacy:
        row["source"] = "dome"
    return row


def pm_fill(trade_id: str, ordinal: int, **extra: Any) -> dict:
    return pm_trade("0xw", trade_id, "r", ordinal, **{**PM_FILL, **extra})


# case -> (production rows, staged rows, ids the staged rows land)
CROSS_SOURCE_CASES: dict[str, tuple[list[dict], list[dict], list[str]]] = {
    # Two identical Dome fills (landed before sources: source NULL) and another fill; Polymarket
    # serves the same three plus a new one: only the new one lands.
    "a_overlap_lands_only_the_new_fill": (
        [
            dome_fill("d1", 1, legacy=True),
            dome_fill("d2", 2, legacy=True),
            dome_fill("d3", 3, legacy=True, tx_hash="0xother"),
        ],
        [
            pm_fill("p0", 0),
            pm_fill("p1", 1),
            pm_fill("p3", 0, tx_hash="0xOTHER"),
            pm_fill("p4", 0, tx_hash="0xnew"),
        ],
        ["p4"],
    ),
    # Three identical Polymarket fills where Dome landed two: exactly one more is a real fill.
    "b_a_third_identical_fill_lands_once": (
        [dome_fill("d1", 1), dome_fill("d2", 2)],
        [pm_fill("p0", 0), pm_fill("p1", 1), pm_fill("p2", 2)],
        ["p2"],
    ),
    # The other way round: Dome rows have no ordinal, their rank among themselves is by id.
    "b_reversed_dome_after_polymarket": (
        [pm_fill("p0", 0), pm_fill("p1", 1)],
        [dome_fill("d1", 1), dome_fill("d2", 2), dome_fill("d3", 3)],
        ["d3"],
    ),
    # One source only: ids decide, identical fills and all, as before sources existed.
    "c_same_source_dome": (
        [dome_fill("d1", 1), dome_fill("d2", 2)],
        [dome_fill("d1", 1), dome_fill("d2", 2), dome_fill("d4", 4)],
        ["d4"],
    ),
    "c_same_source_legacy_and_dome": (
        [dome_fill("d1", 1, legacy=True)],
        [dome_fill("d1", 1), dome_fill("d2", 2)],
        ["d2"],
    ),
    "c_same_source_polymarket": (
        [pm_fill("p0", 0), pm_fill("p1", 1)],
        [pm_fill("p0", 0), pm_fill("p1", 1), pm_fill("p2", 2)],
        ["p2"],
    ),
}


@pytest.mark.parametrize("case", sorted(CROSS_SOURCE_CASES))
def test_cross_source_dedup(db: Engine, wh: Warehouse, tmp_path: Path, case: str) -> None:
    production, staged, landed = CROSS_SOURCE_CASES[case]
    source = staged[0].get("source")
    r0, r1, r2 = (
        stage(tmp_path, run_id, trades=rows, outcomes=[outcome("0xw", run_id, True, t, source=s)])
        for run_id, rows, t, s in (
            ("r0", production, 5, production[0].get("source")),
            ("r1", staged, 10, source),
            ("r2", staged, 20, source),
        )
    )
    wh.commit_run("r0", r0, committed_at=COMMITTED_AT)
    before = set(trade_ids(db, wh))
    report = wh.commit_run("r1", r1, committed_at=COMMITTED_AT)
    assert sorted(set(trade_ids(db, wh)) - before) == landed
    assert report.trades_inserted == len(landed)
    assert wh.commit_run("r2", r2, committed_at=COMMITTED_AT).trades_inserted == 0
    w = checkpoint_rows(db, wh)["0xw"]
    assert w["trade_count"] == len(before) + len(landed)
    assert w["source"] == source


def test_the_checkpoint_records_the_source_of_the_last_successful_fetch(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    def commit(run_id: str, *outcomes: dict) -> None:
        wh.commit_run(run_id, stage(tmp_path, run_id, outcomes=list(outcomes)))

    commit("r1", outcome("0xa", "r1", True, 10, source="dome"))
    commit("r2", outcome("0xb", "r2", False, 20, error="x", source="polymarket"))
    ckpt = checkpoint_rows(db, wh)
    assert (ckpt["0xa"]["source"], ckpt["0xb"]["source"]) == ("dome", None)
    commit(
        "r3",
        outcome("0xa", "r3", True, 30, source="polymarket"),
        outcome("0xb", "r3", True, 30, source="polymarket"),
    )
    assert checkpoint_rows(db, wh)["0xa"]["source"] == "polymarket"
    commit("r4", outcome("0xa", "r4", False, 40, error="x", source="dome"))
    a = checkpoint_rows(db, wh)["0xa"]
    assert (a["source"], a["upload_successful"], a["error"]) == ("polymarket", True, "x")
    assert checkpoint_rows(db, wh)["0xb"]["source"] == "polymarket"


# -- markets and events production names but does not hold ---------------------------------------


def unlanded_history() -> dict[str, list[dict]]:
    """Trades name markets 0xc1 (landed), 0xc2 (twice, one slug empty) and 0xc3; events are named
    by trades (`weather`, landed; `storm`; empty) and by markets (`rain`)."""
    return {
        "trades": [
            trade("0xa", "a1", "r1", condition_id="0xc1", market_slug="m1"),
            pm_trade("0xa", "a2", "r1", condition_id="0xc2", market_slug="", event_slug="storm"),
            pm_trade("0xa", "a3", "r1", condition_id="0xc2", market_slug="m2", event_slug=""),
            trade("0xb", "b1", "r1", condition_id="0xc3", market_slug="m3"),
        ],
        "outcomes": [outcome("0xa", "r1", True, 10), outcome("0xb", "r1", True, 10)],
        "markets": [market("0xc1", "r1", 10) | {"event_slug": "rain"}],
        "events": [event("weather", "r1", 10)],
    }


def test_unlanded_markets_and_events_are_read_and_counted(wh: Warehouse, tmp_path: Path) -> None:
    assert (list(wh.read_unlanded_markets()), list(wh.read_unlanded_events())) == ([], [])
    wh.commit_run("r1", stage(tmp_path, "r1", **unlanded_history()), committed_at=COMMITTED_AT)
    assert sorted(wh.read_unlanded_markets()) == [("0xc2", "m2"), ("0xc3", "m3")]
    assert sorted(wh.read_unlanded_events()) == [("rain",), ("storm",)]
    assert all(type(row) is tuple for row in wh.read_unlanded_markets())
    report = wh.status()
    assert (report.markets_pending, report.events_pending) == (2, 2)
    assert report.trades_by_source == (("dome", 2), ("polymarket", 2))
    text = render_status(report)
    assert "pending          markets 2, events 2" in text
    assert "trades by source dome 2, polymarket 2" in text

    # A later run lands them: nothing is pending any more.
    landed = {
        "markets": [market("0xc2", "r2", 20), market("0xc3", "r2", 20)],
        "events": [event("rain", "r2", 20), event("storm", "r2", 20)],
    }
    wh.commit_run("r2", stage(tmp_path, "r2", **landed), committed_at=COMMITTED_AT)
    assert (list(wh.read_unlanded_markets()), list(wh.read_unlanded_events())) == ([], [])
    assert (wh.status().markets_pending, wh.status().events_pending) == (0, 0)


# -- status and verify: they only read ------------------------------------------------------------


def test_status_numbers(db: Engine, wh: Warehouse, tmp_path: Path) -> None:
    # Distinct non-null traders: 0xa, 0xb, 0xc (0xa twice, one null) -> 3.
    q(db, wh, "INSERT INTO {traders} VALUES ('0xa'), ('0xb'), ('0xc'), ('0xa'), (NULL)")
    wh.commit_run(
        "r1",
        stage(
            tmp_path,
            "r1",
            trades=[trade("0xa", "a1", "r1"), trade("0xb", "b1", "r1")],
            outcomes=[outcome("0xa", "r1", True, 10), outcome("0xc", "r1", False, 10, 7, "boom")],
            markets=[market("0xc1", "r1", 10)],
        ),
        committed_at=COMMITTED_AT,
    )
    wh.commit_run(
        "r2",
        stage(
            tmp_path,
            "r2",
            outcomes=[outcome("0xb", "r2", True, 20), outcome("0xd", "r2", False, 30, 0, "x")],
        ),
        committed_at=COMMITTED_AT + dt.timedelta(minutes=30),
    )
    report = wh.status(last_runs=1)
    assert (report.done_wallets, report.failed_wallets, report.total_wallets) == (2, 2, 3)
    assert report.progress_percent == 66.67  # 2 * 100 / 3, rounded to 2 places
    assert report.remaining_wallets == 1
    assert [(w.wallet_address, w.trade_count, w.error) for w in report.failed] == [
        ("0xd", 0, "x"),  # newest first
        ("0xc", 7, "boom"),
    ]
    assert report.failed[0].processed_at == dt.datetime.fromtimestamp(T0 + 30, dt.UTC)
    assert (report.trades_rows, report.markets_rows, report.events_rows) == (1, 1, 0)
    assert [r.run_id for r in report.last_runs] == ["r2"]
    assert report.last_runs[0].committed_at == COMMITTED_AT + dt.timedelta(minutes=30)
    assert wh.status(last_runs=5).last_runs[1].run_id == "r1"

    text = render_status(report)
    assert "2 of 3 (66.67 %)" in text and "remaining 1" in text
    assert "0xc" in text and "boom" in text and "r2" in text


def test_status_of_an_empty_warehouse(wh: Warehouse) -> None:
    report = wh.status()
    assert (report.done_wallets, report.total_wallets, report.progress_percent) == (0, 0, None)
    assert report.last_runs == ()
    assert "no committed runs yet" in render_status(report)
    with pytest.raises(ValueError):
        wh.status(last_runs=-1)


def test_status_and_verify_only_read_and_name_missing_tables(db: Engine) -> None:
    wh = db.new()
    report = wh.status()
    assert report.missing_tables == tuple(TableNames().as_dict().values())
    assert report.done_wallets is None and report.markets_pending is None
    assert "missing tables   traders, backfill_checkpoint" in render_status(report)
    verified = wh.verify()
    assert verified.missing_tables == ("backfill_checkpoint", "trades") and not verified.reset
    assert "nothing to check, missing tables backfill_checkpoint, trades" in verified.render()
    assert not db.exists(wh)  # no file, no folder, no dataset

    wh.ensure_tables()
    q(db, wh, "DROP TABLE {events}")
    q(db, wh, "DROP TABLE {runs}")
    report = wh.status()
    assert report.missing_tables == ("events", "backfill_runs")
    assert (report.done_wallets, report.trades_rows, report.events_rows) == (0, None, None)
    assert report.markets_pending is None and report.trades_by_source == ()
    assert report.last_runs == ()
    text = render_status(report)
    assert "missing tables   events, backfill_runs (status creates nothing" in text
    assert wh.verify().mismatches == ()
    assert not {"events", "backfill_runs"} & db.table_names(wh)


def test_verify_reports_and_resets_mismatched_done_wallets(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    commit_done_wallets(wh, tmp_path, {"0xa": ["a1", "a2"], "0xb": ["b1"]})
    assert wh.verify().mismatches == ()
    q(db, wh, "DELETE FROM {trades} WHERE id = 'a2'")
    report = wh.verify(reset=False)
    assert report.mismatches == (("0xa", 2, 1, 1),) and not report.reset
    assert checkpoint_rows(db, wh)["0xa"]["upload_successful"] is True
    report = wh.verify()
    assert report.reset and "0xa" in report.render()
    a = checkpoint_rows(db, wh)["0xa"]
    assert (a["upload_successful"], a["last_trade_at"]) == (False, None)
    assert a["error"].startswith("verify:")
    assert sorted(wh.read_done_wallets()) == ["0xb"]


def test_verify_does_not_alter_a_checkpoint_older_than_its_reset(db: Engine) -> None:
    wh = db.new()
    wh.ensure_tables()
    q(db, wh, "DROP TABLE {checkpoint}")
    db.run_ddl(wh, old_ddl("checkpoint"))
    q(db, wh, "INSERT INTO {checkpoint} VALUES ('0xold', TRUE, TRUE, 3, 'gs://x', NULL)")
    report = wh.verify()
    assert report.mismatches == (("0xold", 3, 0, 0),) and not report.reset
    assert "not repaired: backfill_checkpoint lacks error" in report.render()
    assert list(checkpoint_rows(db, wh)["0xold"]) == list(OLD_CHECKPOINT)


# -- verify: duplicate trade ids (issue 12) ------------------------------------------------------


def _copy_rows_by_hand(db: Engine, wh: Warehouse, trade_id: str) -> None:
    """What an operator's INSERT .. SELECT does: a second copy of a landed trade's row."""
    q(db, wh, f"INSERT INTO {{trades}} SELECT * FROM {{trades}} WHERE id = '{trade_id}'")


def _production_counts(db: Engine, wh: Warehouse) -> dict[str, int]:
    return dict(q(db, wh, "SELECT wallet_address, COUNT(*) FROM {trades} GROUP BY wallet_address"))


def test_verify_finds_a_copied_trade_and_the_repair_keeps_one(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    commit_done_wallets(wh, tmp_path, {"0xa": ["a1", "a2"], "0xb": ["b1"]})
    _copy_rows_by_hand(db, wh, "a1")
    before = snapshot(db, wh)

    report = wh.verify(reset=False)  # only reads
    assert report.duplicates == (("0xa", "a1", 2),)
    assert report.mismatches == (("0xa", 2, 3, 2),)  # checkpoint 2, rows 3, distinct ids 2
    assert not report.reset and not report.clean
    assert "0xa  a1  copies 2" in report.render() and "not removed" in report.render()
    assert snapshot(db, wh) == before

    report = wh.verify()
    assert report.reset and report.duplicates_removed == 1
    assert report.reset_wallets == ()  # its only fault was the copy: it stays done
    assert trade_ids(db, wh) == ["a1", "a2", "b1"]  # exactly one row of a1 left
    assert sorted(wh.read_done_wallets()) == ["0xa", "0xb"]

    again = wh.verify()
    assert again.clean and again.render().startswith("verify: every done wallet")
    counts = _production_counts(db, wh)
    assert {w: r["trade_count"] for w, r in checkpoint_rows(db, wh).items()} == counts


def test_a_checkpoint_that_took_the_count_of_copies_is_found_and_reset(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    """Issue 12: copies land in production, a later commit of the wallet counts them into the
    checkpoint, and then checkpoint and production agree: a verify comparing counts alone says
    clean forever. Copies are found by id, removed, and the wallet's count set right."""
    commit_done_wallets(wh, tmp_path, {"0xa": ["a1", "a2"]})
    _copy_rows_by_hand(db, wh, "a1")
    _copy_rows_by_hand(db, wh, "a2")
    _copy_rows_by_hand(db, wh, "a2")  # copies both rows: four in all
    refetch = stage(
        tmp_path, "r2", trades=[trade("0xa", "a1", "r2")], outcomes=[outcome("0xa", "r2", True, 50)]
    )
    wh.commit_run("r2", refetch, committed_at=COMMITTED_AT)
    assert checkpoint_rows(db, wh)["0xa"]["trade_count"] == 6  # the copies, counted

    report = wh.verify()
    assert report.duplicates == (("0xa", "a1", 2), ("0xa", "a2", 4))
    assert report.mismatches == (("0xa", 6, 6, 2),)
    assert report.duplicates_removed == 4 and report.reset_wallets == ("0xa",)
    assert "0xa  a2  copies 4" in report.render() and "1 reset" in report.render()
    assert trade_ids(db, wh) == ["a1", "a2"]
    a = checkpoint_rows(db, wh)["0xa"]
    assert (a["upload_successful"], a["trade_count"]) == (False, 2)  # fetched again next run
    assert a["error"].startswith("verify:")

    again = wh.verify()
    assert again.clean
    assert a["trade_count"] == _production_counts(db, wh)["0xa"]


def test_the_duplicate_repair_is_one_transaction(db: Engine, wh: Warehouse, tmp_path: Path) -> None:
    """A reset that fails (a hand-made checkpoint whose `error` column is a number) undoes the
    removal of the copies too: the repair is all or nothing."""
    commit_done_wallets(wh, tmp_path, {"0xa": ["a1", "a2"]})
    _copy_rows_by_hand(db, wh, "a1")
    q(db, wh, "DELETE FROM {trades} WHERE id = 'a2'")  # and one trade lost: a reset is due
    q(db, wh, "DROP TABLE {checkpoint}")
    columns = tuple(Column(c.name, "INT64") if c.name == "error" else c for c in CHECKPOINT_COLUMNS)
    db.run_ddl(wh, wsql._create("numeric_error_checkpoint", "checkpoint", columns))
    q(
        db,
        wh,
        "INSERT INTO {checkpoint} (wallet_address, completed, upload_successful, trade_count) "
        "VALUES ('0xa', TRUE, TRUE, 2)",
    )
    assert wh.verify(reset=False).mismatches == (("0xa", 2, 2, 1),)
    with pytest.raises(Exception):  # noqa: B017 - each engine raises its own error type
        wh.verify()
    assert trade_ids(db, wh) == ["a1", "a1"]  # the copy is still there: nothing half-done
    assert checkpoint_rows(db, wh)["0xa"]["upload_successful"] is True


# -- status: the true remaining work (issue 12) ---------------------------------------------------


def test_status_counts_valid_distinct_wallets_left_beside_the_users_percentage(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    a, b, c = "0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40
    raw = [
        a,
        a.upper().replace("0X", "0x"),  # a case variant of a
        " " + a + " ",  # a with spaces
        "b" * 40,  # b without its 0x
        b,
        c,
        c,  # a repeat
        "0x123",
        "not-a-wallet",
        "0x" + "g" * 40,
        "",
    ]
    values = ", ".join(f"('{v}')" for v in raw) + ", (NULL)"
    q(db, wh, f"INSERT INTO {{traders}} VALUES {values}")
    files = stage(
        tmp_path, "r1", trades=[trade(a, "a1", "r1")], outcomes=[outcome(a, "r1", True, 1)]
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)

    report = wh.status()
    # The users' numbers, unchanged: 10 distinct non-null raw values, 1 done.
    assert (report.done_wallets, report.total_wallets, report.progress_percent) == (1, 10, 10.0)
    assert report.remaining_wallets == 9
    # Beside them, the truth: a, b and c are the valid addresses; a is done.
    assert (report.valid_wallets, report.wallets_to_do) == (3, 2)
    text = render_status(report)
    assert "1 of 10 (10.00 %), remaining 9" in text
    assert "to do            2 of 3 valid distinct addresses" in text
    assert "no longer lists" not in text


def test_status_explains_a_negative_remaining() -> None:
    """The monitoring's `remaining` (traders minus done) goes negative when the checkpoint holds
    done wallets that traders no longer lists: kept as the users count it, and explained."""
    report = StatusReport(
        done_wallets=10, failed_wallets=0, total_wallets=2, progress_percent=500.0,
        remaining_wallets=-8, valid_wallets=2, wallets_to_do=0,
    )  # fmt: skip
    text = render_status(report)
    assert "10 of 2 (500.00 %), remaining -8 (the monitoring's count" in text
    assert "traders no longer lists" in text


def test_status_to_do_of_an_empty_warehouse(wh: Warehouse) -> None:
    report = wh.status()
    assert (report.valid_wallets, report.wallets_to_do) == (0, 0)


# -- a run with nothing to commit, and what killed commits left (issue 13) ------------------------


def test_a_run_with_nothing_to_commit_touches_nothing(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    files = stage(tmp_path, "r1", trades=[], outcomes=[], markets=[], events=[], rejects=[])
    before = snapshot(db, wh)
    tables = db.table_names(wh)
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert report.nothing_to_commit and not report.already_committed
    assert (report.trades_inserted, report.wallets_done, report.wallets_failed) == (0, 0, 0)
    assert snapshot(db, wh) == before and db.table_names(wh) == tables
    assert wh.committed_run_ids() == set()
    assert q(db, wh, "SELECT commits FROM {lease}") == [(0,)]  # no commit transaction ran


def test_a_run_with_only_rejects_staged_has_nothing_to_commit(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path, "r1", rejects=[{"wallet_address": "x", "reason": "bad", "run_id": "r1"}]
    )
    assert wh.commit_run("r1", files, committed_at=COMMITTED_AT).nothing_to_commit
    assert wh.committed_run_ids() == set()


def test_what_stops_a_commit_before_its_transaction_leaves_production_and_no_load_table(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    # The staging's self-check is asked of what DuckDB loaded (`before_transaction`): its
    # refusal must stop the commit after the load and before anything lands.
    class Refused(Exception):
        pass

    def refuse(disagreeing: int) -> None:
        raise Refused

    before = snapshot(db, wh)
    with pytest.raises(Refused):
        wh.commit_run(
            "r1", busy_run(tmp_path), committed_at=COMMITTED_AT, before_transaction=refuse
        )
    assert snapshot(db, wh) == before and wh.committed_run_ids() == set()
    assert load_tables_left(db, wh) == []
    checked: list[int] = []
    report = wh.commit_run(
        "r1",
        busy_run(tmp_path),
        committed_at=COMMITTED_AT,
        before_transaction=checked.append,
    )
    # Asked once, after the load: the done wallet's outcome says 0 trades and 2 are staged
    # (only the staging's check refuses; commit_run reports).
    assert checked == [1] and report.trades_inserted == 2  # the done wallet's two


def test_the_loaded_counts_question_counts_each_landing_wallet_that_disagrees(
    wh: Warehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path,
        "r1",
        trades=[
            *(trade("0xa", f"a{i}", "r1") for i in range(2)),
            trade("0xb", "b1", "r1"),
            *(trade("0xd", f"d{i}", "r1") for i in range(2)),
            trade("0xg", "g1", "r1"),  # no outcome: not the run's wallet, not asked
        ],
        outcomes=[
            outcome("0xa", "r1", True, 10, trade_count=2),  # agrees
            outcome("0xb", "r1", False, 10, trade_count=9, error="HTTP 500"),  # failed: skipped
            outcome("0xd", "r1", True, 10, trade_count=3),  # one short
            outcome("0xe", "r1", True, 10, trade_count=1, error="odd"),  # lands, none staged
            outcome("0xf", "r1", True, 10, trade_count=0),  # none, none staged: agrees
        ],
    )
    asked: list[int] = []

    def stop(disagreeing: int) -> None:
        asked.append(disagreeing)
        raise RuntimeError("stop before the transaction")

    with pytest.raises(RuntimeError):
        wh.commit_run("r1", files, committed_at=COMMITTED_AT, before_transaction=stop)
    assert asked == [2] and wh.committed_run_ids() == set()


def test_duckdb_translations_are_cached_without_the_load_tables_names() -> None:
    # A commit attempt's load tables are named by its nonce: the cached translation takes them
    # in afterwards, and must read exactly as translating with them in place.
    import sqlglot
    from sqlglot.errors import ErrorLevel

    tables = TableNames(trades="t_x", checkpoint="ckpt")
    for statement in [*wsql.ALL_STATEMENTS, *wsql.DUCKDB_CREATE_LOAD_TABLE.values()]:
        if statement.dialect != "bigquery":
            continue
        for run_id, nonce in ((None, ""), ("r-1", "ab12"), ("r_1", "")):
            names = {k: f"`{v}`" for k, v in wsql._table_map(tables, run_id, nonce).items()}
            try:
                text = wsql._fill(statement, names)
            except ValueError:  # needs a load table and got no run id: so must rendering
                with pytest.raises(ValueError, match="pass run_id"):
                    wsql.render_duckdb(statement, tables, run_id, nonce)
                continue
            (direct,) = sqlglot.transpile(
                text,
                read="bigquery",
                write="duckdb",
                identify=True,
                pretty=True,
                unsupported_level=ErrorLevel.RAISE,
            )
            assert wsql.render_duckdb(statement, tables, run_id, nonce) == direct, statement.name


def test_load_tables_a_killed_commit_left_are_dropped_at_start_up(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    for kind in ("trades", "outcomes"):
        statement = wsql.CREATE_LOAD_TABLE[kind]
        if db.kind == "duckdb":
            q(db, wh, wsql.render_duckdb(statement, wh.tables, "dead-run", "0badc0de"))
        else:
            db.client.query(
                wsql.render(statement, wh.tables, "dead-run", wh.dataset, "0badc0de")
            ).result()
    left = load_tables_left(db, wh)
    assert len(left) == 2
    wh.commit_run("r1", busy_run(tmp_path), committed_at=COMMITTED_AT)  # others' commits go on
    assert wh.drop_orphan_load_tables() == left
    assert load_tables_left(db, wh) == []
    assert wh.drop_orphan_load_tables() == []
    assert "trades" in db.table_names(wh) and wh.committed_run_ids() == {"r1"}


def test_dropping_orphans_creates_nothing(db: Engine) -> None:
    wh = db.new()
    assert wh.drop_orphan_load_tables() == []
    assert not db.exists(wh)


def test_only_load_tables_can_be_dropped_as_orphans() -> None:
    with pytest.raises(ValueError, match="not a load table"):
        wsql.drop_orphan_load_table("trades")
    with pytest.raises(ValueError):
        wsql.drop_orphan_load_table("_stg_x; DROP TABLE trades")


# -- markets and events missing at the source (issue 12) -----------------------------------------


def missing(kind: str, key: str, seen: float = 0.0) -> dict[str, Any]:
    """A staged row of kind "missing": the run's lookup of `key` came back without it."""
    return {"kind": kind, "key": key, "seen_at": ts(seen)}


EVERY_MISSING = (("events", "storm"), ("markets", "0xc2"))


def _missing_counts(wh: Warehouse) -> tuple[Any, ...]:
    report = wh.status()
    return (
        report.markets_pending,
        report.markets_missing,
        report.events_pending,
        report.events_missing,
    )


def test_a_key_found_missing_by_enough_runs_is_missing_at_the_source_and_not_read_again(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    """Production names markets 0xc2, 0xc3 and events storm, rain (unlanded_history); the source
    has no 0xc2 and no storm. Each run that finds them missing counts once, however often it is
    committed; after MISSING_AFTER runs they are missing at the source; a failed fetch (0xc3,
    rain: no missing row) stays pending."""
    assert MISSING_AFTER == 3
    wh.commit_run("r1", stage(tmp_path, "r1", **unlanded_history()), committed_at=COMMITTED_AT)
    assert _missing_counts(wh) == (2, 0, 2, 0)
    day = 86400.0
    start = time.time() - T0 - 3 * day  # sightings a day apart, the last one a day ago

    def found_missing(at: float) -> list[dict]:
        return [
            missing("markets", "0xc2", at + 1),
            missing("markets", "0xc2", at + 2),  # asked twice in one run: still one run
            missing("events", "storm", at + 1),
        ]

    for number in (2, 3):
        run_id = f"r{number}"
        files = stage(tmp_path, run_id, missing=found_missing(start + (number - 2) * day))
        report = wh.commit_run(run_id, files, committed_at=COMMITTED_AT)
        assert not report.nothing_to_commit and not report.already_committed
        assert wh.commit_run(run_id, files, committed_at=COMMITTED_AT).already_committed
        # Two runs found them missing: still pending, still read (the next run asks again).
        assert (list(wh.read_missing_markets()), list(wh.read_missing_events())) == ([], [])
        assert _missing_counts(wh) == (2, 0, 2, 0)
    rows = db.rows(wh, "SELECT kind, key, run_id FROM {missing} ORDER BY run_id, kind")
    assert rows == [(kind, key, run) for run in ("r2", "r3") for kind, key in EVERY_MISSING]
    first = db.rows(wh, "SELECT seen_at FROM {missing} WHERE run_id = 'r2' AND kind = 'markets'")
    assert first == [(dt.datetime.fromtimestamp(T0 + start + 1, dt.UTC),)]  # its first sighting

    wh.commit_run("r4", stage(tmp_path, "r4", missing=found_missing(start + 2 * day)))
    assert list(wh.read_missing_markets()) == [("0xc2",)]
    assert list(wh.read_missing_events()) == [("storm",)]
    assert _missing_counts(wh) == (1, 1, 1, 1)
    text = render_status(wh.status())
    assert "pending          markets 1, events 1" in text
    assert "missing          markets 1, events 1 (named by production, missing at the source" in (
        text
    )
    # Still named, still not landed: read_unlanded_* keep them (the graph drops them, see
    # transforms.skip_known), so status can tell them apart.
    assert sorted(wh.read_unlanded_markets()) == [("0xc2", "m2"), ("0xc3", "m3")]

    # The source has them after all (a run landed them): they are missing no more.
    landed = {
        "markets": [market("0xc2", "r5", 20)],
        "events": [event("storm", "r5", 20)],
    }
    wh.commit_run("r5", stage(tmp_path, "r5", **landed), committed_at=COMMITTED_AT)
    assert _missing_counts(wh) == (1, 0, 1, 0)


def test_a_key_is_given_up_only_over_a_day_and_asked_again_a_week_after_its_last_sighting(
    wh: Warehouse, tmp_path: Path
) -> None:
    wh.commit_run("r1", stage(tmp_path, "r1", **unlanded_history()), committed_at=COMMITTED_AT)
    now = time.time() - T0
    # A crash, the start-up that recovered it and a rerun: three runs, seconds apart.
    for number, offset in ((2, -30), (3, -20), (4, -10)):
        rows = [missing("markets", "0xc2", now + offset)]
        wh.commit_run(f"r{number}", stage(tmp_path, f"r{number}", missing=rows))
    assert list(wh.read_missing_markets()) == []  # still asked for: the next run asks again
    assert _missing_counts(wh)[:2] == (2, 0)
    # Sighted again a day later: the source's word now.
    rows = [missing("markets", "0xc2", now + base.MISSING_SPAN_S)]
    wh.commit_run("r5", stage(tmp_path, "r5", missing=rows))
    assert list(wh.read_missing_markets()) == [("0xc2",)]
    assert _missing_counts(wh)[:2] == (1, 1)
    # Sightings that ended over a week ago: asked for again (a source that lists it late).
    week = base.MISSING_RECHECK_S + 3600
    for number, offset in ((6, -week - 2 * 86400), (7, -week - 86400), (8, -week)):
        rows = [missing("markets", "0xc3", now + offset)]
        wh.commit_run(f"r{number}", stage(tmp_path, f"r{number}", missing=rows))
    assert list(wh.read_missing_markets()) == [("0xc2",)]


def test_a_run_staged_before_missing_rows_existed_commits(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    """Its manifest lists no "missing" files at all: the commit loads none and counts nothing."""
    files = busy_run(tmp_path)
    assert "missing" not in files
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert (report.trades_inserted, report.markets_merged, report.wallets_done) == (2, 1, 1)
    assert db.rows(wh, "SELECT COUNT(*) FROM {missing}") == [(0,)]
    assert load_tables_left(db, wh) == []


def test_status_of_a_warehouse_from_before_the_missing_table(
    db: Engine, wh: Warehouse, tmp_path: Path
) -> None:
    """Status only reads: the missing table is named, every unlanded key counts as pending."""
    wh.commit_run("r1", stage(tmp_path, "r1", **unlanded_history()), committed_at=COMMITTED_AT)
    q(db, wh, "DROP TABLE {missing}")
    report = wh.status()
    assert report.missing_tables == ("backfill_missing",)
    assert _missing_counts(wh) == (2, None, 2, None)
    text = render_status(report)
    assert "pending          markets 2, events 2" in text
    assert "missing          markets" not in text
    assert "backfill_missing" not in db.table_names(wh)


# -- production is read for the run's successful wallets only (clustering prunes to them) ---------


def _spy_on_wallets(monkeypatch: pytest.MonkeyPatch, wh: Warehouse) -> list[Any]:
    """The `wallets` each commit transaction of `wh` is given (None: too many to list)."""
    seen: list[Any] = []
    transaction = wh._transaction

    def spy(session: Any, run_id: str, committed_at: Any, nonce: str, wallets: Any = None) -> Any:
        seen.append(wallets)
        return transaction(session, run_id, committed_at, nonce, wallets)

    monkeypatch.setattr(wh, "_transaction", spy)
    return seen


def test_the_commit_lists_the_runs_successful_wallets_for_its_production_reads(
    db: Engine, wh: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The @wallets of the commit are the wallets whose trades land: a success beats a failure
    of the same wallet, a failed wallet is not read; a run of failures lists none."""
    seen = _spy_on_wallets(monkeypatch, wh)
    land_t2_of_wallet_a(wh, tmp_path)
    rows = rich_run("r1")
    rows["outcomes"] += [outcome("0xc", "r1", False, 30, error="x"), outcome("0xc", "r1", True, 40)]
    report = wh.commit_run("r1", stage(tmp_path, "r1", **rows), committed_at=COMMITTED_AT)
    failures = stage(tmp_path, "r2", outcomes=[outcome("0xd", "r2", False, 50, error="x")])
    assert wh.commit_run("r2", failures, committed_at=COMMITTED_AT).wallets_failed == 1
    assert seen == [["0xa"], ["0xa", "0xc"], []]
    assert trade_ids(db, wh) == ["t1", "t2", "t3"]
    assert (report.trades_inserted, report.wallets_done, report.wallets_failed) == (2, 2, 1)
    ckpt = checkpoint_rows(db, wh)
    assert (ckpt["0xa"]["trade_count"], ckpt["0xc"]["trade_count"]) == (3, 0)
    assert (ckpt["0xb"]["trade_count"], ckpt["0xd"]["upload_successful"]) == (1, False)


def _many_wallets_history() -> list[tuple[str, dict[str, list[dict]]]]:
    """Runs whose commits read production for several wallets: cross-source fills of 0xw beside
    rich_run's wallets (0xa done, 0xb failed), then the same staging again under a new run id."""
    production, staged, _ = CROSS_SOURCE_CASES["a_overlap_lands_only_the_new_fill"]
    r0 = {
        "trades": [*production, trade("0xa", "t2", "r0")],
        "outcomes": [outcome("0xw", "r0", True, 5), outcome("0xa", "r0", True, 5)],
    }
    runs = []
    for run_id in ("r1", "r2"):
        rows = rich_run(run_id)
        rows["trades"] += staged
        rows["outcomes"].append(
            outcome("0xw", run_id, True, 10 * int(run_id[1]), source="polymarket")
        )
        runs.append((run_id, rows))
    return [("r0", r0), *runs]


def test_a_run_with_too_many_wallets_to_list_lands_exactly_the_same(
    db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `wallets_listed_at_most` the commit reads production by subquery (no pruning): the
    same trades, checkpoint, markets, events and runs rows as the listed commit, row for row."""
    listed, unlisted = db.new(), db.new()
    unlisted.wallets_listed_at_most = 1
    for warehouse in (listed, unlisted):
        warehouse.ensure_tables()
    seen = {id(w): _spy_on_wallets(monkeypatch, w) for w in (listed, unlisted)}
    reports: dict[int, list[Any]] = {id(w): [] for w in (listed, unlisted)}
    try:
        for run_id, rows in _many_wallets_history():
            files = stage(tmp_path / run_id, run_id, **rows)
            for warehouse in (listed, unlisted):
                reports[id(warehouse)].append(
                    warehouse.commit_run(run_id, files, committed_at=COMMITTED_AT)
                )
        assert seen[id(listed)] == [["0xa", "0xw"]] * 3
        assert seen[id(unlisted)] == [None] * 3  # two successful wallets each: over the limit
        assert reports[id(listed)] == reports[id(unlisted)]
        assert [r.trades_inserted for r in reports[id(listed)]] == [4, 3, 0]
        assert snapshot(db, listed) == snapshot(db, unlisted)
        assert trade_ids(db, unlisted) == ["d1", "d2", "d3", "p4", "t1", "t2", "t3"]
        ckpt = checkpoint_rows(db, unlisted)
        assert (ckpt["0xw"]["trade_count"], ckpt["0xa"]["trade_count"]) == (4, 3)
    finally:
        listed.close()
        unlisted.close()
