"""The SQL catalogue: every statement renders for BigQuery and DuckDB, and only names get formatted."""

from __future__ import annotations

import re

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from pipeline.schema import STAGED_KINDS
from pipeline.warehouse import TableNames, base
from pipeline.warehouse import sql as q

RUN_ID = "run-2026_11_23-XYZ"
BIGQUERY_STATEMENTS = [s for s in q.ALL_STATEMENTS if s.dialect == "bigquery"]
DUCKDB_ONLY = [s for s in q.ALL_STATEMENTS if s.dialect == "duckdb"]


def _ids(statements: list[q.Statement]) -> list[str]:
    return [s.name for s in statements]


def test_statement_names_are_unique() -> None:
    names = [s.name for s in q.ALL_STATEMENTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("statement", BIGQUERY_STATEMENTS, ids=_ids(BIGQUERY_STATEMENTS))
def test_bigquery_rendering_parses_and_quotes_tables(statement: q.Statement) -> None:
    sql = q.render(statement, TableNames(), RUN_ID, dataset="my-project.polymarket")
    parsed = sqlglot.parse_one(sql, read="bigquery")
    for table in parsed.find_all(exp.Table):
        # Every table is fully qualified: project, dataset, name.
        assert table.catalog == "my-project"
        assert table.db == "polymarket"
    assert "{" not in sql and "}" not in sql


@pytest.mark.parametrize("statement", BIGQUERY_STATEMENTS, ids=_ids(BIGQUERY_STATEMENTS))
def test_duckdb_translation_parses(statement: q.Statement) -> None:
    sql = q.render_duckdb(statement, TableNames(), RUN_ID)
    sqlglot.parse_one(sql, read="duckdb")
    assert len(duckdb.extract_statements(sql)) == 1  # DuckDB's own parser accepts it
    assert "`" not in sql


@pytest.mark.parametrize("statement", DUCKDB_ONLY, ids=_ids(DUCKDB_ONLY))
def test_duckdb_only_statements_parse_and_are_refused_for_bigquery(
    statement: q.Statement,
) -> None:
    sql = q.render_duckdb(statement, TableNames(), RUN_ID)
    assert len(duckdb.extract_statements(sql)) == 1
    with pytest.raises(ValueError, match="duckdb-only"):
        q.render(statement, TableNames(), RUN_ID)


@pytest.mark.parametrize("statement", q.ALL_STATEMENTS, ids=_ids(list(q.ALL_STATEMENTS)))
def test_declared_params_are_exactly_the_placeholders(statement: q.Statement) -> None:
    duck = q.render_duckdb(statement, TableNames(), RUN_ID)
    assert set(re.findall(r"\$(\w+)", duck)) == set(statement.param_names)
    if statement.dialect == "bigquery":
        bq = q.render(statement, TableNames(), RUN_ID)
        assert set(re.findall(r"@(\w+)", bq)) == set(statement.param_names)


@pytest.mark.parametrize("statement", BIGQUERY_STATEMENTS, ids=_ids(BIGQUERY_STATEMENTS))
def test_no_value_is_formatted_into_sql(statement: q.Statement) -> None:
    sql = q.render(statement, TableNames(), RUN_ID)
    # The run id only ever reaches SQL through a parameter (load table names map '-' to '_').
    assert RUN_ID not in sql
    strings = [lit for lit in sqlglot.parse_one(sql, read="bigquery").find_all(exp.Literal)]
    # The only string literals allowed are schema constants (the legacy source's name).
    assert [lit.this for lit in strings if lit.is_string and lit.this not in q.SQL_CONSTANTS] == []


def test_statements_that_take_values_use_parameters() -> None:
    assert q.INSERT_RUN.param_names == ("run_id", "committed_at")
    assert "@run_id" in q.render(q.INSERT_RUN, TableNames(), RUN_ID)
    assert "@committed_at" in q.render(q.INSERT_RUN, TableNames(), RUN_ID)
    assert "@limit" in q.render(q.STATUS_FAILED_WALLETS, TableNames())
    assert "$run_id" in q.render_duckdb(q.SELECT_RUN, TableNames())


def test_the_commit_transaction_uses_no_current_timestamp() -> None:
    for statement in q.COMMIT_STATEMENTS:
        assert "CURRENT_TIMESTAMP" not in q.render(statement, TableNames(), RUN_ID).upper()


def test_trades_ddl_partitions_on_bigquery_only() -> None:
    bq = q.render(q.CREATE_TRADES, TableNames())
    assert "PARTITION BY DATE(`traded_at`)" in bq
    assert "CLUSTER BY `wallet_address`" in bq
    duck = q.render_duckdb(q.CREATE_TRADES, TableNames())
    assert "PARTITION" not in duck.upper() and "CLUSTER" not in duck.upper()
    assert '"traded_at" TIMESTAMPTZ NOT NULL' in duck


def test_sqlglot_losses_raise_instead_of_warning() -> None:
    lossy = q.Statement("lossy", "CREATE TABLE {trades} (`a` INT64) PARTITION BY `a`")
    q.render(lossy, TableNames())  # fine for BigQuery
    with pytest.raises(sqlglot.errors.UnsupportedError):
        q.render_duckdb(lossy, TableNames())


def test_custom_table_names_are_rendered() -> None:
    tables = TableNames(trades="trades_v2", checkpoint="ckpt")
    sql = q.render(q.INSERT_TRADES, tables, RUN_ID)
    assert "INSERT INTO `trades_v2`" in sql and "`trades`" not in sql
    assert "`ckpt`" in q.render_duckdb(q.MERGE_CHECKPOINT, tables, RUN_ID).replace('"', "`")


@pytest.mark.parametrize(
    "bad",
    ["t; DROP TABLE x", "a.b", "a`b", 'a"b', "", "1abc", "with space", "x" * 1025, "é"],
)
def test_table_names_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="runs="):
        TableNames(runs=bad)


