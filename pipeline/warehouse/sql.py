"""Every SQL statement of the project, written once in BigQuery's dialect, rendered per warehouse.

Statements are templates whose only holes are table names (`{trades}`, `{stg_outcomes}`, ...):
names are validated identifiers before they are rendered, and every value travels as a named
query parameter (`@name`; DuckDB's `$name` after translation), so no value is ever formatted
into SQL text. Column lists are generated from `pipeline.schema`, so a column is added in one place.
BigQuery gets the text as written (`render`); DuckDB gets sqlglot's translation of the same text
(`render_duckdb`), with translation losses raised instead of silently dropped. The few statements
that only make sense on DuckDB (session setup, loading NDJSON) are written in DuckDB's dialect and
marked so; `render` refuses them.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from pipeline.schema import (
    CHECKPOINT_COLUMNS,
    EVENT_COLUMNS,
    MARKET_COLUMNS,
    RUN_COLUMNS,
    STAGED_KINDS,
    TRADE_COLUMNS,
    TRADERS_COLUMNS,
    Column,
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,1023}")
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# PROJECT.DATASET: a (possibly domain-scoped) project id, then a dataset id.
_DATASET = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]\.[A-Za-z0-9_]{1,1024}")

# The staged kinds the commit transaction reads; rejects are staged for inspection only.
COMMITTED_KINDS: tuple[str, ...] = ("trades", "markets", "events", "outcomes")


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return `name` if it is a plain SQL identifier, else raise ValueError naming it.

    Table names are the only text rendered into SQL, so this check is what keeps SQL injection
    out: no dots, quotes, spaces or semicolons can get through.
    """
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not a valid table name: use letters, digits and underscores, "
            "not starting with a digit, at most 1024 characters (no dataset prefix, no quotes)"
        )
    return name


def validate_run_id(run_id: str) -> str:
    """Return `run_id` if it matches ^[A-Za-z0-9_-]{1,64}$, else raise ValueError.

    Run ids become part of staging table names, so they are held to a strict alphabet.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id {run_id!r} is invalid: use 1 to 64 letters, digits, '_' or '-'")
    return run_id


def validate_dataset(dataset: str) -> str:
    """Return `dataset` if it looks like BigQuery's PROJECT.DATASET, else raise ValueError."""
    if not isinstance(dataset, str) or not _DATASET.fullmatch(dataset):
        raise ValueError(
            f"BigQuery dataset {dataset!r} is invalid: write PROJECT.DATASET, e.g. "
            "my-project.polymarket (project: lowercase letters, digits, '-'; "
            "dataset: letters, digits, '_')"
        )
    return dataset


@dataclass(frozen=True)
class TableNames:
    """The warehouse's table names; configurable, validated as identifiers when constructed."""

    traders: str = "traders"
    checkpoint: str = "backfill_checkpoint"
    trades: str = "trades"
    markets: str = "markets"
    events: str = "events"
    runs: str = "backfill_runs"

    def __post_init__(self) -> None:
        for field in fields(self):
            validate_identifier(getattr(self, field.name), f"table name {field.name}=")

    def as_dict(self) -> dict[str, str]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def staging_table(run_id: str, kind: str) -> str:
    """The name of one run's staging table for one kind: `_stg_<run>_<hash>_<kind>`.

    `-` is not allowed in identifiers, so it becomes `_`; the short hash of the raw run id keeps
    run ids that differ only in `-` versus `_` from sharing staging tables.
    """
    validate_run_id(run_id)
    if kind not in STAGED_KINDS:
        raise ValueError(f"unknown staging kind {kind!r}: expected one of {sorted(STAGED_KINDS)}")
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return validate_identifier(f"_stg_{run_id.replace('-', '_')}_{digest}_{kind}")


@dataclass(frozen=True)
class Param:
    """A named query parameter and its BigQuery type (what a BigQuery client must declare)."""

    name: str
    type: str


