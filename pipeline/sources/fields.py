"""Field checks for API items: pure functions that name the field, the item and the page.

A missing required field or a wrong type raises PageError naming the field, the item and where the
page came from (`where`, e.g. "wallet 0xab.. trades page 3"), so a bad page ends one wallet with a
message a person can act on. Fields the documentation does not list are counted, so a new API field
neither breaks the run nor goes unnoticed; each source decides whether to keep them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.sources.errors import PageError

Check = Callable[[Any], Any]


class Bad(Exception):
    """Raised by a check with what it expected; turned into a PageError with the context."""


# Every value is bounded to what both warehouses store, so that one absurd value ends its wallet
# (or its batch) with a reason naming the field, never the run at load time.
MAX_INT64 = 2**63 - 1
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the largest TIMESTAMP both warehouses hold
MAX_FLOAT = 1e300  # far inside FLOAT64, so sums and products of a few stay finite


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad("a string")
    try:
        value.encode("utf-8")  # a lone surrogate (\ud800) is valid JSON but not storable text
    except UnicodeEncodeError:
        raise Bad("valid Unicode text (it holds a lone surrogate)") from None
    return value


def integer(value: Any) -> int:
    # JSON writers may send 12.0 for 12, which the Polymarket client parses as Decimal("12.0")
    # (every JSON float is a Decimal there); a bool is not a number here even though Python says so.
    if isinstance(value, bool):
        raise Bad("an integer")
    if isinstance(value, Decimal):
        value = decimal_integer(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise Bad("an integer")
    if not -MAX_INT64 <= value <= MAX_INT64:
        raise Bad("an integer within INT64")
    return value


# Decimal.adjusted() (the power of ten of the leading digit) of the largest INT64 magnitudes:
# 2**63 - 1 is 9.2e18. Anything past it is refused before int() ever sees it.
INT64_ADJUSTED = 18


def decimal_integer(value: Decimal) -> int:
    """A served Decimal as an int, its magnitude checked *before* int() converts it.

    `1E+10000000` is three bytes of JSON, and int() of it builds a ten-million-digit integer
    while holding the GIL: every thread of the process froze for minutes to hours, instead of
    that one value failing its wallet at once. Decimal's own exponent says how big it is."""
    if not value.is_finite():
        raise Bad("a finite integer")
    if value.is_zero():
        return 0  # 0E+999999999 is zero, whatever its exponent says
    if value.adjusted() > INT64_ADJUSTED:
        raise Bad("an integer within INT64")
    if value != value.to_integral_value():
        raise Bad("an integer")
    return int(value)


def timestamp(value: Any) -> int:
    number = integer(value)
    if not 0 < number <= MAX_TIMESTAMP:
        raise Bad("a unix time in seconds before the year 10000")
    return number


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bad("a number")
    try:
        result = float(value)
    except OverflowError:  # an integer past a float's range
        raise Bad("a finite number") from None
    if not math.isfinite(result) or abs(result) > MAX_FLOAT:
        raise Bad("a finite number")
    return result


def big_integer_text(value: Any) -> str:
    # token_id is a ~77-digit integer: FLOAT64 and INT64 would both mangle it, so it stays text.
    if isinstance(value, bool):
        raise Bad("an integer or a string of digits")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.isdigit():
        return value
    raise Bad("an integer or a string of digits")


def side(value: Any) -> str:
    if isinstance(value, str) and value.upper() in ("BUY", "SELL"):
        return value.upper()
    raise Bad('"BUY" or "SELL"')


def string_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [string(item) for item in value]
    raise Bad("a list of strings")


def json_object(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    raise Bad("an object")


def text_or_json(value: Any) -> str:
    # settlement_sources' type is undocumented: keep a string as is, anything else as JSON text.
    return string(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)


def token_side(value: Any) -> dict[str, str | None]:
    if not isinstance(value, dict) or "id" not in value:
        raise Bad('an object with "id" and "label"')
    label = value.get("label")
    if label is not None and not isinstance(label, str):
        raise Bad('an object whose "label" is a string')
    return {"id": big_integer_text(value["id"]), "label": None if label is None else string(label)}


SHOWN_MAX = 60  # characters of a value's repr an error shows


def shown(value: Any) -> str:
    """A served value as an error message shows it: whole if short, else only by its length.

    Never cut: the client scrubs an API key the server echoed from every message, but only a
    whole key is recognisable as one, and a value cut short could end inside it."""
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else f"({len(text)} characters, not shown)"


@dataclass(frozen=True)
class FieldSpec:
    check: Check
    required: bool = False  # present and not null; optional fields may be missing or null


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
        except Bad as bad:
            raise PageError(
                f"{where}: field {name!r} should be {bad}, got {type(value).__name__} {shown(value)}"
            ) from None
    for name in raw:
        if name not in fields:
            unknown[name] += 1
    return item


def pagination(body: Any, where: str, cursor_key: str) -> tuple[dict[str, Any], bool, str | None]:
    """A listing's `{..., "pagination": {"has_more", cursor_key}}`: (body, has_more, cursor)."""
    if not isinstance(body, dict):
        raise PageError(f"{where}: expected a JSON object, got {type(body).__name__}")
    block = body.get("pagination")
    if not isinstance(block, dict):
        raise PageError(f"{where}: 'pagination' is missing or not an object")
    has_more = block.get("has_more")
    if not isinstance(has_more, bool):
        raise PageError(f"{where}: pagination.has_more is missing or not a boolean")
    cursor = block.get(cursor_key)  # absent is null (not in Polymarket's required list)
    if cursor is not None and not isinstance(cursor, str):
        raise PageError(f"{where}: pagination.{cursor_key} is not a string")
    return block, has_more, cursor or None
