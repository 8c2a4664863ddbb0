"""The BigQuery warehouse where it differs from DuckDB, against bqemulator through the official
client: tables made through the API with partitioning and clustering, load jobs from gs://, the
transaction retried on transient errors, load table expirations, the emulator's address from the
environment, pickling; and that both engines run the same statements to the same result. The
guarantees both engines share: test_warehouse.py.
"""

from __future__ import annotations

import datetime as dt
import http.client
import http.server
import inspect
import json
import logging
import pickle
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pytest
import sqlglot
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from sqlglot.errors import ErrorLevel

from pipeline.schema import STAGED_KINDS, TRADE_COLUMNS
from pipeline.warehouse import CommitError, TableNames, open_warehouse
from pipeline.warehouse import bigquery_warehouse as bqw
from pipeline.warehouse import duckdb_warehouse as ddw
from pipeline.warehouse import sql as q
from pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse
from pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from tests import support
from tests.bq_emulator import BigQueryEmulator
from tests.support import (
    COMMITTED_AT,
    NEW_COLUMNS,
    BigQueryEngine,
    assert_rich_run_landed,
    busy_run,
    checkpoint_rows,
    event,
    load_tables_left,
    market,
    old_columns,
    old_ddl,
    outcome,
    pm_market,
    pm_trade,
    rich_run,
    stage,
    trade,
    trade_ids,
    write_ndjson,
)

PROJECT = "test-project"  # bqemulator's default project, which `emulator` runs on
TABLES = ("trades", "markets", "events", "backfill_checkpoint", "backfill_runs")


# One bqemulator for the module, on its default project (PROJECT), and a client of the tests' own.
emulator, bq = support.emulator, support.bq


@pytest.fixture(scope="module")
def db(emulator: BigQueryEmulator, bq: bigquery.Client) -> BigQueryEngine:
    return BigQueryEngine(emulator, bq)


def new_warehouse(endpoint: str, **kwargs: Any) -> BigQueryWarehouse:
    """A warehouse on a dataset of its own (created by `ensure_tables`), through `endpoint`."""
    return BigQueryWarehouse(
        PROJECT,
        f"wh_{uuid.uuid4().hex[:12]}",
        TableNames(),
        client_options=ClientOptions(api_endpoint=endpoint),
        credentials=AnonymousCredentials(),
        **kwargs,
    )


@pytest.fixture
def wh(emulator: BigQueryEmulator) -> Iterator[BigQueryWarehouse]:
    warehouse = new_warehouse(emulator.endpoint)
    warehouse.ensure_tables()
    yield warehouse
    warehouse.close()


def query(bq: bigquery.Client, sql: str) -> list[tuple]:
    return [tuple(row.values()) for row in bq.query(sql).result()]


def stage_gcs(
    emulator: BigQueryEmulator, wh: BigQueryWarehouse, run_id: str, **kinds: list[dict]
) -> dict[str, list[str]]:
    """Write a run's staging as the graph does on Dataflow; return its `gs://` URIs.

    The emulator serves the bucket from a folder; each warehouse gets its own prefix in it.
    """
    files: dict[str, list[str]] = {}
    for kind, rows in kinds.items():
        half = (len(rows) + 1) // 2
        prefix = f"gs://backfill-bucket/{gcs_root(wh)}/{run_id}/{kind}"
        uris = [f"{prefix}/part-{i}.json" for i in (0, 1)]
        write_ndjson(emulator.gcs_path(uris[0]), rows[:half])
        write_ndjson(emulator.gcs_path(uris[1]), rows[half:])
        files[kind] = uris
    return files


def gcs_root(wh: BigQueryWarehouse) -> str:
    return wh.dataset.split(".")[1]


# -- tables ---------------------------------------------------------------------------------------


