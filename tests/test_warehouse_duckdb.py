"""The DuckDB warehouse where it differs from BigQuery: column types, specs, pickling, the file
lock shared by processes, and the migration of an old file. The rest: test_warehouse.py."""

from __future__ import annotations

import multiprocessing
import pickle
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipeline.schema import TRADE_COLUMNS
from pipeline.warehouse import TableNames, open_warehouse, parse_warehouse_spec
from pipeline.warehouse import sql as q
from pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from tests.support import (
    COMMITTED_AT,
    NEW_COLUMNS,
    DuckDBEngine,
    old_ddl,
    outcome,
    pm_market,
    pm_trade,
    stage,
    trade,
    trade_ids,
)


def query(wh: DuckDBWarehouse, sql: str) -> list[tuple]:
    return DuckDBEngine(Path(wh.path).parent).rows(wh, sql)


def insert_row(wh: DuckDBWarehouse, table: str, row: dict) -> None:
    with duckdb.connect(wh.path) as conn:
        columns = ", ".join(f'"{name}"' for name in row)
        holes = ", ".join("?" for _ in row)
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({holes})", list(row.values()))


@pytest.fixture
def wh(tmp_path: Path) -> DuckDBWarehouse:
    warehouse = DuckDBWarehouse(tmp_path / "db" / "wh.duckdb")
    warehouse.ensure_tables()
    return warehouse


def test_column_types(wh: DuckDBWarehouse) -> None:
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
    assert trade_ids(DuckDBEngine(Path(wh.path).parent), wh) == ["0x1-t", "0x2-t"]


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


# -- a file from before sources -------------------------------------------------------------------


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