@dataclass(frozen=True)
class Statement:
    """One SQL statement template.

    `sql` is BigQuery dialect unless `dialect` says otherwise. `storage` holds BigQuery-only
    storage options (partitioning, clustering) that have no DuckDB meaning: `render` appends
    them, `render_duckdb` leaves them out on purpose rather than letting sqlglot drop them.
    """

    name: str
    sql: str
    params: tuple[Param, ...] = ()
    storage: str = ""
    dialect: str = "bigquery"

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


# ---------------------------------------------------------------------------------------------
# Helpers that turn the schema into SQL text (column names are schema constants, not values).


def _q(name: str) -> str:
    return f"`{validate_identifier(name, 'column')}`"


def _bq_type(column: Column) -> str:
    if column.mode == "REPEATED":
        return f"ARRAY<{column.type}>"
    if column.mode == "REQUIRED":
        return f"{column.type} NOT NULL"
    return column.type


def _column_defs(columns: tuple[Column, ...]) -> str:
    return ",\n".join(f"  {_q(c.name)} {_bq_type(c)}" for c in columns)


def _names(columns: tuple[Column, ...], alias: str = "", indent: str = "  ") -> str:
    prefix = f"{alias}." if alias else ""
    return ",\n".join(f"{indent}{prefix}{_q(c.name)}" for c in columns)


def _set_all(columns: tuple[Column, ...], key: str, alias: str = "s") -> str:
    return ",\n".join(f"    {_q(c.name)} = {alias}.{_q(c.name)}" for c in columns if c.name != key)


def _create(name: str, table: str, columns: tuple[Column, ...], storage: str = "") -> Statement:
    return Statement(
        name,
        f"CREATE TABLE IF NOT EXISTS {{{table}}} (\n{_column_defs(columns)}\n)",
        storage=storage,
    )


# ---------------------------------------------------------------------------------------------
# DDL: production tables (idempotent).

CREATE_TRADERS = _create("create_traders", "traders", TRADERS_COLUMNS)
CREATE_CHECKPOINT = _create("create_checkpoint", "checkpoint", CHECKPOINT_COLUMNS)
CREATE_TRADES = _create(
    "create_trades",
    "trades",
    TRADE_COLUMNS,
    storage="PARTITION BY DATE(`traded_at`)\nCLUSTER BY `wallet_address`",
)
CREATE_MARKETS = _create("create_markets", "markets", MARKET_COLUMNS)
CREATE_EVENTS = _create("create_events", "events", EVENT_COLUMNS)
CREATE_RUNS = _create("create_runs", "runs", RUN_COLUMNS)

ENSURE_TABLES: tuple[Statement, ...] = (
    CREATE_TRADERS,
    CREATE_CHECKPOINT,
    CREATE_TRADES,
    CREATE_MARKETS,
    CREATE_EVENTS,
    CREATE_RUNS,
)

# Each managed table's columns, so that `ensure_tables` can add the ones an existing table lacks
# (the users' checkpoint table predates run_id, attempts, error, last_trade_at, ...).
TABLE_COLUMNS: dict[str, tuple[Column, ...]] = {
    "checkpoint": CHECKPOINT_COLUMNS,
    "trades": TRADE_COLUMNS,
    "markets": MARKET_COLUMNS,
    "events": EVENT_COLUMNS,
    "runs": RUN_COLUMNS,
}


def add_column(table: str, column: Column) -> Statement:
    """ALTER TABLE .. ADD COLUMN for a column of schema.py (added columns are always nullable)."""
    if table not in TABLE_COLUMNS or column not in TABLE_COLUMNS[table]:
        raise ValueError(f"{column.name!r} is not a column of the {table} table")
    type_ = f"ARRAY<{column.type}>" if column.mode == "REPEATED" else column.type
    return Statement(
        f"add_column_{table}_{column.name}",
        f"ALTER TABLE {{{table}}} ADD COLUMN IF NOT EXISTS {_q(column.name)} {type_}",
    )


# ---------------------------------------------------------------------------------------------
# DDL: one run's staging tables (non-partitioned; replaced if a crashed commit left them behind).

