"""Every SQL statement of the project, written once in BigQuery's dialect, rendered per warehouse.

Statements are templates whose only holes are table names (`{trades}`, `{load_outcomes}`, ...):
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from pipeline.schema import (
    CHECKPOINT_COLUMNS,
    EVENT_COLUMNS,
    LEASE_COLUMNS,
    MARKET_COLUMNS,
    MISSING_TABLE_COLUMNS,
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
COMMITTED_KINDS: tuple[str, ...] = ("trades", "markets", "events", "outcomes", "missing")


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

    Run ids become part of load table names, so they are held to a strict alphabet.
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
    lease: str = "backfill_lease"
    missing: str = "backfill_missing"

    def __post_init__(self) -> None:
        """Besides identifiers: no name a load table could have (start-up drops every table
        whose name starts so: it dropped a traders table named `_stg_wallets`), and no two
        roles on one table (ignoring case, as DuckDB does): a checkpoint table named `Traders`
        added its columns to the user's traders table, markets and events on one table
        overwrote each other."""
        seen: dict[str, str] = {}
        for field in fields(self):
            name = validate_identifier(getattr(self, field.name), f"table name {field.name}=")
            if name.lower().startswith(LOAD_TABLE_PREFIX):
                raise ValueError(
                    f"table name {field.name}={name!r} starts with {LOAD_TABLE_PREFIX!r}, the "
                    "prefix of the commit's load tables, which start-up drops: choose another"
                )
            other = seen.setdefault(name.lower(), field.name)
            if other != field.name:
                raise ValueError(
                    f"table names {other}= and {field.name}= are both {name!r}: each role "
                    "needs a table of its own"
                )

    def as_dict(self) -> dict[str, str]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


# The physical prefix of load tables (it predates the name "load table"). Each commit attempt
# loads into tables of its own, so what a killed commit left behind is found by this prefix and
# dropped at start-up (`Warehouse.drop_orphan_load_tables`); BigQuery also lets them expire.
LOAD_TABLE_PREFIX = "_stg_"


_NONCE = re.compile(r"[0-9a-f]{0,16}")


def load_table(run_id: str, kind: str, nonce: str = "") -> str:
    """The name of one run's load table for one kind: `_stg_<run>_<hash>_<kind>`.

    A load table holds one kind of a run's staging files inside the warehouse for the length of
    its commit. `-` is not allowed in identifiers, so it becomes `_`; the short hash of the raw
    run id keeps run ids that differ only in `-` versus `_` from sharing load tables. `nonce`
    (lowercase hex, one per commit attempt) goes into the hash too: two commits of the same run
    at once then load into tables of their own, and neither replaces the other's half-loaded rows.
    """
    validate_run_id(run_id)
    if kind not in STAGED_KINDS:
        raise ValueError(f"unknown staging kind {kind!r}: expected one of {sorted(STAGED_KINDS)}")
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise ValueError(f"load table nonce {nonce!r} must be up to 16 lowercase hex digits")
    key = f"{run_id}/{nonce}" if nonce else run_id
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return validate_identifier(f"{LOAD_TABLE_PREFIX}{run_id.replace('-', '_')}_{digest}_{kind}")


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
CREATE_LEASE = _create("create_lease", "lease", LEASE_COLUMNS)
CREATE_MISSING = _create("create_missing", "missing", MISSING_TABLE_COLUMNS)

ENSURE_TABLES: tuple[Statement, ...] = (
    CREATE_TRADERS,
    CREATE_CHECKPOINT,
    CREATE_TRADES,
    CREATE_MARKETS,
    CREATE_EVENTS,
    CREATE_RUNS,
    CREATE_LEASE,
    CREATE_MISSING,
)

# Each managed table's columns, so that `ensure_tables` can add the ones an existing table lacks
# (the users' checkpoint table predates run_id, attempts, error, last_trade_at, ...).
TABLE_COLUMNS: dict[str, tuple[Column, ...]] = {
    "checkpoint": CHECKPOINT_COLUMNS,
    "trades": TRADE_COLUMNS,
    "markets": MARKET_COLUMNS,
    "events": EVENT_COLUMNS,
    "runs": RUN_COLUMNS,
    "lease": LEASE_COLUMNS,
    "missing": MISSING_TABLE_COLUMNS,
}


# Columns an older schema declared REQUIRED that are nullable now (Polymarket trades have no order
# hash and no maker): `ensure_tables` relaxes them on an existing table whose column is still NOT
# NULL. The one place that says which columns were once required.
RELAXED_COLUMNS: dict[str, tuple[str, ...]] = {"trades": ("order_hash", "user")}


def relax_column(table: str, column: str) -> Statement:
    """ALTER TABLE .. ALTER COLUMN .. DROP NOT NULL for a column of RELAXED_COLUMNS."""
    if column not in RELAXED_COLUMNS.get(table, ()):
        raise ValueError(f"{column!r} is not a relaxed column of the {table} table")
    return Statement(
        f"relax_column_{table}_{column}",
        f"ALTER TABLE {{{table}}} ALTER COLUMN {_q(column)} DROP NOT NULL",
    )


for _table, _relaxed in RELAXED_COLUMNS.items():
    _modes = {c.name: c.mode for c in TABLE_COLUMNS[_table]}
    if any(_modes.get(name) != "NULLABLE" for name in _relaxed):
        raise ValueError(
            f"RELAXED_COLUMNS[{_table!r}] names a column schema.py does not make nullable"
        )

RELAX_COLUMNS: tuple[Statement, ...] = tuple(
    relax_column(table, column) for table, columns in RELAXED_COLUMNS.items() for column in columns
)


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
# DDL: one commit attempt's load tables (non-partitioned).

CREATE_LOAD_TABLE: dict[str, Statement] = {
    kind: Statement(
        f"create_load_table_{kind}",
        f"CREATE OR REPLACE TABLE {{load_{kind}}} (\n{_column_defs(columns)}\n)",
    )
    for kind, columns in STAGED_KINDS.items()
}

# DuckDB loads into temporary tables: they live in the committing connection only and never go
# through the database file's write-ahead log, so the load writes nothing to disk and dropping
# them costs nothing (as persistent tables, the load and the drop of a run's 35,000 trades wrote
# and checkpointed them: ~0.4 s of the commit). A killed commit leaves none behind; start-up
# still drops the persistent ones older versions left (`Warehouse.drop_orphan_load_tables`).
DUCKDB_CREATE_LOAD_TABLE: dict[str, Statement] = {
    kind: Statement(
        f"duckdb_create_load_table_{kind}",
        statement.sql.replace("CREATE OR REPLACE TABLE", "CREATE OR REPLACE TEMP TABLE", 1),
    )
    for kind, statement in CREATE_LOAD_TABLE.items()
}

DROP_LOAD_TABLE: dict[str, Statement] = {
    kind: Statement(f"drop_load_table_{kind}", f"DROP TABLE IF EXISTS {{load_{kind}}}")
    for kind in STAGED_KINDS
}


def drop_orphan_load_table(name: str) -> Statement:
    """DROP TABLE IF EXISTS for a load table found by its prefix (a commit killed before its
    cleanup left it). Only names with the load table prefix are accepted: this never drops
    a production table, whatever a listing returned."""
    if not validate_identifier(name, "load table").startswith(LOAD_TABLE_PREFIX):
        raise ValueError(f"{name!r} is not a load table (no {LOAD_TABLE_PREFIX} prefix)")
    return Statement("drop_orphan_load_table", f"DROP TABLE IF EXISTS {_q(name)}")


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

# Markets and events production names but does not hold (never fetched, missing at the API, or a
# fetch that failed): the graph asks for them again, which is how they are retried. One text each,
# shared by the reads and by `status`'s pending counts. MAX picks a non-empty slug when one exists.
_UNLANDED_MARKETS = """
SELECT
  t.`condition_id`,
  MAX(t.`market_slug`) AS `market_slug`
