"""Rows every source produces alike: a wallet's outcome for the checkpoint, and NDJSON staging lines."""

from __future__ import annotations

import json
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
    return "\n".join(json.dumps(row, separators=(",", ":")) for row in rows)
