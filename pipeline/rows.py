"""Turns validated API items into staging rows (schema.py's columns): pure functions, no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.dome.ids import trade_id
from pipeline.schema import (
    EVENT_COLUMNS,
    MARKET_COLUMNS,
    TRADE_COLUMNS,
    column_names,
    format_timestamp,
)

_TRADE_API_FIELDS = [
    name
    for name in column_names(TRADE_COLUMNS)
    if name not in ("id", "wallet_address", "traded_at", "run_id", "fetched_at")
]
_EVENT_API_FIELDS = [n for n in column_names(EVENT_COLUMNS) if n not in ("run_id", "updated_at")]
_MARKET_FLAT_FIELDS = [
    n
    for n in column_names(MARKET_COLUMNS)
    if n not in ("run_id", "updated_at") and not n.startswith(("side_", "winning_side_"))
]
MAX_ERROR_CHARS = 2000


def trade_row(wallet: str, order: Mapping[str, Any], run_id: str, fetched_at: str) -> dict:
    row: dict[str, Any] = {"id": trade_id(wallet, order), "wallet_address": wallet}
    row.update((name, order.get(name)) for name in _TRADE_API_FIELDS)
    row["traded_at"] = format_timestamp(order["timestamp"])
    row["run_id"] = run_id
    row["fetched_at"] = fetched_at
    return row


def market_row(market: Mapping[str, Any], run_id: str, fetched_at: str) -> dict:
    row: dict[str, Any] = {name: market.get(name) for name in _MARKET_FLAT_FIELDS}
    row["tags"] = market.get("tags") or []
    for side in ("side_a", "side_b", "winning_side"):
        value = market.get(side) or {}
        row[f"{side}_id"] = value.get("id")
        row[f"{side}_label"] = value.get("label")
    row["run_id"] = run_id
    row["updated_at"] = fetched_at
    return row


def event_row(event: Mapping[str, Any], run_id: str, fetched_at: str) -> dict:
    row: dict[str, Any] = {name: event.get(name) for name in _EVENT_API_FIELDS}
    row["tags"] = event.get("tags") or []
    row["run_id"] = run_id
    row["updated_at"] = fetched_at
    return row


def outcome_row(
    wallet: str,
    *,
    run_id: str,
    processed_at: str,
    trade_count: int,
    last_trade_ts: int | None,
    error: str | None,
    gcs_file: str,
    fetched_from: int | None = None,
) -> dict:
    return {
        "wallet_address": wallet,
        "upload_successful": error is None,
        "trade_count": trade_count,
        "error": None if error is None else error[:MAX_ERROR_CHARS],
        "last_trade_at": None if last_trade_ts is None else format_timestamp(last_trade_ts),
        "gcs_file": gcs_file,
        "processed_at": processed_at,
        "run_id": run_id,
        "fetched_from": fetched_from,
    }


def to_ndjson(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as newline-delimited JSON without the final newline (WriteToText adds it)."""
    return "\n".join(json.dumps(row, separators=(",", ":")) for row in rows)
