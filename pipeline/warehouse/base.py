"""The `Warehouse` interface, and the half of every engine that does not depend on the engine.

The commit's skeleton (validate, check the files, skip a run already committed, load, one
transaction, clean up, report), `status`, `verify` and the typed reads live here once; an engine
(`DuckDBWarehouse`, `BigQueryWarehouse`) supplies only what differs: running a statement, streaming
its rows, listing a table's columns, loading the run's files into its load tables and running the
commit transaction. A run's *load tables* (`_stg_<run>_<hash>_<kind>`) are the warehouse's copy of
its staging files for the length of one commit; "staging" is the files.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.schema import STAGED_KINDS
from pipeline.status_report import FailedWallet, RunSummary, StatusReport
from pipeline.warehouse import sql
from pipeline.warehouse.sql import TableNames, validate_run_id

# How many failed wallets `status` lists (the total is always reported).
FAILED_WALLETS_LISTED = 50
# Addresses per INSERT of `add_traders` (one array parameter each).
TRADERS_BATCH = 10_000

# What each status statement reads: table (a TableNames field) -> the columns it needs that a
# table made before they existed may lack. Status runs only the statements whose tables exist.
STATUS_READS: dict[str, dict[str, tuple[str, ...]]] = {
    sql.STATUS_PROGRESS.name: {"checkpoint": (), "traders": ()},
    sql.STATUS_FAILED_WALLETS.name: {"checkpoint": ()},
    sql.STATUS_TOTALS.name: {"trades": (), "markets": (), "events": ()},
    sql.STATUS_LAST_RUNS.name: {"runs": ()},
    sql.STATUS_PENDING.name: {"trades": ("event_slug",), "markets": ("event_slug",), "events": ()},
    sql.STATUS_TRADES_BY_SOURCE.name: {"trades": ("source",)},
}
STATUS_STATEMENTS: tuple[sql.Statement, ...] = (
    sql.STATUS_PROGRESS,
    sql.STATUS_FAILED_WALLETS,
    sql.STATUS_TOTALS,
    sql.STATUS_LAST_RUNS,
    sql.STATUS_PENDING,
    sql.STATUS_TRADES_BY_SOURCE,
)
# The checkpoint columns `verify`'s reset writes that a checkpoint table older than them lacks.
VERIFY_RESET_COLUMNS = ("error", "last_trade_at", "last_refreshed_at")


class CommitError(RuntimeError):
    """A run's commit failed and was rolled back: production and checkpoint are untouched."""


@dataclass(frozen=True)
class CommitReport:
    """What one `commit_run` did; all zeros (but wallet counts) when it changed nothing.

    `trades_inserted`, `markets_merged` and `events_merged` are rows the statements changed;
    `wallets_done` / `wallets_failed` are the run's staged outcomes, as its runs row records.
    """

    run_id: str
    already_committed: bool
    trades_inserted: int = 0
    markets_merged: int = 0
    events_merged: int = 0
    wallets_done: int = 0
    wallets_failed: int = 0


@dataclass(frozen=True)
class VerifyReport:
    """(wallet, checkpoint trade_count, production trade count) of each mismatch, and whether
    those wallets were reset to be fetched again. `missing_tables`: what verify could not read
    (it creates nothing); `notes`: why a reset was not done."""

    mismatches: tuple[tuple[str, int | None, int], ...]
    reset: bool
    missing_tables: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def render(self) -> str:
        if self.missing_tables:
            return (
                f"verify: nothing to check, missing tables {', '.join(self.missing_tables)} "
                "(verify creates nothing; the next run does)"
            )
        if not self.mismatches:
            return "verify: every done wallet's trades are in production"
        action = "reset, the next run fetches them again" if self.reset else "not reset"
        lines = [f"verify: {len(self.mismatches)} done wallets differ from production ({action}):"]
        lines += [f"  {w}  checkpoint {c}  production {p}" for w, c, p in self.mismatches[:50]]
        if len(self.mismatches) > 50:
            lines.append(f"  ... and {len(self.mismatches) - 50} more")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadFiles:
    """One kind's staging files, split by how the engine loads them."""

    uris: list[str] = field(default_factory=list)  # remote (gs://): the engine reads them itself
    paths: list[str] = field(default_factory=list)  # local files, absolute


