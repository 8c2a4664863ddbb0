"""Seeds `traders` of a local DuckDB warehouse with raw values, for the demo, the benchmarks and
the tests.

`traders` is the job's input, written by people and never by the pipeline. `Warehouse.add_traders`
appends normalised addresses (what `traders add` does); this writes the values exactly as given,
null, padded, mixed-case and malformed ones included, the way a hand-kept table looks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb

from pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from pipeline.warehouse.sql import TableNames


def seed_traders(
    db_path: str | Path,
    values: Iterable[str | None],
    *,
    tables: TableNames = TableNames(),  # noqa: B008 - frozen, validated, immutable
    only_if_empty: bool = False,
) -> bool:
    """Create the warehouse's tables if missing, then append `values` to `traders` as they are.

    With `only_if_empty`, a `traders` that already holds rows is left alone. Returns whether
    the values were written.
    """
    DuckDBWarehouse(db_path, tables).ensure_tables()
    rows = [[value] for value in values]
    with duckdb.connect(str(db_path)) as conn:
        if only_if_empty and conn.execute(f'SELECT COUNT(*) FROM "{tables.traders}"').fetchone()[0]:
            return False
        if rows:
            conn.executemany(f'INSERT INTO "{tables.traders}" (wallet_address) VALUES (?)', rows)
    return True