@pytest.mark.parametrize("bad", ["_stg_wallets", "_STG_trades", "_stg_"])
def test_a_table_name_a_load_table_could_have_is_refused(bad: str) -> None:
    """Start-up drops every table named like a load table (a killed commit's): it dropped a
    user's traders table named `_stg_wallets`."""
    with pytest.raises(ValueError, match=r"traders='.*' starts with '_stg_'"):
        TableNames(traders=bad)


@pytest.mark.parametrize(
    ("names", "roles"),
    [
        ({"checkpoint": "Traders"}, "traders= and checkpoint="),
        ({"markets": "events"}, "markets= and events="),
        ({"runs": "x", "lease": "X"}, "runs= and lease="),
    ],
)
def test_two_roles_on_one_table_are_refused(names: dict[str, str], roles: str) -> None:
    """A checkpoint table named `Traders` altered the user's traders table; markets and events
    on one table overwrote each other."""
    with pytest.raises(ValueError, match=f"table names {roles} are both"):
        TableNames(**names)


def test_valid_table_names_are_accepted() -> None:
    tables = TableNames(traders="_t", trades="Trades_2026", runs="x" * 1024)
    assert tables.trades == "Trades_2026"


@pytest.mark.parametrize("bad", ["", "a b", "a;b", "r" * 65, "a.b", "é"])
def test_run_ids_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="run_id"):
        q.validate_run_id(bad)


def test_load_table_names_are_identifiers_and_do_not_collide() -> None:
    names = {q.load_table(run_id, "trades") for run_id in ("a-b", "a_b", "A-b")}
    assert len(names) == 3
    for name in names:
        q.validate_identifier(name)
    assert q.load_table("a-b", "outcomes").endswith("_outcomes")
    with pytest.raises(ValueError, match="staging kind"):
        q.load_table("a", "nope")
    assert set(q.CREATE_LOAD_TABLE) == set(STAGED_KINDS)
    assert all(name.startswith(q.LOAD_TABLE_PREFIX) for name in names)


def test_load_table_statements_need_a_run_id() -> None:
    with pytest.raises(ValueError, match="run_id"):
        q.render(q.INSERT_TRADES, TableNames())


@pytest.mark.parametrize("bad", ["proj", "proj.ds; DROP", "Proj.ds", "p.ds", "my-project.d-s"])
def test_dataset_prefix_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match=r"PROJECT\.DATASET"):
        q.render(q.SELECT_TRADERS, TableNames(), dataset=bad)


