"""The warehouse interface the pipeline talks to, and `open_warehouse` to pick an implementation.

The graph and the CLI only see `Warehouse`; which engine is behind it (a DuckDB file locally,
BigQuery in production) is chosen by a spec string, so no transform knows where it runs.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pipeline.status_report import FailedWallet, RunSummary, StatusReport
from pipeline.warehouse import sql
from pipeline.warehouse.sql import TableNames, validate_dataset, validate_run_id

__all__ = [
    "CommitError",
    "CommitReport",
    "TableNames",
    "VerifyReport",
    "Warehouse",
    "open_warehouse",
    "parse_warehouse_spec",
    "validate_run_id",
]

WAREHOUSE_KINDS = ("duckdb", "bigquery")
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
_SPEC_HELP = "use duckdb:PATH (e.g. duckdb:backfill.duckdb) or bigquery:PROJECT.DATASET"


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
    those wallets were reset to be fetched again."""

    mismatches: tuple[tuple[str, int | None, int], ...]
    reset: bool

    def render(self) -> str:
        if not self.mismatches:
            return "verify: every done wallet's trades are in production"
        action = "reset, the next run fetches them again" if self.reset else "not reset"
        lines = [f"verify: {len(self.mismatches)} done wallets differ from production ({action}):"]
        lines += [f"  {w}  checkpoint {c}  production {p}" for w, c, p in self.mismatches[:50]]
        if len(self.mismatches) > 50:
            lines.append(f"  ... and {len(self.mismatches) - 50} more")
        return "\n".join(lines)


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

    @abc.abstractmethod
    def ensure_tables(self) -> None:
        """Create every missing table (traders too, but it is never written otherwise)."""

    @abc.abstractmethod
    def read_traders(self) -> Iterator[str | None]:
        """The raw `wallet_address` values of `traders`, as stored (null or garbage included)."""

    @abc.abstractmethod
    def read_done_wallets(self) -> Iterator[str]:
        """Wallets whose trades are in production (`completed AND upload_successful`)."""

    @abc.abstractmethod
    def committed_run_ids(self) -> set[str]:
        """Ids of every run whose commit succeeded."""

    @abc.abstractmethod
    def commit_run(
        self,
        run_id: str,
        files: Mapping[str, Sequence[str]],
        *,
        committed_at: dt.datetime | None = None,
    ) -> CommitReport:
        """Load the run's staging files and land them in one transaction (design.md, step 3).

        `files` maps a staging kind to that run's NDJSON files; `committed_at` (default: now,
        UTC) is recorded in the runs table. Idempotent; raises CommitError after a rollback.
        """

    @abc.abstractmethod
    def status(self, last_runs: int = 5) -> StatusReport:
        """The monitoring numbers of design.md, production totals, pending markets and events,
        trades per source and the last runs. Only reads: a missing table is named in the
        report (`missing_tables`) and the numbers that need it are left out, never created."""

    # -- what both implementations share, on top of two primitives -----------------------------

    @abc.abstractmethod
    def _stream(
        self, statement: sql.Statement, params: Mapping[str, Any] | None = None
    ) -> Iterable[Sequence[Any]]:
        """One statement's result rows (paged where the engine pages)."""

    @abc.abstractmethod
    def _run(self, statement: sql.Statement, params: Mapping[str, Any] | None = None) -> None:
        """Run one statement for its effect."""

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

    @abc.abstractmethod
    def _ensure_traders_table(self) -> None:
        """Create `traders` (and what it lives in) if it is missing; nothing else."""

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

    def verify(self, reset: bool = True) -> VerifyReport:
        """Done wallets whose production trade count differs from the checkpoint's; with
        `reset`, they are made pending so that the next run fetches them whole again."""
        mismatches = tuple(
            (wallet, checkpoint_count, int(production_count))
            for wallet, checkpoint_count, production_count in self._stream(sql.VERIFY_MISMATCHES)
        )
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


def parse_warehouse_spec(spec: str) -> tuple[str, str]:
    """Split `duckdb:PATH` or `bigquery:PROJECT.DATASET` into (kind, target), validated."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"warehouse spec {spec!r} has no kind: {_SPEC_HELP}")
    kind, _, target = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in WAREHOUSE_KINDS:
        raise ValueError(f"warehouse kind {kind!r} in {spec!r} is unknown: {_SPEC_HELP}")
    if not target.strip():
        raise ValueError(f"warehouse spec {spec!r} names no {kind} target: {_SPEC_HELP}")
    if kind == "bigquery":
        validate_dataset(target)
    return kind, target


def open_warehouse(spec: str, tables: TableNames = TableNames()) -> Warehouse:  # noqa: B008
    """Build the warehouse a spec names; no connection is opened until a method needs one.

    `bigquery:PROJECT.DATASET` talks to BigQuery with Application Default Credentials, unless
    the environment variable `BIGQUERY_EMULATOR_HOST` is set (e.g. `http://127.0.0.1:9050`):
    then the client goes to that endpoint with anonymous credentials, which is how the tests
    run against bqemulator. The variable is read here, once; the warehouse carries the endpoint
    to the workers it is pickled to.
    """
    kind, target = parse_warehouse_spec(spec)
    if kind == "duckdb":
        from pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse

        return DuckDBWarehouse(target, tables)
    from pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse, emulator_settings

    # A domain-scoped project ("example.com:my-project") has dots; a dataset id has none.
    project, _, dataset = target.rpartition(".")
    return BigQueryWarehouse(project, dataset, tables, **emulator_settings())