def test_tables_are_made_through_the_api_partitioned_and_clustered(
    emulator: BigQueryEmulator, bq: bigquery.Client
) -> None:
    wh = new_warehouse(emulator.endpoint)
    wh.ensure_tables()  # creates the dataset too
    trades = bq.get_table(f"{wh.dataset}.trades")
    assert trades.time_partitioning is not None
    assert (trades.time_partitioning.type_, trades.time_partitioning.field) == ("DAY", "traded_at")
    assert trades.clustering_fields == ["wallet_address"]
    fields = {f.name: (f.field_type, f.mode) for f in trades.schema}
    assert [f.name for f in trades.schema] == [c.name for c in TRADE_COLUMNS]
    assert fields["traded_at"] == ("TIMESTAMP", "REQUIRED")
    assert fields["taker"] == ("STRING", "NULLABLE")
    markets = bq.get_table(f"{wh.dataset}.markets")
    assert markets.time_partitioning is None and markets.clustering_fields is None
    assert {f.name: f.mode for f in markets.schema}["tags"] == "REPEATED"


def test_an_existing_table_with_other_partitioning_is_reported_not_changed(
    emulator: BigQueryEmulator, bq: bigquery.Client, caplog: pytest.LogCaptureFixture
) -> None:
    wh = new_warehouse(emulator.endpoint)
    bq.create_dataset(wh.dataset)
    bq.create_table(bigquery.Table(f"{wh.dataset}.trades", schema=bqw.schema_fields(TRADE_COLUMNS)))
    with caplog.at_level(logging.WARNING, logger=bqw.__name__):
        wh.ensure_tables()
    assert "trades exists but its partitioning/clustering" in caplog.text
    assert bq.get_table(f"{wh.dataset}.trades").time_partitioning is None


def test_the_api_table_specs_are_the_ddl_and_the_schema() -> None:
    # Load tables are created by CREATE_LOAD_TABLE and loaded with schema_fields: the same table.
    for kind, columns in STAGED_KINDS.items():
        table = bqw.table_from_ddl(q.CREATE_LOAD_TABLE[kind], TableNames(), "p-roject.ds", "r-1")
        assert table.table_id == q.load_table("r-1", kind)
        assert [(f.name, f.field_type, f.mode) for f in table.schema] == [
            (f.name, f.field_type, f.mode) for f in bqw.schema_fields(columns)
        ]
        assert table.time_partitioning is None and table.clustering_fields is None
    trades = bqw.table_from_ddl(q.CREATE_TRADES, TableNames(trades="fills"), "p-roject.ds")
    assert (trades.project, trades.dataset_id, trades.table_id) == ("p-roject", "ds", "fills")
    assert trades.time_partitioning.field == "traded_at"
    with pytest.raises(ValueError, match="not a CREATE TABLE"):
        bqw.table_from_ddl(q.SELECT_TRADERS, TableNames(), "p-roject.ds")


# -- load jobs from Cloud Storage --------------------------------------------------------------


def test_commit_from_gcs_uris(
    wh: BigQueryWarehouse,
    db: BigQueryEngine,
    bq: bigquery.Client,
    emulator: BigQueryEmulator,
    tmp_path: Path,
) -> None:
    first = stage_gcs(
        emulator,
        wh,
        "r0",
        trades=[trade("0xa", "t2", "r0")],
        outcomes=[outcome("0xa", "r0", True, 5)],
    )
    assert all(uri.startswith("gs://backfill-bucket/") for uri in first["trades"])
    wh.commit_run("r0", first, committed_at=COMMITTED_AT)
    # Mixed sources in one run: each file is loaded the way its name says.
    files = stage_gcs(emulator, wh, "r1", **rich_run("r1"))
    local = stage(tmp_path, "r1", events=rich_run("r1")["events"])
    files["events"] = local["events"]
    report = wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert_rich_run_landed(db, wh, report)


def test_a_missing_gcs_file_fails_the_load_and_commits_nothing(
    wh: BigQueryWarehouse, db: BigQueryEngine, bq: bigquery.Client, emulator: BigQueryEmulator
) -> None:
    files = stage_gcs(emulator, wh, "r1", outcomes=[outcome("0xa", "r1", True, 5)])
    files["trades"] = [f"gs://backfill-bucket/{gcs_root(wh)}/r1/trades/part-9.json"]  # not there
    with pytest.raises(CommitError, match="run r1: loading its trades staging files failed"):
        wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert wh.committed_run_ids() == set()
    assert checkpoint_rows(db, wh) == {}
    assert load_tables_left(db, wh) == []