def test_relaxed_columns_are_nullable_in_the_schema_and_relaxed_by_one_alter() -> None:
    from pipeline.schema import TRADE_COLUMNS

    modes = {c.name: c.mode for c in TRADE_COLUMNS}
    assert q.RELAXED_COLUMNS == {"trades": ("order_hash", "user")}
    assert all(modes[name] == "NULLABLE" for name in q.RELAXED_COLUMNS["trades"])
    assert q.render(q.relax_column("trades", "user"), TableNames(trades="fills")) == (
        "ALTER TABLE `fills` ALTER COLUMN `user` DROP NOT NULL"
    )
    duck = q.render_duckdb(q.relax_column("trades", "user"), TableNames())
    assert " ".join(duck.split()) == 'ALTER TABLE "trades" ALTER COLUMN "user" DROP NOT NULL'
    with pytest.raises(ValueError, match="not a relaxed column"):
        q.relax_column("trades", "id")


def test_new_repeated_and_bool_columns_are_added_with_their_types() -> None:
    from pipeline.schema import MARKET_COLUMNS

    columns = {c.name: c for c in MARKET_COLUMNS}
    duck = q.render_duckdb(q.add_column("markets", columns["payouts"]), TableNames())
    assert (
        " ".join(duck.split())
        == 'ALTER TABLE "markets" ADD COLUMN IF NOT EXISTS "payouts" BIGINT[]'
    )
    assert q.render(q.add_column("markets", columns["neg_risk"]), TableNames()) == (
        "ALTER TABLE `markets` ADD COLUMN IF NOT EXISTS `neg_risk` BOOL"
    )


def _production_reads(statement: q.Statement) -> list[exp.Table]:
    """Each read of production `trades` in `statement` (its FROM; not the INSERT's target)."""
    parsed = sqlglot.parse_one(q.render(statement, TableNames(), RUN_ID), read="bigquery")
    return [
        table
        for table in parsed.find_all(exp.Table)
        if table.name == "trades" and isinstance(table.parent, exp.From)
    ]


def _wallet_filters(read: exp.Table) -> list[exp.In]:
    """The conjuncts of the read's WHERE that are `<the table>.wallet_address IN UNNEST(...)`."""
    where = read.find_ancestor(exp.Select).args.get("where")
    conjuncts = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    alias = read.alias_or_name
    return [
        c
        for c in conjuncts
        if isinstance(c, exp.In)
        and isinstance(c.this, exp.Column)
        and c.this.name == "wallet_address"
        and c.this.table in ("", alias)
        and isinstance(c.args.get("unnest"), exp.Unnest)
    ]


def test_every_production_read_of_the_commit_filters_on_the_listed_wallets() -> None:
    """Block pruning on `wallet_address` needs a constant filter on the column itself: the array
    parameter @wallets, never a subquery (BigQuery resolves that only while the query runs)."""
    reads = {s.name: _production_reads(s) for s in q.COMMIT_STATEMENTS}
    # The id lookup, every source's fill keys, the row's own source's; the checkpoint's count.
    assert {name: len(tables) for name, tables in reads.items() if tables} == {
        q.INSERT_TRADES.name: 3,
        q.MERGE_CHECKPOINT.name: 1,
    }
    for name, tables in reads.items():
        for read in tables:
            (wallets,) = _wallet_filters(read)
            (parameter,) = wallets.args["unnest"].expressions
            assert isinstance(parameter, exp.Parameter) and parameter.name == "wallets", name
            assert not list(wallets.find_all(exp.Select)), name  # a constant, no subquery
    for statement in (q.INSERT_TRADES, q.MERGE_CHECKPOINT):
        assert q.WALLETS in statement.params  # and nothing else but the run's id
        assert set(statement.params) <= {q.WALLETS, q.Param("run_id", "STRING")}
    assert q.Param("wallets", "ARRAY<STRING>") == q.WALLETS
    # The staged rows still come from the load table's successful wallets, as before.
    insert = q.render(q.INSERT_TRADES, TableNames(), RUN_ID)
    assert "fill_ordinal" in insert and "ROUND(d.`price` * 1000000)" in insert
    assert "WHERE s.`wallet_address` IN (\n    SELECT o.`wallet_address`" in insert


