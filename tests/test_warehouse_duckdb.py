"""The DuckDB warehouse on a real file: the commit's exactly-once semantics, guards, status, locks."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import pickle
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipeline.schema import (
    CHECKPOINT_COLUMNS,
    MARKET_COLUMNS,
    TRADE_COLUMNS,
    Column,
    format_timestamp,
)
from pipeline.status_report import render_status
from pipeline.warehouse import (
    CommitError,
    TableNames,
    open_warehouse,
    parse_warehouse_spec,
)
from pipeline.warehouse import sql as q
from pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse

T0 = 1_790_000_000.0  # 2026-09-21, a fixed clock: results must not depend on "now"
COMMITTED_AT = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def ts(offset: float) -> str:
    return format_timestamp(T0 + offset)


# -- staging rows, written by hand as the graph would ---------------------------------------------


def trade(wallet: str, trade_id: str, run_id: str, fetched: float = 0.0, **extra: Any) -> dict:
    row = {
        "id": trade_id,
        "wallet_address": wallet,
        "token_id": "1" * 77,
        "token_label": "Yes",
        "side": "BUY",
        "market_slug": "will-it-rain",
        "condition_id": "0xc1",
        "shares": 5_000_000,
        "shares_normalized": 5.0,
        "price": 0.42,
        "tx_hash": f"0xtx{trade_id}",
        "title": "Will it rain?",
        "timestamp": int(T0),
        "traded_at": ts(0),
        "order_hash": f"0xoh{trade_id}",
        "user": wallet,
        "taker": None,
        "block_number": 1,
        "log_index": 0,
        "run_id": run_id,
        "fetched_at": ts(fetched),
    }
    row.update(extra)
    return row


def outcome(
    wallet: str,
    run_id: str,
    ok: bool,
    processed: float,
    trade_count: int = 0,
    error: str | None = None,
    source: str | None = None,
) -> dict:
    row = {
        "wallet_address": wallet,
        "upload_successful": ok,
        "trade_count": trade_count,
        "error": error,
        "last_trade_at": ts(0) if ok else None,
        "gcs_file": f"staging/{run_id}/trades/part-0.json",
        "processed_at": ts(processed),
        "run_id": run_id,
    }
    if source is not None:
        row["source"] = source
    return row


def pm_trade(wallet: str, trade_id: str, run_id: str, ordinal: int = 0, **extra: Any) -> dict:
    """A Polymarket row: no order hash, no maker, no log index; `fill_ordinal` among identical rows."""
    row = trade(
        wallet,
        trade_id,
        run_id,
        source="polymarket",
        order_hash=None,
        user=None,
        block_number=None,
        log_index=None,
        event_slug="weather",
        outcome_index=0,
        fill_ordinal=ordinal,
        extra=json.dumps({"pseudonym": "Rain-Man"}),
    )
    row.update(extra)
    return row


def market(condition_id: str, run_id: str, updated: float, title: str = "m") -> dict:
    return {
        "condition_id": condition_id,
        "market_slug": "will-it-rain",
        "title": title,
        "tags": ["weather", "rain"],
        "volume_total": 12.5,
        "event_slug": "weather",
        "run_id": run_id,
        "updated_at": ts(updated),
    }


def event(slug: str, run_id: str, updated: float, title: str = "e", **extra: Any) -> dict:
    row = {
        "event_slug": slug,
        "title": title,
        "subtitle": "sub",
        "tags": [],
        "market_count": 1,
        "run_id": run_id,
        "updated_at": ts(updated),
    }
    row.update(extra)
    return row


def write_ndjson(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def stage(root: Path, run_id: str, **kinds: list[dict]) -> dict[str, list[str]]:
    """Write a run's staging: each kind split over two files (the second may be empty)."""
    files: dict[str, list[str]] = {}
    for kind, rows in kinds.items():
        half = (len(rows) + 1) // 2
        files[kind] = [
            write_ndjson(root / run_id / kind / "part-0.json", rows[:half]),
            write_ndjson(root / run_id / kind / "part-1.json", rows[half:]),
        ]
    return files


