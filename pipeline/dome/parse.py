"""Validates Dome API pages against the fields of dome-api.md: pure functions, no I/O.

A missing required field or a wrong type raises PageError naming the field, the item and where the
page came from (`where`, e.g. "wallet 0xab.. orders page 3"), so a bad page ends one wallet with a
message a person can act on. Fields the documentation does not list are dropped and counted, so a
new API field neither breaks the run nor goes unnoticed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.dome.errors import PageError

Check = Callable[[Any], Any]


class _Bad(Exception):
    """Raised by a check with what it expected; turned into a PageError with the context."""


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Bad("a string")


def _integer(value: Any) -> int:
    # JSON writers may send 12.0 for 12; a bool is not a number here even though Python says so.
    if isinstance(value, bool):
        raise _Bad("an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Bad("an integer")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad("a number")
    if not math.isfinite(value):
        raise _Bad("a finite number")
    return float(value)


def _big_integer_text(value: Any) -> str:
    # token_id is a ~77-digit integer: FLOAT64 and INT64 would both mangle it, so it stays text.
    if isinstance(value, bool):
        raise _Bad("an integer or a string of digits")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.isdigit():
        return value
    raise _Bad("an integer or a string of digits")


def _side(value: Any) -> str:
    if isinstance(value, str) and value.upper() in ("BUY", "SELL"):
        return value.upper()
    raise _Bad('"BUY" or "SELL"')


def _string_list(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise _Bad("a list of strings")


def _json_object(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    raise _Bad("an object")


def _text_or_json(value: Any) -> str:
    # settlement_sources' type is undocumented: keep a string as is, anything else as JSON text.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _token_side(value: Any) -> dict[str, str | None]:
    if not isinstance(value, dict) or "id" not in value:
        raise _Bad('an object with "id" and "label"')
    label = value.get("label")
    if label is not None and not isinstance(label, str):
        raise _Bad('an object whose "label" is a string')
    return {"id": _big_integer_text(value["id"]), "label": label}


@dataclass(frozen=True)
class FieldSpec:
    check: Check
    required: bool = False  # present and not null; optional fields may be missing or null


ORDER_FIELDS: dict[str, FieldSpec] = {
    "token_id": FieldSpec(_big_integer_text, True),
    "token_label": FieldSpec(_string),
    "side": FieldSpec(_side, True),
    "market_slug": FieldSpec(_string, True),
    "condition_id": FieldSpec(_string, True),
    "shares": FieldSpec(_integer, True),
    "shares_normalized": FieldSpec(_number, True),
    "price": FieldSpec(_number, True),
    "tx_hash": FieldSpec(_string, True),
    "title": FieldSpec(_string, True),
    "timestamp": FieldSpec(_integer, True),
    "order_hash": FieldSpec(_string, True),
    "user": FieldSpec(_string, True),
    "taker": FieldSpec(_string),
    "block_number": FieldSpec(_integer),
    "log_index": FieldSpec(_integer),
}

MARKET_FIELDS: dict[str, FieldSpec] = {
    "condition_id": FieldSpec(_string, True),
    "market_slug": FieldSpec(_string, True),
    "title": FieldSpec(_string),
    "start_time": FieldSpec(_integer),
    "end_time": FieldSpec(_integer),
    "completed_time": FieldSpec(_integer),
    "close_time": FieldSpec(_integer),
    "game_start_time": FieldSpec(_string),
    "tags": FieldSpec(_string_list),
    "volume_1_week": FieldSpec(_number),
    "volume_1_month": FieldSpec(_number),
    "volume_1_year": FieldSpec(_number),
    "volume_total": FieldSpec(_number),
    "resolution_source": FieldSpec(_string),
    "image": FieldSpec(_string),
    "description": FieldSpec(_string),
    "negative_risk_id": FieldSpec(_string),
    "side_a": FieldSpec(_token_side),
    "side_b": FieldSpec(_token_side),
    "winning_side": FieldSpec(_token_side),
    "status": FieldSpec(_string, True),
    "extra_fields": FieldSpec(_json_object),
    "event_slug": FieldSpec(_string),
}

EVENT_FIELDS: dict[str, FieldSpec] = {
    "event_slug": FieldSpec(_string, True),
    "title": FieldSpec(_string),
    "subtitle": FieldSpec(_string),
    "status": FieldSpec(_string),
    "start_time": FieldSpec(_integer),
    "end_time": FieldSpec(_integer),
    "volume_fiat_amount": FieldSpec(_number),
    "settlement_sources": FieldSpec(_text_or_json),
    "rules_url": FieldSpec(_string),
    "image": FieldSpec(_string),
    "tags": FieldSpec(_string_list),
    "market_count": FieldSpec(_integer),
    # Only sent with include_markets=true, which the client never asks for; markets come on their own.
    "markets": FieldSpec(lambda value: None),
}


@dataclass
class Page:
    """One validated page: its items, where the next one starts, and the fields we did not know."""

    items: list[dict[str, Any]]
    has_more: bool
    next_key: str | None
    total: int | None = None
    unknown_fields: Counter[str] = field(default_factory=Counter)


def parse_item(
    raw: Any, fields: Mapping[str, FieldSpec], where: str, unknown: Counter[str]
) -> dict[str, Any]:
    """One order/market/event: every documented field checked, absent optional ones set to None."""
    if not isinstance(raw, dict):
        raise PageError(f"{where}: expected an object, got {type(raw).__name__}")
    item: dict[str, Any] = {}
    for name, spec in fields.items():
        value = raw.get(name)
        if value is None:
            if spec.required:
                state = "missing" if name not in raw else "null"
                raise PageError(f"{where}: required field {name!r} is {state}")
            item[name] = None
            continue
        try:
            item[name] = spec.check(value)
        except _Bad as bad:
            shown = repr(value)[:60]
            raise PageError(
                f"{where}: field {name!r} should be {bad}, got {type(value).__name__} {shown}"
            ) from None
    for name in raw:
        if name not in fields:
            unknown[name] += 1
    return item


def parse_page(body: Any, items_key: str, fields: Mapping[str, FieldSpec], where: str) -> Page:
    """A list endpoint's answer: `{items_key: [...], "pagination": {...}}`, validated."""
    if not isinstance(body, dict):
        raise PageError(f"{where}: expected a JSON object, got {type(body).__name__}")
    raw_items = body.get(items_key)
    if not isinstance(raw_items, list):
        raise PageError(f"{where}: {items_key!r} is missing or not a list")
    pagination = body.get("pagination")
    if not isinstance(pagination, dict):
        raise PageError(f"{where}: 'pagination' is missing or not an object")
    has_more = pagination.get("has_more")
    if not isinstance(has_more, bool):
        raise PageError(f"{where}: pagination.has_more is missing or not a boolean")
    next_key = pagination.get("pagination_key")
    if next_key is not None and not isinstance(next_key, str):
        raise PageError(f"{where}: pagination.pagination_key is not a string")
    total = pagination.get("total")
    unknown: Counter[str] = Counter()
    items = [
        parse_item(raw, fields, f"{where}, item {index}", unknown)
        for index, raw in enumerate(raw_items)
    ]
    return Page(
        items=items,
        has_more=has_more,
        next_key=next_key or None,
        total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        unknown_fields=unknown,
    )