# -- one set of statements, two warehouses --------------------------------------------------------


def test_both_warehouses_run_the_same_statements_to_the_same_result(
    wh: BigQueryWarehouse, db: BigQueryEngine, bq: bigquery.Client, tmp_path: Path
) -> None:
    duck = DuckDBWarehouse(tmp_path / "wh.duckdb")
    duck.ensure_tables()
    history = (
        ("r0", {"trades": [trade("0xa", "t2", "r0")], "outcomes": [outcome("0xa", "r0", True, 5)]}),
        ("r1", rich_run("r1")),
        (  # newer than r2, committed first
            "r3",
            {
                "trades": [trade("0xd", "d1", "r3")],
                "outcomes": [
                    outcome("0xf", "r3", False, 300, error="new failure"),
                    outcome("0xd", "r3", True, 300),
                ],
                "markets": [market("0xc1", "r3", 300, title="new")],
                "events": [event("weather", "r3", 300, title="new")],
            },
        ),
        (  # older, committed late: must not overwrite r3's state
            "r2",
            {
                "trades": [trade("0xf", "f1", "r2"), trade("0xe", "e1", "r2")],
                "outcomes": [
                    outcome("0xf", "r2", False, 200, error="old failure"),
                    outcome("0xd", "r2", False, 200, error="old failure"),
                    outcome("0xe", "r2", True, 200),
                ],
                "markets": [market("0xc1", "r2", 200, title="old"), market("0xc2", "r2", 200)],
                "events": [event("weather", "r2", 200, title="old")],
            },
        ),
        (  # a done wallet failing later stays done; a success beats a failure in one run
            "r4",
            {
                "trades": [trade("0xh", "h1", "r4")],
                "outcomes": [
                    outcome("0xa", "r4", False, 400, error="late retry failed"),
                    outcome("0xh", "r4", False, 410, error="retried"),
                    outcome("0xh", "r4", True, 400),
                ],
            },
        ),
    )
    for run_id, rows in history:
        files = stage(tmp_path / "staging", run_id, **rows)
        remote = wh.commit_run(run_id, files, committed_at=COMMITTED_AT)
        assert remote == duck.commit_run(run_id, files, committed_at=COMMITTED_AT)
        assert not remote.already_committed
    ckpt = checkpoint_rows(db, wh)
    assert (ckpt["0xf"]["error"], ckpt["0xd"]["run_id"], ckpt["0xa"]["run_id"]) == (
        "new failure",
        "r3",
        "r1",
    )
    assert ckpt["0xh"]["upload_successful"] is True

    # What BigQuery was sent, as bqemulator recorded the job: the transaction's statements are
    # sql.COMMIT_STATEMENTS (production read for the listed @wallets) rendered for this dataset,
    # in order, between BEGIN and COMMIT.
    (script,) = [
        job.query
        for job in bq.list_jobs()
        if job.job_id.startswith("backfill_commit_r1_") and f"`{wh.dataset}." in job.query
    ]
    # Each commit attempt loads into tables of its own (a nonce in their hash): compare the
    # statements with that hash masked, in the script and in the rendering alike.
    script = re.sub(r"_stg_r1_[0-9a-f]{8}_", "_stg_r1_HASH_", script)
    begin, end = script.index("BEGIN TRANSACTION;"), script.index("COMMIT TRANSACTION;")
    position = begin
    for statement in q.COMMIT_STATEMENTS:
        sent = q.render(statement, wh.tables, "r1", wh.dataset)
        sent = re.sub(r"_stg_r1_[0-9a-f]{8}_", "_stg_r1_HASH_", sent)
        position = script.index(sent, position)
        assert position < end
        # ...and DuckDB runs exactly their translation: the same text without the dataset.
        local = sent.replace(f"`{wh.dataset}.", "`")
        (translated,) = sqlglot.transpile(
            local,
            read="bigquery",
            write="duckdb",
            identify=True,
            pretty=True,
            unsupported_level=ErrorLevel.RAISE,
        )
        local_translation = q.render_duckdb(statement, duck.tables, "r1")
        assert translated == re.sub(r"_stg_r1_[0-9a-f]{8}_", "_stg_r1_HASH_", local_translation)
    # (DuckDB leaves out the trades' id dedup when no staged id is there twice: the
    # *_IDS_UNIQUE forms, which test_sql.py proves are these statements less the QUALIFY.)
    for module_code in (
        inspect.getsource(ddw.DuckDBWarehouse._transaction),
        inspect.getsource(bqw.commit_script),
    ):
        assert "q.commit_statements(" in module_code

    # Same statements, same staging: the same production, row for row.
    conn = duckdb.connect(duck.path)
    try:
        conn.execute("SET TimeZone = 'UTC'")
        for table in TABLES:
            local_rows = sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            remote_rows = sorted(query(bq, f"SELECT * FROM `{wh.dataset}.{table}`"), key=repr)
            assert remote_rows == local_rows, table
    finally:
        conn.close()