CREATE_STAGING: dict[str, Statement] = {
    kind: Statement(
        f"create_staging_{kind}",
        f"CREATE OR REPLACE TABLE {{stg_{kind}}} (\n{_column_defs(columns)}\n)",
    )
    for kind, columns in STAGED_KINDS.items()
}

DROP_STAGING: dict[str, Statement] = {
    kind: Statement(f"drop_staging_{kind}", f"DROP TABLE IF EXISTS {{stg_{kind}}}")
    for kind in STAGED_KINDS
}

# ---------------------------------------------------------------------------------------------
# Reads.

SELECT_TRADERS = Statement(
    "select_traders",
    """
SELECT `wallet_address`
FROM {traders}
""",
)

SELECT_DONE_WALLETS = Statement(
    "select_done_wallets",
    """
SELECT `wallet_address`
FROM {checkpoint}
WHERE `completed` = TRUE
  AND `upload_successful` = TRUE
""",
)

# Per wallet, what the selection needs: done or not, its newest landed trade, its last fetch.
SELECT_CHECKPOINT_STATES = Statement(
    "select_checkpoint_states",
    """
SELECT
  `wallet_address`,
  IFNULL(`completed` AND `upload_successful`, FALSE) AS `done`,
  `last_trade_at`,
  `last_refreshed_at`
FROM {checkpoint}
WHERE `wallet_address` IS NOT NULL
""",
)

SELECT_KNOWN_MARKETS = Statement(
    "select_known_markets",
    """
SELECT `condition_id`, `status`, `updated_at`
FROM {markets}
""",
)

SELECT_KNOWN_EVENTS = Statement(
    "select_known_events",
    """
SELECT `event_slug`, `status`, `updated_at`
FROM {events}
""",
)

SELECT_COMMITTED_RUN_IDS = Statement(
    "select_committed_run_ids",
    """
SELECT `run_id`
FROM {runs}
""",
)

SELECT_RUN = Statement(
    "select_run",
    f"""
SELECT
{_names(RUN_COLUMNS)}
FROM {{runs}}
WHERE `run_id` = @run_id
""",
    params=(Param("run_id", "STRING"),),
)

# ---------------------------------------------------------------------------------------------
# The commit transaction (design.md, run lifecycle step 3). Timestamps come from staging or from
# parameters, never CURRENT_TIMESTAMP(), so committing the same staging gives the same result.
# BigQuery requires QUALIFY to come with a WHERE, GROUP BY or HAVING clause: hence `WHERE TRUE`.

BEGIN_TRANSACTION = Statement("begin_transaction", "BEGIN TRANSACTION")
COMMIT_TRANSACTION = Statement("commit_transaction", "COMMIT TRANSACTION")
ROLLBACK_TRANSACTION = Statement("rollback_transaction", "ROLLBACK TRANSACTION")

# Only wallets whose fetch completed land trades: a failed wallet's partial pages land nothing and
# the wallet is fetched whole again by the next run. Ids production already has are skipped.
INSERT_TRADES = Statement(
    "insert_trades",
    f"""
INSERT INTO {{trades}} (
{_names(TRADE_COLUMNS)}
)
SELECT
{_names(TRADE_COLUMNS, "s")}
FROM {{stg_trades}} AS s
WHERE s.`wallet_address` IN (
    SELECT o.`wallet_address`
    FROM {{stg_outcomes}} AS o
    WHERE o.`upload_successful` = TRUE
  )
  AND NOT EXISTS (
    SELECT 1
    FROM {{trades}} AS t
    WHERE t.`id` = s.`id`
  )
QUALIFY ROW_NUMBER() OVER (PARTITION BY s.`id` ORDER BY s.`fetched_at`) = 1
""",
)


def _merge_newest(name: str, table: str, key: str, columns: tuple[Column, ...]) -> Statement:
    """A MERGE that keeps, per key, the row with the newest `updated_at`."""
    return Statement(
        name,
        f"""
MERGE INTO {{{table}}} AS t
USING (
  SELECT
{_names(columns, indent="    ")}
  FROM {{stg_{table}}}
  WHERE TRUE
  QUALIFY ROW_NUMBER() OVER (PARTITION BY {_q(key)} ORDER BY `updated_at` DESC) = 1
) AS s
ON t.{_q(key)} = s.{_q(key)}
WHEN MATCHED AND s.`updated_at` > t.`updated_at` THEN
  UPDATE SET
{_set_all(columns, key)}
WHEN NOT MATCHED THEN
  INSERT (
{_names(columns, indent="    ")}
  )
  VALUES (
{_names(columns, "s", indent="    ")}
  )
""",
    )