def test_the_unpruned_commit_differs_only_in_how_production_is_filtered() -> None:
    """A run with too many wallets to list commits with the subquery forms: no @wallets, the
    other statements the same, in the same order."""
    listed, unlisted = q.commit_statements(True), q.commit_statements(False)
    assert listed == q.COMMIT_STATEMENTS and unlisted == q.COMMIT_STATEMENTS_UNPRUNED
    swapped = {
        q.INSERT_TRADES: q.INSERT_TRADES_UNPRUNED,
        q.MERGE_CHECKPOINT: q.MERGE_CHECKPOINT_UNPRUNED,
    }
    assert unlisted == tuple(swapped.get(s, s) for s in listed)
    for pruned, unpruned in swapped.items():
        assert set(unpruned.params) == set(pruned.params) - {q.WALLETS}
        text = q.render(unpruned, TableNames(), RUN_ID)
        assert "@wallets" not in text and "UNNEST" not in text
        for read in _production_reads(unpruned):
            assert _wallet_filters(read) == []
        # Everything else is the same text: only the production filters were swapped.
        listed_text = q.render(pruned, TableNames(), RUN_ID)
        wallet_filter = (
            r"(\w+\.)?`wallet_address` IN (UNNEST\(@wallets\)\s*(AND )?|\(\s*SELECT[^)]*\))"
        )
        outside = re.compile(wallet_filter)
        assert outside.sub("", listed_text).split() == outside.sub("", text).split()


def test_the_landing_wallets_are_read_from_the_loaded_outcomes() -> None:
    text = q.render(q.SELECT_LANDING_WALLETS, TableNames(), RUN_ID)
    assert q.load_table(RUN_ID, "outcomes") in text
    assert "`upload_successful` = TRUE" in text and "LIMIT @limit" in text
    assert q.SELECT_LANDING_WALLETS.params == (q.Param("limit", "INT64"),)


def test_each_commit_attempt_gets_load_tables_of_its_own() -> None:
    assert q.load_table("r1", "trades", "") == q.load_table("r1", "trades")
    attempts = {q.load_table("r1", "trades", nonce) for nonce in ("", "00ff", "a1b2c3d4")}
    assert len(attempts) == 3
    assert all(name.startswith(q.LOAD_TABLE_PREFIX + "r1_") for name in attempts)
    rendered = q.render(q.INSERT_TRADES, TableNames(), "r1", nonce="00ff")
    assert q.load_table("r1", "trades", "00ff") in rendered
    assert q.load_table("r1", "trades") not in rendered
    for bad in ("XYZ", "0x1", "a" * 17, "; DROP"):
        with pytest.raises(ValueError, match="nonce"):
            q.load_table("r1", "trades", bad)


def test_the_status_address_rule_is_the_pipelines() -> None:
    """STATUS_TO_DO's SQL keeps exactly the values transforms.read_wallets normalises to an
    address, and normalises them the same way (checked on DuckDB, statement by statement)."""
    from transforms.read_wallets import normalize_wallet

    raw = [
        "0x" + "a" * 40,
        "0X" + "A" * 40,
        " 0x" + "b" * 40 + " ",
        "c" * 40,
        "0x" + "d" * 39,
        "0x" + "e" * 41,
        "f" * 41,
        "0x" + "g" * 40,
        "0x0x" + "1" * 38,
        "",
        "not-a-wallet",
    ]
    tables = TableNames()
    with duckdb.connect() as conn:
        conn.execute(q.render_duckdb(q.CREATE_TRADERS, tables))
        conn.execute(q.render_duckdb(q.CREATE_CHECKPOINT, tables))
        conn.executemany("INSERT INTO traders VALUES (?)", [[value] for value in raw])
        valid, to_do = conn.execute(q.render_duckdb(q.STATUS_TO_DO, tables)).fetchone()
    expected = {w for w in (normalize_wallet(value)[0] for value in raw) if w is not None}
    assert (valid, to_do) == (len(expected), len(expected)) == (3, 3)


