"""The DuckDB warehouse: the local, no-cloud implementation of `Warehouse` on one database file."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from pipeline import failpoints
from pipeline.lease import WarehouseBusy
from pipeline.warehouse import sql as q
from pipeline.warehouse.base import (
    FAILED_WALLETS_LISTED,
    LoadFiles,
    TableNames,
    Warehouse,
    WarehouseUnreadable,
    check_params,
    load_failed,
    transaction_failed,
)

log = logging.getLogger(__name__)

__all__ = ["FAILED_WALLETS_LISTED", "DuckDBWarehouse", "WarehouseLocked"]

_LOCK_MESSAGE = "Could not set lock on file"
# DuckDB names the process that holds the file: "Conflicting lock is held in <program> (PID n)".
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<holder>.+?\(PID \d+\))")
# Two transactions of one process writing one row: DuckDB fails the second writer.
_CONFLICT_MESSAGE = "Conflict"
CONFLICT_ATTEMPTS = 5
# How long a connection waits for another process to let go of the file before the command
# ends as busy (WarehouseLocked). Read when a warehouse is made, so a test can shorten it.
LOCK_TIMEOUT_S = 60.0


class WarehouseLocked(WarehouseBusy, TimeoutError):
    """Another process kept the DuckDB file open past the lock timeout (a dashboard, a DuckDB
    shell, another pipeline): busy, not broken, so every command reports it in one line and a
    run exits as a busy warehouse does (3: try again later). A TimeoutError too, as it was."""


def _lock_holder(error: BaseException) -> str | None:
    """The program and PID DuckDB says holds the file, or None when its message does not say."""
    found = _LOCK_HOLDER.search(str(error))
    return found.group("holder") if found else None


class DuckDBWarehouse(Warehouse):
    """A DuckDB file as the warehouse.

    DuckDB lets one process at a time open a file read-write, and Beam's multi_processing
    workers are separate processes: so every method opens its own short-lived connection, waits
    (with backoff) while another process holds the file, and closes it before returning. The
    object itself holds only the path and the table names, so it pickles and builds for free.
    A commit loads into temporary tables (its connection's own): see `sql.DUCKDB_CREATE_LOAD_TABLE`.
    """

    loads_privately = True

    def __init__(
        self,
        path: str | Path,
        tables: TableNames = TableNames(),  # noqa: B008 - frozen, validated, immutable
        *,
        lock_timeout: float | None = None,
    ) -> None:
        # Absolute now, so a copy unpickled in a worker with another cwd opens the same file.
        self._path = str(Path(path).expanduser().absolute())
        self._tables = tables
        self._lock_timeout = LOCK_TIMEOUT_S if lock_timeout is None else lock_timeout

    @property
    def path(self) -> str:
        return self._path

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
            except duckdb.Error as exc:
                if _LOCK_MESSAGE not in str(exc):
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    raise WarehouseUnreadable(
                        f"the DuckDB file {self._path} cannot be opened: {first}"
                    ) from exc
                if time.monotonic() >= deadline:
                    holder = _lock_holder(exc)
                    by = f" (held by {holder})" if holder else ""
                    raise WarehouseLocked(
                        f"the DuckDB file {self._path} stayed locked by another process{by} "
                        f"for {self._lock_timeout:g} s: is another pipeline, a dashboard or a "
                        "DuckDB shell holding it open? Close it, or try again later"
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
        run_id: str | None = None,
        nonce: str = "",
    ) -> duckdb.DuckDBPyConnection:
        """Run one statement from sql.py with exactly the parameters it declares.

        `run_id` and `nonce` name the load tables the statement refers to, if any.
        """
        params = check_params(statement, params)
        text = q.render_duckdb(statement, self._tables, run_id, nonce)
        return conn.execute(text, params) if params else conn.execute(text)

    # -- tables ----------------------------------------------------------------------------------

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
            self._execute(conn, q.ENSURE_LEASE_ROW, {"lease_name": q.LEASE_NAME})

    def _columns(self, conn: duckdb.DuckDBPyConnection, name: str) -> dict[str, bool] | None:
        """A table's columns and whether each is nullable; None if there is no such table."""
        rows = self._execute(conn, q.DUCKDB_TABLE_COLUMNS, {"table": name}).fetchall()
        return {column: bool(nullable) for column, nullable in rows} or None

    def _table_columns(self) -> dict[str, set[str] | None]:
        if not Path(self._path).is_file():  # connecting would create the file
            return {key: None for key in self._tables.as_dict()}
        with self._connection() as conn:
            return {
                key: None if found is None else set(found)
                for key, name in self._tables.as_dict().items()
                for found in [self._columns(conn, name)]
            }

    def _ensure_traders_table(self) -> None:
        self._run(q.CREATE_TRADERS)

    # -- statements ------------------------------------------------------------------------------

    def _stream(
        self,
        statement: q.Statement,
        params: Mapping[str, Any] | None = None,
        *,
        session: duckdb.DuckDBPyConnection | None = None,
        run_id: str | None = None,
        nonce: str = "",
    ) -> list[tuple]:
        # Fetched whole, then the connection closes: holding the file lock while a slow
        # consumer iterates would lock every other worker out.
        if session is not None:
            return self._execute(session, statement, params, run_id=run_id, nonce=nonce).fetchall()
        with self._connection() as conn:
            return self._execute(conn, statement, params, run_id=run_id, nonce=nonce).fetchall()

    def _run(self, statement: q.Statement, params: Mapping[str, Any] | None = None) -> None:
        with self._connection() as conn:
            self._execute(conn, statement, params)

    def _read_all(
        self, queries: Mapping[str, tuple[q.Statement, Mapping[str, Any]]]
    ) -> dict[str, list[tuple[Any, ...]]]:
        with self._connection() as conn:
            return {
                name: self._execute(conn, statement, params).fetchall()
                for name, (statement, params) in queries.items()
            }

    # -- the commit: one connection, its load tables, one transaction ---------------------------

    @contextlib.contextmanager
    def _commit_session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # One connection for the whole commit: the file lock makes it exclusive across processes.
        with self._connection() as conn:
            self._execute(conn, q.DUCKDB_COMMIT_THREADS)
            yield conn

    def prepare_commit(self) -> None:
        """Translates the commit's statements (cached for the process, whatever the run id and
        nonce): ~0.1 s of CPU that a run's commit, the last thing before it exits, then does
        not spend."""
        for statement in (
            q.SELECT_RUN,
            *q.DUCKDB_CREATE_LOAD_TABLE.values(),
            q.SELECT_LANDING_WALLETS,
            q.LOADED_COUNTS_DISAGREE,
            q.STAGED_IDS_UNIQUE,
            q.COMMIT_LOCK,
            q.RUN_COMMITTED,
            *q.commit_statements(wallets_listed=True),
            q.INSERT_TRADES_IDS_UNIQUE,
            *q.DROP_LOAD_TABLE.values(),
            q.LEASE_RELEASE,
        ):
            q.render_duckdb(statement, self._tables, "prepare-commit")

    def _load(
        self,
        session: duckdb.DuckDBPyConnection,
        run_id: str,
        files: Mapping[str, LoadFiles],
        nonce: str,
    ) -> None:
        for kind in q.COMMITTED_KINDS:
            try:
                self._execute(session, q.DUCKDB_CREATE_LOAD_TABLE[kind], run_id=run_id, nonce=nonce)
                if files[kind].paths:
                    load = q.DUCKDB_LOAD_FILES[kind]
                    params = {"files": files[kind].paths}
                    self._execute(session, load, params, run_id=run_id, nonce=nonce)
            except duckdb.Error as exc:
                raise load_failed(run_id, kind, exc) from exc

    def _transaction(
        self,
        session: duckdb.DuckDBPyConnection,
        run_id: str,
        committed_at: dt.datetime,
        nonce: str,
        wallets: Sequence[str] | None = None,
    ) -> tuple[int, int, int] | None:
        # Production trades read for the listed wallets, or (None: too many) by subquery; the
        # trades' id dedup only if an id is staged twice. The load tables are this session's
        # own, so what they hold cannot change until the transaction ends. A failed question
        # keeps the dedup: it lands the same rows, only slower.
        try:
            (ids_unique,) = self._execute(
                session, q.STAGED_IDS_UNIQUE, run_id=run_id, nonce=nonce
            ).fetchone()
        except duckdb.Error as exc:
            log.warning("run %s: could not tell whether its staged ids are unique: %s", run_id, exc)
            ids_unique = False
        statements = q.commit_statements(wallets is not None, ids_unique=bool(ids_unique))
        # Across processes the file lock already makes the commit exclusive; two threads of one
        # process share the database, and the second writer of the lease row gets a conflict:
        # it rolls back and tries again, and then finds the run its twin committed.
        delay = 0.05
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return self._transaction_once(
                    session, run_id, committed_at, nonce, statements, wallets
                )
            except duckdb.TransactionException as exc:
                if _CONFLICT_MESSAGE not in str(exc) or attempt == CONFLICT_ATTEMPTS:
                    raise transaction_failed(run_id, exc) from exc
                log.warning("run %s: commit conflicted with another, retrying: %s", run_id, exc)
                time.sleep(delay * random.uniform(1, 2))
                delay *= 2
        raise AssertionError("unreachable")

    def _transaction_once(
        self,
        session: duckdb.DuckDBPyConnection,
        run_id: str,
        committed_at: dt.datetime,
        nonce: str,
        statements: Sequence[q.Statement],
        wallets: Sequence[str] | None = None,
    ) -> tuple[int, int, int] | None:
        values = {
            "run_id": run_id,
            "committed_at": committed_at,
            "lease_name": q.LEASE_NAME,
            "wallets": list(wallets or ()),
        }
        insert_trades = q.inserts_trades(statements)
        counts: dict[str, int] = {}
        self._execute(session, q.BEGIN_TRANSACTION)
        try:
            self._execute(session, q.COMMIT_LOCK, {"lease_name": q.LEASE_NAME, "run_id": run_id})
            (committed,) = self._execute(session, q.RUN_COMMITTED, {"run_id": run_id}).fetchone()
            if committed:
                self._execute(session, q.ROLLBACK_TRANSACTION)
                return None
            for statement in statements:
                params = {name: values[name] for name in statement.param_names}
                row = self._execute(
                    session, statement, params, run_id=run_id, nonce=nonce
                ).fetchone()
                counts[statement.name] = row[0] if row else 0
            failpoints.reached(failpoints.IN_TRANSACTION)
            self._execute(session, q.COMMIT_TRANSACTION)
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT has rolled back already
                self._execute(session, q.ROLLBACK_TRANSACTION)
            if isinstance(exc, duckdb.TransactionException):
                raise  # the caller decides: a conflict is tried again
            if isinstance(exc, duckdb.Error):
                raise transaction_failed(run_id, exc) from exc
            raise
        return (
            counts[insert_trades.name],
            counts[q.MERGE_MARKETS.name],
            counts[q.MERGE_EVENTS.name],
        )

    def _drop_load_tables(
        self, session: duckdb.DuckDBPyConnection, run_id: str, nonce: str
    ) -> None:
        for kind in q.COMMITTED_KINDS:
            try:
                self._execute(session, q.DROP_LOAD_TABLE[kind], run_id=run_id, nonce=nonce)
            except duckdb.Error as exc:  # best effort: the next start-up drops it
                log.warning("run %s: could not drop its %s load table: %s", run_id, kind, exc)

    # -- verify's repair, and what killed commits left ------------------------------------------

    def _in_transaction(self, steps: Sequence[tuple[q.Statement, Mapping[str, Any]]]) -> None:
        with self._connection() as conn:
            self._execute(conn, q.BEGIN_TRANSACTION)
            try:
                for statement, params in steps:
                    self._execute(conn, statement, params)
                self._execute(conn, q.COMMIT_TRANSACTION)
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    self._execute(conn, q.ROLLBACK_TRANSACTION)
                raise

    def _load_table_names(self) -> list[str]:
        if not Path(self._path).is_file():  # connecting would create the file
            return []
        rows = self._stream(q.DUCKDB_LOAD_TABLES, {"prefix": q.LOAD_TABLE_PREFIX})
        return [name for (name,) in rows]

    def _drop_table(self, name: str) -> None:
        self._run(q.drop_orphan_load_table(name))