MERGE_MARKETS = _merge_newest("merge_markets", "markets", "condition_id", MARKET_COLUMNS)
MERGE_EVENTS = _merge_newest("merge_events", "events", "event_slug", EVENT_COLUMNS)

# One outcome per wallet (a success beats a failure, then the newest). A successful wallet's
# trade_count is what production holds for it after this transaction's INSERT (so a refresh, which
# fetches only the newest trades, still records the total); a failed one keeps the outcome's.
# Guards: a late commit of an older run must not overwrite newer state; a wallet whose trades are
# in production is never turned back into a failed one (a failed refresh records only its error,
# and its unchanged last_refreshed_at makes the next run try again); last_trade_at never moves back.
MERGE_CHECKPOINT = Statement(
    "merge_checkpoint",
    """
MERGE INTO {checkpoint} AS t
USING (
  SELECT
    o.`wallet_address`,
    o.`upload_successful`,
    IF(o.`upload_successful`, IFNULL(p.`trade_count`, 0), o.`trade_count`) AS `trade_count`,
    o.`gcs_file`,
    o.`processed_at`,
    o.`run_id`,
    o.`error`,
    o.`last_trade_at`
  FROM (
    SELECT
      `wallet_address`,
      `upload_successful`,
      `trade_count`,
      `gcs_file`,
      `processed_at`,
      `run_id`,
      `error`,
      `last_trade_at`
    FROM {stg_outcomes}
    WHERE TRUE
    QUALIFY ROW_NUMBER() OVER (
      PARTITION BY `wallet_address`
      ORDER BY `upload_successful` DESC, `processed_at` DESC
    ) = 1
  ) AS o
  LEFT JOIN (
    SELECT
      `wallet_address`,
      COUNT(*) AS `trade_count`
    FROM {trades}
    WHERE `wallet_address` IN (SELECT `wallet_address` FROM {stg_outcomes})
    GROUP BY `wallet_address`
  ) AS p
    ON p.`wallet_address` = o.`wallet_address`
) AS s
ON t.`wallet_address` = s.`wallet_address`
WHEN MATCHED
  AND (t.`processed_at` IS NULL OR s.`processed_at` > t.`processed_at`)
  AND s.`upload_successful` THEN
  UPDATE SET
    `completed` = TRUE,
    `upload_successful` = TRUE,
    `trade_count` = s.`trade_count`,
    `gcs_file` = s.`gcs_file`,
    `processed_at` = s.`processed_at`,
    `run_id` = s.`run_id`,
    `attempts` = IFNULL(t.`attempts`, 0) + 1,
    `error` = NULL,
    `last_trade_at` = IF(
      t.`last_trade_at` IS NULL OR s.`last_trade_at` > t.`last_trade_at`,
      s.`last_trade_at`,
      t.`last_trade_at`
    ),
    `last_refreshed_at` = s.`processed_at`
WHEN MATCHED
  AND (t.`processed_at` IS NULL OR s.`processed_at` > t.`processed_at`)
  AND NOT IFNULL(t.`completed` AND t.`upload_successful`, FALSE) THEN
  UPDATE SET
    `completed` = TRUE,
    `upload_successful` = FALSE,
    `trade_count` = s.`trade_count`,
    `gcs_file` = s.`gcs_file`,
    `processed_at` = s.`processed_at`,
    `run_id` = s.`run_id`,
    `attempts` = IFNULL(t.`attempts`, 0) + 1,
    `error` = s.`error`
WHEN MATCHED
  AND (t.`processed_at` IS NULL OR s.`processed_at` > t.`processed_at`) THEN
  UPDATE SET
    `error` = s.`error`
WHEN NOT MATCHED THEN
  INSERT (
    `wallet_address`,
    `completed`,
    `upload_successful`,
    `trade_count`,
    `gcs_file`,
    `processed_at`,
    `run_id`,
    `attempts`,
    `error`,
    `last_trade_at`,
    `last_refreshed_at`
  )
  VALUES (
    s.`wallet_address`,
    TRUE,
    s.`upload_successful`,
    s.`trade_count`,
    s.`gcs_file`,
    s.`processed_at`,
    s.`run_id`,
    1,
    s.`error`,
    s.`last_trade_at`,
    IF(s.`upload_successful`, s.`processed_at`, NULL)
  )
""",
)