def test_the_missing_log_holds_one_row_per_run_and_key_however_often_committed() -> None:
    """INSERT_MISSING (statement by statement on DuckDB): a run's repeated sightings of a key, and
    the same run committed again, add one row; SELECT_MISSING_AT_SOURCE counts distinct runs."""
    tables = TableNames()
    with duckdb.connect() as conn:
        conn.execute(q.render_duckdb(q.CREATE_MISSING, tables))

        def commit(run_id: str, keys: list[str]) -> None:
            conn.execute(q.render_duckdb(q.CREATE_LOAD_TABLE["missing"], tables, run_id))
            load = q.load_table(run_id, "missing")
            rows = [["markets", key, "2026-11-23 12:00:00+00:00"] for key in keys]
            conn.executemany(f'INSERT INTO "{load}" VALUES (?, ?, ?)', rows)
            for _ in range(2):
                conn.execute(q.render_duckdb(q.INSERT_MISSING, tables, run_id), {"run_id": run_id})

        def missing_after(runs: int) -> list[str]:
            sql = q.render_duckdb(q.SELECT_MISSING_AT_SOURCE, tables)
            params = {"kind": q.MISSING_MARKETS, "missing_after": runs, "missing_span_s": 0}
            params["missing_since"] = 0
            return sorted(key for (key,) in conn.execute(sql, params).fetchall())

        commit("r1", ["0xa", "0xa", "0xb"])
        commit("r2", ["0xa"])
        count = conn.execute('SELECT COUNT(*) FROM "backfill_missing"').fetchone()
        assert count == (3,)
        assert (missing_after(1), missing_after(2), missing_after(3)) == (
            ["0xa", "0xb"],
            ["0xa"],
            [],
        )
        assert (
            conn.execute(
                q.render_duckdb(q.SELECT_MISSING_AT_SOURCE, tables),
                {"kind": q.MISSING_EVENTS, **base.missing_params(), "missing_after": 1},
            ).fetchall()
            == []
        )
    assert "missing" in q.COMMITTED_KINDS and q.INSERT_MISSING in q.COMMIT_STATEMENTS


def test_the_ids_unique_insert_differs_only_by_the_id_dedup() -> None:
    """A run whose staged ids are all distinct lands with the insert that skips the dedup's
    window: the same statement otherwise, in the same place of the same transaction."""
    for dedup, unique in (
        (q.INSERT_TRADES, q.INSERT_TRADES_IDS_UNIQUE),
        (q.INSERT_TRADES_UNPRUNED, q.INSERT_TRADES_UNPRUNED_IDS_UNIQUE),
    ):
        with_dedup = q.render(dedup, TableNames(), RUN_ID)
        without = q.render(unique, TableNames(), RUN_ID)
        assert "PARTITION BY s.`id`" in with_dedup and "PARTITION BY s.`id`" not in without
        assert with_dedup.replace(q._DEDUP_IDS, "") == without
        assert unique.params == dedup.params
    for listed in (True, False):
        plain, unique = q.commit_statements(listed), q.commit_statements(listed, ids_unique=True)
        assert plain == q.commit_statements(listed, ids_unique=False)
        changed = [(a, b) for a, b in zip(plain, unique, strict=True) if a != b]
        assert changed == [(q.inserts_trades(plain), q.inserts_trades(unique))]
        assert q.inserts_trades(unique).name.endswith("_ids_unique")


@pytest.mark.parametrize(
    ("ids", "unique"),
    [
        ([], True),
        (["t1"], True),
        (["t1", "t2", "t3"], True),
        (["t1", "t2", "t1"], False),
        (["t1", None], False),  # the load refuses a NULL id; were one there, it would dedup
    ],
)
def test_staged_ids_unique_says_whether_any_id_is_staged_twice(
    ids: list[str | None], unique: bool
) -> None:
    conn = duckdb.connect()
    table = q.load_table("r1", "trades", "ab")
    conn.execute(f'CREATE TABLE "{table}" (id VARCHAR)')  # the only column the query reads
    for i in ids:
        conn.execute(f'INSERT INTO "{table}" VALUES (?)', [i])
    text = q.render_duckdb(q.STAGED_IDS_UNIQUE, TableNames(), "r1", "ab")
    assert conn.execute(text).fetchone() == (unique,)