# -- transient failures ---------------------------------------------------------------------------


class FaultyProxy:
    """An HTTP proxy in front of the emulator that fails chosen query jobs as BigQuery would.

    `fail(marker, reason, message, times)` makes the next `times` job insertions whose request
    body contains `marker` come back as jobs that finished with that error, without reaching the
    emulator. Everything else is forwarded unchanged.
    """

    def __init__(self, target: str) -> None:
        self._target = urlsplit(target)
        self._faults: list[list[Any]] = []
        self.failed: list[str] = []
        self.requests: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, body))
                fake = proxy._fault_for(self.command, self.path, body)
                if fake is not None:
                    self._reply(200, {"Content-Type": "application/json"}, fake)
                    return
                conn = http.client.HTTPConnection(
                    proxy._target.hostname, proxy._target.port, timeout=60
                )
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                hop = ("transfer-encoding", "connection", "content-length")
                out = {k: v for k, v in response.getheaders() if k.lower() not in hop}
                conn.close()
                self._reply(response.status, out, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, marker: str, reason: str, message: str, times: int) -> None:
        with self.lock:
            self._faults.append([marker, reason, message, times])

    def _fault_for(self, method: str, path: str, body: bytes) -> bytes | None:
        if method != "POST" or not urlsplit(path).path.endswith("/jobs"):
            return None
        with self.lock:
            for fault in self._faults:
                marker, reason, message, times = fault
                if times > 0 and marker.encode() in body:
                    fault[3] -= 1
                    break
            else:
                return None
        job = json.loads(body)
        error = {"reason": reason, "message": message}
        job["status"] = {"state": "DONE", "errorResult": error, "errors": [error]}
        self.failed.append(job["jobReference"]["jobId"])
        return json.dumps(job).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy(emulator: BigQueryEmulator) -> Iterator[FaultyProxy]:
    faulty = FaultyProxy(emulator.endpoint)
    yield faulty
    faulty.close()


def test_transient_transaction_failures_are_retried(
    proxy: FaultyProxy, db: BigQueryEngine, bq: bigquery.Client, tmp_path: Path
) -> None:
    wh = new_warehouse(proxy.endpoint, retry_wait=0.01)
    wh.ensure_tables()
    # A backend error, then the abort BigQuery gives the loser of two concurrent transactions.
    proxy.fail("BEGIN TRANSACTION", "backendError", "Backend error, try again", times=1)
    proxy.fail(
        "BEGIN TRANSACTION",
        "invalidQuery",
        "Transaction is aborted due to concurrent update against table p:d.trades.",
        times=1,
    )
    report = wh.commit_run("r1", busy_run(tmp_path), committed_at=COMMITTED_AT)
    assert len(proxy.failed) == 2
    assert all(job_id.startswith("backfill_commit_r1_") for job_id in proxy.failed)
    assert (report.trades_inserted, report.wallets_done, report.wallets_failed) == (2, 1, 1)
    assert trade_ids(db, wh) == ["a1", "a2"]
    assert wh.committed_run_ids() == {"r1"}