FROM {trades} AS t
WHERE NOT EXISTS (
    SELECT 1
    FROM {markets} AS m
    WHERE m.`condition_id` = t.`condition_id`
  )
GROUP BY t.`condition_id`
"""

_UNLANDED_EVENTS = """
SELECT named.`event_slug`
FROM (
  SELECT t.`event_slug`
  FROM {trades} AS t
  WHERE CHAR_LENGTH(t.`event_slug`) > 0
  UNION DISTINCT
  SELECT m.`event_slug`
  FROM {markets} AS m
  WHERE CHAR_LENGTH(m.`event_slug`) > 0
) AS named
WHERE NOT EXISTS (
    SELECT 1
    FROM {events} AS e
    WHERE e.`event_slug` = named.`event_slug`
  )
"""

SELECT_UNLANDED_MARKETS = Statement("select_unlanded_markets", _UNLANDED_MARKETS)
SELECT_UNLANDED_EVENTS = Statement("select_unlanded_events", _UNLANDED_EVENTS)


# The keys of one kind that at least @missing_after runs found missing at the source, over at
# least @missing_span_s seconds, the last time since @missing_since (unix seconds): "missing at
# the source", not asked for (transforms.skip_known drops them unless production holds them).
# The span keeps a crash, its recovery and a rerun, seconds apart, from giving a key up; the
# last sighting ageing past @missing_since makes the next run ask again (and, still missing,
# sight it again), so a key the source lists late is found within that long, not never.
# One text, shared by the graph's reads (`kind` a parameter) and by `status` (a schema constant).
def _missing_at_source(kind: str) -> str:
    return f"""
SELECT `key`
FROM {{missing}}
WHERE `kind` = {kind}
GROUP BY `key`
HAVING COUNT(DISTINCT `run_id`) >= @missing_after
  AND UNIX_SECONDS(MAX(`seen_at`)) - UNIX_SECONDS(MIN(`seen_at`)) >= @missing_span_s
  AND UNIX_SECONDS(MAX(`seen_at`)) >= @missing_since
"""


MISSING_PARAMS = (
    Param("missing_after", "INT64"),
    Param("missing_span_s", "INT64"),
    Param("missing_since", "INT64"),
)
SELECT_MISSING_AT_SOURCE = Statement(
    "select_missing_at_source",
    _missing_at_source("@kind"),
    params=(Param("kind", "STRING"), *MISSING_PARAMS),
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
# The lease: one row of the lease table says which backfill may run against this warehouse and
# until when. Times are the warehouse's own clock (CURRENT_TIMESTAMP), never a caller's, so hosts
# with skewed clocks agree on whether a lease has expired. Each statement is one DML, atomic on
# its own: BigQuery runs two DML statements on one table one after the other, DuckDB's file lock
# lets one process write at a time.

LEASE_NAME = "backfill"  # the lease row's key, passed as @lease_name

# The lease row, made by `ensure_tables` when missing (never a second one): every commit
# transaction then updates one existing row, and two at once conflict. Two inserts would not.
ENSURE_LEASE_ROW = Statement(
    "ensure_lease_row",
    """
INSERT INTO {lease} (`lease_name`, `commits`)
SELECT s.`lease_name`, 0
FROM (SELECT @lease_name AS `lease_name`) AS s
WHERE NOT EXISTS (
    SELECT 1
    FROM {lease} AS t
    WHERE t.`lease_name` = s.`lease_name`
  )
""",
    params=(Param("lease_name", "STRING"),),
)

LEASE_ACQUIRE = Statement(
    "lease_acquire",
    """
MERGE INTO {lease} AS t
USING (SELECT @lease_name AS `lease_name`) AS s
ON t.`lease_name` = s.`lease_name`
WHEN MATCHED
  AND (
    t.`holder` IS NULL
    OR t.`holder` = @holder
    OR t.`expires_at` IS NULL
    OR t.`expires_at` <= CURRENT_TIMESTAMP()
  ) THEN
  UPDATE SET
    `holder` = @holder,
    `acquired_at` = IF(t.`holder` = @holder, t.`acquired_at`, CURRENT_TIMESTAMP()),
    `expires_at` = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @ttl_ms MILLISECOND)
WHEN NOT MATCHED THEN
  INSERT (`lease_name`, `holder`, `acquired_at`, `expires_at`, `commits`)
  VALUES (
    s.`lease_name`,
    @holder,
    CURRENT_TIMESTAMP(),
    TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @ttl_ms MILLISECOND),
    0
  )
""",
    params=(Param("lease_name", "STRING"), Param("holder", "STRING"), Param("ttl_ms", "INT64")),
)

LEASE_RELEASE = Statement(
    "lease_release",
    """
UPDATE {lease}
SET
  `holder` = NULL,
  `expires_at` = NULL
WHERE `lease_name` = @lease_name
  AND `holder` = @holder
""",
    params=(Param("lease_name", "STRING"), Param("holder", "STRING")),
)

# The holder, when it took the lease, until when, and whether that is still in the future.
SELECT_LEASE = Statement(
    "select_lease",
    """
SELECT
  `holder`,
  `acquired_at`,
  `expires_at`,
  IFNULL(`holder` IS NOT NULL AND `expires_at` > CURRENT_TIMESTAMP(), FALSE) AS `held`
