"""Helpers the tests share: seed `traders`, read production, compare it with the simulator (the
end-to-end tests), staging rows and a warehouse of each engine (the warehouse tests)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from pipeline.local_runner import LocalRunner
from pipeline.options import BackfillConfig, resolve
from pipeline.schema import (
    CHECKPOINT_COLUMNS,
    MARKET_COLUMNS,
    TRADE_COLUMNS,
    Column,
    format_timestamp,
)
from pipeline.sources.dome.ids import trade_id
from pipeline.warehouse import TableNames, Warehouse
from pipeline.warehouse import sql as q
from pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse
from pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from pipeline.warehouse.seed import seed_traders as seed_traders  # for the e2e tests
from tests.bq_emulator import BigQueryEmulator

REPO = Path(__file__).resolve().parent.parent
INVALID_TRADERS = [None, "", "0x123", "not-a-wallet", "0x" + "g" * 40]


def local_pipeline(**kwargs: Any) -> TestPipeline:
    """A TestPipeline on the runner every local run uses (LocalRunner: the DirectRunner's
    FnApiRunner, never Prism, which the DirectRunner would download from GitHub). Every test's
    TestPipeline comes from here."""
    return TestPipeline(runner=LocalRunner(), **kwargs)


def query(db_path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db_path)) as con:
        return con.execute(sql).fetchall()


def in_duckdb(sql: str) -> str:
    """`sql` with its `{trades}`-style holes filled with a local warehouse's default table names."""
    return sql.format(**TableNames().as_dict())


# What production holds, as SQL whose `{trades}`-style holes name its tables (either engine).
TRADE_IDS_SQL = "SELECT wallet_address, id FROM {trades}"
FILLS_SQL = (
    "SELECT wallet_address, tx_hash, token_id, side, shares, "
    "CAST(ROUND(price * 1000000) AS BIGINT), timestamp FROM {trades}"
)
CHECKPOINT_SQL = (
    "SELECT wallet_address, completed, upload_successful, trade_count, error FROM {checkpoint}"
)


def production_trade_ids(db_path: Path) -> Counter[tuple[str, str]]:
    return Counter(query(db_path, in_duckdb(TRADE_IDS_SQL)))


def truth_trade_ids(simulator, wallets: list[str]) -> Counter[tuple[str, str]]:
    return Counter((w, trade_id(w, order)) for w in wallets for order in simulator.orders(w))


# The simulator's name for each source's trades endpoint (stats, faults).
TRADES_ENDPOINT = {"dome": "orders", "polymarket": "trades"}


def source_stats(server, source: str) -> dict:
    """The simulator's counters for one contract (Polymarket's are nested under its name)."""
    stats = server.stats()
    return stats if source == "dome" else stats["polymarket"]


def trade_requests(server, source: str) -> int:
    return source_stats(server, source)["requests"].get(TRADES_ENDPOINT[source], 0)


def trade_requests_by_wallet(server, source: str) -> dict[str, int]:
    return source_stats(server, source)[f"{TRADES_ENDPOINT[source]}_requests_by_wallet"]


def _micro(value) -> int:
    return int((Decimal(str(value)) * 1_000_000).to_integral_value())


def truth_fills(server, wallets: list[str], source: str) -> Counter[tuple]:
    """Every fill a complete backfill from `source` must land, by content (not by our ids):
    (wallet, tx hash, token, side, millionths of a share, millionths of a dollar, time)."""
    fills: Counter[tuple] = Counter()
    for wallet in wallets:
        if source == "dome":
            for o in server.simulator.orders(wallet):
                fills[
                    (
                        wallet,
                        o["tx_hash"].lower(),
                        str(o["token_id"]),
                        o["side"],
                        o["shares"],
                        _micro(o["price"]),
                        o["timestamp"],
                    )
                ] += 1
        else:
            for r in server.wallet_truth(wallet, source="polymarket")["rows"]:
                fills[
                    (
                        wallet,
                        r["transaction_hash"].lower(),
                        r["token_id"],
                        r["side"],
                        _micro(r["size"]),
                        _micro(r["price"]),
                        r["timestamp"],
                    )
                ] += 1
    return fills


def production_fills(db_path: Path) -> Counter[tuple]:
    """Production's fills by content, as `truth_fills` counts them."""
    return Counter(query(db_path, in_duckdb(FILLS_SQL)))


