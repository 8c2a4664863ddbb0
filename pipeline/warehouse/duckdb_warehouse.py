"""The DuckDB warehouse: the local, no-cloud implementation of `Warehouse` on one database file."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from pipeline.schema import STAGED_KINDS
from pipeline.status_report import StatusReport
from pipeline.warehouse import (
    FAILED_WALLETS_LISTED,
    CommitError,
    CommitReport,
    TableNames,
    Warehouse,
    check_last_runs,
    commit_time,
    status_params,
    status_plan,
    status_report,
)
from pipeline.warehouse import sql as q

log = logging.getLogger(__name__)

__all__ = ["FAILED_WALLETS_LISTED", "DuckDBWarehouse"]

_LOCK_MESSAGE = "Could not set lock on file"


class DuckDBWarehouse(Warehouse):
    """A DuckDB file as the warehouse.

    DuckDB lets one process at a time open a file read-write, and Beam's multi_processing
    workers are separate processes: so every method opens its own short-lived connection, waits
    (with backoff) while another process holds the file, and closes it before returning. The
    object itself holds only the path and the table names, so it pickles and builds for free.
    """

    def __init__(
        self,
        path: str | Path,
        tables: TableNames = TableNames(),  # noqa: B008 - frozen, validated, immutable
        *,
        lock_timeout: float = 60.0,
    ) -> None:
        # Absolute now, so a copy unpickled in a worker with another cwd opens the same file.
        self._path = str(Path(path).expanduser().absolute())
        self._tables = tables
        self._lock_timeout = lock_timeout

    @property
    def path(self) -> str:
        return self._path

    @property
    def tables(self) -> TableNames:
        return self._tables

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({self._path!r}, {self._tables!r})"

    # -- connections -----------------------------------------------------------------------------

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file read-write, retrying while another process holds its lock."""
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.02
        while True:
            try:
                conn = duckdb.connect(self._path)
                break
            except duckdb.IOException as exc:
                if _LOCK_MESSAGE not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"DuckDB file {self._path} stayed locked by another process for "
                        f"{self._lock_timeout:g} s; is another pipeline or a DuckDB shell "
                        f"holding it open? ({exc})"
                    ) from exc
                time.sleep(min(delay, max(deadline - time.monotonic(), 0)) * random.uniform(1, 1.5))
                delay = min(delay * 2, 1.0)
        try:
            conn.execute(q.render_duckdb(q.DUCKDB_SET_UTC, self._tables))
            for setting in q.DUCKDB_LIMIT_MEMORY:
                conn.execute(q.render_duckdb(setting, self._tables))
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    def _execute(
        self,
        conn: duckdb.DuckDBPyConnection,
        statement: q.Statement,
        params: Mapping[str, Any] | None = None,
        *,
        staging: str | None = None,
    ) -> duckdb.DuckDBPyConnection:
        """Run one statement from sql.py with exactly the parameters it declares.

        `staging` is the run id whose staging tables the statement refers to, if any.
        """
        params = dict(params or {})
        if set(params) != set(statement.param_names):
            raise TypeError(
                f"statement {statement.name} takes {statement.param_names}, got {sorted(params)}"
            )
        text = q.render_duckdb(statement, self._tables, staging)
        return conn.execute(text, params) if params else conn.execute(text)

    # -- reads -----------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        with self._connection() as conn:
            for statement in q.ENSURE_TABLES:
                self._execute(conn, statement)
            # A table made by an older version (or by hand) gains the columns it lacks, and
            # the columns once required that are nullable now lose their NOT NULL.
            for table, columns in q.TABLE_COLUMNS.items():
                name = getattr(self._tables, table)
                have = self._columns(conn, name) or {}
                for column in columns:
                    if column.name not in have:
                        log.warning("table %s: adding missing column %s", name, column.name)
                        self._execute(conn, q.add_column(table, column))
                for column_name in q.RELAXED_COLUMNS.get(table, ()):
                    if have.get(column_name) is False:
                        log.warning("table %s: making column %s nullable", name, column_name)
                        self._execute(conn, q.relax_column(table, column_name))

    def _columns(self, conn: duckdb.DuckDBPyConnection, name: str) -> dict[str, bool] | None:
        """A table's columns and whether each is nullable; None if there is no such table."""
        rows = self._execute(conn, q.DUCKDB_TABLE_COLUMNS, {"table": name}).fetchall()
        return {column: bool(nullable) for column, nullable in rows} or None

    def _ensure_traders_table(self) -> None:
        self._run(q.CREATE_TRADERS)

    def read_traders(self) -> Iterator[str | None]:
        # Fetched whole, then the connection closes: holding the file lock while a slow
        # consumer iterates would lock every other worker out.
        with self._connection() as conn:
            rows = self._execute(conn, q.SELECT_TRADERS).fetchall()
        return iter([row[0] for row in rows])

    def read_done_wallets(self) -> Iterator[str]:
        with self._connection() as conn:
            rows = self._execute(conn, q.SELECT_DONE_WALLETS).fetchall()
        return iter([row[0] for row in rows])

    def _stream(
        self, statement: q.Statement, params: Mapping[str, Any] | None = None
    ) -> list[tuple]:
        # Fetched whole, then closed, for the same reason as read_traders.
        with self._connection() as conn:
            return self._execute(conn, statement, params).fetchall()

    def _run(self, statement: q.Statement, params: Mapping[str, Any] | None = None) -> None:
        with self._connection() as conn:
            self._execute(conn, statement, params)

    def committed_run_ids(self) -> set[str]:
        with self._connection() as conn:
            return {row[0] for row in self._execute(conn, q.SELECT_COMMITTED_RUN_IDS).fetchall()}

    # -- the commit ------------------------------------------------------------------------------

    def commit_run(
        self,
        run_id: str,
        files: Mapping[str, Sequence[str]],
        *,
        committed_at: dt.datetime | None = None,
    ) -> CommitReport:
        q.validate_run_id(run_id)
        paths = _check_files(run_id, files)
        committed_at = commit_time(committed_at)

        # One connection for the whole commit: the file lock makes it exclusive across processes.
        with self._connection() as conn:
            if self._execute(conn, q.SELECT_RUN, {"run_id": run_id}).fetchone() is not None:
                return CommitReport(run_id, already_committed=True)
            try:
                self._load_staging(conn, run_id, paths)
                inserted, markets, events = self._transaction(conn, run_id, committed_at)
                run_row = self._execute(conn, q.SELECT_RUN, {"run_id": run_id}).fetchone()
            finally:
                self._drop_staging(conn, run_id)
        assert run_row is not None  # the transaction just inserted it (or a twin did)
        return CommitReport(
            run_id,
            already_committed=False,
            trades_inserted=inserted,
            markets_merged=markets,
            events_merged=events,
            wallets_done=run_row[2] or 0,
            wallets_failed=run_row[3] or 0,
        )

    def _load_staging(
        self, conn: duckdb.DuckDBPyConnection, run_id: str, paths: Mapping[str, list[str]]
    ) -> None:
        """Create the run's staging tables (empty if a kind has no files) and load its files."""
        for kind in q.COMMITTED_KINDS:
            try:
                self._execute(conn, q.CREATE_STAGING[kind], staging=run_id)
                if paths[kind]:
                    load = q.DUCKDB_LOAD_STAGING[kind]
                    self._execute(conn, load, {"files": paths[kind]}, staging=run_id)
            except duckdb.Error as exc:
                raise CommitError(
                    f"run {run_id}: loading its {kind} staging files failed, nothing was "
                    f"committed: {exc}"
                ) from exc

    def _transaction(
        self, conn: duckdb.DuckDBPyConnection, run_id: str, committed_at: dt.datetime
    ) -> tuple[int, int, int]:
        """Run COMMIT_STATEMENTS in one transaction; return rows inserted/merged per table."""
        values = {"run_id": run_id, "committed_at": committed_at}
        counts: dict[str, int] = {}
        self._execute(conn, q.BEGIN_TRANSACTION)
        try:
            for statement in q.COMMIT_STATEMENTS:
                params = {name: values[name] for name in statement.param_names}
                row = self._execute(conn, statement, params, staging=run_id).fetchone()
                counts[statement.name] = row[0] if row else 0
            self._execute(conn, q.COMMIT_TRANSACTION)
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT has rolled back already
                self._execute(conn, q.ROLLBACK_TRANSACTION)
            if isinstance(exc, duckdb.Error):
                raise CommitError(
                    f"run {run_id}: the commit transaction failed and was rolled back "
                    f"(production and checkpoint untouched; commit it again once fixed): {exc}"
                ) from exc
            raise
        return (
            counts[q.INSERT_TRADES.name],
            counts[q.MERGE_MARKETS.name],
            counts[q.MERGE_EVENTS.name],
        )

    def _drop_staging(self, conn: duckdb.DuckDBPyConnection, run_id: str) -> None:
        for kind in q.COMMITTED_KINDS:
            try:
                self._execute(conn, q.DROP_STAGING[kind], staging=run_id)
            except duckdb.Error as exc:  # best effort: the next commit replaces it anyway
                log.warning("run %s: could not drop its %s staging table: %s", run_id, kind, exc)

    # -- monitoring ------------------------------------------------------------------------------

    def status(self, last_runs: int = 5) -> StatusReport:
        """Only reads: a missing database file or table is reported, never created."""
        check_last_runs(last_runs)
        if not Path(self._path).is_file():
            return status_report(status_plan(self._tables, {}), {})
        with self._connection() as conn:
            columns = {
                key: None if found is None else set(found)
                for key, name in self._tables.as_dict().items()
                for found in [self._columns(conn, name)]
            }
            plan = status_plan(self._tables, columns)
            results = {
                statement.name: self._execute(
                    conn, statement, status_params(statement, last_runs)
                ).fetchall()
                for statement in plan.statements
            }
        return status_report(plan, results)


def _check_files(run_id: str, files: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Validate the kinds and that every file exists, before anything touches the database.

    Rejects are staged for inspection only and never committed, so their files are accepted
    and not loaded.
    """
    unknown = sorted(set(files) - set(STAGED_KINDS))
    if unknown:
        raise ValueError(
            f"run {run_id}: unknown staging kinds {unknown}; "
            f"expected some of {sorted(STAGED_KINDS)}"
        )
    paths: dict[str, list[str]] = {}
    for kind in q.COMMITTED_KINDS:
        kind_files = files.get(kind, ())
        if isinstance(kind_files, str):
            raise TypeError(f"run {run_id}: files[{kind!r}] must be a list of paths, not a str")
        paths[kind] = [str(Path(p).absolute()) for p in kind_files]
        missing = [p for p in paths[kind] if not Path(p).is_file()]
        if missing:
            raise CommitError(f"run {run_id}: {kind} staging files are missing: {missing}")
    return paths