def check_files(
    run_id: str, files: Mapping[str, Sequence[str]], remote_schemes: tuple[str, ...] = ()
) -> dict[str, LoadFiles]:
    """Validate the kinds and that every local file exists, before anything touches the warehouse.

    A file starting with one of `remote_schemes` is checked by the engine's own load. Rejects are
    staged for inspection only and never committed, so their files are accepted and not loaded.
    """
    unknown = sorted(set(files) - set(STAGED_KINDS))
    if unknown:
        raise ValueError(
            f"run {run_id}: unknown staging kinds {unknown}; "
            f"expected some of {sorted(STAGED_KINDS)}"
        )
    checked: dict[str, LoadFiles] = {}
    for kind in sql.COMMITTED_KINDS:
        kind_files = files.get(kind, ())
        if isinstance(kind_files, str):
            raise TypeError(f"run {run_id}: files[{kind!r}] must be a list of paths, not a str")
        remote, paths = [], []
        for name in kind_files:
            if remote_schemes and name.startswith(remote_schemes):
                remote.append(name)
            else:
                paths.append(str(Path(name).absolute()))
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise CommitError(f"run {run_id}: {kind} staging files are missing: {missing}")
        checked[kind] = LoadFiles(remote, paths)
    return checked


def load_failed(run_id: str, kind: str, exc: BaseException) -> CommitError:
    return CommitError(
        f"run {run_id}: loading its {kind} staging files failed, nothing was committed: {exc}"
    )


def transaction_failed(run_id: str, exc: BaseException) -> CommitError:
    return CommitError(
        f"run {run_id}: the commit transaction failed and was rolled back "
        f"(production and checkpoint untouched; commit it again once fixed): {exc}"
    )


