"""Turns validated Dome items into warehouse rows (schema.py's columns): pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.schema import (
    EVENT_COLUMNS,
    MARKET_COLUMNS,
    TRADE_COLUMNS,
    column_names,
    format_timestamp,
)
from pipeline.sources.dome.ids import trade_id

_TRADE_API_FIELDS = [
    name
    for name in column_names(TRADE_COLUMNS)
    if name not in ("id", "wallet_address", "traded_at", "run_id", "fetched_at", "source")
]
_EVENT_API_FIELDS = [
    n for n in column_names(EVENT_COLUMNS) if n not in ("run_id", "updated_at", "source")
]
_MARKET_FLAT_FIELDS = [
    n
    for n in column_names(MARKET_COLUMNS)
    if n not in ("run_id", "updated_at", "source", "outcomes", "outcome_prices", "token_ids")
    and not n.startswith(("side_", "winning_side_"))
]
SOURCE = "dome"


def trade_row(wallet: str, order: Mapping[str, Any], run_id: str, fetched_at: str) -> dict:
    row: dict[str, Any] = {"id": trade_id(wallet, order), "wallet_address": wallet}
    row.update((name, order.get(name)) for name in _TRADE_API_FIELDS)
    row["source"] = SOURCE
    row["traded_at"] = format_timestamp(order["timestamp"])
    row["run_id"] = run_id
    row["fetched_at"] = fetched_at
    return row


def market_row(market: Mapping[str, Any], run_id: str, fetched_at: str) -> dict:
    row: dict[str, Any] = {name: market.get(name) for name in _MARKET_FLAT_FIELDS}
    row["tags"] = market.get("tags") or []
    row["source"] = SOURCE
    for side in ("side_a", "side_b", "winning_side"):
        value = market.get(side) or {}
        row[f"{side}_id"] = value.get("id")
        row[f"{side}_label"] = value.get("label")
    sides = [market.get(side) for side in ("side_a", "side_b") if market.get(side)]
    row["outcomes"] = [side["label"] or "" for side in sides]
    row["token_ids"] = [side["id"] for side in sides]
    row["outcome_prices"], row["payouts"] = [], []
    row["run_id"] = run_id
    row["updated_at"] = fetched_at
    return row


def event_row(event: Mapping[str, Any], run_id: str, fetched_at: str) -> dict:
    row: dict[str, Any] = {name: event.get(name) for name in _EVENT_API_FIELDS}
    row["tags"] = event.get("tags") or []
    row["source"] = SOURCE
    row["run_id"] = run_id
    row["updated_at"] = fetched_at
    return row