# The row that marks the run committed; its NOT EXISTS makes a repeated insert a no-op too.
# A wallet counts as done if any of its outcomes succeeded, as failed otherwise. (IFNULL: DuckDB's
# COUNT_IF of no rows is NULL where BigQuery's COUNTIF is 0.)
INSERT_RUN = Statement(
    "insert_run",
    """
INSERT INTO {runs} (
  `run_id`,
  `committed_at`,
  `wallets_done`,
  `wallets_failed`,
  `trades_staged`,
  `markets_staged`,
  `events_staged`
)
SELECT
  @run_id,
  @committed_at,
  o.`wallets_done`,
  o.`wallets_failed`,
  tr.`trades_staged`,
  m.`markets_staged`,
  e.`events_staged`
FROM (
  SELECT
    IFNULL(COUNTIF(w.`successful`), 0) AS `wallets_done`,
    IFNULL(COUNTIF(NOT w.`successful`), 0) AS `wallets_failed`
  FROM (
    SELECT `wallet_address`, LOGICAL_OR(`upload_successful`) AS `successful`
    FROM {stg_outcomes}
    GROUP BY `wallet_address`
  ) AS w
) AS o
CROSS JOIN (SELECT COUNT(*) AS `trades_staged` FROM {stg_trades}) AS tr
CROSS JOIN (SELECT COUNT(*) AS `markets_staged` FROM {stg_markets}) AS m
CROSS JOIN (SELECT COUNT(*) AS `events_staged` FROM {stg_events}) AS e
WHERE NOT EXISTS (
  SELECT 1
  FROM {runs} AS r
  WHERE r.`run_id` = @run_id
)
""",
    params=(Param("run_id", "STRING"), Param("committed_at", "TIMESTAMP")),
)

# The statements between BEGIN and COMMIT, in order. BigQuery sends them as one script.
COMMIT_STATEMENTS: tuple[Statement, ...] = (
    INSERT_TRADES,
    MERGE_MARKETS,
    MERGE_EVENTS,
    MERGE_CHECKPOINT,
    INSERT_RUN,
)

# ---------------------------------------------------------------------------------------------
# Verification: done wallets whose trade count in production differs from the checkpoint's
# (a dropped partition, a table restored from an old snapshot, a hand-edited checkpoint). One
# grouped query over the trades' wallet column, not one per wallet.

VERIFY_MISMATCHES = Statement(
    "verify_mismatches",
    """
SELECT
  c.`wallet_address`,
  c.`trade_count`,
  IFNULL(p.`trade_count`, 0) AS `production_count`
FROM {checkpoint} AS c
LEFT JOIN (
  SELECT `wallet_address`, COUNT(*) AS `trade_count`
  FROM {trades}
  GROUP BY `wallet_address`
) AS p
  ON p.`wallet_address` = c.`wallet_address`
WHERE c.`completed` = TRUE
  AND c.`upload_successful` = TRUE
  AND IFNULL(c.`trade_count`, -1) != IFNULL(p.`trade_count`, 0)
ORDER BY c.`wallet_address`
""",
)

# Resetting makes the wallet pending again: the next run fetches its whole history, and the
# commit's id dedup lands only what production is missing.
VERIFY_RESET = Statement(
    "verify_reset",
    """
UPDATE {checkpoint}
SET
  `upload_successful` = FALSE,
  `error` = @reason,
  `last_trade_at` = NULL,
  `last_refreshed_at` = NULL
WHERE `wallet_address` IN UNNEST(@wallets)
""",
    params=(Param("reason", "STRING"), Param("wallets", "ARRAY<STRING>")),
)

