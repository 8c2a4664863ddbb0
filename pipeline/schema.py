"""The columns of every staged and landed table: the one contract between the graph and the warehouse.

Staging files are newline-delimited JSON whose keys are exactly these columns; the warehouse builds
its DDL, its load schemas and its SQL column lists from the same tuples, so a column is added in one
place. Types are BigQuery's standard SQL names; the DuckDB warehouse translates them with sqlglot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # BigQuery standard SQL type: STRING, INT64, FLOAT64, BOOL, TIMESTAMP
    mode: str = "NULLABLE"  # NULLABLE | REQUIRED | REPEATED
    description: str = ""


def _c(name: str, type_: str, mode: str = "NULLABLE", description: str = "") -> Column:
    return Column(name, type_, mode, description)


# One fill of one wallet, from either source, plus what the pipeline derives. Columns both sources
# fill keep the names the Dome-era tables have (existing production tables keep working); columns
# only one source knows are nullable; whatever else a source sends is kept in `extra` (JSON text).
TRADE_COLUMNS: tuple[Column, ...] = (
    _c("id", "STRING", "REQUIRED", "derived trade id, see the source's ids module"),
    _c("wallet_address", "STRING", "REQUIRED", "the wallet whose history this fill came from"),
    _c("token_id", "STRING", "REQUIRED", "outcome token id; a ~77-digit integer kept as text"),
    _c("token_label", "STRING", description="the outcome's label (Polymarket: outcome)"),
    _c("side", "STRING", "REQUIRED", "BUY or SELL, from this wallet's side"),
    _c("market_slug", "STRING", "REQUIRED", "Polymarket: slug; empty when unenriched"),
    _c("condition_id", "STRING", "REQUIRED"),
    _c("shares", "INT64", "REQUIRED", "size in millionths of a share (the on-chain amount)"),
    _c("shares_normalized", "FLOAT64", "REQUIRED", "size in shares (Polymarket: size)"),
    _c("price", "FLOAT64", "REQUIRED", "USDC per share"),
    _c("tx_hash", "STRING", "REQUIRED", "Polymarket: transaction_hash"),
    _c("title", "STRING", "REQUIRED"),
    _c("timestamp", "INT64", "REQUIRED", "block time, unix seconds, as the API sends it"),
    _c("traded_at", "TIMESTAMP", "REQUIRED", "timestamp as a TIMESTAMP: the partitioning column"),
    _c("order_hash", "STRING", description="Dome only"),
    _c("user", "STRING", description="Dome only: maker address"),
    _c("taker", "STRING", description="Dome only"),
    _c("block_number", "INT64", description="Dome only"),
    _c("log_index", "INT64", description="Dome only"),
    _c("source", "STRING", description="dome or polymarket; null on rows landed before sources"),
    _c("event_slug", "STRING", description="Polymarket only"),
    _c("outcome_index", "INT64", description="Polymarket only; 999 = unlabelled"),
    _c("fill_ordinal", "INT64", description="Polymarket: ordinal among identical rows (see ids)"),
    _c("extra", "STRING", description="the source's other fields, as JSON text"),
    _c("run_id", "STRING", "REQUIRED", "the run that fetched it"),
    _c("fetched_at", "TIMESTAMP", "REQUIRED"),
)

MARKET_COLUMNS: tuple[Column, ...] = (
    _c("condition_id", "STRING", "REQUIRED"),
    _c("market_slug", "STRING"),
    _c("title", "STRING", description="Gamma: question"),
    _c("start_time", "INT64"),
    _c("end_time", "INT64", description="unix seconds (Gamma: endDate)"),
    _c("completed_time", "INT64"),
    _c("close_time", "INT64", description="unix seconds (Gamma: closedTime)"),
    _c("game_start_time", "STRING"),
    _c("tags", "STRING", "REPEATED"),
    _c("volume_1_week", "FLOAT64"),
    _c("volume_1_month", "FLOAT64"),
    _c("volume_1_year", "FLOAT64"),
    _c("volume_total", "FLOAT64", description="Gamma: volumeNum"),
    _c("resolution_source", "STRING"),
    _c("image", "STRING"),
    _c("description", "STRING"),
    _c("negative_risk_id", "STRING"),
    _c("side_a_id", "STRING", description="Gamma: clobTokenIds[0]"),
    _c("side_a_label", "STRING", description="Gamma: outcomes[0]"),
    _c("side_b_id", "STRING", description="Gamma: clobTokenIds[1]"),
    _c("side_b_label", "STRING", description="Gamma: outcomes[1]"),
    _c("winning_side_id", "STRING", description="Polymarket: from /v2/resolutions payouts"),
    _c("winning_side_label", "STRING"),
    _c(
        "status",
        "STRING",
        description="open, closed (Dome) / open, resolving, resolved (Polymarket)",
    ),
    _c("extra_fields", "STRING", description="the API's extra_fields object as JSON text"),
    _c("event_slug", "STRING"),
    _c("source", "STRING", description="dome or polymarket; null on rows landed before sources"),
    _c("market_id", "STRING", description="Gamma: id"),
    _c("outcomes", "STRING", "REPEATED", description="Gamma: outcomes, every one"),
    _c("outcome_prices", "STRING", "REPEATED", description="Gamma: outcomePrices, as decimals"),
    _c("token_ids", "STRING", "REPEATED", description="Gamma: clobTokenIds"),
    _c("payouts", "INT64", "REPEATED", description="micro-USDC per share per outcome, resolved"),
    _c("neg_risk", "BOOL"),
    _c("extra", "STRING", description="the source's other fields, as JSON text"),
    _c("run_id", "STRING", "REQUIRED"),
    _c("updated_at", "TIMESTAMP", "REQUIRED", "when this run fetched it"),
)

EVENT_COLUMNS: tuple[Column, ...] = (
    _c("event_slug", "STRING", "REQUIRED"),
    _c("title", "STRING"),
    _c("subtitle", "STRING"),
    _c("status", "STRING", description="open or closed"),
    _c("start_time", "INT64"),
    _c("end_time", "INT64"),
    _c("volume_fiat_amount", "FLOAT64"),
    _c(
        "settlement_sources", "STRING", description="as the API sends it; JSON text if not a string"
    ),
    _c("rules_url", "STRING"),
    _c("image", "STRING"),
    _c("tags", "STRING", "REPEATED"),
    _c("market_count", "INT64"),
    _c("source", "STRING", description="dome or polymarket; null on rows landed before sources"),
    _c("event_id", "STRING", description="Gamma: id"),
    _c("description", "STRING"),
    _c("neg_risk", "BOOL"),
    _c("extra", "STRING", description="the source's other fields, as JSON text"),
    _c("run_id", "STRING", "REQUIRED"),
    _c("updated_at", "TIMESTAMP", "REQUIRED", "when this run fetched it"),
)

# What one run learned about one wallet; merged into the checkpoint by the commit.
OUTCOME_COLUMNS: tuple[Column, ...] = (
    _c("wallet_address", "STRING", "REQUIRED"),
    _c("upload_successful", "BOOL", "REQUIRED", "true: every page fetched; its trades are staged"),
    _c("trade_count", "INT64", "REQUIRED"),
    _c("error", "STRING"),
    _c("last_trade_at", "TIMESTAMP"),
    _c("gcs_file", "STRING", description="where this run staged the wallet's trades"),
    _c("processed_at", "TIMESTAMP", "REQUIRED"),
    _c("run_id", "STRING", "REQUIRED"),
    _c("fetched_from", "INT64", description="the refresh's start_time; null: the whole history"),
    _c("source", "STRING", description="the source this run fetched the wallet from"),
)

# The users' existing monitoring reads completed/upload_successful/trade_count/processed_at.
CHECKPOINT_COLUMNS: tuple[Column, ...] = (
    _c("wallet_address", "STRING", "REQUIRED"),
    _c("completed", "BOOL", "REQUIRED"),
    _c("upload_successful", "BOOL", "REQUIRED"),
    _c("trade_count", "INT64"),
    _c("gcs_file", "STRING"),
    _c("processed_at", "TIMESTAMP"),
    _c("run_id", "STRING"),
    _c("attempts", "INT64"),
    _c("error", "STRING"),
    _c("last_trade_at", "TIMESTAMP"),
    _c("last_refreshed_at", "TIMESTAMP", description="last successful fetch, whole or refresh"),
    _c("source", "STRING", description="the source of the last successful fetch"),
)

# An input row of `traders` that is not a wallet address; staged for inspection, never committed.
REJECT_COLUMNS: tuple[Column, ...] = (
    _c("wallet_address", "STRING", description="the raw value, null if it was null"),
    _c("reason", "STRING", "REQUIRED"),
    _c("run_id", "STRING", "REQUIRED"),
)

# One row per committed run, written in the commit's transaction: what makes a commit idempotent.
RUN_COLUMNS: tuple[Column, ...] = (
    _c("run_id", "STRING", "REQUIRED"),
    _c("committed_at", "TIMESTAMP", "REQUIRED"),
    _c("wallets_done", "INT64"),
    _c("wallets_failed", "INT64"),
    _c("trades_staged", "INT64"),
    _c("markets_staged", "INT64"),
    _c("events_staged", "INT64"),
)

TRADERS_COLUMNS: tuple[Column, ...] = (_c("wallet_address", "STRING"),)

# The warehouse's one lease row: which backfill may run now, until when, and a counter every commit
# transaction bumps first, so that two commits at once conflict instead of both landing.
LEASE_COLUMNS: tuple[Column, ...] = (
    _c("lease_name", "STRING", "REQUIRED"),
    _c("holder", "STRING", description="who holds the lease (a run id); null when free"),
    _c("acquired_at", "TIMESTAMP"),
    _c("expires_at", "TIMESTAMP", description="the lease is free again after this instant"),
    _c("commits", "INT64", description="commit transactions that passed through the lock row"),
    _c("last_run_id", "STRING", description="the run of the last commit transaction"),
)

# A key the source answered a lookup without (not a failed lookup: that is retried as an error).
# Staged by the run that asked; the commit records it once per run in the missing table, and a
# key that MISSING_AFTER runs over MISSING_SPAN_S found missing is "missing at the source" (base.py).
MISSING_COLUMNS: tuple[Column, ...] = (
    _c("kind", "STRING", "REQUIRED", "markets or events"),
    _c("key", "STRING", "REQUIRED", "the condition_id or event_slug the source does not have"),
    _c("seen_at", "TIMESTAMP", "REQUIRED", "when the lookup answered without it"),
)

# The missing table: one row per (kind, key, run) that found the key missing. A log rather than a
# counter, so that committing a run twice, or an older run late, never counts a run twice.
MISSING_TABLE_COLUMNS: tuple[Column, ...] = (
    *MISSING_COLUMNS,
    _c("run_id", "STRING", "REQUIRED", "the run whose lookup found it missing"),
)

# Staging folder name -> columns. The folder names are the ones design.md gives.
STAGED_KINDS: dict[str, tuple[Column, ...]] = {
    "trades": TRADE_COLUMNS,
    "markets": MARKET_COLUMNS,
    "events": EVENT_COLUMNS,
    "outcomes": OUTCOME_COLUMNS,
    "rejects": REJECT_COLUMNS,
    "missing": MISSING_COLUMNS,
}


def column_names(columns: tuple[Column, ...]) -> tuple[str, ...]:
    return tuple(c.name for c in columns)


def format_timestamp(epoch_seconds: float) -> str:
    """Render a TIMESTAMP value for NDJSON staging.

    `YYYY-MM-DD HH:MM:SS.ffffff+00:00` is accepted by BigQuery's JSON loader and by DuckDB's
    TIMESTAMPTZ parser alike, so one staging file serves both warehouses.
    """
    moment = dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