def truth_markets_and_events(server, source: str) -> tuple[set[str], set[str]]:
    """The condition ids and event slugs a complete backfill from `source` lands."""
    if source == "dome":
        sim = server.simulator
        return set(sim.traded_condition_ids()), set(sim.traded_event_slugs())
    truth = server.truth(source="polymarket")
    return (
        {m["conditionId"].lower() for m in truth["markets"]},
        {e["slug"] for e in truth["events"]},
    )


def truth_counts(server, wallets: list[str], source: str) -> dict[str, int]:
    if source == "dome":
        return {w: len(server.simulator.orders(w)) for w in wallets}
    return {w: server.wallet_truth(w, source="polymarket")["trade_count"] for w in wallets}


def checkpoint(db_path: Path) -> dict[str, tuple]:
    """wallet -> (completed, upload_successful, trade_count, error)."""
    return {row[0]: row[1:] for row in query(db_path, in_duckdb(CHECKPOINT_SQL))}


def source_argv(server, source: str) -> list[str]:
    """The options that point a run at the simulator as `source`."""
    if source == "dome":
        return ["--source=dome", f"--api_base_url={server.base_url}", "--tier=pro"]
    return [
        "--source=polymarket",
        f"--data_api_url={server.root_url}",
        f"--gamma_api_url={server.root_url}",
    ]


def run_argv(db_path: Path, staging: Path, server, *extra: str, source: str = "dome") -> list[str]:
    return [
        f"--warehouse=duckdb:{db_path}",
        f"--staging_root={staging}",
        *source_argv(server, source),
        "--read_timeout=2",
        *extra,
    ]


class World:
    """A simulator, a warehouse whose `traders` the `world` fixture seeded from its wallets, a
    staging root, and the source the runs fetch from. The warehouse is a DuckDB file (`db`) or a
    BigQuery dataset on bqemulator (`dataset`, read with the client `bq`)."""

    def __init__(
        self,
        server: Any,
        wallets: list[str],
        source: str,
        staging: Path | str,
        db: Path | None = None,
        bq: bigquery.Client | None = None,
        dataset: str | None = None,
    ) -> None:
        self.server, self.wallets, self.source, self.staging = server, wallets, source, staging
        self.db, self.bq, self.dataset = db, bq, dataset

    def __iter__(self):
        return iter((self.server, self.wallets, self.db, self.staging))

    def argv(self, *extra: str, db: Path | None = None, source: str | None = None) -> list[str]:
        """A run's options: this world's warehouse (or the DuckDB file `db`), staging, source."""
        source = source or self.source
        if self.dataset is None:
            return run_argv(db or self.db, self.staging, self.server, *extra, source=source)
        return [
            f"--warehouse=bigquery:{self.dataset}",
            f"--staging_root={self.staging}",
            *source_argv(self.server, source),
            *extra,
        ]

    def rows(self, sql: str, db: Path | None = None) -> list[tuple]:
        """Rows of `sql`, whose `{trades}`-style holes name production's tables (or those of the
        DuckDB file `db`)."""
        if self.dataset is None:
            return query(db or self.db, in_duckdb(sql))
        names = {k: f"`{self.dataset}.{v}`" for k, v in TableNames().as_dict().items()}
        return [tuple(row.values()) for row in self.bq.query(sql.format(**names)).result()]


def assert_production_is_truth(world: World, db: Path | None = None) -> None:
    """Production (or the DuckDB file `db`) holds what the simulator serves the world's wallets
    from its source: every fill once, their markets and events once, each wallet done with its
    count of trades."""
    server, wallets, source = world.server, world.wallets, world.source

    def rows(sql: str) -> list[tuple]:
        return world.rows(sql, db)

    assert Counter(rows(FILLS_SQL)) == truth_fills(server, wallets, source)
    assert rows("SELECT COUNT(*) - COUNT(DISTINCT id) FROM {trades}") == [(0,)]
    if source == "dome":
        assert Counter(rows(TRADE_IDS_SQL)) == truth_trade_ids(server.simulator, wallets)
    truth_markets, truth_events = truth_markets_and_events(server, source)
    assert {row[0] for row in rows("SELECT condition_id FROM {markets}")} == truth_markets
    assert rows("SELECT COUNT(*) - COUNT(DISTINCT condition_id) FROM {markets}") == [(0,)]
    assert {row[0] for row in rows("SELECT event_slug FROM {events}")} == truth_events
    marks = {row[0]: row[1:] for row in rows(CHECKPOINT_SQL)}
    assert set(marks) == set(wallets)
    counts = truth_counts(server, wallets, source)
    for wallet in wallets:
        assert marks[wallet][:3] == (True, True, counts[wallet]), wallet


