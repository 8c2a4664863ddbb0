"""The warehouse the pipeline talks to, and `open_warehouse` to pick an implementation.

The graph and the CLI only see `Warehouse` (in `base`, with the half both engines share); which
engine is behind it (a DuckDB file locally, BigQuery in production) is chosen by a spec string, so
no transform knows where it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.warehouse.base import (
    FAILED_WALLETS_LISTED,
    CommitError,
    CommitReport,
    Lease,
    VerifyReport,
    Warehouse,
    WarehouseUnreadable,
)
from pipeline.warehouse.sql import TableNames, validate_dataset, validate_run_id

__all__ = [
    "FAILED_WALLETS_LISTED",
    "CommitError",
    "CommitReport",
    "Lease",
    "TableNames",
    "VerifyReport",
    "Warehouse",
    "WarehouseRef",
    "WarehouseUnreadable",
    "open_warehouse",
    "parse_warehouse_spec",
    "validate_run_id",
]

WAREHOUSE_KINDS = ("duckdb", "bigquery")
_SPEC_HELP = "use duckdb:PATH (e.g. duckdb:backfill.duckdb) or bigquery:PROJECT.DATASET"


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


@dataclass(frozen=True)
class WarehouseRef:
    """Which warehouse (its spec) and which tables, as one picklable value that the graph's steps
    carry; `open()` builds the warehouse (use it as a context manager)."""

    spec: str
    tables: TableNames

    def open(self) -> Warehouse:
        return open_warehouse(self.spec, self.tables)
