"""The `Warehouse` interface, and the half of every engine that does not depend on the engine.

The commit's skeleton (validate, check the files, skip a run already committed, load, one
transaction, clean up, report), `status`, `verify` and the typed reads live here once; an engine
(`DuckDBWarehouse`, `BigQueryWarehouse`) supplies only what differs: running a statement, streaming
its rows, listing a table's columns, loading the run's files into its load tables and running the
commit transaction. A run's *load tables* (`_stg_<run>_<hash>_<kind>`, one set per commit attempt)
are the warehouse's copy of its staging files for the length of one commit; "staging" is the files.
The lease (one row of the lease table) is how one backfill at a time holds a warehouse: taken at
start-up, given back after the commit, and written first by every commit transaction, so that two
commits at once conflict instead of both landing.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline import failpoints
from pipeline.schema import RUN_COLUMNS, STAGED_KINDS
from pipeline.status_report import FailedWallet, RunSummary, StatusReport
from pipeline.warehouse import sql
from pipeline.warehouse.sql import TableNames, validate_run_id

log = logging.getLogger(__name__)

# How many failed wallets `status` lists (the total is always reported).
FAILED_WALLETS_LISTED = 50
# Addresses per INSERT of `add_traders` (one array parameter each).
TRADERS_BATCH = 10_000
# How many runs must find a market or event missing at the source before it counts as missing
# there and runs stop asking for it: one answer without it could be a lookup's bad moment (an
# index lagging behind). A failed lookup never counts: it is an error, retried until it lands or
# is found missing.
MISSING_AFTER = 3
# ... and their sightings must span this long: a crash, the start-up that recovers it and a rerun
# are three runs seconds apart, and a market Gamma lists an hour late was given up for good.
MISSING_SPAN_S = 24 * 3600
# A key missing at the source is asked for again once its last sighting is this old: a source
# that lists it late is found within a week (a key still missing is sighted again and skipped
# another week: one batch share and one slug request a week per such key).
MISSING_RECHECK_S = 7 * 24 * 3600


def missing_params(now: float | None = None) -> dict[str, int]:
    """The parameters of sql.MISSING_PARAMS at `now` (unix seconds; default: this clock)."""
    now = time.time() if now is None else now
    return {
        "missing_after": MISSING_AFTER,
        "missing_span_s": MISSING_SPAN_S,
        "missing_since": int(now - MISSING_RECHECK_S),
    }


# The most wallets a commit lists in its @wallets array parameter (sql.WALLETS), the filter that
# lets BigQuery prune production's blocks by clustering. BigQuery takes a query request of up to
# 10 MB "including additional properties like query parameters" (quotas, query jobs): one address
# is about 57 bytes of request JSON (`{"value": "0x..."}`, 42 characters), so 50,000 of them are
# about 2.9 MB, beside a commit script of some 40 KB. A run with more successful wallets than this
# commits with sql.COMMIT_STATEMENTS_UNPRUNED: the same rows land, but production is read whole
# (its filters are subqueries, which BigQuery cannot prune with). Runs are bounded by their
# budget (`--max_wallets`, `--max_run_minutes`), so that is the exception, logged when it happens.
WALLETS_LISTED_AT_MOST = 50_000

# What each status statement reads: table (a TableNames field) -> the columns it needs that a
# table made before they existed may lack. Status runs only the statements whose tables exist.
# Every column each status statement reads, per table role: a table that lacks one (an older
# version's, or not the backfill's at all: a wrong --*_table) skips that statement with a note
# naming the columns; it used to end `status` in the engine's binder error.
_DONE = ("wallet_address", "completed", "upload_successful")
_UNLANDED = {
    "trades": ("condition_id", "market_slug", "event_slug"),
    "markets": ("condition_id", "event_slug"),
    "events": ("event_slug",),
}
STATUS_READS: dict[str, dict[str, tuple[str, ...]]] = {
    sql.STATUS_PROGRESS.name: {"checkpoint": _DONE, "traders": ("wallet_address",)},
    sql.STATUS_TO_DO.name: {"checkpoint": _DONE, "traders": ("wallet_address",)},
    sql.STATUS_FAILED_WALLETS.name: {
        "checkpoint": (*_DONE, "trade_count", "processed_at", "error")
    },
    sql.STATUS_TOTALS.name: {"trades": (), "markets": (), "events": ()},
    sql.STATUS_LAST_RUNS.name: {"runs": tuple(column.name for column in RUN_COLUMNS)},
    sql.STATUS_PENDING.name: _UNLANDED,
    sql.STATUS_MISSING.name: {**_UNLANDED, "missing": ("kind", "key", "run_id", "seen_at")},
    sql.STATUS_CURRENCY.name: {"checkpoint": (*_DONE, "error", "last_refreshed_at")},
    sql.STATUS_TRADES_BY_SOURCE.name: {"trades": ("source",)},
    sql.STATUS_LEASE.name: {"lease": ("lease_name", "holder", "expires_at")},
}
STATUS_STATEMENTS: tuple[sql.Statement, ...] = (
    sql.STATUS_PROGRESS,
    sql.STATUS_TO_DO,
    sql.STATUS_FAILED_WALLETS,
    sql.STATUS_TOTALS,
    sql.STATUS_LAST_RUNS,
    sql.STATUS_PENDING,
    sql.STATUS_MISSING,
    sql.STATUS_TRADES_BY_SOURCE,
    sql.STATUS_LEASE,
    sql.STATUS_CURRENCY,
)
# The checkpoint columns `verify`'s reset writes that a checkpoint table older than them lacks.
VERIFY_RESET_COLUMNS = ("error", "last_trade_at", "last_refreshed_at")


class WarehouseUnreadable(RuntimeError):
    """The warehouse cannot be opened at all (a DuckDB file that is empty, cut short or
    corrupt): the command that asked ends in one line saying so, not a traceback."""


class CommitError(RuntimeError):
    """A run's commit failed and was rolled back: production and checkpoint are untouched."""