# ---------------------------------------------------------------------------------------------
# Monitoring: the users' three numbers (design.md, "The checkpoint's meaning") plus totals.

STATUS_PROGRESS = Statement(
    "status_progress",
    """
SELECT
  done.`done_wallets`,
  failed.`failed_wallets`,
  traders.`total_wallets`,
  ROUND(SAFE_DIVIDE(done.`done_wallets` * 100, traders.`total_wallets`), 2) AS `progress_percent`,
  traders.`total_wallets` - done.`done_wallets` AS `remaining_wallets`
FROM (
  SELECT COUNT(DISTINCT `wallet_address`) AS `done_wallets`
  FROM {checkpoint}
  WHERE `completed` = TRUE
    AND `upload_successful` = TRUE
) AS done
CROSS JOIN (
  SELECT COUNT(DISTINCT `wallet_address`) AS `failed_wallets`
  FROM {checkpoint}
  WHERE `completed` = TRUE
    AND `upload_successful` = FALSE
) AS failed
CROSS JOIN (
  SELECT COUNT(DISTINCT `wallet_address`) AS `total_wallets`
  FROM {traders}
  WHERE `wallet_address` IS NOT NULL
) AS traders
""",
)

STATUS_FAILED_WALLETS = Statement(
    "status_failed_wallets",
    """
SELECT
  `wallet_address`,
  `trade_count`,
  `processed_at`,
  `error`
FROM {checkpoint}
WHERE `completed` = TRUE
  AND `upload_successful` = FALSE
ORDER BY `processed_at` DESC, `wallet_address`
LIMIT @limit
""",
    params=(Param("limit", "INT64"),),
)

STATUS_TOTALS = Statement(
    "status_totals",
    """
SELECT
  (SELECT COUNT(*) FROM {trades}) AS `trades_rows`,
  (SELECT COUNT(*) FROM {markets}) AS `markets_rows`,
  (SELECT COUNT(*) FROM {events}) AS `events_rows`
""",
)

STATUS_LAST_RUNS = Statement(
    "status_last_runs",
    f"""
SELECT
{_names(RUN_COLUMNS)}
FROM {{runs}}
ORDER BY `committed_at` DESC, `run_id` DESC
LIMIT @limit
""",
    params=(Param("limit", "INT64"),),
)

# ---------------------------------------------------------------------------------------------
# DuckDB only: session setup and loading a run's NDJSON staging files (BigQuery uses load jobs).

DUCKDB_TABLE_COLUMNS = Statement(
    "duckdb_table_columns",
    "SELECT column_name FROM information_schema.columns WHERE table_name = $table",
    params=(Param("table", "STRING"),),
    dialect="duckdb",
)

DUCKDB_SET_UTC = Statement("duckdb_set_utc", "SET TimeZone = 'UTC'", dialect="duckdb")

# The commit loads a run's whole staging: without a cap DuckDB sizes its buffers to the machine and
# the process's peak memory grows with the run. Capped, one thread, insertion order not kept, it
# spills to `<database>.tmp` instead, and peak memory stays flat however many trades a run stages.
DUCKDB_LIMIT_MEMORY: tuple[Statement, ...] = (
    Statement("duckdb_memory_limit", "SET memory_limit = '64MB'", dialect="duckdb"),
    Statement("duckdb_threads", "SET threads = 1", dialect="duckdb"),
    Statement("duckdb_insertion_order", "SET preserve_insertion_order = false", dialect="duckdb"),
)


def _duckdb_type(column: Column) -> str:
    bq = f"ARRAY<{column.type}>" if column.mode == "REPEATED" else column.type
    return exp.DataType.build(bq, dialect="bigquery").sql("duckdb")


