"""The BigQuery warehouse: the production implementation of `Warehouse` on one BigQuery dataset."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlglot
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import bigquery
from sqlglot import exp
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from pipeline.schema import STAGED_KINDS, Column
from pipeline.warehouse import sql as q
from pipeline.warehouse.base import (
    FAILED_WALLETS_LISTED,
    CommitError,
    LoadFiles,
    TableNames,
    Warehouse,
    check_params,
    load_failed,
    transaction_failed,
)

log = logging.getLogger(__name__)

# Where tests (and anyone running bqemulator) point the client; unset in production.
EMULATOR_HOST_ENV = "BIGQUERY_EMULATOR_HOST"
__all__ = ["FAILED_WALLETS_LISTED", "BigQueryWarehouse", "emulator_settings", "is_transient"]

COMMIT_ATTEMPTS = 3
_PAGE_SIZE = 50_000

# Errors that say "try again later", not "this is wrong": retried by the commit.
_TRANSIENT_TYPES = (
    gexc.ServiceUnavailable,
    gexc.InternalServerError,
    gexc.TooManyRequests,
    gexc.BadGateway,
)
# BigQuery aborts the later of two transactions that touch the same table; that is a 400 whose
# only mark is its text ("Transaction is aborted due to concurrent update against table ...").
_CONFLICT_MARKERS = ("concurrent update", "could not serialize access")

_T = TypeVar("_T")


def is_transient(exc: BaseException) -> bool:
    """True for the BigQuery errors that a later identical attempt can get past."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, gexc.GoogleAPICallError):
        errors = [e for e in exc.errors or () if isinstance(e, dict)]
        texts = [str(exc.message)] + [str(e.get("message", "")) for e in errors]
        return any(marker in text.lower() for text in texts for marker in _CONFLICT_MARKERS)
    return False