FROM {lease}
WHERE `lease_name` = @lease_name
""",
    params=(Param("lease_name", "STRING"),),
)

# ---------------------------------------------------------------------------------------------
# The commit transaction (design.md, run lifecycle step 3). Timestamps come from staging or from
# parameters, never CURRENT_TIMESTAMP(), so committing the same staging gives the same result.
# BigQuery requires QUALIFY to come with a WHERE, GROUP BY or HAVING clause: hence `WHERE TRUE`.

BEGIN_TRANSACTION = Statement("begin_transaction", "BEGIN TRANSACTION")
COMMIT_TRANSACTION = Statement("commit_transaction", "COMMIT TRANSACTION")
ROLLBACK_TRANSACTION = Statement("rollback_transaction", "ROLLBACK TRANSACTION")

# The source of rows landed before trades had a `source` column (they all came from the Dome API).
# A schema constant, not a value: the one string literal the statements may contain.
LEGACY_SOURCE = "dome"
# How `status` recognises a wallet address in `traders`, as transforms.read_wallets does.
ADDRESS_PREFIX = "0x"
ADDRESS_PATTERN = r"^0x[0-9a-f]+$"  # and ADDRESS_LENGTH long: 0x + 40 hex (no braces in SQL)
ADDRESS_LENGTH = 42
# The `kind` of the missing table's rows (schema constants, as transforms.lookups stages them).
MISSING_MARKETS = "markets"
MISSING_EVENTS = "events"
# What the checkpoint's `error` says of a wallet a refresh could not keep done (_merge_checkpoint).
LOSS_FOUND = (
    "a refresh found ",
    " trades in production where the checkpoint counted ",
    "none",
    ": the wallet is fetched whole next run",
)
NOT_HELD = "a refresh of a wallet the checkpoint did not hold: the wallet is fetched whole next run"
SQL_CONSTANTS: frozenset[str] = frozenset(
    {
        LEGACY_SOURCE,
        ADDRESS_PREFIX,
        ADDRESS_PATTERN,
        MISSING_MARKETS,
        MISSING_EVENTS,
        *LOSS_FOUND,
        NOT_HELD,
    }
)
_SOURCE = f"IFNULL({{alias}}`source`, '{LEGACY_SOURCE}')"


def _source(alias: str = "") -> str:
    """A row's source, rows landed before sources counting as the legacy one."""
    return _SOURCE.format(alias=f"{alias}." if alias else "")


# How a fill is recognised across sources, which give it different ids: the wallet, the
# transaction, the token, the side, the size in millionths and the price in millionths.
_FILL_KEY = (
    ("wallet_address", "{a}`wallet_address`"),
    ("tx_hash", "LOWER({a}`tx_hash`)"),
    ("token_id", "{a}`token_id`"),
    ("side", "{a}`side`"),
    ("shares", "{a}`shares`"),
    ("micro_price", "CAST(ROUND({a}`price` * 1000000) AS INT64)"),
)


def _fill_key(alias: str, named: bool = False, indent: str = "") -> str:
    a = f"{alias}." if alias else ""
    parts = [
        expression.format(a=a) + (f" AS `_fk_{name}`" if named else "")
        for name, expression in _FILL_KEY
    ]
    return f",\n{indent}".join(parts)


def _fill_key_equal(left: str, right: str) -> str:
    return "\n    AND ".join(f"{left}.`_fk_{n}` = {right}.`_fk_{n}`" for n, _ in _FILL_KEY)


_SUCCESSFUL_WALLETS = """(
    SELECT o.`wallet_address`
    FROM {load_outcomes} AS o
    WHERE o.`upload_successful` = TRUE
  )"""

# The run's wallets whose fetch succeeded: the only wallets whose trades the commit lands. Read
# from the outcomes load table after loading (one small query), and passed to the commit as the
# array parameter @wallets (WALLETS), so that every read of production trades in the transaction
# filters `wallet_address IN UNNEST(@wallets)`: a simple filter of the clustering column by a
# constant, which BigQuery can prune blocks with. A filter by subquery (`IN (SELECT ... FROM
# load_outcomes)`) is a dynamic expression, known only while the query runs: Google documents
# pruning for constant filter expressions only (a dynamic one scans every partition, a clustered
# column compared with another column prunes no block; querying-partitioned-tables and
# querying-clustered-tables). Null addresses are left out: they never match `IN` either.
# @limit: one more than the commit lists, so that a run with too many is told apart cheaply.
SELECT_LANDING_WALLETS = Statement(
    "select_landing_wallets",
    """
SELECT DISTINCT o.`wallet_address`
FROM {load_outcomes} AS o
WHERE o.`upload_successful` = TRUE
  AND o.`wallet_address` IS NOT NULL
LIMIT @limit
""",
    params=(Param("limit", "INT64"),),
)

WALLETS = Param("wallets", "ARRAY<STRING>")
_LISTED_WALLETS = "UNNEST(@wallets)"


# A staged id held more than once (a page fetched twice: a retried bundle, or a wallet fetched again
# after a worker died) lands once, from its earliest fetch.
_DEDUP_IDS = """
    QUALIFY ROW_NUMBER() OVER (PARTITION BY s.`id` ORDER BY s.`fetched_at`) = 1"""


def _insert_trades(
    name: str, wallets: str, params: tuple[Param, ...], dedup_ids: bool = True
) -> Statement:
    """INSERT_TRADES reading production for `wallets`: the @wallets array (pruned), or the
    successful wallets' subquery (the form for a run with too many wallets to list, which reads
    every block of production's `id`, `wallet_address` and fill key columns). `dedup_ids`: keep
    the earliest fetch of a staged id held more than once; without it, for a load table whose
    ids are known to be unique (STAGED_IDS_UNIQUE), the same rows land."""
    # A production row with the staged row's id is of the staged row's wallet (the id is derived
    # from the wallet), which is one of `wallets`: the NOT EXISTS may read those wallets only.
    # The subquery form keeps the id lookup unfiltered, as it always was.
    id_filter = f"t.`wallet_address` IN {wallets}\n      AND " if params else ""
    return Statement(
        name,
        f"""
INSERT INTO {{trades}} (
{_names(TRADE_COLUMNS)}
)
SELECT
{_names(TRADE_COLUMNS, "r")}
FROM (
  SELECT
{_names(TRADE_COLUMNS, "d", indent="    ")},
    {_source("d")} AS `_source`,
    {_fill_key("d", named=True, indent="    ")},
    IFNULL(
      d.`fill_ordinal`,
      ROW_NUMBER() OVER (
        PARTITION BY
          {_fill_key("d", indent="          ")},
          {_source("d")}
        ORDER BY d.`id`
      ) - 1
    ) AS `_rank`
  FROM (
    SELECT
{_names(TRADE_COLUMNS, "s", indent="      ")}
    FROM {{load_trades}} AS s
    WHERE s.`wallet_address` IN {_SUCCESSFUL_WALLETS}{_DEDUP_IDS if dedup_ids else ""}
  ) AS d
) AS r
LEFT JOIN (
  SELECT
    {_fill_key("t", named=True, indent="    ")},
    COUNT(*) AS `_landed`
  FROM {{trades}} AS t
  WHERE t.`wallet_address` IN {wallets}
  GROUP BY {", ".join(f"`_fk_{n}`" for n, _ in _FILL_KEY)}
) AS every_source
  ON {_fill_key_equal("every_source", "r")}
LEFT JOIN (
  SELECT
    {_fill_key("t", named=True, indent="    ")},
    {_source("t")} AS `_source`,
    COUNT(*) AS `_landed`
  FROM {{trades}} AS t
  WHERE t.`wallet_address` IN {wallets}
  GROUP BY {", ".join(f"`_fk_{n}`" for n, _ in _FILL_KEY)}, `_source`
) AS own_source
  ON {_fill_key_equal("own_source", "r")}
    AND own_source.`_source` = r.`_source`
WHERE NOT EXISTS (
    SELECT 1
    FROM {{trades}} AS t
    WHERE {id_filter}t.`id` = r.`id`
  )
  AND IFNULL(every_source.`_landed`, 0) - IFNULL(own_source.`_landed`, 0) <= r.`_rank`
""",
        params=params,
    )


