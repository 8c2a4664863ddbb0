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

from pipeline.status_report import StatusReport
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
        """The monitoring numbers of design.md, production totals and the last runs."""

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