# -- reading the database back --------------------------------------------------------------------

TABLES = ("trades", "markets", "events", "backfill_checkpoint", "backfill_runs")


def query(wh: DuckDBWarehouse, sql: str) -> list[tuple]:
    conn = duckdb.connect(wh.path)
    try:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def snapshot(wh: DuckDBWarehouse, tables: tuple[str, ...] = TABLES) -> dict[str, list[tuple]]:
    return {t: sorted(query(wh, f"SELECT * FROM {t}"), key=repr) for t in tables}


def checkpoint(wh: DuckDBWarehouse) -> dict[str, dict]:
    conn = duckdb.connect(wh.path)
    try:
        cur = conn.execute("SELECT * FROM backfill_checkpoint")
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
    finally:
        conn.close()


def trade_ids(wh: DuckDBWarehouse) -> list[str]:
    return sorted(row[0] for row in query(wh, "SELECT id FROM trades"))


def staging_tables_left(wh: DuckDBWarehouse) -> list[str]:
    rows = query(
        wh, "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE '\\_stg%' ESCAPE '\\'"
    )
    return [row[0] for row in rows]


@pytest.fixture
def wh(tmp_path: Path) -> DuckDBWarehouse:
    warehouse = DuckDBWarehouse(tmp_path / "db" / "wh.duckdb")
    warehouse.ensure_tables()
    return warehouse


# -- tables ---------------------------------------------------------------------------------------