@dataclass(frozen=True)
class CommitReport:
    """What one `commit_run` did; all zeros (but wallet counts) when it changed nothing.

    `trades_inserted`, `markets_merged` and `events_merged` are rows the statements changed;
    `wallets_done` / `wallets_failed` are the run's staged outcomes, as its runs row records.
    `nothing_to_commit`: every staging file was empty, so the warehouse was not touched at all
    (no load table, no job, no transaction, no runs row; the run is not in `committed_run_ids`,
    and its staging marker is what records that it is done).
    """

    run_id: str
    already_committed: bool
    trades_inserted: int = 0
    markets_merged: int = 0
    events_merged: int = 0
    wallets_done: int = 0
    wallets_failed: int = 0
    nothing_to_commit: bool = False


@dataclass(frozen=True)
class Lease:
    """The warehouse's lease row as read: who holds it, since and until when (UTC), and whether
    it is held now by the warehouse's own clock (`held` is False once it has expired)."""

    holder: str | None
    acquired_at: dt.datetime | None
    expires_at: dt.datetime | None
    held: bool

    def describe(self) -> str:
        """One line for an operator: who holds the backfill's lease, and until when."""
        if not self.held:
            return "the backfill lease is free"
        until = self.expires_at.isoformat() if self.expires_at else "?"
        since = self.acquired_at.isoformat() if self.acquired_at else "?"
        return f"the backfill lease is held by {self.holder} since {since}, until {until}"


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found, and what it repaired.

    `duplicates`: (wallet, trade id, copies) of each id production holds more than once.
    `mismatches`: (wallet, checkpoint trade_count, production rows, production distinct ids) of
    each done wallet whose count differs from production's or whose rows repeat an id.
    `reset`: whether the repair ran (one transaction): `duplicates_removed` rows deleted so that
    each id is held once, and `reset_wallets` made pending (their checkpoint count differed from
    production's after that), with their trade_count set to production's. `missing_tables`: what
    verify could not read (it creates nothing); `notes`: why a repair was not done.
    """

    mismatches: tuple[tuple[str, int | None, int, int], ...]
    reset: bool
    missing_tables: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    duplicates: tuple[tuple[str, str, int], ...] = ()
    duplicates_removed: int = 0
    reset_wallets: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """Nothing found: every id once, every done wallet's count is production's."""
        return not self.mismatches and not self.duplicates and not self.missing_tables

    def render(self) -> str:
        if self.missing_tables:
            return (
                f"verify: nothing to check, missing tables {', '.join(self.missing_tables)} "
                "(verify creates nothing; the next run does)"
            )
        if self.clean:
            return "verify: every done wallet's trades are in production, each trade once"
        lines: list[str] = []
        if self.duplicates:
            copies = sum(n - 1 for _, _, n in self.duplicates)
            action = (
                f"removed {self.duplicates_removed} copies, each id is held once now"
                if self.reset
                else "not removed"
            )
            lines.append(
                f"verify: {len(self.duplicates)} trade ids are held more than once in production "
                f"({copies} extra rows; {action}):"
            )
            lines += [f"  {w}  {i}  copies {n}" for w, i, n in self.duplicates[:50]]
            if len(self.duplicates) > 50:
                lines.append(f"  ... and {len(self.duplicates) - 50} more")
        if self.mismatches:
            if self.reset:
                action = (
                    f"{len(self.reset_wallets)} reset, the next run fetches them again; "
                    "the others only held copies"
                )
            else:
                action = "not reset"
            lines.append(
                f"verify: {len(self.mismatches)} done wallets differ from production ({action}):"
            )
            lines += [
                f"  {w}  checkpoint {c}  production rows {r}  distinct ids {i}"
                for w, c, r, i in self.mismatches[:50]
            ]
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


def nothing_to_commit(files: Mapping[str, LoadFiles]) -> bool:
    """True when every committed kind's files are local and empty (or there are none): the run
    fetched nothing and failed nothing, and committing it would change nothing. Remote files
    are not looked at (that would cost a request each): they count as something to commit."""
    return all(
        not load.uris and all(Path(path).stat().st_size == 0 for path in load.paths)
        for load in files.values()
    )


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
                f"{statement.name}: {', '.join(lacking)} missing (an older table gains them "
                "at the next run; a table that is not the backfill's, never: check --*_table)"
            )
            continue
        runnable.append(statement)
    return StatusPlan(tuple(runnable), missing, tuple(notes))


def status_params(statement: sql.Statement, last_runs: int) -> dict[str, Any]:
    if statement.name == sql.STATUS_LEASE.name:
        return {"lease_name": sql.LEASE_NAME}
    if statement.name == sql.STATUS_MISSING.name:
        return missing_params()
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
    valid, to_do = one(sql.STATUS_TO_DO, 2)
    trades, markets, events = one(sql.STATUS_TOTALS, 3)
    markets_unlanded, events_unlanded = one(sql.STATUS_PENDING, 2)
    # A warehouse from before the missing table: every unlanded key is pending, none is missing.
    markets_missing, events_missing = one(sql.STATUS_MISSING, 2)
    lease_holder, lease_expires_at = one(sql.STATUS_LEASE, 2)
    refresh_failing, oldest_fetch_at = one(sql.STATUS_CURRENCY, 2)
    return StatusReport(
        refresh_failing=_int(refresh_failing),
        oldest_fetch_at=oldest_fetch_at,
        done_wallets=_int(done),
        failed_wallets=_int(failed),
        total_wallets=_int(total),
        progress_percent=None if percent is None else float(percent),
        remaining_wallets=_int(remaining),
        valid_wallets=_int(valid),
        wallets_to_do=_int(to_do),
        failed=tuple(FailedWallet(*row) for row in results.get(sql.STATUS_FAILED_WALLETS.name, ())),
        trades_rows=_int(trades),
        markets_rows=_int(markets),
        events_rows=_int(events),
        last_runs=tuple(RunSummary(*row) for row in results.get(sql.STATUS_LAST_RUNS.name, ())),
        markets_pending=_minus(markets_unlanded, markets_missing),
        events_pending=_minus(events_unlanded, events_missing),
        markets_missing=_int(markets_missing),
        events_missing=_int(events_missing),
        trades_by_source=tuple(
            (source, int(rows))
            for source, rows in results.get(sql.STATUS_TRADES_BY_SOURCE.name, ())
        ),
        lease_holder=lease_holder,
        lease_expires_at=lease_expires_at,
        missing_tables=plan.missing_tables,
        notes=plan.notes,
    )


def _minus(unlanded: Any, missing: Any) -> int | None:
    """Unlanded keys still pending: those not missing at the source (all, if that is unknown)."""
    if unlanded is None:
        return None
    return int(unlanded) - (0 if missing is None else int(missing))


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
    # A run with more successful wallets commits without listing them (WALLETS_LISTED_AT_MOST).
    wallets_listed_at_most: int = WALLETS_LISTED_AT_MOST
    # True when a commit's load tables are the committing session's own (DuckDB's temporary
    # tables): loading changes nothing anyone else sees, so the staging's self-check may ask
    # what was loaded, as long as it passes before the transaction (`commit_run`'s
    # `before_transaction`). False (BigQuery: load tables are tables of the dataset): the
    # check reads the files first, and a refused run never reaches the warehouse at all.
    loads_privately: bool = False
    _tables: TableNames

    @property
    def tables(self) -> TableNames:
        """The table names this warehouse reads and writes."""
        return self._tables

    # -- what each engine does its own way -------------------------------------------------------

    @abc.abstractmethod
    def ensure_tables(self) -> None:
        """Create every missing table (traders too, but it is never written otherwise), add
        the columns an older table lacks, and make the lease row if it is missing."""

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
        run_id: str | None = None,
        nonce: str = "",
    ) -> Iterable[Sequence[Any]]:
        """One statement's result rows (paged where the engine pages), run when called;
        `run_id` and `nonce` name the load tables it reads, if any."""

    @abc.abstractmethod
    def _run(self, statement: sql.Statement, params: Mapping[str, Any] | None = None) -> None:
        """Run one statement for its effect."""

    @abc.abstractmethod
    def _table_columns(self) -> dict[str, set[str] | None]:
        """Each TableNames field -> its table's column names, None if the table is missing.
        Only reads: creates nothing (no database file, no dataset)."""

    @abc.abstractmethod
    def _load(self, session: Any, run_id: str, files: Mapping[str, LoadFiles], nonce: str) -> None:
        """(Re)create the run's load tables (named by run_id and this attempt's `nonce`), empty,
        and load its files into them; CommitError (nothing committed) when a file cannot be
        loaded."""

    @abc.abstractmethod
    def _transaction(
        self,
        session: Any,
        run_id: str,
        committed_at: dt.datetime,
        nonce: str,
        wallets: Sequence[str] | None = None,
    ) -> tuple[int, int, int] | None:
        """In one transaction: sql.COMMIT_LOCK first, then sql.RUN_COMMITTED; if the run is
        committed already (a twin got there first) roll back and return None, else run
        sql.commit_statements on the load tables, commit and return the rows inserted/merged
        into trades, markets and events. `wallets`: the run's successful wallets, the @wallets
        that production trades are read for (None: too many to list, read by subquery). A
        conflict with a concurrent commit is retried (the retry then finds the twin's run).
        CommitError after a rollback."""

    @abc.abstractmethod
    def _drop_load_tables(self, session: Any, run_id: str, nonce: str) -> None:
        """Drop the run's load tables; best effort (a failure is logged, never raised)."""

    @abc.abstractmethod
    def _in_transaction(self, steps: Sequence[tuple[sql.Statement, Mapping[str, Any]]]) -> None:
        """Run the statements, each with its parameters, in one transaction (all or nothing)."""

    @abc.abstractmethod
    def _load_table_names(self) -> list[str]:
        """The names of every table with the load table prefix (empty if there is no warehouse
        yet; creates nothing)."""

    @abc.abstractmethod
    def _drop_table(self, name: str) -> None:
        """Drop one load table found by `_load_table_names` (sql.drop_orphan_load_table)."""

    def prepare_commit(self) -> None:  # noqa: B027 - optional hook: most engines need nothing
        """Makes ahead of time, in this process, what a commit would make first (DuckDB: the
        translations of its statements); touches no table. By default nothing."""

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

    def read_missing_markets(self) -> Iterator[tuple[str]]:
        """(condition_id,) of each market missing at the source (sql._missing_at_source; landed
        or not: the graph drops only those production does not hold)."""
        yield from self._missing_at_source(sql.MISSING_MARKETS)

    def read_missing_events(self) -> Iterator[tuple[str]]:
        """(event_slug,) of each event missing at the source (sql._missing_at_source)."""
        yield from self._missing_at_source(sql.MISSING_EVENTS)

    def _missing_at_source(self, kind: str) -> Iterator[tuple[str]]:
        params = {"kind": kind, **missing_params()}
        yield from ((key,) for (key,) in self._stream(sql.SELECT_MISSING_AT_SOURCE, params))

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
        before_transaction: Callable[[int], object] | None = None,
    ) -> CommitReport:
        """Load the run's staging files and land them in one transaction (design.md, step 3).

        `files` maps a staging kind to that run's NDJSON files; `committed_at` (default: now,
        UTC) is recorded in the runs table. Idempotent: a run already in the runs table is
        skipped, and the transaction checks that again after its first statement (a write to
        the lease row, so that two commits at once conflict): of two commits of one run racing,
        one lands and the other changes nothing and reports `already_committed`. A run whose
        staging files are all empty changes nothing at all (`nothing_to_commit`). Between the
        load and the transaction, one small query reads the run's successful wallets: the
        transaction reads production trades for those only, as the @wallets array parameter
        that BigQuery prunes clustered blocks with (more than `wallets_listed_at_most`: by
        subquery, unpruned, the same result). Raises CommitError after a rollback; the load
        tables of this attempt are dropped either way. `before_transaction`: called once the
        files are loaded, before anything else, with the number of the run's wallets whose
        loaded trades disagree with their outcome (sql.LOADED_COUNTS_DISAGREE, asked only
        then); what it raises ends the commit there (the load tables dropped, production
        untouched) and propagates.
        """
        validate_run_id(run_id)
        checked = check_files(run_id, files, self.remote_schemes)
        committed_at = commit_time(committed_at)
        if nothing_to_commit(checked):
            return CommitReport(run_id, already_committed=False, nothing_to_commit=True)
        # One name per attempt for the load tables: a twin committing the same run at the same
        # time loads into its own, and never replaces this attempt's half-loaded rows.
        nonce = secrets.token_hex(4)
        with self._commit_session() as session:
            if self._run_row(session, run_id) is not None:
                return CommitReport(run_id, already_committed=True)
            try:
                self._load(session, run_id, checked, nonce)
                failpoints.reached(failpoints.LOADED)
                if before_transaction is not None:
                    before_transaction(self._loaded_counts_disagree(session, run_id, nonce))
                wallets = self._landing_wallets(session, run_id, nonce)
                try:
                    counts = self._transaction(session, run_id, committed_at, nonce, wallets)
                except CommitError:
                    if not self._committed_meanwhile(session, run_id):
                        raise
                    counts = None  # a twin committed the run while this attempt failed
                if counts is None:
                    return CommitReport(run_id, already_committed=True)
                failpoints.reached(failpoints.TRANSACTION_COMMITTED)
                run_row = self._run_row(session, run_id)
            finally:
                self._drop_load_tables(session, run_id, nonce)
        inserted, markets, events = counts
        assert run_row is not None  # the transaction just inserted it
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

    def _landing_wallets(self, session: Any, run_id: str, nonce: str) -> list[str] | None:
        """The loaded run's successful wallets, sorted: those whose trades the commit lands, and
        the only ones it reads production trades for. None when there are more than
        `wallets_listed_at_most` (then the commit reads production for them by subquery)."""
        limit = self.wallets_listed_at_most
        rows = self._stream(
            sql.SELECT_LANDING_WALLETS,
            {"limit": limit + 1},
            session=session,
            run_id=run_id,
            nonce=nonce,
        )
        wallets = sorted(row[0] for row in rows)
        if len(wallets) > limit:
            log.warning(
                "run %s: more than %d successful wallets, too many to list in the commit's "
                "query: it reads production trades whole (no block pruning) this time",
                run_id,
                limit,
            )
            return None
        return wallets

    def _loaded_counts_disagree(self, session: Any, run_id: str, nonce: str) -> int:
        rows = self._stream(sql.LOADED_COUNTS_DISAGREE, session=session, run_id=run_id, nonce=nonce)
        return int(next(iter(rows))[0])

    def _committed_meanwhile(self, session: Any, run_id: str) -> bool:
        """After a failed transaction: whether the run is committed now (by a twin whose
        transaction won). A failure to read says no: the original error is the one to report."""
        try:
            return self._run_row(session, run_id) is not None
        except Exception as exc:  # the transaction's error matters more than this one
            log.warning("run %s: could not read whether a twin committed it: %s", run_id, exc)
            return False

    def _run_row(self, session: Any, run_id: str) -> tuple[Any, ...] | None:
        rows = [
            tuple(row) for row in self._stream(sql.SELECT_RUN, {"run_id": run_id}, session=session)
        ]
        return rows[0] if rows else None

    # -- one backfill at a time: the lease -------------------------------------------------------

    def acquire_lease(self, holder: str, ttl_seconds: float) -> bool:
        """Take the warehouse's lease for `holder` (e.g. the run id) for `ttl_seconds`, if it is
        free, expired or already `holder`'s (then it is renewed); True if `holder` holds it now.

        One MERGE decides, by the warehouse's clock, so two callers cannot both win. On False,
        `read_lease()` says who holds it and until when (`Lease.describe()` for a message).
        """
        if not isinstance(holder, str) or not holder:
            raise ValueError(f"lease holder must be a non-empty string, got {holder!r}")
        if isinstance(ttl_seconds, bool) or not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        params = {
            "lease_name": sql.LEASE_NAME,
            "holder": holder,
            "ttl_ms": round(ttl_seconds * 1000),
        }
        self._run(sql.LEASE_ACQUIRE, params)
        lease = self.read_lease()
        return lease is not None and lease.held and lease.holder == holder

    def read_lease(self) -> Lease | None:
        """The lease row, or None before `ensure_tables` made it."""
        rows = [
            tuple(row) for row in self._stream(sql.SELECT_LEASE, {"lease_name": sql.LEASE_NAME})
        ]
        if not rows:
            return None
        holder, acquired_at, expires_at, held = rows[0]
        return Lease(holder, acquired_at, expires_at, bool(held))

    def traders_without_addresses(self) -> str | None:
        """The traders table's name if it has no `wallet_address` column (the users' table,
        which `ensure_tables` never alters: a wrong --traders_table), else None. Only reads."""
        columns = self._table_columns().get("traders")
        if columns is not None and "wallet_address" not in columns:
            return self.tables.traders
        return None

    def has_lease_table(self) -> bool:
        """Whether the lease table exists (a warehouse made before it lacks it until the next
        `ensure_tables`). Only reads."""
        return self._table_columns().get("lease") is not None

    def release_lease(self, holder: str) -> None:
        """Give the lease back, if `holder` holds it; a lease someone else took since (after it
        expired) is left alone."""
        self._run(sql.LEASE_RELEASE, {"lease_name": sql.LEASE_NAME, "holder": holder})

    def drop_orphan_load_tables(self) -> list[str]:
        """Drop every load table (`_stg_...`) and return their names: what commits killed
        before their cleanup left behind. Call it at start-up while holding the lease, so that
        no other backfill's commit is using one. Creates nothing."""
        names = sorted(self._load_table_names())
        for name in names:
            log.warning("dropping load table %s, left by a commit that did not finish", name)
            self._drop_table(name)
        return names

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
        """Trade ids production holds more than once, and done wallets whose trade count in
        production differs from the checkpoint's; with `reset`, both are repaired in one
        transaction: each duplicated id is kept once (its earliest fetch), then the done wallets
        whose count still differs are made pending (so the next run fetches them whole again)
        with production's count. Without `reset` it only reads.

        Creates and alters no table: with the checkpoint or trades missing there is nothing to
        verify, and a checkpoint older than the reset's columns is reported, not repaired."""
        columns = self._table_columns()
        names = self.tables.as_dict()
        missing = tuple(names[key] for key in ("checkpoint", "trades") if columns.get(key) is None)
        if missing:
            return VerifyReport(mismatches=(), reset=False, missing_tables=missing)
        found = self._read_all(
            {
                "duplicates": (sql.VERIFY_DUPLICATES, {}),
                "mismatches": (sql.VERIFY_MISMATCHES, {}),
            }
        )
        duplicates = tuple((w, i, int(n)) for w, i, n in found["duplicates"])
        mismatches = tuple(
            (w, _int(c), int(rows), int(ids)) for w, c, rows, ids in found["mismatches"]
        )
        report = VerifyReport(mismatches=mismatches, reset=False, duplicates=duplicates)
        if not reset or report.clean:
            return report
        lacking = [c for c in VERIFY_RESET_COLUMNS if c not in (columns["checkpoint"] or set())]
        if lacking:
            note = (
                f"not repaired: {names['checkpoint']} lacks {', '.join(lacking)} "
                "(the next run adds the columns; verify again after it)"
            )
            return dataclasses.replace(report, notes=(note,))
        # After the dedup, production holds `ids` rows of each wallet: those whose checkpoint
        # count differs from that are reset (the statement checks again, in the transaction).
        to_reset = tuple(w for w, c, _, ids in mismatches if c != ids)
        steps: list[tuple[sql.Statement, Mapping[str, Any]]] = []
        if duplicates:
            steps.append((sql.VERIFY_DEDUPLICATE, {}))
        if to_reset:
            reason = "verify: production's trade count differed from the checkpoint's; refetching"
            steps.append((sql.VERIFY_RESET, {"reason": reason, "wallets": list(to_reset)}))
        if steps:
            self._in_transaction(steps)
        return dataclasses.replace(
            report,
            reset=True,
            duplicates_removed=sum(n - 1 for _, _, n in duplicates),
            reset_wallets=to_reset,
        )

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
