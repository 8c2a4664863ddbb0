"""Turns validated Polymarket rows, Gamma markets and events into warehouse rows: pure functions.

Columns both sources fill keep the Dome-era names (schema.py says which API field each holds);
`shares` is the size in millionths, exactly, so one fill has the same `shares` from either source.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from pipeline.schema import format_timestamp
from pipeline.sources.polymarket.ids import canonical_decimal
from pipeline.sources.polymarket.parse import (
    EVENT_FIELDS,
    MARKET_FIELDS,
    MICRO,
    TRADE_FIELDS,
    extra_json,
    iso_time,
)

SOURCE = "polymarket"


def trade_row(
    wallet: str,
    item: Mapping[str, Any],
    raw: Mapping[str, Any],
    trade_id: str,
    ordinal: int,
    run_id: str,
    fetched_at: str,
) -> dict[str, Any]:
    size: Decimal = item["size"]
    return {
        "id": trade_id,
        "wallet_address": wallet,
        "token_id": item["token_id"],
        "token_label": item["outcome"],
        "side": item["side"],
        "market_slug": item["slug"] or "",
        "condition_id": item["condition_id"].lower(),
        "shares": int((size * MICRO).to_integral_value(ROUND_HALF_EVEN)),
        "shares_normalized": float(size),
        "price": float(item["price"]),
        "tx_hash": item["transaction_hash"].lower(),
        "title": item["title"] or "",
        "timestamp": item["timestamp"],
        "traded_at": format_timestamp(item["timestamp"]),
        "order_hash": None,
        "user": None,
        "taker": None,
        "block_number": None,
        "log_index": None,
        "source": SOURCE,
        "event_slug": item["event_slug"] or None,
        "outcome_index": item["outcome_index"],
        "fill_ordinal": ordinal,
        "extra": extra_json(raw, TRADE_FIELDS),
        "run_id": run_id,
        "fetched_at": fetched_at,
    }


# outcomePrices are probabilities (0 to 1, a few decimals): one whose power of ten is past this
# either way is kept as served, since its canonical text would be as long as the exponent is big
# (`1E+10000000` spelt out is ten million digits, built while holding the GIL).
MAX_PRICE_EXPONENT = 40


def _decimal_text(value: str) -> str:
    """One text per price (`0.50` and `0.5` alike), or the served text if it is no sane price."""
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        return value
    if number.is_zero():
        return "0"  # 0E+999999999 too, whose exponent alone would make it long
    if not number.is_finite() or abs(number.adjusted()) > MAX_PRICE_EXPONENT:
        return value
    return canonical_decimal(number)


def winner(payouts: list[int] | None) -> int | None:
    """The outcome that paid everything, if exactly one did (a 50/50 resolution has no winner)."""
    if not payouts:
        return None
    paying = [index for index, value in enumerate(payouts) if value > 0]
    return paying[0] if len(paying) == 1 else None


def market_status(closed: bool | None, payouts: list[int] | None) -> str:
    """open; resolving (closed, no resolution yet: worth asking again); resolved (final)."""
    if not closed:
        return "open"
    return "resolved" if payouts is not None else "resolving"


def market_row(
    item: Mapping[str, Any],
    raw: Mapping[str, Any],
    payouts: list[int] | None,
    run_id: str,
    fetched_at: str,
) -> dict[str, Any]:
    outcomes = item["outcomes"] or []
    token_ids = item["clobTokenIds"] or []
    events = item["events"] or []
    event_slug = next((e.get("slug") for e in events if isinstance(e.get("slug"), str)), None)
    win = winner(payouts)

    def at(values: list[str], index: int | None) -> str | None:
        return values[index] if index is not None and index < len(values) else None

    volume = item["volumeNum"]
    return {
        "condition_id": item["conditionId"].lower(),
        "market_slug": item["slug"],
        "title": item["question"],
        "start_time": iso_time(item["startDate"]),
        "end_time": iso_time(item["endDate"]),
        "completed_time": None,
        "close_time": iso_time(item["closedTime"]),
        "game_start_time": None,
        "tags": [],
        "volume_1_week": None,
        "volume_1_month": None,
        "volume_1_year": None,
        "volume_total": None if volume is None else float(volume),
        "resolution_source": item["resolutionSource"],
        "image": item["image"],
        "description": item["description"],
        "negative_risk_id": None,
        "side_a_id": at(token_ids, 0),
        "side_a_label": at(outcomes, 0),
        "side_b_id": at(token_ids, 1),
        "side_b_label": at(outcomes, 1),
        "winning_side_id": at(token_ids, win),
        "winning_side_label": at(outcomes, win),
        "status": market_status(item["closed"], payouts),
        "extra_fields": None,
        "event_slug": event_slug or None,
        "source": SOURCE,
        "market_id": item["id"],
        "outcomes": outcomes,
        "outcome_prices": [_decimal_text(p) for p in item["outcomePrices"] or []],
        "token_ids": token_ids,
        "payouts": payouts or [],
        "neg_risk": item["negRisk"],
        "extra": extra_json(raw, MARKET_FIELDS, drop=("events",)),
        "run_id": run_id,
        "updated_at": fetched_at,
    }


def event_row(
    item: Mapping[str, Any], raw: Mapping[str, Any], run_id: str, fetched_at: str
) -> dict[str, Any]:
    tags = item["tags"] or []
    markets = item["markets"]
    return {
        "event_slug": item["slug"],
        "title": item["title"],
        "subtitle": None,
        "status": None if item["closed"] is None else ("closed" if item["closed"] else "open"),
        "start_time": iso_time(item["startDate"]),
        "end_time": iso_time(item["endDate"]),
        "volume_fiat_amount": None,
        "settlement_sources": None,
        "rules_url": None,
        "image": item["image"],
        "tags": [t["label"] for t in tags if isinstance(t.get("label"), str)],
        "market_count": None if markets is None else len(markets),
        "source": SOURCE,
        "event_id": item["id"],
        "description": item["description"],
        "neg_risk": item["negRisk"],
        # Its markets land in `markets` on their own; a copy here would only grow the table.
        "extra": extra_json(raw, EVENT_FIELDS, drop=("markets",)),
        "run_id": run_id,
        "updated_at": fetched_at,
    }