# Only wallets whose fetch completed land trades: a failed wallet's partial pages land nothing and
# the wallet is fetched whole again by the next run. A staged row is skipped when production has
# its id (the same source landed it), or when production holds more than k rows of its fill key
# from another source, k being its rank among the staged rows of that fill key from its own source
# (Polymarket's `fill_ordinal`; else by id): identical rows are distinct fills, so two Dome rows
# of one key stop the first two Polymarket ones and let a third land. Production is read for the
# run's successful wallets only (@wallets), which the clustering on `wallet_address` prunes to.
INSERT_TRADES = _insert_trades("insert_trades", _LISTED_WALLETS, (WALLETS,))
# The same statement for a run with more wallets than a parameter may carry (see
# base.WALLETS_LISTED_AT_MOST): the same rows land, but production is read whole.
INSERT_TRADES_UNPRUNED = _insert_trades("insert_trades_unpruned", _SUCCESSFUL_WALLETS, ())

# Whether the run's staged trade ids are all distinct (a NULL id counts as not). The dedup's window
# partitions every staged row, whole, by id: under DuckDB's memory cap it spills, and it was more
# than half of the insert on a 3,000-wallet run's real staging (352,471 trades: 2.9-3.4 s, 1.2-1.5 s
# without it), where this query takes ~0.05 s.
# So the DuckDB commit asks first and lands a run whose ids are unique (every run that no retry
# fetched twice) with the *_IDS_UNIQUE forms. BigQuery keeps the dedup: there a separate query
# would cost a job's round trip, more than the window's slot time.
STAGED_IDS_UNIQUE = Statement(
    "staged_ids_unique",
    """
SELECT COUNT(*) = COUNT(DISTINCT `id`) AS `ids_unique`
FROM {load_trades}
""",
)
# The staged-count check (staging.check_staged_counts) asked of what the commit loaded: how many of
# the run's wallets have another number of loaded trades than their outcome says they fetched.
# A wallet is checked if its outcome has no error (the files' check) or says its fetch succeeded
# (its trades land): a superset, never fewer. The DuckDB commit asks this instead of reading the
# files again beside the load: ~0.01 s on a 3,000-wallet run's real staging, where the files'
# check took 0.8 s alone and 1.3 s beside the load on two cores. 0: the run agrees with itself.
LOADED_COUNTS_DISAGREE = Statement(
    "loaded_counts_disagree",
    """
SELECT COUNT(*) AS `wallets`
FROM (
  SELECT o.`wallet_address`, SUM(o.`trade_count`) AS `expected`
  FROM {load_outcomes} AS o
  WHERE o.`error` IS NULL OR o.`upload_successful` = TRUE
  GROUP BY o.`wallet_address`
) AS e
LEFT JOIN (
  SELECT s.`wallet_address`, COUNT(*) AS `staged`
  FROM {load_trades} AS s
  GROUP BY s.`wallet_address`
) AS c
  ON c.`wallet_address` = e.`wallet_address`
WHERE IFNULL(c.`staged`, 0) != e.`expected`
""",
)
INSERT_TRADES_IDS_UNIQUE = _insert_trades(
    "insert_trades_ids_unique", _LISTED_WALLETS, (WALLETS,), dedup_ids=False
)
INSERT_TRADES_UNPRUNED_IDS_UNIQUE = _insert_trades(
    "insert_trades_unpruned_ids_unique", _SUCCESSFUL_WALLETS, (), dedup_ids=False
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
  FROM {{load_{table}}}
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

# The keys the run's lookups found missing at the source, one row per key for this run (its
# earliest sighting). The NOT EXISTS makes a recommit, or an older run committed late, add
# nothing twice: how many runs found a key missing is a count of distinct runs, never inflated.
INSERT_MISSING = Statement(
    "insert_missing",
    """
INSERT INTO {missing} (
  `kind`,
  `key`,
  `seen_at`,
  `run_id`
)
SELECT
  s.`kind`,
  s.`key`,
  MIN(s.`seen_at`) AS `seen_at`,
  @run_id AS `run_id`
FROM {load_missing} AS s
WHERE NOT EXISTS (
    SELECT 1
    FROM {missing} AS m
    WHERE m.`kind` = s.`kind`
      AND m.`key` = s.`key`
      AND m.`run_id` = @run_id
  )
GROUP BY s.`kind`, s.`key`
""",
    params=(Param("run_id", "STRING"),),
)


# One outcome per wallet (a success beats a failure, then the newest). A successful wallet's
# trade_count is what production holds for it after this transaction's INSERT (so a refresh, which
# fetches only the newest trades, still records the total); a failed one keeps the outcome's.
#
# A whole walk (`fetched_from` null) proves the wallet: it is done whatever the checkpoint said,
# even against a `processed_at` from a clock that ran ahead. A refresh proves only what is newer
# than its start, so it keeps a wallet done only where production held, before this INSERT,
# exactly the trades the checkpoint counts (`held_before`): otherwise rows were lost since (a
# dropped partition, a table restored from a snapshot, a hand delete), or the wallet is not done
# (verify reset it, or a refresh staged before that reset is recovered after it). Then the wallet
# is reset, so the next run walks it whole and lands what is missing: taking production's count
# instead, as it once did, erased the only evidence of the loss and verify went blind to it.
#
# Guards: a late commit of an older run must not overwrite newer state (of a done wallet it
# updates only the count; times only move forward, run/error/source follow the newest outcome); a wallet whose trades are in production is never
# turned back into a failed one by a failed fetch (a failed refresh records only its error, and
# its unchanged last_refreshed_at makes the next run try again); last_trade_at never moves back.
# `source` is the source of the last successful fetch: a failure leaves it as it was.
_NEWER = "(t.`processed_at` IS NULL OR s.`processed_at` > t.`processed_at`)"
_DONE = "IFNULL(t.`completed` AND t.`upload_successful`, FALSE)"
_PROVEN = f"(s.`fetched_from` IS NULL OR ({_DONE} AND t.`trade_count` = s.`held_before`))"


def _latest(column: str) -> str:
    return f"IF(t.`{column}` IS NULL OR s.`processed_at` > t.`{column}`, s.`processed_at`, t.`{column}`)"


def _merge_checkpoint(name: str, wallets: str, params: tuple[Param, ...]) -> Statement:
    """MERGE_CHECKPOINT counting production's trades of `wallets` (see `_insert_trades`)."""
    return Statement(
        name,
        f"""
MERGE INTO {{checkpoint}} AS t
USING (
  SELECT
    o.`wallet_address`,
    o.`upload_successful`,
    IF(o.`upload_successful`, IFNULL(p.`trade_count`, 0), o.`trade_count`) AS `trade_count`,
    IFNULL(p.`trade_count`, 0) - IFNULL(p.`inserted`, 0) AS `held_before`,
    o.`fetched_from`,
    o.`gcs_file`,
    o.`processed_at`,
    o.`run_id`,
    o.`error`,
    o.`last_trade_at`,
    o.`source`
  FROM (
    SELECT
      `wallet_address`,
      `upload_successful`,
      `trade_count`,
      `fetched_from`,
      `gcs_file`,
      `processed_at`,
      `run_id`,
      `error`,
      `last_trade_at`,
      `source`
    FROM {{load_outcomes}}
    WHERE TRUE
    QUALIFY ROW_NUMBER() OVER (
      PARTITION BY `wallet_address`
      ORDER BY `upload_successful` DESC, `processed_at` DESC
    ) = 1
  ) AS o
  LEFT JOIN (
    SELECT
      `wallet_address`,
      COUNT(*) AS `trade_count`,
      COUNTIF(`run_id` = @run_id) AS `inserted`
    FROM {{trades}}
    WHERE `wallet_address` IN {wallets}
    GROUP BY `wallet_address`
  ) AS p
    ON p.`wallet_address` = o.`wallet_address`
) AS s
ON t.`wallet_address` = s.`wallet_address`
WHEN MATCHED
  AND s.`upload_successful`
  AND ({_NEWER} OR NOT {_DONE})
  AND {_PROVEN} THEN
  UPDATE SET
    `completed` = TRUE,
    `upload_successful` = TRUE,
    `trade_count` = s.`trade_count`,
    `gcs_file` = IF({_NEWER}, s.`gcs_file`, t.`gcs_file`),
    `processed_at` = {_latest("processed_at")},
    `run_id` = IF({_NEWER}, s.`run_id`, t.`run_id`),
    `attempts` = IFNULL(t.`attempts`, 0) + 1,
    `error` = IF({_NEWER} OR NOT {_DONE}, NULL, t.`error`),
    `last_trade_at` = IF(
      t.`last_trade_at` IS NULL OR s.`last_trade_at` > t.`last_trade_at`,
      s.`last_trade_at`,
      t.`last_trade_at`
    ),
    `last_refreshed_at` = {_latest("last_refreshed_at")},
    `source` = IF({_NEWER} OR t.`source` IS NULL, s.`source`, t.`source`)
WHEN MATCHED
  AND s.`upload_successful`
  AND {_PROVEN} THEN
  UPDATE SET
    `trade_count` = s.`trade_count`
WHEN MATCHED
  AND s.`upload_successful` THEN
  UPDATE SET
    `completed` = TRUE,
    `upload_successful` = FALSE,
    `trade_count` = s.`trade_count`,
    `gcs_file` = s.`gcs_file`,
    `processed_at` = {_latest("processed_at")},
    `run_id` = s.`run_id`,
    `attempts` = IFNULL(t.`attempts`, 0) + 1,
    `error` = IF(
      {_DONE},
      CONCAT(
        '{LOSS_FOUND[0]}', CAST(s.`held_before` AS STRING),
        '{LOSS_FOUND[1]}', IFNULL(CAST(t.`trade_count` AS STRING), '{LOSS_FOUND[2]}'),
        '{LOSS_FOUND[3]}'
      ),
      t.`error`
    ),
    `last_trade_at` = NULL,
    `last_refreshed_at` = NULL
WHEN MATCHED
  AND {_NEWER}
  AND NOT {_DONE} THEN
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
  AND {_NEWER} THEN
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
    `last_refreshed_at`,
    `source`
  )
  VALUES (
    s.`wallet_address`,
    TRUE,
    s.`upload_successful` AND s.`fetched_from` IS NULL,
    s.`trade_count`,
    s.`gcs_file`,
    s.`processed_at`,
    s.`run_id`,
    1,
    IF(
      s.`upload_successful` AND s.`fetched_from` IS NOT NULL,
      '{NOT_HELD}',
      s.`error`
    ),
    IF(s.`upload_successful` AND s.`fetched_from` IS NULL, s.`last_trade_at`, NULL),
    IF(s.`upload_successful` AND s.`fetched_from` IS NULL, s.`processed_at`, NULL),
    IF(s.`upload_successful`, s.`source`, NULL)
  )
""",
        params=(Param("run_id", "STRING"), *params),
    )


# Production's trade count is read for the successful wallets (@wallets) only: a failed wallet's
# outcome keeps its own count, and a wallet with any successful outcome is one of @wallets.
MERGE_CHECKPOINT = _merge_checkpoint("merge_checkpoint", _LISTED_WALLETS, (WALLETS,))
# For a run with too many wallets to list: every outcome's wallet, by subquery (not pruned).
MERGE_CHECKPOINT_UNPRUNED = _merge_checkpoint(
    "merge_checkpoint_unpruned", "(SELECT `wallet_address` FROM {load_outcomes})", ()
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
    FROM {load_outcomes}
    GROUP BY `wallet_address`
  ) AS w
) AS o
CROSS JOIN (SELECT COUNT(*) AS `trades_staged` FROM {load_trades}) AS tr
CROSS JOIN (SELECT COUNT(*) AS `markets_staged` FROM {load_markets}) AS m
CROSS JOIN (SELECT COUNT(*) AS `events_staged` FROM {load_events}) AS e
WHERE NOT EXISTS (
  SELECT 1
  FROM {runs} AS r
  WHERE r.`run_id` = @run_id
)
""",
    params=(Param("run_id", "STRING"), Param("committed_at", "TIMESTAMP")),
)

# The commit transaction's FIRST statement: a write to the lease row. Two commit transactions at
# once then both write one row of one table: BigQuery cancels one of two concurrent transactions
# that mutate the same table ("concurrent update"), DuckDB fails the second writer of a row
# ("Conflict on update"); the loser retries and finds the run committed (RUN_COMMITTED). It bumps
# a counter, a real change: DuckDB sees no conflict in an update that sets a value to itself.
COMMIT_LOCK = Statement(
    "commit_lock",
    """
