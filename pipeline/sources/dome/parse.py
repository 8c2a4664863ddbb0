"""Validates Dome API pages against the fields of dome-api.md: pure functions, no I/O.

Fields the documentation does not list are dropped and counted (see pipeline.sources.fields).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pipeline.sources.errors import PageError
from pipeline.sources.fields import (
    Bad,
    FieldSpec,
    big_integer_text,
    integer,
    json_object,
    number,
    pagination,
    parse_item,
    side,
    string,
    string_list,
    text_or_json,
    timestamp,
    token_side,
)
from pipeline.sources.http import Page

MAX_SHARES = 10**18  # raw shares (millionths): 10^12 shares, as Polymarket's size is bounded


def shares(value: Any) -> int:
    """A fill's raw shares: a whole number from 0 to MAX_SHARES (a negative one, or 2**70, is a
    page no sane source sends: the wallet fails naming it, rather than landing it)."""
    count = integer(value)
    if not 0 <= count <= MAX_SHARES:
        raise Bad(f"a share count from 0 to {MAX_SHARES}")
    return count


def shares_normalized(value: Any) -> float:
    result = number(value)
    if not 0 <= result <= MAX_SHARES / 1e6:
        raise Bad(f"a share count from 0 to {MAX_SHARES // 10**6}")
    return result


def price(value: Any) -> float:
    """USDC per share of an outcome that pays 0 or 1: from 0 to 1."""
    result = number(value)
    if not 0 <= result <= 1:
        raise Bad("a price from 0 to 1")
    return result


ORDER_FIELDS: dict[str, FieldSpec] = {
    "token_id": FieldSpec(big_integer_text, True),
    "token_label": FieldSpec(string),
    "side": FieldSpec(side, True),
    "market_slug": FieldSpec(string, True),
    "condition_id": FieldSpec(string, True),
    "shares": FieldSpec(shares, True),
    "shares_normalized": FieldSpec(shares_normalized, True),
    "price": FieldSpec(price, True),
    "tx_hash": FieldSpec(string, True),
    "title": FieldSpec(string, True),
    "timestamp": FieldSpec(timestamp, True),
    "order_hash": FieldSpec(string, True),
    "user": FieldSpec(string, True),
    "taker": FieldSpec(string),
    "block_number": FieldSpec(integer),
    "log_index": FieldSpec(integer),
}

MARKET_FIELDS: dict[str, FieldSpec] = {
    "condition_id": FieldSpec(string, True),
    "market_slug": FieldSpec(string, True),
    "title": FieldSpec(string),
    "start_time": FieldSpec(integer),
    "end_time": FieldSpec(integer),
    "completed_time": FieldSpec(integer),
    "close_time": FieldSpec(integer),
    "game_start_time": FieldSpec(string),
    "tags": FieldSpec(string_list),
    "volume_1_week": FieldSpec(number),
    "volume_1_month": FieldSpec(number),
    "volume_1_year": FieldSpec(number),
    "volume_total": FieldSpec(number),
    "resolution_source": FieldSpec(string),
    "image": FieldSpec(string),
    "description": FieldSpec(string),
    "negative_risk_id": FieldSpec(string),
    "side_a": FieldSpec(token_side),
    "side_b": FieldSpec(token_side),
    "winning_side": FieldSpec(token_side),
    "status": FieldSpec(string, True),
    "extra_fields": FieldSpec(json_object),
    "event_slug": FieldSpec(string),
}

EVENT_FIELDS: dict[str, FieldSpec] = {
    "event_slug": FieldSpec(string, True),
    "title": FieldSpec(string),
    "subtitle": FieldSpec(string),
    "status": FieldSpec(string),
    "start_time": FieldSpec(integer),
    "end_time": FieldSpec(integer),
    "volume_fiat_amount": FieldSpec(number),
    "settlement_sources": FieldSpec(text_or_json),
    "rules_url": FieldSpec(string),
    "image": FieldSpec(string),
    "tags": FieldSpec(string_list),
    "market_count": FieldSpec(integer),
    # Only sent with include_markets=true, which the client never asks for; markets come on their own.
    "markets": FieldSpec(lambda value: None),
}


def parse_page(body: Any, items_key: str, fields: Mapping[str, FieldSpec], where: str) -> Page:
    """A list endpoint's answer: `{items_key: [...], "pagination": {...}}`, validated."""
    block, has_more, next_key = pagination(body, where, "pagination_key")
    raw_items = body.get(items_key)
    if not isinstance(raw_items, list):
        raise PageError(f"{where}: {items_key!r} is missing or not a list")
    total = block.get("total")
    unknown: Counter[str] = Counter()
    items = [
        parse_item(raw, fields, f"{where}, item {index}", unknown)
        for index, raw in enumerate(raw_items)
    ]
    return Page(
        items=items,
        has_more=has_more,
        next_cursor=next_key,
        total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        unknown_fields=unknown,
    )
