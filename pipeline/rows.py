"""Rows every source produces alike: a wallet's outcome for the checkpoint, and NDJSON staging lines."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.schema import format_timestamp

MAX_ERROR_CHARS = 2000


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
    source: str | None = None,
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
        "source": source,
    }


def to_ndjson(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as newline-delimited JSON without the final newline (the staging writer adds it)."""
    return "\n".join(json_line(row, separators=(",", ":")) for row in rows)


class NotJson(ValueError):
    """A row holding a number JSON has no spelling for (NaN, Infinity): never staged."""


# Fields that name a row, in the order an error names it by.
ROW_NAMES = ("id", "condition_id", "event_slug", "wallet_address", "key")


def json_line(row: Mapping[str, Any], separators: tuple[str, str] | None = None) -> str:
    """One staged row as JSON text, refusing NaN and ±Infinity (NotJson, naming the field).

    json.dumps writes them as the tokens `NaN`/`Infinity`, which no JSON reader need accept
    (BigQuery's load refuses the file, DuckDB's reads text): a bad value would surface at
    commit, far from its cause, or land as something else. Every source bounds its floats
    (fields.py), so this is the last line: a row that got past them stops here, named."""
    try:
        return json.dumps(row, separators=separators, allow_nan=False)
    except ValueError:
        bad = sorted(name for name, value in row.items() if not _finite(value))
        named = next((f"{k} {row[k]!r}" for k in ROW_NAMES if row.get(k)), "without a key")
        raise NotJson(
            f"a row ({named}) holds NaN or Infinity in {', '.join(bad) or 'a nested value'}: "
            "JSON cannot carry it, so it is not staged"
        ) from None


def _finite(value: Any) -> bool:
    """False for a float NaN or ±Infinity anywhere in `value` (lists and objects included)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(item) for item in value)
    if isinstance(value, Mapping):
        return all(_finite(item) for item in value.values())
    return True