MERGE INTO {lease} AS t
USING (SELECT @lease_name AS `lease_name`) AS s
ON t.`lease_name` = s.`lease_name`
WHEN MATCHED THEN
  UPDATE SET
    `commits` = IFNULL(t.`commits`, 0) + 1,
    `last_run_id` = @run_id
WHEN NOT MATCHED THEN
  INSERT (`lease_name`, `commits`, `last_run_id`)
  VALUES (s.`lease_name`, 1, @run_id)
""",
    params=(Param("lease_name", "STRING"), Param("run_id", "STRING")),
)

# Read inside the transaction, after COMMIT_LOCK: a twin that committed the run first makes this
# transaction roll back, changing nothing.
RUN_COMMITTED = Statement(
    "run_committed",
    """
SELECT COUNT(*) > 0 AS `committed`
FROM {runs}
WHERE `run_id` = @run_id
""",
    params=(Param("run_id", "STRING"),),
)

# The statements between BEGIN and COMMIT, in order. BigQuery sends them as one script.
# Production trades are read for the run's successful wallets, given as @wallets.
COMMIT_STATEMENTS: tuple[Statement, ...] = (
    INSERT_TRADES,
    MERGE_MARKETS,
    MERGE_EVENTS,
    INSERT_MISSING,
    MERGE_CHECKPOINT,
    INSERT_RUN,
)
# The same transaction for a run whose wallets are too many to list: the same result, with
# production trades filtered by subquery (read whole: no block pruning).
COMMIT_STATEMENTS_UNPRUNED: tuple[Statement, ...] = tuple(
    {INSERT_TRADES: INSERT_TRADES_UNPRUNED, MERGE_CHECKPOINT: MERGE_CHECKPOINT_UNPRUNED}.get(s, s)
    for s in COMMIT_STATEMENTS
)


def commit_statements(wallets_listed: bool, ids_unique: bool = False) -> tuple[Statement, ...]:
    """The commit transaction's statements: reading production for the @wallets listed, or (a
    run with too many wallets to list) for the load tables' wallets by subquery; `ids_unique`
    (STAGED_IDS_UNIQUE said so): the trades' insert without the id dedup."""
    statements = COMMIT_STATEMENTS if wallets_listed else COMMIT_STATEMENTS_UNPRUNED
    if not ids_unique:
        return statements
    unique = {
        INSERT_TRADES: INSERT_TRADES_IDS_UNIQUE,
        INSERT_TRADES_UNPRUNED: INSERT_TRADES_UNPRUNED_IDS_UNIQUE,
    }
    return tuple(unique.get(s, s) for s in statements)