def _duckdb_load(kind: str, columns: tuple[Column, ...]) -> Statement:
    """INSERT a run's files of one kind into its staging table, with the schema's types.

    The explicit `columns` struct means DuckDB never guesses a type; the staging table's NOT
    NULL constraints reject rows missing a REQUIRED value, as a BigQuery load job would.
    """
    names = ",\n".join(f'  "{c.name}"' for c in columns)
    struct = ",\n".join(f"    '{c.name}': '{_duckdb_type(c)}'" for c in columns)
    return Statement(
        f"duckdb_load_staging_{kind}",
        f"""
INSERT INTO "{{stg_{kind}}}" (
{names}
)
SELECT
{names}
FROM read_json(
  $files,
  format = 'newline_delimited',
  columns = {{{{
{struct}
  }}}}
)
""",
        params=(Param("files", "ARRAY<STRING>"),),
        dialect="duckdb",
    )


DUCKDB_LOAD_STAGING: dict[str, Statement] = {
    kind: _duckdb_load(kind, columns) for kind, columns in STAGED_KINDS.items()
}

ALL_STATEMENTS: tuple[Statement, ...] = (
    *ENSURE_TABLES,
    *CREATE_STAGING.values(),
    *DROP_STAGING.values(),
    SELECT_TRADERS,
    SELECT_DONE_WALLETS,
    SELECT_CHECKPOINT_STATES,
    SELECT_KNOWN_MARKETS,
    SELECT_KNOWN_EVENTS,
    SELECT_COMMITTED_RUN_IDS,
    SELECT_RUN,
    VERIFY_MISMATCHES,
    VERIFY_RESET,
    BEGIN_TRANSACTION,
    *COMMIT_STATEMENTS,
    COMMIT_TRANSACTION,
    ROLLBACK_TRANSACTION,
    STATUS_PROGRESS,
    STATUS_FAILED_WALLETS,
    STATUS_TOTALS,
    STATUS_LAST_RUNS,
    DUCKDB_SET_UTC,
    *DUCKDB_LIMIT_MEMORY,
    DUCKDB_TABLE_COLUMNS,
    *DUCKDB_LOAD_STAGING.values(),
)

# ---------------------------------------------------------------------------------------------
# Rendering.


def _table_map(tables: TableNames, run_id: str | None) -> dict[str, str]:
    names = tables.as_dict()
    if run_id is not None:
        names.update({f"stg_{kind}": staging_table(run_id, kind) for kind in STAGED_KINDS})
    return names


def _fill(statement: Statement, names: Mapping[str, str]) -> str:
    try:
        return statement.sql.strip().format_map(names)
    except KeyError as missing:
        raise ValueError(
            f"statement {statement.name} needs table {missing}: pass run_id for staging tables"
        ) from None


def render(
    statement: Statement,
    tables: TableNames,
    run_id: str | None = None,
    dataset: str | None = None,
) -> str:
    """The statement as BigQuery SQL, table names backtick-quoted (and prefixed with `dataset`)."""
    if statement.dialect != "bigquery":
        raise ValueError(f"statement {statement.name} is {statement.dialect}-only")
    prefix = f"{validate_dataset(dataset)}." if dataset is not None else ""
    names = {key: f"`{prefix}{name}`" for key, name in _table_map(tables, run_id).items()}
    text = _fill(statement, names)
    return f"{text}\n{statement.storage}" if statement.storage else text


@functools.lru_cache(maxsize=512)
def render_duckdb(statement: Statement, tables: TableNames, run_id: str | None = None) -> str:
    """The statement as DuckDB SQL: sqlglot's translation of the BigQuery text, cached.

    The BigQuery-only storage clause is left out here, deliberately; anything else sqlglot
    cannot translate raises instead of being dropped with a warning.
    """
    if statement.dialect == "duckdb":
        return _fill(statement, _table_map(tables, run_id))
    names = {key: f"`{name}`" for key, name in _table_map(tables, run_id).items()}
    (translated,) = sqlglot.transpile(
        _fill(statement, names),
        read="bigquery",
        write="duckdb",
        identify=True,
        pretty=True,
        unsupported_level=ErrorLevel.RAISE,
    )
    return translated
