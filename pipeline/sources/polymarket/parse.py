"""Validates Polymarket Data API v2 and Gamma answers (polymarket-api.md): pure functions, no I/O.

Numbers arrive as `Decimal` (the client parses JSON floats that way): sizes and prices have a
6-decimal grain that a float would blur, and the trade id hashes them. Every value is bounded to
what the warehouse can hold, so one absurd value ends its wallet (or batch) with a reason naming
the field, never the run. Fields without a column are kept, as JSON text, in `extra`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from pipeline.sources.errors import PageError
from pipeline.sources.fields import (
    MAX_FLOAT,
    MAX_INT64,
    MAX_TIMESTAMP,
    Bad,
    FieldSpec,
    integer,
    pagination,
    parse_item,
    side,
    string,
    timestamp,
)
from pipeline.sources.http import Page

MAX_SIZE = Decimal(10) ** 12  # shares; x 1e6 must still fit in INT64
# A served number's power of ten, either way, at most: `1E-999999999` is a few bytes of JSON
# and within a size's range, but its fixed-point text (the trade id hashes it) is a gigabyte.
MAX_EXPONENT = 400
MICRO = Decimal(1_000_000)


def decimal(value: Any) -> Decimal:
    """A finite number (JSON number or numeric string), as an exact Decimal."""
    if isinstance(value, bool):
        raise Bad("a number")
    if isinstance(value, int | Decimal | float):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise Bad("a number") from None
    else:
        raise Bad("a number")
    if not number.is_finite():
        raise Bad("a finite number")
    if number.is_zero():
        return Decimal(0)  # 0E+999999999 is zero: its exponent must not travel on
    if abs(number.adjusted()) > MAX_EXPONENT:
        raise Bad(f"a number from 1E-{MAX_EXPONENT} to 1E+{MAX_EXPONENT} in magnitude")
    return number


def size(value: Any) -> Decimal:
    number = decimal(value)
    if not Decimal(0) <= number < MAX_SIZE:
        raise Bad(f"a size from 0 to {MAX_SIZE}")
    return number


def amount(value: Any) -> Decimal:
    """A number kept as FLOAT64 (Gamma's volumeNum), bounded like fields.number's floats: `1E+400`
    is a finite Decimal but inf as a float, which staged as the non-JSON token `Infinity`."""
    number = decimal(value)
    if abs(number) > MAX_AMOUNT:
        raise Bad(f"a number within ±{MAX_FLOAT:g}")
    return number


MAX_AMOUNT = Decimal(repr(MAX_FLOAT))


def price(value: Any) -> Decimal:
    number = decimal(value)
    if not Decimal(0) <= number <= Decimal(1):
        raise Bad("a price from 0 to 1")
    return number


def text(value: Any) -> str:
    """A string the warehouse can store (fields.string refuses lone surrogates)."""
    return string(value)


def nonempty(value: Any) -> str:
    result = text(value)
    if not result.strip():
        raise Bad("a non-empty string")
    return result


def id_text(value: Any) -> str:
    """Gamma ids are strings in the docs; accept an integer too, kept as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return nonempty(value)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise Bad("true or false")


def json_list(value: Any) -> list[str]:
    """Gamma's outcomes/outcomePrices/clobTokenIds: a JSON-encoded list in a string (or a list)."""
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_float=Decimal)
        except ValueError:
            raise Bad("a JSON-encoded list") from None
    if not isinstance(value, list):
        raise Bad("a list")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int | Decimal | float):
            raise Bad("a list of strings or numbers")
        out.append(text(item) if isinstance(item, str) else str(item))
    return out


def object_list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise Bad("a list of objects")


def iso_time(value: Any) -> int | None:
    """Gamma's dates (ISO 8601, or `2025-02-01 12:00:00+00`): unix seconds; unreadable -> None
    (the raw text stays in `extra`), since their format is not pinned down."""
    if not isinstance(value, str) or not value.strip():
        return None
    raw = value.strip().replace("Z", "+00:00")
    if raw.endswith(("+00", "-00")):
        raw += ":00"
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    seconds = int(moment.timestamp())
    return seconds if 0 < seconds <= MAX_TIMESTAMP else None


TRADE_FIELDS: dict[str, FieldSpec] = {
    "proxy_wallet": FieldSpec(nonempty, True),
    "side": FieldSpec(side, True),
    "token_id": FieldSpec(nonempty, True),
    "condition_id": FieldSpec(nonempty, True),
    "size": FieldSpec(size, True),
    "price": FieldSpec(price, True),
    "timestamp": FieldSpec(timestamp, True),
    "transaction_hash": FieldSpec(nonempty, True),
    "title": FieldSpec(text),
    "slug": FieldSpec(text),
    "event_slug": FieldSpec(text),
    "outcome": FieldSpec(text),
    "outcome_index": FieldSpec(integer),
}

MARKET_FIELDS: dict[str, FieldSpec] = {
    "id": FieldSpec(id_text),
    "conditionId": FieldSpec(nonempty, True),
    "question": FieldSpec(text),
    "slug": FieldSpec(text),
    "description": FieldSpec(text),
    "image": FieldSpec(text),
    "endDate": FieldSpec(text),
    "startDate": FieldSpec(text),
    "closedTime": FieldSpec(text),
    "closed": FieldSpec(boolean),
    "negRisk": FieldSpec(boolean),
    "volumeNum": FieldSpec(amount),
    "resolutionSource": FieldSpec(text),
    "events": FieldSpec(object_list),
    "outcomes": FieldSpec(json_list),
    "outcomePrices": FieldSpec(json_list),
    "clobTokenIds": FieldSpec(json_list),
}