def inserts_trades(statements: Sequence[Statement]) -> Statement:
    """Which of a commit's statements lands the trades (its count is the run's trades_inserted)."""
    (insert,) = (s for s in statements if s.name.startswith("insert_trades"))
    return insert


# ---------------------------------------------------------------------------------------------
# Verification: production's trades against the checkpoint, with one grouped query each.
# Two faults: a trade id held more than once (a hand-made copy of rows: the commit never lands an
# id twice), and a done wallet whose trade count differs from production's (a dropped partition,
# a table restored from an old snapshot, a hand-edited checkpoint, or a count the checkpoint took
# from production while production held copies).

VERIFY_DUPLICATES = Statement(
    "verify_duplicates",
    """
SELECT
  MIN(`wallet_address`) AS `wallet_address`,
  `id`,
  COUNT(*) AS `copies`
FROM {trades}
GROUP BY `id`
HAVING COUNT(*) > 1
ORDER BY `wallet_address`, `id`
""",
)

# Done wallets whose checkpoint count differs from production's rows, or whose rows hold an id
# more than once: (wallet, checkpoint count, production rows, production distinct ids).
VERIFY_MISMATCHES = Statement(
    "verify_mismatches",
    """
SELECT
  c.`wallet_address`,
  c.`trade_count`,
  IFNULL(p.`trade_rows`, 0) AS `production_rows`,
  IFNULL(p.`trade_ids`, 0) AS `production_ids`
FROM {checkpoint} AS c
LEFT JOIN (
  SELECT
    `wallet_address`,
    COUNT(*) AS `trade_rows`,
    COUNT(DISTINCT `id`) AS `trade_ids`
  FROM {trades}
  GROUP BY `wallet_address`
) AS p
  ON p.`wallet_address` = c.`wallet_address`
WHERE c.`completed` = TRUE
  AND c.`upload_successful` = TRUE
  AND (
    IFNULL(c.`trade_count`, -1) != IFNULL(p.`trade_rows`, 0)
    OR IFNULL(p.`trade_rows`, 0) != IFNULL(p.`trade_ids`, 0)
  )
ORDER BY c.`wallet_address`
""",
)

# The repair of duplicate ids, one statement: per duplicated id, every copy is deleted and the
# earliest fetched one (as the commit's own dedup picks) inserted again. The source is read from
# the table as it was when the statement started, so it is its own snapshot. Copies that differ
# in other columns collapse to that one row too: an id is one fill, whatever else a copy says.
VERIFY_DEDUPLICATE = Statement(
    "verify_deduplicate",
    f"""
MERGE INTO {{trades}} AS t
USING (
  SELECT
{_names(TRADE_COLUMNS, indent="    ")}
  FROM {{trades}}
  WHERE `id` IN (
      SELECT `id`
      FROM {{trades}}
      GROUP BY `id`
      HAVING COUNT(*) > 1
    )
  QUALIFY ROW_NUMBER() OVER (PARTITION BY `id` ORDER BY `fetched_at`, `run_id`) = 1
) AS s
ON FALSE
WHEN NOT MATCHED BY SOURCE
  AND t.`id` IN (
    SELECT `id`
    FROM {{trades}}
    GROUP BY `id`
    HAVING COUNT(*) > 1
  ) THEN
  DELETE
WHEN NOT MATCHED THEN
  INSERT (
{_names(TRADE_COLUMNS, indent="    ")}
  )
  VALUES (
{_names(TRADE_COLUMNS, "s", indent="    ")}
  )
""",
)