def test_ensure_tables_is_idempotent_and_keeps_traders(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "new" / "folder" / "wh.duckdb")
    wh.ensure_tables()
    query(wh, "INSERT INTO traders VALUES ('0xaaa'), (NULL)")
    wh.ensure_tables()
    assert sorted(wh.read_traders(), key=repr) == ["0xaaa", None]
    names = {row[0] for row in query(wh, "SELECT table_name FROM duckdb_tables()")}
    assert names == {
        "traders",
        "backfill_checkpoint",
        "trades",
        "markets",
        "events",
        "backfill_runs",
    }
    types = dict(
        query(wh, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'trades'")
    )
    assert types["traded_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["shares"] == "BIGINT"
    tags = query(
        wh,
        "SELECT data_type FROM duckdb_columns() WHERE table_name = 'markets' AND column_name = 'tags'",
    )
    assert tags == [("VARCHAR[]",)]


def test_custom_table_names(tmp_path: Path) -> None:
    tables = TableNames(trades="fills", runs="commits")
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb", tables)
    wh.ensure_tables()
    files = stage(
        tmp_path, "r1", trades=[trade("0xa", "t1", "r1")], outcomes=[outcome("0xa", "r1", True, 10)]
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert query(wh, "SELECT id FROM fills") == [("t1",)]
    assert wh.committed_run_ids() == {"r1"}


# -- the commit -----------------------------------------------------------------------------------


def test_commit_lands_exactly_the_successful_wallets_trades_once(
    wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    # An earlier run already landed t2 for wallet A.
    first = stage(
        tmp_path, "r0", trades=[trade("0xa", "t2", "r0")], outcomes=[outcome("0xa", "r0", True, 5)]
    )
    wh.commit_run("r0", first, committed_at=COMMITTED_AT)

    files = stage(
        tmp_path,
        "r1",
        trades=[
            trade("0xa", "t1", "r1", fetched=20),
            trade("0xa", "t2", "r1", fetched=20),  # already in production
            trade("0xa", "t3", "r1", fetched=20),
            trade("0xa", "t1", "r1", fetched=10),  # a duplicate inside staging, fetched earlier
            trade("0xb", "b1", "r1"),  # wallet B failed: its partial pages must not land
        ],
        outcomes=[
            outcome("0xa", "r1", True, 100, trade_count=99),
            outcome("0xb", "r1", False, 100, trade_count=1, error="HTTP 500 after 5 attempts"),
        ],
        markets=[market("0xc1", "r1", 10)],
        events=[event("weather", "r1", 10)],
    )
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)

    assert trade_ids(wh) == ["t1", "t2", "t3"]
    fetched = query(wh, "SELECT fetched_at FROM trades WHERE id = 't1'")
    assert fetched == [(dt.datetime.fromtimestamp(T0 + 10, dt.UTC),)]
    assert query(wh, "SELECT run_id FROM trades WHERE id = 't2'") == [("r0",)]
    assert (report.already_committed, report.trades_inserted) == (False, 2)
    assert (report.markets_merged, report.events_merged) == (1, 1)
    assert (report.wallets_done, report.wallets_failed) == (1, 1)

    ckpt = checkpoint(wh)
    a, b = ckpt["0xa"], ckpt["0xb"]
    assert (a["completed"], a["upload_successful"], a["error"]) == (True, True, None)
    assert a["trade_count"] == 3  # distinct staged ids, not the outcome's 99
    assert (a["attempts"], a["run_id"]) == (2, "r1")
    assert (b["completed"], b["upload_successful"]) == (True, False)
    assert (b["error"], b["trade_count"], b["attempts"]) == ("HTTP 500 after 5 attempts", 1, 1)
    assert b["processed_at"] == dt.datetime.fromtimestamp(T0 + 100, dt.UTC)
    assert list(wh.read_done_wallets()) == ["0xa"]

    runs = query(wh, "SELECT * FROM backfill_runs WHERE run_id = 'r1'")
    assert runs == [("r1", COMMITTED_AT, 1, 1, 5, 1, 1)]
    assert staging_tables_left(wh) == []


def test_failed_wallet_is_flipped_by_a_later_success(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    files = stage(
        tmp_path,
        "r1",
        trades=[trade("0xb", "b1", "r1")],
        outcomes=[outcome("0xb", "r1", False, 10, trade_count=1, error="timeout")],
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert trade_ids(wh) == []
    assert list(wh.read_done_wallets()) == []

    files = stage(
        tmp_path,
        "r2",
        trades=[trade("0xb", "b1", "r2"), trade("0xb", "b2", "r2")],
        outcomes=[outcome("0xb", "r2", True, 20, trade_count=2)],
    )
    wh.commit_run("r2", files, committed_at=COMMITTED_AT)
    assert trade_ids(wh) == ["b1", "b2"]
    b = checkpoint(wh)["0xb"]
    assert (b["upload_successful"], b["error"], b["attempts"], b["trade_count"]) == (
        True,
        None,
        2,
        2,
    )
    assert list(wh.read_done_wallets()) == ["0xb"]


def test_a_success_beats_a_failure_of_the_same_wallet_in_one_run(
    wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path,
        "r1",
        trades=[trade("0xa", "a1", "r1")],
        outcomes=[outcome("0xa", "r1", False, 30, error="retried"), outcome("0xa", "r1", True, 10)],
    )
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert (report.wallets_done, report.wallets_failed) == (1, 0)
    assert trade_ids(wh) == ["a1"]
    assert checkpoint(wh)["0xa"]["upload_successful"] is True


def _busy_run(tmp_path: Path, run_id: str = "r1") -> dict[str, list[str]]:
    return stage(
        tmp_path,
        run_id,
        trades=[trade("0xa", "a1", run_id), trade("0xa", "a2", run_id), trade("0xb", "b1", run_id)],
        outcomes=[outcome("0xa", run_id, True, 10), outcome("0xb", run_id, False, 10, error="x")],
        markets=[market("0xc1", run_id, 10), market("0xc1", run_id, 5, title="older")],
        events=[event("weather", run_id, 10)],
    )


def test_committing_twice_changes_nothing(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    files = _busy_run(tmp_path)
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    before = snapshot(wh)
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT + dt.timedelta(hours=1))
    assert report.already_committed
    assert (report.trades_inserted, report.markets_merged, report.events_merged) == (0, 0, 0)
    assert snapshot(wh) == before
    assert query(wh, "SELECT title FROM markets") == [("m",)]  # the newest staged version won


def test_the_sql_guards_alone_make_a_recommit_a_no_op(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    files = _busy_run(tmp_path)
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    before = snapshot(wh)
    query(wh, "DELETE FROM backfill_runs WHERE run_id = 'r1'")
    assert wh.committed_run_ids() == set()

    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert not report.already_committed
    assert (report.trades_inserted, report.markets_merged, report.events_merged) == (0, 0, 0)
    assert snapshot(wh) == before  # attempts not bumped, nothing duplicated, same runs row
    assert wh.committed_run_ids() == {"r1"}


def test_an_older_run_committed_late_does_not_overwrite_newer_state(
    wh: DuckDBWarehouse, tmp_path: Path
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

    ckpt = checkpoint(wh)
    assert (ckpt["0xf"]["error"], ckpt["0xf"]["run_id"], ckpt["0xf"]["attempts"]) == (
        "new failure",
        "r2",
        1,
    )
    assert (ckpt["0xd"]["upload_successful"], ckpt["0xd"]["run_id"]) == (True, "r2")
    assert ckpt["0xe"]["upload_successful"] is True  # new to the checkpoint: inserted
    assert sorted(query(wh, "SELECT condition_id, title FROM markets")) == [
        ("0xc1", "new"),
        ("0xc2", "m"),
    ]
    assert query(wh, "SELECT title FROM events") == [("new",)]
    assert trade_ids(wh) == ["d1", "e1"]


def test_a_done_wallet_is_never_turned_into_a_failed_one(
    wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path, "r1", trades=[trade("0xa", "a1", "r1")], outcomes=[outcome("0xa", "r1", True, 10)]
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    files = stage(
        tmp_path, "r2", outcomes=[outcome("0xa", "r2", False, 20, error="late retry failed")]
    )
    wh.commit_run("r2", files, committed_at=COMMITTED_AT)
    a = checkpoint(wh)["0xa"]
    # A failed refresh of a done wallet keeps it done and records only its error; its unchanged
    # last_refreshed_at makes the next refresh try again.
    assert (a["upload_successful"], a["error"], a["run_id"]) == (True, "late retry failed", "r1")
    assert a["last_refreshed_at"] == a["processed_at"]
    assert list(wh.read_done_wallets()) == ["0xa"]


def test_a_failing_transaction_rolls_everything_back(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    wh.commit_run("r0", _busy_run(tmp_path, "r0"), committed_at=COMMITTED_AT)
    before = snapshot(wh)
    # Production refuses what staging allows: the events MERGE fails after the trades INSERT
    # and the markets MERGE have run inside the transaction.
    query(wh, "ALTER TABLE events ALTER COLUMN subtitle SET NOT NULL")
    rows = {
        "trades": [trade("0xg", "g1", "r1")],
        "outcomes": [outcome("0xg", "r1", True, 50), outcome("0xb", "r1", True, 50)],
        "markets": [market("0xc9", "r1", 50)],
    }
    bad = stage(tmp_path, "r1", events=[event("storm", "r1", 50, subtitle=None)], **rows)
    with pytest.raises(CommitError, match=r"run r1.*rolled back"):
        wh.commit_run("r1", bad, committed_at=COMMITTED_AT)
    assert snapshot(wh) == before
    assert wh.committed_run_ids() == {"r0"}
    assert staging_tables_left(wh) == []

    fixed = stage(tmp_path, "r1", events=[event("storm", "r1", 50)], **rows)
    report = wh.commit_run("r1", fixed, committed_at=COMMITTED_AT)
    assert report.trades_inserted == 1
    assert trade_ids(wh) == ["a1", "a2", "g1"]
    assert set(wh.read_done_wallets()) == {"0xa", "0xb", "0xg"}
    assert wh.committed_run_ids() == {"r0", "r1"}


def test_a_staged_row_missing_a_required_column_fails_the_load(
    wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    wh.commit_run("r0", _busy_run(tmp_path, "r0"), committed_at=COMMITTED_AT)
    before = snapshot(wh)
    bad = stage(
        tmp_path,
        "r1",
        trades=[trade("0xg", "g1", "r1"), trade("0xg", "g2", "r1", tx_hash=None)],
        outcomes=[outcome("0xg", "r1", True, 50)],
    )
    with pytest.raises(CommitError, match="run r1: loading its trades staging"):
        wh.commit_run("r1", bad, committed_at=COMMITTED_AT)
    assert snapshot(wh) == before
    assert wh.committed_run_ids() == {"r0"}
    assert staging_tables_left(wh) == []


def test_empty_staging_kinds(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    report = wh.commit_run("r0", {}, committed_at=COMMITTED_AT)
    assert (report.trades_inserted, report.wallets_done, report.wallets_failed) == (0, 0, 0)
    assert query(wh, "SELECT * FROM backfill_runs") == [("r0", COMMITTED_AT, 0, 0, 0, 0, 0)]

    files = stage(tmp_path, "r1", trades=[], outcomes=[outcome("0xz", "r1", True, 5)], events=[])
    files["markets"] = []
    files["rejects"] = [write_ndjson(tmp_path / "r1" / "rejects" / "part-0.json", [])]
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert report.wallets_done == 1
    z = checkpoint(wh)["0xz"]
    assert (z["upload_successful"], z["trade_count"]) == (True, 0)  # a wallet with no trades
    assert trade_ids(wh) == []


def test_commit_validates_its_arguments(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run_id"):
        wh.commit_run("bad id!", {})
    with pytest.raises(ValueError, match="unknown staging kinds"):
        wh.commit_run("r1", {"trade": []})
    with pytest.raises(CommitError, match="missing"):
        wh.commit_run("r1", {"trades": [str(tmp_path / "nope.json")]})
    assert wh.committed_run_ids() == set()


# -- status ---------------------------------------------------------------------------------------


def test_status_numbers(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    # Distinct non-null traders: 0xa, 0xb, 0xc (0xa twice, one null) -> 3.
    query(wh, "INSERT INTO traders VALUES ('0xa'), ('0xb'), ('0xc'), ('0xa'), (NULL)")
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
    assert wh.status(last_runs=5).last_runs[1].run_id == "r1"

    text = render_status(report)
    assert "2 of 3 (66.67 %)" in text and "remaining 1" in text
    assert "0xc" in text and "boom" in text and "r2" in text


def test_status_of_an_empty_warehouse(wh: DuckDBWarehouse) -> None:
    report = wh.status()
    assert (report.done_wallets, report.total_wallets, report.progress_percent) == (0, 0, None)
    assert report.last_runs == ()
    assert "no committed runs yet" in render_status(report)
    with pytest.raises(ValueError):
        wh.status(last_runs=-1)


# -- specs, pickling, locks -----------------------------------------------------------------------


def test_parse_and_open_warehouse_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_warehouse_spec("duckdb:a/b.duckdb") == ("duckdb", "a/b.duckdb")
    assert parse_warehouse_spec("bigquery:my-project.polymarket") == (
        "bigquery",
        "my-project.polymarket",
    )
    for bad in [
        "",
        "backfill.duckdb",
        "duckdb:",
        "sqlite:x.db",
        "bigquery:nodataset",
        "bigquery:p.d;x",
    ]:
        with pytest.raises(ValueError, match=r"duckdb:PATH|PROJECT\.DATASET"):
            parse_warehouse_spec(bad)
    from pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse

    assert isinstance(open_warehouse("bigquery:my-project.polymarket"), BigQueryWarehouse)

    monkeypatch.chdir(tmp_path)
    wh = open_warehouse("duckdb:rel/wh.duckdb")
    assert isinstance(wh, DuckDBWarehouse)
    assert wh.path == str(tmp_path / "rel" / "wh.duckdb")
    with wh:
        wh.ensure_tables()
    assert (tmp_path / "rel" / "wh.duckdb").is_file()


def test_the_warehouse_pickles_without_a_connection(wh: DuckDBWarehouse) -> None:
    clone = pickle.loads(pickle.dumps(wh))
    assert (clone.path, clone.tables) == (wh.path, wh.tables)
    assert clone.committed_run_ids() == set()
    assert all(isinstance(v, str | TableNames | float) for v in vars(clone).values())


def _hold_lock(path: str, seconds: float, ready: Any) -> None:
    conn = duckdb.connect(path)
    ready.set()
    time.sleep(seconds)
    conn.close()


def _commit_in_child(wh: DuckDBWarehouse, run_id: str, files: dict[str, list[str]]) -> None:
    wh.commit_run(run_id, files, committed_at=COMMITTED_AT)


def test_two_processes_committing_at_once_both_succeed(wh: DuckDBWarehouse, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(wh.path, 1.5, ready))
    holder.start()
    assert ready.wait(30)
    # Both committers start while a third process holds the file: they must wait, not fail.
    children = []
    for run_id, wallet in (("r1", "0x1"), ("r2", "0x2")):
        files = stage(
            tmp_path,
            run_id,
            trades=[trade(wallet, f"{wallet}-t", run_id)],
            outcomes=[outcome(wallet, run_id, True, 10)],
        )
        children.append(ctx.Process(target=_commit_in_child, args=(wh, run_id, files)))
    for child in children:
        child.start()
    for process in [holder, *children]:
        process.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    assert wh.committed_run_ids() == {"r1", "r2"}
    assert trade_ids(wh) == ["0x1-t", "0x2-t"]


def test_a_lock_held_too_long_fails_with_a_clear_message(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb", lock_timeout=0.3)
    wh.ensure_tables()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(wh.path, 1.5, ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(TimeoutError, match="stayed locked by another process"):
            wh.committed_run_ids()
    finally:
        holder.join(30)


def test_the_users_existing_checkpoint_table_gains_the_missing_columns(tmp_path: Path) -> None:
    """The monitoring's checkpoint table predates run_id, attempts, error, last_trade_at, ..."""
    path = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute(
        "CREATE TABLE backfill_checkpoint (wallet_address VARCHAR, completed BOOLEAN, "
        "upload_successful BOOLEAN, trade_count BIGINT, gcs_file VARCHAR, processed_at TIMESTAMPTZ)"
    )
    conn.execute("INSERT INTO backfill_checkpoint VALUES ('0xold', true, true, 3, 'gs://x', NULL)")
    conn.close()
    wh = DuckDBWarehouse(path)
    wh.ensure_tables()
    wh.ensure_tables()  # idempotent
    row = checkpoint(wh)["0xold"]
    assert set(row) == {c.name for c in CHECKPOINT_COLUMNS}
    assert (row["trade_count"], row["attempts"], row["last_refreshed_at"]) == (3, None, None)
    assert list(wh.read_checkpoint_states()) == [("0xold", True, None, None)]


def test_verify_reports_and_resets_mismatched_done_wallets(
    wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    files = stage(
        tmp_path,
        "r1",
        trades=[trade("0xa", "a1", "r1"), trade("0xa", "a2", "r1"), trade("0xb", "b1", "r1")],
        outcomes=[outcome("0xa", "r1", True, 2), outcome("0xb", "r1", True, 1)],
    )
    wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert wh.verify().mismatches == ()
    query(wh, "DELETE FROM trades WHERE id = 'a2'")
    report = wh.verify(reset=False)
    assert report.mismatches == (("0xa", 2, 1),) and not report.reset
    assert checkpoint(wh)["0xa"]["upload_successful"] is True
    report = wh.verify()
    assert report.reset and "0xa" in report.render()
    a = checkpoint(wh)["0xa"]
    assert (a["upload_successful"], a["last_trade_at"]) == (False, None)
    assert a["error"].startswith("verify:")
    assert list(wh.read_done_wallets()) == ["0xb"]


# -- two sources: the migration, cross-source dedup, the checkpoint's source ----------------------

# The columns trades and markets gained with the second source; what the tables had before.
NEW_COLUMNS = {
    "trades": {"source", "event_slug", "outcome_index", "fill_ordinal", "extra"},
    "markets": {
        "source", "market_id", "outcomes", "outcome_prices", "token_ids", "payouts", "neg_risk",
        "extra",
    },
}  # fmt: skip
_CURRENT = {"trades": TRADE_COLUMNS, "markets": MARKET_COLUMNS}


def old_columns(table: str) -> tuple[Column, ...]:
    """A table's columns before sources: no new columns, order_hash and user REQUIRED."""
    relaxed = q.RELAXED_COLUMNS.get(table, ())
    return tuple(
        Column(c.name, c.type, "REQUIRED" if c.name in relaxed else c.mode)
        for c in _CURRENT[table]
        if c.name not in NEW_COLUMNS[table]
    )


def insert_row(wh: DuckDBWarehouse, table: str, row: dict) -> None:
    conn = duckdb.connect(wh.path)
    try:
        columns = ", ".join(f'"{name}"' for name in row)
        holes = ", ".join("?" for _ in row)
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({holes})", list(row.values()))
    finally:
        conn.close()


def old_ddl(table: str) -> q.Statement:
    return q._create(f"old_{table}", table, old_columns(table))


def pm_market(condition_id: str, run_id: str, updated: float) -> dict:
    row = market(condition_id, run_id, updated)
    row.update(
        source="polymarket",
        market_id="12345",
        outcomes=["Yes", "No"],
        outcome_prices=["0.37", "0.63"],
        token_ids=["1" * 77, "2" * 77],
        payouts=[1_000_000, 0],
        neg_risk=True,
        extra=json.dumps({"active": True}),
    )
    return row


def test_an_old_trades_table_is_migrated_and_accepts_a_polymarket_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(path))
    for table in ("trades", "markets"):
        conn.execute(q.render_duckdb(old_ddl(table), TableNames()))
    conn.close()
    wh = DuckDBWarehouse(path)
    old = trade("0xw", "d1", "r0")
    for name in NEW_COLUMNS["trades"]:
        old.pop(name, None)
    insert_row(wh, "trades", old)
    with pytest.raises(duckdb.ConstraintException, match="order_hash"):
        insert_row(wh, "trades", old | {"id": "d2", "order_hash": None})
    # Before the migration, status reads what it can and says what it cannot.
    report = wh.status()
    assert "events" in report.missing_tables and report.trades_by_source == ()
    assert any("trades.source" in note for note in report.notes)

    with caplog.at_level("WARNING"):
        wh.ensure_tables()
    assert "making column order_hash nullable" in caplog.text
    assert "adding missing column payouts" in caplog.text
    nullable = dict(
        query(
            wh,
            "SELECT column_name, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'trades'",
        )
    )
    assert (nullable["order_hash"], nullable["user"], nullable["id"]) == ("YES", "YES", "NO")
    assert set(nullable) == {c.name for c in TRADE_COLUMNS}
    types = dict(
        query(
            wh, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'markets'"
        )
    )
    assert (types["outcomes"], types["payouts"], types["neg_risk"]) == (
        "VARCHAR[]",
        "BIGINT[]",
        "BOOLEAN",
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        wh.ensure_tables()  # nothing left to change
    assert caplog.text == ""

    files = stage(
        tmp_path,
        "r1",
        trades=[pm_trade("0xp", "p1", "r1")],
        outcomes=[outcome("0xp", "r1", True, 10, source="polymarket")],
        markets=[pm_market("0xc9", "r1", 10)],
    )
    assert wh.commit_run("r1", files, committed_at=COMMITTED_AT).trades_inserted == 1
    landed = query(
        wh, "SELECT order_hash, \"user\", source, fill_ordinal FROM trades WHERE id = 'p1'"
    )
    assert landed == [(None, None, "polymarket", 0)]
    assert query(
        wh, "SELECT outcomes, payouts, neg_risk FROM markets WHERE condition_id = '0xc9'"
    ) == [(["Yes", "No"], [1_000_000, 0], True)]
    assert wh.status().trades_by_source == (("dome", 1), ("polymarket", 1))


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


def cross_source_runs(tmp_path: Path, case: str) -> tuple[dict, dict, dict, list[str]]:
    """Staging of the case's production run r0, its staged run r1, r1 again as r2; r1's ids."""
    production, staged, landed = CROSS_SOURCE_CASES[case]
    source = staged[0].get("source")
    runs = [
        stage(tmp_path, run_id, trades=rows, outcomes=[outcome("0xw", run_id, True, t, source=s)])
        for run_id, rows, t, s in (
            ("r0", production, 5, production[0].get("source")),
            ("r1", staged, 10, source),
            ("r2", staged, 20, source),
        )
    ]
    return runs[0], runs[1], runs[2], landed


@pytest.mark.parametrize("case", sorted(CROSS_SOURCE_CASES))
def test_cross_source_dedup(wh: DuckDBWarehouse, tmp_path: Path, case: str) -> None:
    r0, r1, r2, landed = cross_source_runs(tmp_path, case)
    wh.commit_run("r0", r0, committed_at=COMMITTED_AT)
    before = set(trade_ids(wh))
    report = wh.commit_run("r1", r1, committed_at=COMMITTED_AT)
    assert sorted(set(trade_ids(wh)) - before) == landed
    assert report.trades_inserted == len(landed)
    assert wh.commit_run("r2", r2, committed_at=COMMITTED_AT).trades_inserted == 0
    assert checkpoint(wh)["0xw"]["trade_count"] == len(before) + len(landed)


def test_the_checkpoint_records_the_source_of_the_last_successful_fetch(
    wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    def commit(run_id: str, processed: float, *outcomes: dict) -> None:
        wh.commit_run(run_id, stage(tmp_path, run_id, outcomes=list(outcomes)))

    commit("r1", 10, outcome("0xa", "r1", True, 10, source="dome"))
    commit("r2", 20, outcome("0xb", "r2", False, 20, error="x", source="polymarket"))
    assert (checkpoint(wh)["0xa"]["source"], checkpoint(wh)["0xb"]["source"]) == ("dome", None)
    commit(
        "r3",
        30,
        outcome("0xa", "r3", True, 30, source="polymarket"),
        outcome("0xb", "r3", True, 30, source="polymarket"),
    )
    assert checkpoint(wh)["0xa"]["source"] == "polymarket"
    commit("r4", 40, outcome("0xa", "r4", False, 40, error="x", source="dome"))
    a = checkpoint(wh)["0xa"]
    assert (a["source"], a["upload_successful"], a["error"]) == ("polymarket", True, "x")
    assert checkpoint(wh)["0xb"]["source"] == "polymarket"


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


UNLANDED_MARKETS = [("0xc2", "m2"), ("0xc3", "m3")]
UNLANDED_EVENTS = [("rain",), ("storm",)]


def test_unlanded_markets_and_events_are_read_and_counted(
    wh: DuckDBWarehouse, tmp_path: Path
) -> None:
    assert (list(wh.read_unlanded_markets()), list(wh.read_unlanded_events())) == ([], [])
    wh.commit_run("r1", stage(tmp_path, "r1", **unlanded_history()), committed_at=COMMITTED_AT)
    assert sorted(wh.read_unlanded_markets()) == UNLANDED_MARKETS
    assert sorted(wh.read_unlanded_events()) == UNLANDED_EVENTS
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


def test_status_only_reads_and_names_missing_tables(tmp_path: Path) -> None:
    path = tmp_path / "none" / "wh.duckdb"
    report = DuckDBWarehouse(path).status()
    assert not path.exists() and not path.parent.exists()
    assert report.missing_tables == tuple(TableNames().as_dict().values())
    assert report.done_wallets is None and report.markets_pending is None
    assert "missing tables   traders, backfill_checkpoint" in render_status(report)

    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_tables()
    query(wh, "DROP TABLE events")
    query(wh, "DROP TABLE backfill_runs")
    report = wh.status()
    assert report.missing_tables == ("events", "backfill_runs")
    assert (report.done_wallets, report.trades_rows, report.events_rows) == (0, None, None)
    assert report.markets_pending is None and report.trades_by_source == ()
    text = render_status(report)
    assert "missing tables   events, backfill_runs (status creates nothing" in text
    names = {row[0] for row in query(wh, "SELECT table_name FROM duckdb_tables()")}
    assert "events" not in names and "backfill_runs" not in names