EVENT_FIELDS: dict[str, FieldSpec] = {
    "id": FieldSpec(id_text),
    "slug": FieldSpec(nonempty, True),
    "title": FieldSpec(text),
    "description": FieldSpec(text),
    "image": FieldSpec(text),
    "startDate": FieldSpec(text),
    "endDate": FieldSpec(text),
    "closed": FieldSpec(boolean),
    "negRisk": FieldSpec(boolean),
    "tags": FieldSpec(object_list),
    "markets": FieldSpec(object_list),
}

RESOLUTION_FIELDS: dict[str, FieldSpec] = {
    "condition_id": FieldSpec(nonempty, True),
    "resolved": FieldSpec(boolean),
}


def extra_json(raw: Mapping[str, Any], known: Mapping[str, FieldSpec], drop: tuple = ()) -> str:
    """The fields without a column, as canonical JSON text (Decimals as their exact text)."""
    rest = {k: v for k, v in raw.items() if k not in known and k not in drop}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def parse_items(
    raw_items: Any, fields: Mapping[str, FieldSpec], where: str, known_extra: frozenset[str]
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], Counter[str]]:
    """(checked item, raw item) pairs, and the fields neither checked nor expected (counted)."""
    if not isinstance(raw_items, list):
        raise PageError(f"{where}: expected a list of items, got {type(raw_items).__name__}")
    pairs, unknown, bad = parse_each(raw_items, fields, where, known_extra)
    if bad:
        raise bad[0][1]
    return pairs, unknown


def parse_each(
    raw_items: Any, fields: Mapping[str, FieldSpec], where: str, known_extra: frozenset[str]
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], Counter[str], list[tuple[Any, PageError]]]:
    """Like parse_items, but an item that fails its checks is set aside, with its PageError,
    instead of failing the list: Gamma's items are independent of each other (one market's
    `volumeNum: NaN` says nothing about the 49 others of its batch, which otherwise failed
    with it on every run). A trades page is whole or nothing (parse_items): a wallet's history
    with a row dropped would be passed off as complete."""
    if not isinstance(raw_items, list):
        raise PageError(f"{where}: expected a list of items, got {type(raw_items).__name__}")
    unknown: Counter[str] = Counter()
    pairs = []
    bad: list[tuple[Any, PageError]] = []
    for index, raw in enumerate(raw_items):
        seen: Counter[str] = Counter()
        try:
            item = parse_item(raw, fields, f"{where}, item {index}", seen)
        except PageError as error:
            bad.append((raw, error))
            continue
        for name, count in seen.items():
            if name not in known_extra:
                unknown[name] += count
        pairs.append((item, raw))
    return pairs, unknown, bad


# Gamma kind -> the field that is its key (what the caller asked for).
GAMMA_KEYS = {"markets": "conditionId", "events": "slug"}


def gamma_key(kind: str, raw: Any) -> str | None:
    """The key a Gamma item (even one that failed its checks) names, as lookups compare keys
    (condition ids lower case); None when it names none usable."""
    value = raw.get(GAMMA_KEYS[kind]) if isinstance(raw, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value.lower() if kind == "markets" else value


# Row fields the docs list that have no column of their own: kept in `extra`, never counted unknown.
TRADE_EXTRA_FIELDS = frozenset(
    {"icon", "name", "pseudonym", "bio", "profile_image", "profile_image_optimized"}
)
MARKET_EXTRA_FIELDS = frozenset(
    {
        *("active", "archived", "volume", "umaResolutionStatus", "closedTime", "endDate"),
        *("startDate", "icon"),  # icon: Gamma's, beside image (undocumented, always there)
    }
)
EVENT_EXTRA_FIELDS = frozenset({"active", "archived", "volume"})
# Gamma kind -> (checked fields, documented fields kept only in `extra`).
GAMMA_FIELDS: dict[str, tuple[dict[str, FieldSpec], frozenset[str]]] = {
    "markets": (MARKET_FIELDS, MARKET_EXTRA_FIELDS),
    "events": (EVENT_FIELDS, EVENT_EXTRA_FIELDS),
}


def trades_page(body: Any, where: str) -> tuple[Page, list[dict[str, Any]]]:
    """`{data: [...], pagination: {has_more, next_cursor}}`: the page and the raw rows (for extra)."""
    _, has_more, cursor = pagination(body, where, "next_cursor")
    pairs, unknown = parse_items(body.get("data"), TRADE_FIELDS, where, TRADE_EXTRA_FIELDS)
    items = [item for item, _ in pairs]
    page = Page(items, has_more, cursor, unknown_fields=unknown)
    return page, [raw for _, raw in pairs]


def keyset_page(body: Any, items_key: str, where: str) -> tuple[list[Any], str | None]:
    """Gamma's `{markets|events: [...], next_cursor}`: raw items (checked by the caller) and cursor."""
    if not isinstance(body, dict):
        raise PageError(f"{where}: expected a JSON object, got {type(body).__name__}")
    items = body.get(items_key)
    if not isinstance(items, list):
        raise PageError(f"{where}: {items_key!r} is missing or not a list")
    cursor = body.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise PageError(f"{where}: next_cursor is not a string")
    return items, cursor or None


def payouts(value: Any) -> list[int] | None:
    """`/v2/resolutions` payouts: micro-USDC per share per outcome; None when not resolved."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise Bad("a list of integers")
    out = []
    for item in value:
        number = decimal(item)
        # Compared as Decimals, so int() only ever sees a value within INT64 (fields.integer).
        if number != number.to_integral_value() or not 0 <= number <= MAX_INT64:
            raise Bad("a list of non-negative integers")
        out.append(int(number))
    return out