def test_a_transaction_failing_every_attempt_commits_nothing_and_can_be_redone(
    proxy: FaultyProxy, db: BigQueryEngine, bq: bigquery.Client, tmp_path: Path
) -> None:
    wh = new_warehouse(proxy.endpoint, retry_wait=0.01)
    wh.ensure_tables()
    proxy.fail("BEGIN TRANSACTION", "rateLimitExceeded", "Exceeded rate limits", times=3)
    files = busy_run(tmp_path)
    with pytest.raises(CommitError, match=r"run r1: the commit transaction failed 3 times"):
        wh.commit_run("r1", files, committed_at=COMMITTED_AT)
    assert len(proxy.failed) == 3
    assert (wh.committed_run_ids(), trade_ids(db, wh), checkpoint_rows(db, wh)) == (set(), [], {})
    assert load_tables_left(db, wh) == []
    assert wh.commit_run("r1", files, committed_at=COMMITTED_AT).trades_inserted == 2


def test_a_permanent_error_is_not_retried(proxy: FaultyProxy, tmp_path: Path) -> None:
    wh = new_warehouse(proxy.endpoint, retry_wait=0.01)
    wh.ensure_tables()
    proxy.fail("BEGIN TRANSACTION", "invalidQuery", "Syntax error: Unexpected keyword", times=3)
    with pytest.raises(CommitError, match=r"run r1: the commit transaction failed and was"):
        wh.commit_run("r1", busy_run(tmp_path), committed_at=COMMITTED_AT)
    assert len(proxy.failed) == 1


def test_a_lease_taken_at_the_same_time_as_another_is_retried(proxy: FaultyProxy) -> None:
    # BigQuery aborts the later of two DML jobs on one table: two launches at once, or a launch
    # beside a repair. The loser takes the lease again; the lease row decides, as always.
    wh = new_warehouse(proxy.endpoint, retry_wait=0.01)
    wh.ensure_tables()
    conflict = "Could not serialize access to table p:d.backfill_lease due to concurrent update"
    proxy.fail("USING (SELECT @lease_name", "invalidQuery", conflict, times=1)
    assert wh.acquire_lease("run-a dataflow", 600)
    assert len(proxy.failed) == 1
    proxy.fail("USING (SELECT @lease_name", "invalidQuery", conflict, times=1)
    assert not wh.acquire_lease("run-b dataflow", 600)  # retried, then refused: a holds it
    assert len(proxy.failed) == 2
    proxy.fail("SET\\n  `holder` = NULL", "invalidQuery", conflict, times=1)
    wh.release_lease("run-a dataflow")
    assert len(proxy.failed) == 3
    assert wh.acquire_lease("run-b dataflow", 600)


def test_a_lease_conflict_on_every_attempt_is_the_error_not_a_refusal(proxy: FaultyProxy) -> None:
    wh = new_warehouse(proxy.endpoint, retry_wait=0.01)
    wh.ensure_tables()
    conflict = "Transaction is aborted due to concurrent update against table p:d.backfill_lease"
    proxy.fail("USING (SELECT @lease_name", "invalidQuery", conflict, times=3)
    with pytest.raises(gexc.BadRequest, match="concurrent update"):
        wh.acquire_lease("run-a dataflow", 600)
    assert len(proxy.failed) == 3
    assert wh.read_lease() is not None and not wh.read_lease().held


def test_load_tables_get_an_expiration(
    proxy: FaultyProxy, db: BigQueryEngine, bq: bigquery.Client, tmp_path: Path
) -> None:
    # bqemulator keeps no table expiration, so this looks at what the client asked for.
    wh = new_warehouse(proxy.endpoint, load_table_expiration_hours=2)
    wh.ensure_tables()
    start = dt.datetime.now(dt.UTC)
    wh.commit_run("r-1", busy_run(tmp_path, "r-1"), committed_at=COMMITTED_AT)
    end = dt.datetime.now(dt.UTC)
    expirations = {}
    for method, path, body in proxy.requests:
        table = urlsplit(path).path.rpartition("/tables/")[2]
        if method == "PATCH" and table.startswith(q.LOAD_TABLE_PREFIX):
            millis = int(json.loads(body)["expirationTime"])
            expirations[table] = dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
    # One nonce for the attempt: its four load tables, one per committed kind.
    assert {name.rpartition("_")[2] for name in expirations} == set(q.COMMITTED_KINDS)
    assert len({name.rsplit("_", 1)[0] for name in expirations}) == 1
    assert all(name.startswith("_stg_r_1_") for name in expirations)
    for expires in expirations.values():
        assert start + dt.timedelta(hours=2) - dt.timedelta(seconds=1) <= expires
        assert expires <= end + dt.timedelta(hours=2)
    assert load_tables_left(db, wh) == []  # and dropped after the commit all the same