def assert_landed_exact(db: Path, server: Any, wallets: list[str], source: str) -> None:
    """Exactly `wallets` are in the checkpoint, each done with all its trades, nothing else."""
    marks = checkpoint(db)
    assert set(marks) == set(wallets)
    counts = truth_counts(server, wallets, source)
    for wallet in wallets:
        assert marks[wallet][:3] == (True, True, counts[wallet]), wallet
    assert production_fills(db) == truth_fills(server, wallets, source)


def run_subprocess(
    argv: list[str], api_key: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`python -m pipeline run` in its own process (so a test can kill it); `env`: extra variables."""
    env = {**os.environ, "DOME_API_KEY": api_key, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# -- staging rows for the warehouse tests, written by hand as the graph would ---------------------

T0 = 1_790_000_000.0  # 2026-09-21, a fixed clock: results must not depend on "now"
COMMITTED_AT = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
# The tables a commit writes (TableNames fields), as `snapshot` reads them back.
COMMITTED_TABLES = ("trades", "markets", "events", "checkpoint", "runs")


def ts(offset: float) -> str:
    return format_timestamp(T0 + offset)


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


def busy_run(tmp_path: Path, run_id: str = "r1") -> dict[str, list[str]]:
    """A run's staging: a done wallet (two trades), a failed one, a market twice, an event."""
    return stage(
        tmp_path,
        run_id,
        trades=[trade("0xa", "a1", run_id), trade("0xa", "a2", run_id), trade("0xb", "b1", run_id)],
        outcomes=[outcome("0xa", run_id, True, 10), outcome("0xb", run_id, False, 10, error="x")],
        markets=[market("0xc1", run_id, 10), market("0xc1", run_id, 5, title="older")],
        events=[event("weather", run_id, 10)],
    )


def rich_run(run_id: str) -> dict[str, list[dict]]:
    """Rows of a run after `r0` landed t2 for wallet A (see `assert_rich_run_landed`)."""
    return {
        "trades": [
            trade("0xa", "t1", run_id, fetched=20),
            trade("0xa", "t2", run_id, fetched=20),  # already in production
            trade("0xa", "t3", run_id, fetched=20),
            trade("0xa", "t1", run_id, fetched=10),  # a duplicate inside staging, fetched earlier
            trade("0xb", "b1", run_id),  # wallet B failed: its partial pages must not land
        ],
        "outcomes": [
            outcome("0xa", run_id, True, 100, trade_count=99),
            outcome("0xb", run_id, False, 100, trade_count=1, error="HTTP 500 after 5 attempts"),
        ],
        "markets": [market("0xc1", run_id, 10)],
        "events": [event("weather", run_id, 10)],
    }


# The columns trades and markets gained with the second source; what the tables had before.
NEW_COLUMNS = {
    "trades": {"source", "event_slug", "outcome_index", "fill_ordinal", "extra"},
    "markets": {
        "source", "market_id", "outcomes", "outcome_prices", "token_ids", "payouts", "neg_risk",
        "extra",
    },
}  # fmt: skip
_CURRENT = {"trades": TRADE_COLUMNS, "markets": MARKET_COLUMNS}
# The users' own checkpoint table, from before run_id, attempts, error, last_trade_at, ...
OLD_CHECKPOINT = ("wallet_address", "completed", "upload_successful", "trade_count", "gcs_file",
                  "processed_at")  # fmt: skip


def old_columns(table: str) -> tuple[Column, ...]:
    """A table's columns before sources: no new columns, order_hash and user REQUIRED."""
    if table == "checkpoint":
        return tuple(
            Column(c.name, c.type, "NULLABLE")
            for c in CHECKPOINT_COLUMNS
            if c.name in OLD_CHECKPOINT
        )
    relaxed = q.RELAXED_COLUMNS.get(table, ())
    return tuple(
        Column(c.name, c.type, "REQUIRED" if c.name in relaxed else c.mode)
        for c in _CURRENT[table]
        if c.name not in NEW_COLUMNS[table]
    )


def old_ddl(table: str) -> q.Statement:
    return q._create(f"old_{table}", table, old_columns(table))


# -- a warehouse of each engine, and reading it back as the tests' own client ----------------------


class DuckDBEngine:
    """DuckDB warehouses on files of their own, read back with a plain DuckDB connection."""

    kind = "duckdb"

    def __init__(self, root: Path) -> None:
        self.root = root

    def new(self, tables: TableNames | None = None, **kwargs: Any) -> DuckDBWarehouse:
        """A warehouse on a new file in a folder that does not exist yet (nothing created)."""
        path = self.root / uuid.uuid4().hex[:12] / "wh.duckdb"
        return DuckDBWarehouse(path, tables or TableNames(), **kwargs)

    def _sql(self, wh: Warehouse, sql: str) -> str:
        return sql.format(**wh.tables.as_dict())

    def rows(self, wh: DuckDBWarehouse, sql: str) -> list[tuple]:
        """Rows of `sql`, whose `{trades}`-style holes are the warehouse's table names."""
        with duckdb.connect(wh.path) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            return conn.execute(self._sql(wh, sql)).fetchall()

    def dicts(self, wh: DuckDBWarehouse, sql: str) -> list[dict[str, Any]]:
        with duckdb.connect(wh.path) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            cursor = conn.execute(self._sql(wh, sql))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def run_ddl(self, wh: DuckDBWarehouse, statement: q.Statement) -> None:
        Path(wh.path).parent.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(wh.path) as conn:
            conn.execute(q.render_duckdb(statement, wh.tables))

    def exists(self, wh: DuckDBWarehouse) -> bool:
        return Path(wh.path).parent.exists()

    def table_names(self, wh: DuckDBWarehouse) -> set[str]:
        return {row[0] for row in self.rows(wh, "SELECT table_name FROM duckdb_tables()")}

    def require(self, wh: DuckDBWarehouse, table: str, column: str) -> None:
        """Make a nullable column of production NOT NULL (what staging allows, it refuses)."""
        self.rows(wh, f"ALTER TABLE {{{table}}} ALTER COLUMN {column} SET NOT NULL")


class BigQueryEngine:
    """BigQuery warehouses on bqemulator, each on a dataset of its own, read back with a client."""

    kind = "bigquery"

    def __init__(self, emulator: BigQueryEmulator, client: bigquery.Client) -> None:
        self.emulator, self.client = emulator, client

    def new(
        self, tables: TableNames | None = None, endpoint: str | None = None, **kwargs: Any
    ) -> BigQueryWarehouse:
        """A warehouse on a dataset of its own (created by `ensure_tables`)."""
        return BigQueryWarehouse(
            self.emulator.project,
            f"wh_{uuid.uuid4().hex[:12]}",
            tables or TableNames(),
            client_options=ClientOptions(api_endpoint=endpoint or self.emulator.endpoint),
            credentials=AnonymousCredentials(),
            **kwargs,
        )

    def _sql(self, wh: BigQueryWarehouse, sql: str) -> str:
        return sql.format(**{k: f"`{wh.dataset}.{v}`" for k, v in wh.tables.as_dict().items()})

    def rows(self, wh: BigQueryWarehouse, sql: str) -> list[tuple]:
        return [tuple(row.values()) for row in self.client.query(self._sql(wh, sql)).result()]

    def dicts(self, wh: BigQueryWarehouse, sql: str) -> list[dict[str, Any]]:
        return [dict(row.items()) for row in self.client.query(self._sql(wh, sql)).result()]

    def run_ddl(self, wh: BigQueryWarehouse, statement: q.Statement) -> None:
        self.client.create_dataset(wh.dataset, exists_ok=True)
        self.client.query(q.render(statement, wh.tables, dataset=wh.dataset)).result()

    def exists(self, wh: BigQueryWarehouse) -> bool:
        try:
            self.client.get_dataset(wh.dataset)
        except NotFound:
            return False
        return True

    def table_names(self, wh: BigQueryWarehouse) -> set[str]:
        return {t.table_id for t in self.client.list_tables(wh.dataset)}

    def require(self, wh: BigQueryWarehouse, table: str, column: str) -> None:
        """BigQuery can only relax a mode: the (empty) table is made again with the column REQUIRED."""
        ddl = q.render(getattr(q, f"CREATE_{table.upper()}"), wh.tables, dataset=wh.dataset)
        nullable = f"`{column}` STRING,\n"
        assert nullable in ddl
        self.rows(wh, f"DROP TABLE {{{table}}}")
        self.client.query(ddl.replace(nullable, f"`{column}` STRING NOT NULL,\n")).result()


Engine = DuckDBEngine | BigQueryEngine


# -- the warehouse suites' fixtures: a module takes them with `emulator = support.emulator`, ... --
# (an assignment rather than an import, which ruff would flag where a test names the fixture)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    """One bqemulator for the module (it takes a second or two to start); `gs://` URIs resolve
    under its `gcs_root`."""
    with BigQueryEmulator(tmp_path_factory.mktemp("gcs")) as emu:
        yield emu


@pytest.fixture(scope="module")
def bq(emulator: BigQueryEmulator) -> Iterator[bigquery.Client]:
    """A client of the tests' own, to look at what the warehouse did."""
    client = emulator.client()
    yield client
    client.close()


@pytest.fixture(params=["duckdb", "bigquery"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """The engine under test: makes warehouses and reads them back."""
    if request.param == "duckdb":
        return DuckDBEngine(tmp_path / "duckdb")
    return BigQueryEngine(request.getfixturevalue("emulator"), request.getfixturevalue("bq"))


@pytest.fixture
def wh(db: Engine) -> Iterator[Warehouse]:
    """A warehouse of the engine under test, its tables made."""
    warehouse = db.new()
    warehouse.ensure_tables()
    yield warehouse
    warehouse.close()


def load_tables_left(db: Engine, wh: Warehouse) -> list[str]:
    return sorted(name for name in db.table_names(wh) if name.startswith(q.LOAD_TABLE_PREFIX))


def snapshot(db: Engine, wh: Warehouse) -> dict[str, list[tuple]]:
    return {t: sorted(db.rows(wh, f"SELECT * FROM {{{t}}}"), key=repr) for t in COMMITTED_TABLES}


def checkpoint_rows(db: Engine, wh: Warehouse) -> dict[str, dict[str, Any]]:
    return {row["wallet_address"]: row for row in db.dicts(wh, "SELECT * FROM {checkpoint}")}


def trade_ids(db: Engine, wh: Warehouse) -> list[str]:
    return sorted(row[0] for row in db.rows(wh, "SELECT id FROM {trades}"))


def assert_rich_run_landed(db: Engine, wh: Warehouse, report: Any) -> None:
    """What `rich_run("r1")` must leave after r0 landed t2 for wallet A: exactly the successful
    wallet's trades, once each, the earliest fetch of a duplicate, the checkpoint and runs row."""
    assert trade_ids(db, wh) == ["t1", "t2", "t3"]
    fetched = db.rows(wh, "SELECT fetched_at FROM {trades} WHERE id = 't1'")
    assert fetched == [(dt.datetime.fromtimestamp(T0 + 10, dt.UTC),)]
    assert db.rows(wh, "SELECT run_id FROM {trades} WHERE id = 't2'") == [("r0",)]
    assert (report.already_committed, report.trades_inserted) == (False, 2)
    assert (report.markets_merged, report.events_merged) == (1, 1)
    assert (report.wallets_done, report.wallets_failed) == (1, 1)

    ckpt = checkpoint_rows(db, wh)
    a, b = ckpt["0xa"], ckpt["0xb"]
    assert (a["completed"], a["upload_successful"], a["error"]) == (True, True, None)
    assert a["trade_count"] == 3  # distinct staged ids, not the outcome's 99
    assert (a["attempts"], a["run_id"]) == (2, "r1")
    assert (b["completed"], b["upload_successful"]) == (True, False)
    assert (b["error"], b["trade_count"], b["attempts"]) == ("HTTP 500 after 5 attempts", 1, 1)
    assert b["processed_at"] == dt.datetime.fromtimestamp(T0 + 100, dt.UTC)
    assert list(wh.read_done_wallets()) == ["0xa"]
    runs = db.rows(wh, "SELECT * FROM {runs} WHERE run_id = 'r1'")
    assert runs == [("r1", COMMITTED_AT, 1, 1, 5, 1, 1)]
    assert load_tables_left(db, wh) == []


def local_config(db: Path | str, root: Path | str, run_id: str = "now") -> BackfillConfig:
    """A run's resolved options on a DuckDB file and a staging root (gs:// or a folder). The
    file is made if missing (options refuse a warehouse file that does not exist: a typo)."""
    if not Path(db).exists():
        duckdb.connect(str(db)).close()
    argv = [f"--warehouse=duckdb:{db}", f"--staging_root={root}", f"--run_id={run_id}"]
    return resolve(PipelineOptions(argv))


class Loopback:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering with `handler`: the one way the
    tests stand up a scripted server. `url` is its base, http://127.0.0.1:PORT."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