def emulator_settings(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Client settings for `BIGQUERY_EMULATOR_HOST`, or `{}` when it is unset.

    The variable holds the emulator's address (`http://127.0.0.1:9050`, or `127.0.0.1:9050`,
    which means http); an emulator checks no credentials, so the client gets anonymous ones
    instead of looking for Application Default Credentials that a laptop may not have.
    """
    host = environ.get(EMULATOR_HOST_ENV, "").strip()
    if not host:
        return {}
    endpoint = host if "://" in host else f"http://{host}"
    return {
        "client_options": ClientOptions(api_endpoint=endpoint.rstrip("/")),
        "credentials": AnonymousCredentials(),
    }


# ---------------------------------------------------------------------------------------------
# Table specs. The BigQuery DDL of sql.py is the one description of every table; the API calls
# below read it back with sqlglot instead of restating columns, partitioning or clustering.


def schema_fields(columns: tuple[Column, ...]) -> list[bigquery.SchemaField]:
    """The explicit load-job schema of a staged kind: never autodetected, modes from schema.py."""
    return [bigquery.SchemaField(c.name, c.type, mode=c.mode) for c in columns]


def _field_from_ddl(column: exp.ColumnDef) -> bigquery.SchemaField:
    kind = column.args["kind"]
    if kind.is_type(exp.DataType.Type.ARRAY):
        (element,) = kind.expressions
        return bigquery.SchemaField(column.name, element.sql("bigquery"), mode="REPEATED")
    required = any(isinstance(c.kind, exp.NotNullColumnConstraint) for c in column.constraints)
    mode = "REQUIRED" if required else "NULLABLE"
    return bigquery.SchemaField(column.name, kind.sql("bigquery"), mode=mode)


def _partitioning_from_ddl(prop: exp.PartitionedByProperty) -> bigquery.TimePartitioning:
    """`PARTITION BY DATE(col)`, `col` or `TIMESTAMP_TRUNC(col, unit)` as a TimePartitioning."""
    expression = prop.this
    unit = "DAY"
    if isinstance(expression, exp.TimestampTrunc):
        unit = expression.text("unit").upper()
        expression = expression.this
    elif isinstance(expression, exp.Date):
        expression = expression.this
    column = isinstance(expression, exp.Column | exp.Identifier)
    if not column or unit not in ("DAY", "HOUR", "MONTH", "YEAR"):
        raise ValueError(f"unsupported partitioning clause: {prop.sql('bigquery')}")
    return bigquery.TimePartitioning(type_=unit, field=expression.name)


def table_from_ddl(
    statement: q.Statement, tables: TableNames, dataset: str, run_id: str | None = None
) -> bigquery.Table:
    """The table a `CREATE TABLE` statement of sql.py describes, as an API table resource.

    `dataset` is PROJECT.DATASET (`run_id` names load tables). Columns, modes, partitioning
    and clustering all come from the statement, so the DDL text stays the one description.
    """
    create = sqlglot.parse_one(q.render(statement, tables, run_id), read="bigquery")
    if not isinstance(create, exp.Create) or create.kind != "TABLE":
        raise ValueError(f"statement {statement.name} is not a CREATE TABLE")
    schema = create.this
    table = bigquery.Table(
        f"{q.validate_dataset(dataset)}.{schema.this.name}",
        schema=[_field_from_ddl(c) for c in schema.expressions],
    )
    properties = create.args.get("properties")
    for prop in properties.expressions if properties else ():
        if isinstance(prop, exp.PartitionedByProperty):
            table.time_partitioning = _partitioning_from_ddl(prop)
        elif isinstance(prop, exp.ClusterProperty):
            table.clustering_fields = [c.name for c in prop.expressions]
        else:
            raise ValueError(f"statement {statement.name}: unsupported {prop.sql('bigquery')}")
    return table


def _storage_mismatch(wanted: bigquery.Table, existing: bigquery.Table) -> str | None:
    want_part, have_part = wanted.time_partitioning, existing.time_partitioning
    want = (
        want_part and (want_part.type_, want_part.field),
        tuple(wanted.clustering_fields or ()),
    )
    have = (
        have_part and (have_part.type_, have_part.field),
        tuple(existing.clustering_fields or ()),
    )
    if want == have:
        return None
    return f"partitioning/clustering is {have}, the DDL asks for {want}"


# ---------------------------------------------------------------------------------------------
# BigQuery-only scaffolding around sql.COMMIT_STATEMENTS: counting what the transaction changed.
# bqemulator lists no child jobs of a script (so `num_dml_affected_rows` per statement cannot be
# read there), hence two snapshots of cheap counts taken inside the transaction: production's
# trade rows (the INSERT only adds) and the markets/events rows that carry this run's id (every
# row the MERGE inserts or updates gets it). Inside the transaction nobody else's writes show.

_COUNTS_TYPE = "STRUCT<`trades` INT64, `markets` INT64, `events` INT64>"
_COUNT_CHANGES = q.Statement(
    "bigquery_count_changes",
    """
(SELECT AS STRUCT
  (SELECT COUNT(*) FROM {trades}) AS `trades`,
  (SELECT COUNTIF(`run_id` = @run_id) FROM {markets}) AS `markets`,
  (SELECT COUNTIF(`run_id` = @run_id) FROM {events}) AS `events`)