# Resetting makes a wallet pending again: the next run fetches its whole history, and the
# commit's id dedup lands only what production is missing. Runs after VERIFY_DEDUPLICATE in the
# same transaction, and resets only the given wallets still done whose checkpoint count differs
# from production's (so a wallet whose only fault was a copied row stays done); their trade_count
# becomes what production holds, so the checkpoint tells the truth until the next run lands them.
VERIFY_RESET = Statement(
    "verify_reset",
    """
UPDATE {checkpoint} AS c
SET
  `upload_successful` = FALSE,
  `error` = @reason,
  `last_trade_at` = NULL,
  `last_refreshed_at` = NULL,
  `trade_count` = p.`production_count`
FROM (
  SELECT
    w.`wallet_address`,
    COUNT(t.`id`) AS `production_count`
  FROM (
    SELECT DISTINCT x AS `wallet_address`
    FROM UNNEST(@wallets) AS x
  ) AS w
  LEFT JOIN {trades} AS t
    ON t.`wallet_address` = w.`wallet_address`
  GROUP BY w.`wallet_address`
) AS p
WHERE c.`wallet_address` = p.`wallet_address`
  AND c.`completed` = TRUE
  AND c.`upload_successful` = TRUE
  AND IFNULL(c.`trade_count`, -1) != p.`production_count`
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

# How current the done wallets are: those whose last refresh failed (done, with the error it
# left: the users' failed-wallets query, `NOT upload_successful`, never shows them, so a source
# that fails every refresh kept every number green), and the oldest successful fetch among them.
STATUS_CURRENCY = Statement(
    "status_currency",
    """
SELECT
  IFNULL(COUNTIF(`error` IS NOT NULL), 0) AS `refresh_failing`,
  MIN(`last_refreshed_at`) AS `oldest_fetch_at`
FROM {checkpoint}
WHERE `completed` = TRUE
  AND `upload_successful` = TRUE
""",
)

# The true remaining work, beside the users' percentage (which counts raw `traders` values, so
# case variants, repeats and strings that are no address never leave it): the distinct valid
# addresses of `traders`, normalised as the graph normalises them (transforms.read_wallets:
# trimmed, lowercased, 0x added to 40 bare hex digits), and how many of those are not done.
_NORMALISED_TRADER = f"""
  SELECT DISTINCT n.`wallet_address`
  FROM (
    SELECT
      IF(
        STARTS_WITH(a.`address`, '{ADDRESS_PREFIX}'),
        a.`address`,
        CONCAT('{ADDRESS_PREFIX}', a.`address`)
      ) AS `wallet_address`
    FROM (
      SELECT LOWER(TRIM(`wallet_address`)) AS `address`
      FROM {{traders}}
    ) AS a
  ) AS n
  WHERE REGEXP_CONTAINS(n.`wallet_address`, r'{ADDRESS_PATTERN}')
    AND CHAR_LENGTH(n.`wallet_address`) = {ADDRESS_LENGTH}
"""

STATUS_TO_DO = Statement(
    "status_to_do",
    f"""
SELECT
  COUNT(*) AS `valid_wallets`,
  IFNULL(COUNTIF(c.`wallet_address` IS NULL), 0) AS `wallets_to_do`
FROM ({_NORMALISED_TRADER}) AS w
LEFT JOIN (
  SELECT DISTINCT `wallet_address`
  FROM {{checkpoint}}
  WHERE `completed` = TRUE
    AND `upload_successful` = TRUE
) AS c
  ON c.`wallet_address` = w.`wallet_address`
""",
)

# Who holds the backfill's lease now, and until when; no row when it is free or expired.
STATUS_LEASE = Statement(
    "status_lease",
    """
SELECT
  `holder`,
  `expires_at`
FROM {lease}
WHERE `lease_name` = @lease_name
  AND `holder` IS NOT NULL
  AND `expires_at` > CURRENT_TIMESTAMP()
""",
    params=(Param("lease_name", "STRING"),),
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


def _indented(text: str, indent: str) -> str:
    return "\n".join(indent + line for line in text.strip().splitlines())


STATUS_PENDING = Statement(
    "status_pending",
    f"""
SELECT
  (
    SELECT COUNT(*)
    FROM (
{_indented(_UNLANDED_MARKETS, "      ")}
    ) AS unlanded_markets
  ) AS `markets_pending`,
  (
    SELECT COUNT(*)
    FROM (
{_indented(_UNLANDED_EVENTS, "      ")}
    ) AS unlanded_events
  ) AS `events_pending`
""",
)


def _declared(kind: str) -> str:
    """The keys of `kind` (a schema constant) missing at the source, as a subquery's text."""
    return _indented(_missing_at_source(f"'{kind}'"), "      ")


# Of the unlanded markets and events (STATUS_PENDING's), those missing at the source: no run asks
# for them any more. `status` shows the rest as pending (asked again by the next run).
STATUS_MISSING = Statement(
    "status_missing",
    f"""
SELECT
  (
    SELECT COUNT(*)
    FROM (
{_indented(_UNLANDED_MARKETS, "      ")}
    ) AS unlanded_markets
    WHERE unlanded_markets.`condition_id` IN (
{_declared(MISSING_MARKETS)}
    )
  ) AS `markets_missing`,
  (
    SELECT COUNT(*)
    FROM (
{_indented(_UNLANDED_EVENTS, "      ")}
    ) AS unlanded_events
    WHERE unlanded_events.`event_slug` IN (
{_declared(MISSING_EVENTS)}
    )
  ) AS `events_missing`
""",
    params=MISSING_PARAMS,
)

STATUS_TRADES_BY_SOURCE = Statement(
    "status_trades_by_source",
    f"""
SELECT
  {_source()} AS `trade_source`,
  COUNT(*) AS `trades_rows`
FROM {{trades}}
GROUP BY `trade_source`
ORDER BY `trade_source`
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
# `traders add`: appends addresses (already normalised and checked against `traders` by the
# caller) as one array parameter; the NOT EXISTS keeps a repeated call from adding them twice.

INSERT_TRADERS = Statement(
    "insert_traders",
    """
INSERT INTO {traders} (`wallet_address`)
SELECT n.`wallet_address`
FROM (
  SELECT DISTINCT w AS `wallet_address`
  FROM UNNEST(@wallets) AS w
) AS n
WHERE NOT EXISTS (
    SELECT 1
    FROM {traders} AS t
    WHERE t.`wallet_address` = n.`wallet_address`
  )
""",
    params=(Param("wallets", "ARRAY<STRING>"),),
)

# ---------------------------------------------------------------------------------------------
# DuckDB only: session setup and loading a run's NDJSON staging files (BigQuery uses load jobs).

DUCKDB_TABLE_COLUMNS = Statement(
    "duckdb_table_columns",
    "SELECT column_name, is_nullable = 'YES' FROM information_schema.columns "
    "WHERE table_name = $table",
    params=(Param("table", "STRING"),),
    dialect="duckdb",
)

# Every load table of the warehouse, by prefix (what a killed commit left behind).
DUCKDB_LOAD_TABLES = Statement(
    "duckdb_load_tables",
    "SELECT table_name FROM information_schema.tables WHERE starts_with(table_name, $prefix)",
    params=(Param("prefix", "STRING"),),
    dialect="duckdb",
)

DUCKDB_SET_UTC = Statement("duckdb_set_utc", "SET TimeZone = 'UTC'", dialect="duckdb")

# The commit loads a run's whole staging: without a cap DuckDB sizes its buffers to the machine and
# the process's peak memory grows with the run. Capped, insertion order not kept, it spills to
# `<database>.tmp` instead, and peak memory stays flat however many trades a run stages. 256 MB:
# the cross-source dedup's window and joins hold blocks that cannot spill, and 64 MB ran out on the
# demo's 100,000-trade commit. One thread, but the commit's session takes two (DUCKDB_COMMIT_THREADS).
DUCKDB_LIMIT_MEMORY: tuple[Statement, ...] = (
    Statement("duckdb_memory_limit", "SET memory_limit = '256MB'", dialect="duckdb"),
    Statement("duckdb_threads", "SET threads = 1", dialect="duckdb"),
    Statement("duckdb_insertion_order", "SET preserve_insertion_order = false", dialect="duckdb"),
)
# The commit runs once the fetch is over: with two threads its load and the dedup's window take
# about half the time (a 350,000-trade commit: 6.0 s -> 3.5 s for the load and the insert,
# bench/README.md section 7), under the same memory cap. Only there: its statements do not
# depend on row order, and every other session keeps one thread.
DUCKDB_COMMIT_THREADS = Statement("duckdb_commit_threads", "SET threads = 2", dialect="duckdb")


def _duckdb_type(column: Column) -> str:
    bq = f"ARRAY<{column.type}>" if column.mode == "REPEATED" else column.type
    return exp.DataType.build(bq, dialect="bigquery").sql("duckdb")


def _duckdb_load(kind: str, columns: tuple[Column, ...]) -> Statement:
    """INSERT a run's files of one kind into its load table, with the schema's types.

    The explicit `columns` struct means DuckDB never guesses a type; the load table's NOT
    NULL constraints reject rows missing a REQUIRED value, as a BigQuery load job would. A
    REPEATED value that is absent or null becomes an empty array, as BigQuery loads it.
    """
    names = ",\n".join(f'  "{c.name}"' for c in columns)
    values = ",\n".join(
        f'  COALESCE("{c.name}", CAST([] AS {_duckdb_type(c)}))'
        if c.mode == "REPEATED"
        else f'  "{c.name}"'
        for c in columns
    )
    struct = ",\n".join(f"    '{c.name}': '{_duckdb_type(c)}'" for c in columns)
    return Statement(
        f"duckdb_load_files_{kind}",
        f"""
INSERT INTO "{{load_{kind}}}" (
{names}
)
SELECT
{values}
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


DUCKDB_LOAD_FILES: dict[str, Statement] = {
    kind: _duckdb_load(kind, columns) for kind, columns in STAGED_KINDS.items()
}

ALL_STATEMENTS: tuple[Statement, ...] = (
    *ENSURE_TABLES,
    *CREATE_LOAD_TABLE.values(),
    *DROP_LOAD_TABLE.values(),
    SELECT_TRADERS,
    SELECT_DONE_WALLETS,
    SELECT_CHECKPOINT_STATES,
    SELECT_KNOWN_MARKETS,
    SELECT_KNOWN_EVENTS,
    SELECT_UNLANDED_MARKETS,
    SELECT_UNLANDED_EVENTS,
    SELECT_MISSING_AT_SOURCE,
    SELECT_COMMITTED_RUN_IDS,
    SELECT_RUN,
    VERIFY_DUPLICATES,
    VERIFY_MISMATCHES,
    VERIFY_DEDUPLICATE,
    VERIFY_RESET,
    ENSURE_LEASE_ROW,
    LEASE_ACQUIRE,
    LEASE_RELEASE,
    SELECT_LEASE,
    BEGIN_TRANSACTION,
    COMMIT_LOCK,
    RUN_COMMITTED,
    SELECT_LANDING_WALLETS,
    LOADED_COUNTS_DISAGREE,
    STAGED_IDS_UNIQUE,
    *COMMIT_STATEMENTS,
    INSERT_TRADES_UNPRUNED,
    INSERT_TRADES_IDS_UNIQUE,
    INSERT_TRADES_UNPRUNED_IDS_UNIQUE,
    MERGE_CHECKPOINT_UNPRUNED,
    COMMIT_TRANSACTION,
    ROLLBACK_TRANSACTION,
    STATUS_PROGRESS,
    STATUS_TO_DO,
    STATUS_FAILED_WALLETS,
    STATUS_TOTALS,
    STATUS_LAST_RUNS,
    STATUS_PENDING,
    STATUS_MISSING,
    STATUS_TRADES_BY_SOURCE,
    STATUS_LEASE,
    INSERT_TRADERS,
    *RELAX_COLUMNS,
    DUCKDB_SET_UTC,
    *DUCKDB_LIMIT_MEMORY,
    DUCKDB_COMMIT_THREADS,
    DUCKDB_TABLE_COLUMNS,
    DUCKDB_LOAD_TABLES,
    *DUCKDB_LOAD_FILES.values(),
)

# ---------------------------------------------------------------------------------------------
# Rendering.


def _table_map(tables: TableNames, run_id: str | None, nonce: str = "") -> dict[str, str]:
    names = tables.as_dict()
    if run_id is not None:
        names.update({f"load_{kind}": load_table(run_id, kind, nonce) for kind in STAGED_KINDS})
    return names


def _fill(statement: Statement, names: Mapping[str, str]) -> str:
    try:
        return statement.sql.strip().format_map(names)
    except KeyError as missing:
        raise ValueError(
            f"statement {statement.name} needs table {missing}: pass run_id for load tables"
        ) from None


def render(
    statement: Statement,
    tables: TableNames,
    run_id: str | None = None,
    dataset: str | None = None,
    nonce: str = "",
) -> str:
    """The statement as BigQuery SQL, table names backtick-quoted (and prefixed with `dataset`);
    `run_id` and `nonce` name the load tables (see `load_table`)."""
    if statement.dialect != "bigquery":
        raise ValueError(f"statement {statement.name} is {statement.dialect}-only")
    prefix = f"{validate_dataset(dataset)}." if dataset is not None else ""
    names = {key: f"`{prefix}{name}`" for key, name in _table_map(tables, run_id, nonce).items()}
    text = _fill(statement, names)
    return f"{text}\n{statement.storage}" if statement.storage else text


def render_duckdb(
    statement: Statement, tables: TableNames, run_id: str | None = None, nonce: str = ""
) -> str:
    """The statement as DuckDB SQL: sqlglot's translation of the BigQuery text, cached.

    The BigQuery-only storage clause is left out here, deliberately; anything else sqlglot
    cannot translate raises instead of being dropped with a warning. The translation is cached
    without the load tables' names (every commit attempt has its own, by its nonce): they are
    put in after it, so a commit does not translate its statements again (~0.1 s).
    """
    names = _table_map(tables, run_id, nonce)  # validates run_id and nonce
    if statement.dialect == "duckdb":
        return _fill(statement, names)
    text = _translate_duckdb(statement, tables, run_id is not None)
    if run_id is not None:
        for kind in STAGED_KINDS:
            text = text.replace(f'"{_load_placeholder(kind)}"', f'"{names[f"load_{kind}"]}"')
    return text


def _load_placeholder(kind: str) -> str:
    """What stands for a load table's name while a statement is translated: no table has it
    (a load table's name starts with LOAD_TABLE_PREFIX)."""
    return f"__load_table_placeholder_{kind}__"


@functools.lru_cache(maxsize=512)
def _translate_duckdb(statement: Statement, tables: TableNames, with_load_tables: bool) -> str:
    names = tables.as_dict()
    if with_load_tables:
        names.update({f"load_{kind}": _load_placeholder(kind) for kind in STAGED_KINDS})
    quoted = {key: f"`{name}`" for key, name in names.items()}
    (translated,) = sqlglot.transpile(
        _fill(statement, quoted),
        read="bigquery",
        write="duckdb",
        identify=True,
        pretty=True,
        unsupported_level=ErrorLevel.RAISE,
    )
    return translated