def check_params(statement: sql.Statement, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """`params` as a dict, if they are exactly the parameters `statement` declares."""
    params = dict(params or {})
    if set(params) != set(statement.param_names):
        raise TypeError(
            f"statement {statement.name} takes {statement.param_names}, got {sorted(params)}"
        )
    return params


def commit_time(committed_at: dt.datetime | None) -> dt.datetime:
    """The runs row's committed_at: now (UTC) unless given, and never a naive timestamp."""
    if committed_at is None:
        return dt.datetime.now(dt.UTC)
    if committed_at.tzinfo is None:
        raise ValueError("committed_at must be timezone-aware (UTC)")
    return committed_at


@dataclass(frozen=True)
class StatusPlan:
    """Which status statements can run, given the tables and columns that exist."""

    statements: tuple[sql.Statement, ...]
    missing_tables: tuple[str, ...]
    notes: tuple[str, ...]


def status_plan(tables: TableNames, columns: Mapping[str, set[str] | None]) -> StatusPlan:
    """`columns` maps each TableNames field to its table's column names, None if it is missing."""
    names = tables.as_dict()
    missing = tuple(names[key] for key in names if columns.get(key) is None)
    runnable, notes = [], []
    for statement in STATUS_STATEMENTS:
        reads = STATUS_READS[statement.name]
        if any(columns.get(key) is None for key in reads):
            continue
        lacking = [
            f"{names[key]}.{column}"
            for key, needed in reads.items()
            for column in needed
            if column not in (columns[key] or set())
        ]
        if lacking:
            notes.append(
                f"{statement.name}: {', '.join(lacking)} missing (a table from before sources; "
                "the next run adds the columns)"
            )
            continue
        runnable.append(statement)
    return StatusPlan(tuple(runnable), missing, tuple(notes))


def status_params(statement: sql.Statement, last_runs: int) -> dict[str, Any]:
    limits = {
        sql.STATUS_FAILED_WALLETS.name: FAILED_WALLETS_LISTED,
        sql.STATUS_LAST_RUNS.name: last_runs,
    }
    return {"limit": limits[statement.name]} if statement.param_names else {}


def check_last_runs(last_runs: int) -> None:
    if isinstance(last_runs, bool) or not isinstance(last_runs, int) or last_runs < 0:
        raise ValueError(f"last_runs must be a non-negative integer, got {last_runs!r}")


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def status_report(plan: StatusPlan, results: Mapping[str, Sequence[Sequence[Any]]]) -> StatusReport:
    """The report from each runnable status statement's rows (as tuples), keyed by its name."""

    def one(statement: sql.Statement, width: int) -> Sequence[Any]:
        rows = results.get(statement.name)
        return tuple(rows[0]) if rows else (None,) * width

    done, failed, total, percent, remaining = one(sql.STATUS_PROGRESS, 5)
    trades, markets, events = one(sql.STATUS_TOTALS, 3)
    markets_pending, events_pending = one(sql.STATUS_PENDING, 2)
    return StatusReport(
        done_wallets=_int(done),
        failed_wallets=_int(failed),
        total_wallets=_int(total),
        progress_percent=None if percent is None else float(percent),
        remaining_wallets=_int(remaining),
        failed=tuple(FailedWallet(*row) for row in results.get(sql.STATUS_FAILED_WALLETS.name, ())),
        trades_rows=_int(trades),
        markets_rows=_int(markets),
        events_rows=_int(events),
        last_runs=tuple(RunSummary(*row) for row in results.get(sql.STATUS_LAST_RUNS.name, ())),
        markets_pending=_int(markets_pending),
        events_pending=_int(events_pending),
        trades_by_source=tuple(
            (source, int(rows))
            for source, rows in results.get(sql.STATUS_TRADES_BY_SOURCE.name, ())
        ),
        missing_tables=plan.missing_tables,
        notes=plan.notes,
    )


def _epoch(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # warehouse TIMESTAMPs are UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


class Warehouse(abc.ABC):
    """Tables the backfill reads and writes, and the one transactional commit per run.

    Implementations hold no open connection in their state: they are cheap to build and
    picklable, so Beam can ship them to workers.
    """

    # File names starting with one of these are loaded by the engine from where they are.
    remote_schemes: tuple[str, ...] = ()
    _tables: TableNames

    @property
    def tables(self) -> TableNames:
        """The table names this warehouse reads and writes."""
        return self._tables

    # -- what each engine does its own way -------------------------------------------------------

    @abc.abstractmethod
    def ensure_tables(self) -> None:
        """Create every missing table (traders too, but it is never written otherwise) and add
        the columns an older table lacks."""

    @abc.abstractmethod
    def _ensure_traders_table(self) -> None:
        """Create `traders` (and what it lives in) if it is missing; nothing else."""

    @abc.abstractmethod
    def _stream(
        self,
        statement: sql.Statement,
        params: Mapping[str, Any] | None = None,
        *,
        session: Any = None,
    ) -> Iterable[Sequence[Any]]:
        """One statement's result rows (paged where the engine pages), run when called."""

    @abc.abstractmethod
    def _run(self, statement: sql.Statement, params: Mapping[str, Any] | None = None) -> None:
        """Run one statement for its effect."""

    @abc.abstractmethod
    def _table_columns(self) -> dict[str, set[str] | None]:
        """Each TableNames field -> its table's column names, None if the table is missing.
        Only reads: creates nothing (no database file, no dataset)."""

    @abc.abstractmethod
    def _load(self, session: Any, run_id: str, files: Mapping[str, LoadFiles]) -> None:
        """(Re)create the run's load tables, empty, and load its files into them; CommitError
        (nothing committed) when a file cannot be loaded."""

    @abc.abstractmethod
    def _transaction(
        self, session: Any, run_id: str, committed_at: dt.datetime
    ) -> tuple[int, int, int]:
        """Run sql.COMMIT_STATEMENTS on the load tables in one transaction; return the rows
        inserted/merged into trades, markets and events. CommitError after a rollback."""

    @abc.abstractmethod
    def _drop_load_tables(self, session: Any, run_id: str) -> None:
        """Drop the run's load tables; best effort (a failure is logged, never raised)."""

    @contextlib.contextmanager
    def _commit_session(self) -> Iterator[Any]:
        """What the steps of one commit share (DuckDB: one connection, whose file lock makes
        the commit exclusive); by default nothing."""
        yield None

    def _read_all(
        self, queries: Mapping[str, tuple[sql.Statement, Mapping[str, Any]]]
    ) -> dict[str, list[tuple[Any, ...]]]:
        """The rows of several independent statements, by name (an engine may run them at once)."""
        return {
            name: [tuple(row) for row in self._stream(statement, params)]
            for name, (statement, params) in queries.items()
        }

    # -- reads -----------------------------------------------------------------------------------

    def read_traders(self) -> Iterator[str | None]:
        """The raw `wallet_address` values of `traders`, as stored (null or garbage included)."""
        rows = self._stream(sql.SELECT_TRADERS)
        return (row[0] for row in rows)

    def read_done_wallets(self) -> Iterator[str]:
        """Wallets whose trades are in production (`completed AND upload_successful`)."""
        rows = self._stream(sql.SELECT_DONE_WALLETS)
        return (row[0] for row in rows)

    def committed_run_ids(self) -> set[str]:
        """Ids of every run whose commit succeeded."""
        return {row[0] for row in self._stream(sql.SELECT_COMMITTED_RUN_IDS)}

    def read_checkpoint_states(self) -> Iterator[tuple[str, bool, float | None, float | None]]:
        """(wallet, done, last_trade_at, last_refreshed_at) per checkpoint row, times in unix s."""
        for wallet, done, last_trade_at, last_refreshed_at in self._stream(
            sql.SELECT_CHECKPOINT_STATES
        ):
            yield wallet, bool(done), _epoch(last_trade_at), _epoch(last_refreshed_at)

    def read_known_markets(self) -> Iterator[tuple[str, str | None, float | None]]:
        """(condition_id, status, updated_at unix s) of every market in production."""
        for key, status, updated_at in self._stream(sql.SELECT_KNOWN_MARKETS):
            yield key, status, _epoch(updated_at)

    def read_known_events(self) -> Iterator[tuple[str, str | None, float | None]]:
        """(event_slug, status, updated_at unix s) of every event in production."""
        for key, status, updated_at in self._stream(sql.SELECT_KNOWN_EVENTS):
            yield key, status, _epoch(updated_at)

    def read_unlanded_markets(self) -> Iterator[tuple[str, str | None]]:
        """(condition_id, market_slug) of each market production's trades name and its markets
        table lacks (one slug per id): a later run asks for them again, which retries them."""
        yield from (
            (condition_id, slug) for condition_id, slug in self._stream(sql.SELECT_UNLANDED_MARKETS)
        )

    def read_unlanded_events(self) -> Iterator[tuple[str]]:
        """(event_slug,) of each non-empty event slug production's trades or markets name and
        its events table lacks."""
        yield from ((event_slug,) for (event_slug,) in self._stream(sql.SELECT_UNLANDED_EVENTS))

    # -- writes ----------------------------------------------------------------------------------

    def add_traders(self, wallets: Iterable[str]) -> int:
        """Append to `traders` the given addresses it does not hold yet; return how many.

        `wallets` must be normalised addresses (lowercase 0x + 40 hex); repeats count once. What
        `traders` holds is compared after the same normalisation, so a row stored in another
        case or without its 0x is not added again. Values travel as one array parameter per
        batch, never in SQL text; the table is created if missing.
        """
        from transforms.read_wallets import normalize_wallet  # the pipeline's one address rule

        wanted = list(dict.fromkeys(wallets))
        malformed = [w for w in wanted if normalize_wallet(w)[0] != w]
        if malformed:
            raise ValueError(f"not normalised wallet addresses: {malformed[:5]}")
        self._ensure_traders_table()
        held = {normalize_wallet(raw)[0] for raw in self.read_traders()}
        new = [w for w in wanted if w not in held]
        for start in range(0, len(new), TRADERS_BATCH):
            self._run(sql.INSERT_TRADERS, {"wallets": new[start : start + TRADERS_BATCH]})
        return len(new)

    def commit_run(
        self,
        run_id: str,
        files: Mapping[str, Sequence[str]],
        *,
        committed_at: dt.datetime | None = None,
    ) -> CommitReport:
        """Load the run's staging files and land them in one transaction (design.md, step 3).

        `files` maps a staging kind to that run's NDJSON files; `committed_at` (default: now,
        UTC) is recorded in the runs table. Idempotent: a run already in the runs table is
        skipped, and the statements themselves land nothing twice. Raises CommitError after a
        rollback; the run's load tables are dropped either way.
        """
        validate_run_id(run_id)
        checked = check_files(run_id, files, self.remote_schemes)
        committed_at = commit_time(committed_at)
        with self._commit_session() as session:
            if self._run_row(session, run_id) is not None:
                return CommitReport(run_id, already_committed=True)
            try:
                self._load(session, run_id, checked)
                inserted, markets, events = self._transaction(session, run_id, committed_at)
                run_row = self._run_row(session, run_id)
            finally:
                self._drop_load_tables(session, run_id)
        assert run_row is not None  # the transaction just inserted it (or a twin did)
        _, _, wallets_done, wallets_failed, *_ = run_row
        return CommitReport(
            run_id,
            already_committed=False,
            trades_inserted=inserted,
            markets_merged=markets,
            events_merged=events,
            wallets_done=wallets_done or 0,
            wallets_failed=wallets_failed or 0,
        )

    def _run_row(self, session: Any, run_id: str) -> tuple[Any, ...] | None:
        rows = [
            tuple(row) for row in self._stream(sql.SELECT_RUN, {"run_id": run_id}, session=session)
        ]
        return rows[0] if rows else None

    # -- monitoring: only reads ------------------------------------------------------------------

    def status(self, last_runs: int = 5) -> StatusReport:
        """The monitoring numbers of design.md, production totals, pending markets and events,
        trades per source and the last runs. Only reads: a missing table is named in the
        report (`missing_tables`) and the numbers that need it are left out, never created."""
        check_last_runs(last_runs)
        plan = status_plan(self.tables, self._table_columns())
        queries = {s.name: (s, status_params(s, last_runs)) for s in plan.statements}
        results = self._read_all(queries) if queries else {}
        return status_report(plan, results)

    def verify(self, reset: bool = True) -> VerifyReport:
        """Done wallets whose production trade count differs from the checkpoint's; with
        `reset`, they are made pending so that the next run fetches them whole again.

        Creates and alters no table: with the checkpoint or trades missing there is nothing to
        verify, and a checkpoint older than the reset's columns is reported, not reset."""
        columns = self._table_columns()
        names = self.tables.as_dict()
        missing = tuple(names[key] for key in ("checkpoint", "trades") if columns.get(key) is None)
        if missing:
            return VerifyReport(mismatches=(), reset=False, missing_tables=missing)
        mismatches = tuple(
            (wallet, checkpoint_count, int(production_count))
            for wallet, checkpoint_count, production_count in self._stream(sql.VERIFY_MISMATCHES)
        )
        lacking = [c for c in VERIFY_RESET_COLUMNS if c not in (columns["checkpoint"] or set())]
        if reset and mismatches and lacking:
            note = (
                f"not reset: {names['checkpoint']} lacks {', '.join(lacking)} "
                "(the next run adds the columns; verify again after it)"
            )
            return VerifyReport(mismatches=mismatches, reset=False, notes=(note,))
        if reset and mismatches:
            reason = "verify: production's trade count differed from the checkpoint's; refetching"
            self._run(
                sql.VERIFY_RESET,
                {"reason": reason, "wallets": [wallet for wallet, _, _ in mismatches]},
            )
        return VerifyReport(mismatches=mismatches, reset=reset and bool(mismatches))

    def close(self) -> None:  # noqa: B027 - optional hook: implementations may hold nothing
        """Release resources; implementations that keep no connection need not override."""

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