""",
    params=(q.Param("run_id", "STRING"),),
)
_BEFORE, _AFTER = "_backfill_counts_before", "_backfill_counts_after"
_ALREADY = "_backfill_already_committed"
# Zero counts, the value both snapshots keep when the transaction rolls back (run committed).
_NO_COUNTS = "STRUCT(0 AS `trades`, 0 AS `markets`, 0 AS `events`)"


def commit_script(
    tables: TableNames, run_id: str, dataset: str, nonce: str = "", wallets_listed: bool = True
) -> str:
    """The one multi-statement query of a commit: sql.commit_statements in one transaction.

    The transaction's first statement writes the lease row (sql.COMMIT_LOCK), so BigQuery
    cancels one of two commit transactions running at once ("concurrent update", retried);
    the next reads whether the run is committed already (a twin got there first): then the
    transaction rolls back, changing nothing, and the final row says `already_committed`.
    Its only values are the named parameters the statements declare (plus `run_id` for the
    counts); the final SELECT reports what the transaction changed. `nonce` names this
    attempt's load tables. `wallets_listed`: production trades are read for the wallets of
    the @wallets parameter (pruned by clustering), else by subquery (a run with too many).
    """
    counts = q.render(_COUNT_CHANGES, tables, run_id, dataset, nonce)
    body = [
        q.render(s, tables, run_id, dataset, nonce) for s in q.commit_statements(wallets_listed)
    ]
    statements = [
        f"DECLARE {_BEFORE} {_COUNTS_TYPE} DEFAULT {_NO_COUNTS}",
        f"DECLARE {_AFTER} {_COUNTS_TYPE} DEFAULT {_NO_COUNTS}",
        f"DECLARE {_ALREADY} BOOL DEFAULT FALSE",
        q.render(q.BEGIN_TRANSACTION, tables),
        q.render(q.COMMIT_LOCK, tables, dataset=dataset),
        f"SET {_ALREADY} = (\n{q.render(q.RUN_COMMITTED, tables, dataset=dataset)}\n)",
        f"IF {_ALREADY} THEN\n{q.render(q.ROLLBACK_TRANSACTION, tables)};\nELSE\n"
        + ";\n".join(
            [
                f"SET {_BEFORE} = {counts}",
                *body,
                f"SET {_AFTER} = {counts}",
                q.render(q.COMMIT_TRANSACTION, tables),
            ]
        )
        + ";\nEND IF",
        (
            f"SELECT\n  {_ALREADY} AS `already_committed`,\n"
            f"  {_AFTER}.`trades` - {_BEFORE}.`trades` AS `trades_inserted`,\n"
            f"  {_AFTER}.`markets` - {_BEFORE}.`markets` AS `markets_merged`,\n"
            f"  {_AFTER}.`events` - {_BEFORE}.`events` AS `events_merged`"
        ),
    ]
    return ";\n".join(statements) + ";\n"


def _script_params(statements: Sequence[q.Statement]) -> tuple[q.Param, ...]:
    """Every parameter a script of these statements uses, each declared once."""
    seen: dict[str, q.Param] = {}
    for statement in statements:
        for param in statement.params:
            if seen.setdefault(param.name, param) != param:
                raise TypeError(f"parameter @{param.name} is declared with two types")
    return tuple(seen.values())


def _commit_params(wallets_listed: bool = True) -> tuple[q.Param, ...]:
    """Every parameter the commit script uses, each declared once."""
    statements = q.commit_statements(wallets_listed)
    return _script_params((q.COMMIT_LOCK, q.RUN_COMMITTED, *statements, _COUNT_CHANGES))


def query_parameter(
    param: q.Param, value: Any
) -> bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter:
    """A named parameter of the type the statement declares (`ARRAY<T>` becomes an array)."""
    if param.type.startswith("ARRAY<") and param.type.endswith(">"):
        return bigquery.ArrayQueryParameter(param.name, param.type[6:-1], list(value))
    return bigquery.ScalarQueryParameter(param.name, param.type, value)


# ENSURE_TABLES statement -> the TableNames field of the table it creates.
_TABLE_KEYS = {
    statement.name: statement.name.removeprefix("create_") for statement in q.ENSURE_TABLES
}


class BigQueryWarehouse(Warehouse):
    """One BigQuery dataset as the warehouse.

    The client is built on first use and never pickled, so the object ships to Beam workers for
    the price of a few strings; each worker process builds its own client. `client_options` and
    `credentials` go to `bigquery.Client` as given (None: the default endpoint and Application
    Default Credentials); `open_warehouse` fills them from `BIGQUERY_EMULATOR_HOST` when set.
    A run's load tables are created with an expiration of `load_table_expiration_hours`, so a
    commit that dies before its cleanup leaves nothing behind for long. `retry_wait` is the first
    backoff (seconds) between attempts of a commit step that failed transiently.
    """

    remote_schemes = ("gs://",)  # one load job reads them all from Cloud Storage

    def __init__(
        self,
        project: str,
        dataset: str,
        tables: TableNames = TableNames(),  # noqa: B008 - frozen, validated, immutable
        *,
        client_options: ClientOptions | Mapping[str, Any] | None = None,
        credentials: Credentials | None = None,
        location: str | None = None,
        load_table_expiration_hours: float = 24,
        retry_wait: float = 2.0,
    ) -> None:
        self._dataset = q.validate_dataset(f"{project}.{dataset}")
        if "." in dataset:
            raise ValueError(f"BigQuery dataset id {dataset!r} must not contain '.'")
        if not load_table_expiration_hours > 0:
            raise ValueError(
                f"load_table_expiration_hours must be positive, got {load_table_expiration_hours!r}"
            )
        self._project = project
        self._dataset_id = dataset
        self._tables = tables
        self._client_options = client_options
        self._credentials = credentials
        self._location = location
        self._load_table_expiration = dt.timedelta(hours=load_table_expiration_hours)
        self._retry_wait = retry_wait
        self._client: bigquery.Client | None = None
        self._client_lock = threading.Lock()
        self._dataset_location: str | None = None

    @property
    def dataset(self) -> str:
        """PROJECT.DATASET."""
        return self._dataset

    def __repr__(self) -> str:
        return f"BigQueryWarehouse({self._project!r}, {self._dataset_id!r}, {self._tables!r})"

    # -- the client: built lazily, never pickled -------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_client_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    @property
    def client(self) -> bigquery.Client:
        """The process's client for this warehouse, built on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = bigquery.Client(
                    project=self._project,
                    credentials=self._credentials,
                    client_options=self._client_options,
                    location=self._location,
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _table_id(self, name: str) -> str:
        return f"{self._dataset}.{name}"

    def job_location(self) -> str | None:
        """The location every job of this warehouse runs in: the one given, else the dataset's
        (looked up once; None while the dataset does not exist). A job sent without it runs in
        the client's default location and fails, or reads nothing, on a dataset elsewhere."""
        if self._location:
            return self._location
        if self._dataset_location is None:
            try:
                self._dataset_location = self.client.get_dataset(self._dataset).location
            except gexc.NotFound:
                return None
        return self._dataset_location

    def _query(
        self,
        statement: q.Statement,
        params: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        nonce: str = "",
    ) -> bigquery.QueryJob:
        """Start one statement from sql.py with exactly the parameters it declares (`run_id`
        and `nonce` name the load tables it reads, if any)."""
        params = check_params(statement, params)
        config = bigquery.QueryJobConfig(
            query_parameters=[query_parameter(p, params[p.name]) for p in statement.params]
        )
        text = q.render(statement, self._tables, run_id, dataset=self._dataset, nonce=nonce)
        return self.client.query(text, job_config=config, location=self.job_location())

    def _retrying(self, what: str, step: Callable[[], _T]) -> _T:
        """Run `step`, again after a backoff while it fails transiently (3 attempts in all)."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s failed transiently (attempt %d of %d), retrying: %s",
                what,
                state.attempt_number,
                COMMIT_ATTEMPTS,
                exc,
            )

        retrying = Retrying(
            stop=stop_after_attempt(COMMIT_ATTEMPTS),
            wait=wait_exponential_jitter(
                initial=self._retry_wait, max=self._retry_wait * 8, jitter=self._retry_wait
            ),
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(step)

    # -- tables and reads ------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        """Create the dataset and every missing table; existing ones are left as they are.

        Tables are created through the API from the DDL's description (`table_from_ddl`) rather
        than by running it: the same columns, partitioning and clustering, without a query job
        per table (and bqemulator records partitioning and clustering only this way). Each is
        looked up first, so an account that may not create datasets can still use an existing
        one. An existing table whose partitioning or clustering differs is reported, not
        changed (BigQuery cannot re-partition a table in place). Columns once REQUIRED that
        schema.py makes nullable now (sql.RELAXED_COLUMNS) are relaxed where still REQUIRED.
        Last, the lease row is made if missing (one small DML job), so that every commit
        transaction updates the same existing row.
        """
        self._ensure_dataset()
        for statement in q.ENSURE_TABLES:
            existing = self._ensure_table(statement)
            self._relax_required_columns(_TABLE_KEYS[statement.name], existing)
            self._add_missing_columns(_TABLE_KEYS[statement.name], existing)
        self._run(q.ENSURE_LEASE_ROW, {"lease_name": q.LEASE_NAME})

    def _ensure_dataset(self) -> None:
        client = self.client
        try:
            client.get_dataset(self._dataset)
        except gexc.NotFound:
            dataset = bigquery.Dataset(self._dataset)
            if self._location:  # unset: BigQuery's default location (and the client's)
                dataset.location = self._location
            client.create_dataset(dataset, exists_ok=True)
            self._dataset_location = None  # looked up again, as BigQuery made it

    def _ensure_table(self, statement: q.Statement) -> bigquery.Table:
        """The table a CREATE statement describes: looked up, created only when missing."""
        wanted = table_from_ddl(statement, self._tables, self._dataset)
        try:
            existing = self.client.get_table(wanted.reference)
        except gexc.NotFound:
            existing = self.client.create_table(wanted, exists_ok=True)
        mismatch = _storage_mismatch(wanted, existing)
        if mismatch:
            log.warning("table %s exists but its %s", self._table_id(wanted.table_id), mismatch)
        return existing

    def _ensure_traders_table(self) -> None:
        self._ensure_dataset()
        self._ensure_table(q.CREATE_TRADERS)

    def _relax_required_columns(self, table: str, existing: bigquery.Table) -> None:
        """`ALTER TABLE .. ALTER COLUMN .. DROP NOT NULL` (the DuckDB text too) for each column
        of sql.RELAXED_COLUMNS whose field mode is still REQUIRED; BigQuery allows relaxing
        REQUIRED to NULLABLE in place, and only that direction."""
        modes = {field.name: field.mode for field in existing.schema}
        for column in q.RELAXED_COLUMNS.get(table, ()):
            if modes.get(column) == "REQUIRED":
                log.warning("table %s: making column %s nullable", existing.table_id, column)
                self._query(q.relax_column(table, column)).result()

    def _add_missing_columns(self, table: str, existing: bigquery.Table) -> None:
        """A table made by an older version (or the users' own checkpoint table) gains the
        columns it lacks, with the same ALTER TABLE text DuckDB runs. Only when some are
        missing: every schema change counts against the table's metadata-update quota."""
        have = {field.name for field in existing.schema}
        for column in q.TABLE_COLUMNS.get(table, ()):
            if column.name not in have:
                log.warning("table %s: adding missing column %s", existing.table_id, column.name)
                self._query(q.add_column(table, column)).result()

    def _table_columns(self) -> dict[str, set[str] | None]:
        columns: dict[str, set[str] | None] = {}
        for key, name in self._tables.as_dict().items():
            try:
                table = self.client.get_table(self._table_id(name))
            except gexc.NotFound:  # the table, or the whole dataset
                columns[key] = None
            else:
                columns[key] = {field.name for field in table.schema}
        return columns

    # -- statements ------------------------------------------------------------------------------

    def _stream(
        self,
        statement: q.Statement,
        params: Mapping[str, Any] | None = None,
        *,
        session: None = None,
        run_id: str | None = None,
        nonce: str = "",
    ) -> Iterator[Any]:
        # Pages are fetched as the caller iterates: millions of rows never sit in memory.
        job = self._query(statement, params, run_id=run_id, nonce=nonce)
        return iter(job.result(page_size=_PAGE_SIZE))

    def _run(self, statement: q.Statement, params: Mapping[str, Any] | None = None) -> None:
        self._query(statement, params).result()

    def _read_all(
        self, queries: Mapping[str, tuple[q.Statement, Mapping[str, Any]]]
    ) -> dict[str, list[tuple[Any, ...]]]:
        # Independent queries: started together, then read.
        jobs = [
            (name, self._query(statement, params)) for name, (statement, params) in queries.items()
        ]
        return {name: [tuple(row.values()) for row in job.result()] for name, job in jobs}

    # -- the commit: load jobs, then one script, each step retried as a whole --------------------

    def _load(self, session: None, run_id: str, files: Mapping[str, LoadFiles], nonce: str) -> None:
        # Each step is idempotent as a whole (the load tables are replaced), so a transient
        # failure repeats the step, never a part of it.
        try:
            self._retrying(f"run {run_id}: loading", lambda: self._load_once(run_id, files, nonce))
        except gexc.GoogleAPICallError as exc:
            raise CommitError(
                f"run {run_id}: staging its files failed, nothing was committed: {exc}"
            ) from exc

    def _load_once(self, run_id: str, files: Mapping[str, LoadFiles], nonce: str) -> None:
        """(Re)create the run's load tables, empty, then load its files into them.

        The tables come from sql.CREATE_LOAD_TABLE, the same statements DuckDB runs, in one
        script; each then gets an expiration. Load jobs run with the explicit schema of
        schema.py and start together; BigQuery runs them in parallel.
        """
        script = ";\n".join(
            q.render(q.CREATE_LOAD_TABLE[kind], self._tables, run_id, self._dataset, nonce)
            for kind in q.COMMITTED_KINDS
        )
        self.client.query(script, location=self.job_location()).result()
        expires = dt.datetime.now(dt.UTC) + self._load_table_expiration
        for kind in q.COMMITTED_KINDS:
            table = bigquery.Table(self._table_id(q.load_table(run_id, kind, nonce)))
            table.expires = expires
            self.client.update_table(table, ["expires"])

        jobs: list[tuple[str, bigquery.LoadJob]] = []
        for kind in q.COMMITTED_KINDS:
            try:
                jobs.extend(
                    (kind, job) for job in self._start_loads(run_id, kind, files[kind], nonce)
                )
            except gexc.GoogleAPICallError as exc:
                self._load_failed(run_id, kind, exc)
        for kind, job in jobs:
            try:
                job.result()
            except gexc.GoogleAPICallError as exc:
                self._load_failed(run_id, kind, exc)

    def _load_failed(self, run_id: str, kind: str, exc: gexc.GoogleAPICallError) -> None:
        if is_transient(exc):
            raise exc
        raise load_failed(run_id, kind, exc) from exc

    def _start_loads(
        self, run_id: str, kind: str, files: LoadFiles, nonce: str
    ) -> list[bigquery.LoadJob]:
        """Load jobs for one kind: one for all its gs:// URIs, one per non-empty local file."""
        destination = self._table_id(q.load_table(run_id, kind, nonce))
        location = self.job_location()
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=schema_fields(STAGED_KINDS[kind]),
            autodetect=False,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
        )
        prefix = f"backfill_load_{run_id}_{kind}_"
        jobs = []
        if files.uris:
            jobs.append(
                self.client.load_table_from_uri(
                    list(files.uris),
                    destination,
                    job_config=config,
                    job_id_prefix=prefix,
                    location=location,
                )
            )
        for path in files.paths:
            if Path(path).stat().st_size == 0:
                continue  # nothing to load; an empty upload is not worth a job
            with open(path, "rb") as handle:
                jobs.append(
                    self.client.load_table_from_file(
                        handle,
                        destination,
                        job_config=config,
                        job_id_prefix=prefix,
                        location=location,
                    )
                )
        return jobs

    def _landing_wallets(self, session: None, run_id: str, nonce: str) -> list[str] | None:
        # One small query on the outcomes load table, retried like every step of the commit.
        try:
            return self._retrying(
                f"run {run_id}: reading its successful wallets",
                lambda: super(BigQueryWarehouse, self)._landing_wallets(session, run_id, nonce),
            )
        except gexc.GoogleAPICallError as exc:
            raise CommitError(
                f"run {run_id}: reading its successful wallets failed, nothing was committed: {exc}"
            ) from exc

    def _transaction(
        self,
        session: None,
        run_id: str,
        committed_at: dt.datetime,
        nonce: str,
        wallets: Sequence[str] | None = None,
    ) -> tuple[int, int, int] | None:
        try:
            return self._retrying(
                f"run {run_id}: commit transaction",
                lambda: self._transaction_once(run_id, committed_at, nonce, wallets),
            )
        except gexc.GoogleAPICallError as exc:
            raise CommitError(
                f"run {run_id}: the commit transaction failed {COMMIT_ATTEMPTS} times and "
                f"was rolled back (production and checkpoint untouched): {exc}"
            ) from exc

    def _transaction_once(
        self,
        run_id: str,
        committed_at: dt.datetime,
        nonce: str,
        wallets: Sequence[str] | None = None,
    ) -> tuple[int, int, int] | None:
        """Run `commit_script` as one query job; return rows inserted/merged per table, or
        None when the run was committed already (the script rolled back).

        `wallets` travel as the @wallets array parameter (None: the script reads production by
        subquery instead). A script that fails leaves its transaction rolled back by BigQuery:
        production and the checkpoint are as they were. `job_retry=None`: the caller's retry is
        the only one.
        """
        listed = wallets is not None
        values = {
            "run_id": run_id,
            "committed_at": committed_at,
            "lease_name": q.LEASE_NAME,
            "wallets": list(wallets or ()),
        }
        config = bigquery.QueryJobConfig(
            query_parameters=[query_parameter(p, values[p.name]) for p in _commit_params(listed)]
        )
        script = commit_script(self._tables, run_id, self._dataset, nonce, listed)
        try:
            job = self.client.query(
                script,
                job_config=config,
                job_id_prefix=f"backfill_commit_{run_id}_",
                job_retry=None,
                location=self.job_location(),
            )
            (row,) = list(job.result(job_retry=None))
        except gexc.GoogleAPICallError as exc:
            if is_transient(exc):
                raise
            raise transaction_failed(run_id, exc) from exc
        if row["already_committed"]:
            return None
        return (
            int(row["trades_inserted"]),
            int(row["markets_merged"]),
            int(row["events_merged"]),
        )

    def _drop_load_tables(self, session: None, run_id: str, nonce: str) -> None:
        for kind in q.COMMITTED_KINDS:
            table_id = self._table_id(q.load_table(run_id, kind, nonce))
            try:
                self.client.delete_table(table_id, not_found_ok=True)
            except gexc.GoogleAPICallError as exc:  # best effort: the expiration cleans up
                log.warning("run %s: could not drop load table %s: %s", run_id, table_id, exc)

    # -- the lease: the base's statements, retried ----------------------------------------------

    def acquire_lease(self, holder: str, ttl_seconds: float) -> bool:
        # Two launches (or a launch and a repair) at once: BigQuery aborts the later of two DML
        # jobs on the lease table ("concurrent update"). Taking it again is safe: a holder that
        # won the first attempt is renewed, and one that lost reads the winner and is refused.
        return self._retrying(
            "taking the backfill lease",
            lambda: super(BigQueryWarehouse, self).acquire_lease(holder, ttl_seconds),
        )

    def release_lease(self, holder: str) -> None:
        # Giving it back twice is giving it back once (only `holder`'s row is cleared).
        self._retrying(
            "giving the backfill lease back",
            lambda: super(BigQueryWarehouse, self).release_lease(holder),
        )

    # -- verify's repair, and what killed commits left ------------------------------------------

    def _in_transaction(self, steps: Sequence[tuple[q.Statement, Mapping[str, Any]]]) -> None:
        """One script, BEGIN .. COMMIT: BigQuery rolls it back whole if a statement fails, and
        it is sent again (whole) while it fails transiently, e.g. cancelled by a commit
        transaction that touched the same table at the same time."""
        statements = [statement for statement, _ in steps]
        values: dict[str, Any] = {}
        for statement, params in steps:
            values.update(check_params(statement, params))
        config = bigquery.QueryJobConfig(
            query_parameters=[
                query_parameter(p, values[p.name]) for p in _script_params(statements)
            ]
        )
        script = ";\n".join(
            [
                q.render(q.BEGIN_TRANSACTION, self._tables),
                *(q.render(s, self._tables, dataset=self._dataset) for s in statements),
                q.render(q.COMMIT_TRANSACTION, self._tables),
            ]
        )

        def run_once() -> None:
            self.client.query(
                script + ";\n", job_config=config, location=self.job_location(), job_retry=None
            ).result(job_retry=None)

        self._retrying("verify's repair", run_once)

    def _load_table_names(self) -> list[str]:
        try:
            tables = list(self.client.list_tables(self._dataset))
        except gexc.NotFound:  # no dataset yet: nothing left behind
            return []
        return [t.table_id for t in tables if t.table_id.startswith(q.LOAD_TABLE_PREFIX)]

    def _drop_table(self, name: str) -> None:
        q.drop_orphan_load_table(name)  # validates: a load table, never a production one
        self.client.delete_table(self._table_id(name), not_found_ok=True)