def test_which_errors_are_transient() -> None:
    for transient in (
        gexc.ServiceUnavailable("x"),
        gexc.InternalServerError("x"),
        gexc.TooManyRequests("x"),
        gexc.BadGateway("x"),
        gexc.BadRequest("Transaction is aborted due to concurrent update against table t"),
        gexc.BadRequest("x", errors=[{"message": "Could not serialize access to table t"}]),
    ):
        assert bqw.is_transient(transient), transient
    for permanent in (
        gexc.BadRequest("Syntax error"),
        gexc.Forbidden("Access Denied"),
        gexc.NotFound("Not found: Table"),
        ValueError("concurrent update"),
    ):
        assert not bqw.is_transient(permanent), permanent


# -- specs, environment, pickling -----------------------------------------------------------------


def test_open_warehouse_uses_the_emulator_host_from_the_environment(
    emulator: BigQueryEmulator, bq: bigquery.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = f"wh_{uuid.uuid4().hex[:12]}"
    for host in (emulator.endpoint, emulator.endpoint.removeprefix("http://")):
        monkeypatch.setenv(bqw.EMULATOR_HOST_ENV, host)
        wh = open_warehouse(f"bigquery:{PROJECT}.{dataset}")
        assert isinstance(wh, BigQueryWarehouse)
        assert wh.dataset == f"{PROJECT}.{dataset}"
        with wh:
            wh.ensure_tables()
            assert wh.committed_run_ids() == set()
    assert "backfill_runs" in {t.table_id for t in bq.list_tables(f"{PROJECT}.{dataset}")}

    monkeypatch.delenv(bqw.EMULATOR_HOST_ENV)
    assert bqw.emulator_settings() == {}
    scoped = open_warehouse("bigquery:example.com:my-project.polymarket")
    assert scoped.dataset == "example.com:my-project.polymarket"
    assert isinstance(scoped, BigQueryWarehouse) and scoped._client is None


def test_the_warehouse_pickles_without_a_client(wh: BigQueryWarehouse) -> None:
    assert wh.committed_run_ids() == set()  # the client exists now
    assert wh._client is not None
    clone = pickle.loads(pickle.dumps(wh))
    assert clone._client is None
    assert (clone.dataset, clone.tables) == (wh.dataset, wh.tables)
    assert clone.committed_run_ids() == set()  # builds its own client
    assert clone.client is not wh.client
    clone.close()


def test_constructor_validates(emulator: BigQueryEmulator) -> None:
    with pytest.raises(ValueError, match=r"PROJECT\.DATASET"):
        BigQueryWarehouse("Bad_Project", "ds")
    with pytest.raises(ValueError):
        BigQueryWarehouse("my-project", "d;s")
    with pytest.raises(ValueError, match="load_table_expiration_hours"):
        BigQueryWarehouse("my-project", "ds", load_table_expiration_hours=0)


# -- two sources ----------------------------------------------------------------------------------


def test_an_old_trades_table_is_migrated_and_accepts_a_polymarket_row(
    emulator: BigQueryEmulator, db: BigQueryEngine, bq: bigquery.Client, tmp_path: Path
) -> None:
    wh = new_warehouse(emulator.endpoint)
    bq.create_dataset(wh.dataset)
    # By DDL: bqemulator enforces NOT NULL for a table made this way (not for one made through
    # the API), as BigQuery does for REQUIRED fields.
    for table in ("trades", "markets"):
        bq.query(q.render(old_ddl(table), TableNames(), dataset=wh.dataset)).result()
    assert {f.name: f.mode for f in bq.get_table(f"{wh.dataset}.trades").schema}["user"] == (
        "REQUIRED"
    )
    with pytest.raises(gexc.BadRequest, match="NOT NULL"):
        bq.query(
            f"INSERT INTO `{wh.dataset}.trades` (id, wallet_address, token_id, side, market_slug, "
            "condition_id, shares, shares_normalized, price, tx_hash, title, `timestamp`, "
            "traded_at, order_hash, `user`, run_id, fetched_at) VALUES ('x', '0xw', '1', 'BUY', "
            "'m', '0xc', 1, 1.0, 0.5, '0xt', 't', 1, CURRENT_TIMESTAMP(), NULL, NULL, 'r', "
            "CURRENT_TIMESTAMP())"
        ).result()

    wh.ensure_tables()
    wh.ensure_tables()  # bqemulator keeps the old modes in its metadata: the ALTER runs again
    files = stage(
        tmp_path,
        "r1",
        trades=[pm_trade("0xp", "p1", "r1"), trade("0xd", "d1", "r1")],
        outcomes=[
            outcome("0xp", "r1", True, 10, source="polymarket"),
            outcome("0xd", "r1", True, 10),
        ],
        markets=[pm_market("0xc9", "r1", 10)],
    )
    assert wh.commit_run("r1", files, committed_at=COMMITTED_AT).trades_inserted == 2
    landed = query(
        bq,
        f"SELECT order_hash, `user`, source, fill_ordinal, event_slug FROM `{wh.dataset}.trades` "
        "WHERE id = 'p1'",
    )
    assert landed == [(None, None, "polymarket", 0, "weather")]
    assert query(
        bq,
        f"SELECT outcomes, payouts, neg_risk, source FROM `{wh.dataset}.markets` "
        "WHERE condition_id = '0xc9'",
    ) == [(["Yes", "No"], [1_000_000, 0], True, "polymarket")]
    result = bq.query(f"SELECT * FROM `{wh.dataset}.markets`").result()
    assert NEW_COLUMNS["markets"] <= {f.name for f in result.schema}
    assert checkpoint_rows(db, wh)["0xp"]["source"] == "polymarket"


def test_relaxing_runs_only_for_a_required_column(
    proxy: FaultyProxy, emulator: BigQueryEmulator, bq: bigquery.Client
) -> None:
    """The ALTER is sent when the field's mode is REQUIRED, and not for a table made today."""
    wh = new_warehouse(proxy.endpoint)
    wh.ensure_tables()
    sent = [body for method, _, body in proxy.requests if b"DROP NOT NULL" in body]
    assert sent == []
    old = new_warehouse(proxy.endpoint)
    bq.create_dataset(old.dataset)
    bq.create_table(
        bigquery.Table(f"{old.dataset}.trades", schema=bqw.schema_fields(old_columns("trades")))
    )
    old.ensure_tables()
    sent = [json.loads(body) for method, _, body in proxy.requests if b"DROP NOT NULL" in body]
    statements = sorted(job["configuration"]["query"]["query"] for job in sent)
    assert statements == [
        f"ALTER TABLE `{old.dataset}.trades` ALTER COLUMN `{column}` DROP NOT NULL"
        for column in ("order_hash", "user")
    ]


# -- every job in the dataset's location (issue 13) ------------------------------------------------


def _job_locations(proxy: FaultyProxy) -> list[tuple[str, str | None]]:
    """(kind of request, location) of every job the client inserted: query and load jobs
    (`POST .../jobs`) and local-file loads (`POST /upload/.../jobs`, multipart: JSON first)."""
    found = []
    for method, path, body in proxy.requests:
        if method != "POST" or not urlsplit(path).path.endswith("/jobs"):
            continue
        kind = "upload" if path.startswith("/upload/") else "job"
        match = re.search(rb'"jobReference":\s*\{[^}]*\}', body)
        reference = json.loads(match.group(0).split(b":", 1)[1]) if match else {}
        found.append((kind, reference.get("location")))
    return found


def test_every_job_runs_in_the_datasets_location(
    proxy: FaultyProxy, emulator: BigQueryEmulator, bq: bigquery.Client, tmp_path: Path
) -> None:
    """A warehouse given no location sends its dataset's with every job: query, script, load
    from gs:// and load from a local file alike (a job without one runs in the client's default
    location, and fails on a dataset elsewhere)."""
    wh = new_warehouse(proxy.endpoint)
    dataset = bigquery.Dataset(wh.dataset)
    dataset.location = "EU"
    bq.create_dataset(dataset)
    wh.ensure_tables()
    files = busy_run(tmp_path, "r1")
    files["trades"] = stage_gcs(
        emulator, wh, "r1", trades=[trade("0xa", "a1", "r1"), trade("0xa", "a2", "r1")]
    )["trades"]
    assert wh.acquire_lease("r1", ttl_seconds=60)
    assert not wh.commit_run("r1", files, committed_at=COMMITTED_AT).already_committed
    wh.status()
    wh.verify()
    wh.release_lease("r1")

    locations = _job_locations(proxy)
    kinds = {kind for kind, _ in locations}
    assert kinds == {"job", "upload"} and len(locations) > 10  # loads from files were sent too
    assert {location for _, location in locations} == {"EU"}, locations


def test_the_commit_scripts_first_statement_writes_the_lease_row() -> None:
    """So that BigQuery cancels one of two commit transactions running at once."""
    script = bqw.commit_script(TableNames(), "r1", "my-project.ds", "00ff")
    after_begin = script.split("BEGIN TRANSACTION;\n", 1)[1]
    assert after_begin.startswith(q.render(q.COMMIT_LOCK, TableNames(), dataset="my-project.ds"))
    check = after_begin.index(q.render(q.RUN_COMMITTED, TableNames(), dataset="my-project.ds"))
    assert check < after_begin.index("ROLLBACK TRANSACTION") < after_begin.index("INSERT INTO")


# -- production read for the run's wallets: the @wallets array parameter ---------------------------


def test_the_commit_job_carries_the_runs_successful_wallets_as_one_array_parameter(
    wh: BigQueryWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values travel as a parameter (never in the script's text), typed ARRAY<STRING>."""
    sent: list[tuple[str, Any]] = []
    client = wh.client
    query = client.query

    def spy(text: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((text, kwargs.get("job_config")))
        return query(text, *args, **kwargs)

    monkeypatch.setattr(client, "query", spy)
    wh.commit_run("r1", busy_run(tmp_path), committed_at=COMMITTED_AT)
    (script, config), *_ = [(t, c) for t, c in sent if "BEGIN TRANSACTION" in t]
    params = {p.name: p for p in config.query_parameters}
    assert set(params) == {"run_id", "committed_at", "lease_name", "wallets"}
    assert isinstance(params["wallets"], bigquery.ArrayQueryParameter)
    assert (params["wallets"].array_type, params["wallets"].values) == ("STRING", ["0xa"])
    assert "0xa" not in script and script.count("IN UNNEST(@wallets)") == 4
    # The one read before the transaction: the run's successful wallets, from its load table.
    (read,) = [(t, c) for t, c in sent if "SELECT DISTINCT" in t and "_outcomes" in t]
    assert read[1].query_parameters == [
        bigquery.ScalarQueryParameter("limit", "INT64", wh.wallets_listed_at_most + 1)
    ]


def test_the_unlisted_commit_script_takes_no_wallets_parameter() -> None:
    """A run with too many wallets to list: the subquery forms, and no @wallets to declare."""
    listed = bqw.commit_script(TableNames(), "r1", "my-project.ds", "00ff")
    unlisted = bqw.commit_script(TableNames(), "r1", "my-project.ds", "00ff", wallets_listed=False)
    assert "@wallets" in listed and "@wallets" not in unlisted
    assert q.WALLETS in bqw._commit_params(True)
    assert q.WALLETS not in bqw._commit_params(False)
    for statement in q.COMMIT_STATEMENTS_UNPRUNED:
        assert q.render(statement, TableNames(), "r1", "my-project.ds", "00ff") in unlisted
