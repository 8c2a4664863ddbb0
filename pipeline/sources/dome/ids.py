"""Derives the stable `id` of a trade, because the orders endpoint sends none.

The choice (documented in the README as well):
- The id is per wallet: the same on-chain fill appears in the maker's and in the taker's history, and
  each wallet's copy is a row of its own in `trades`.
- When the API sends `log_index`, a fill is named by `(tx_hash, log_index)` (one OrderFilled event on
  chain); the token and side are added so that a wallet trading with itself keeps both legs.
- Without `log_index` (the SDK does not parse it, so it may be absent), the fill is named by every
  field that describes it: tx_hash, order_hash, token_id, side, shares, price and timestamp.
  Two fills identical in all of those are indistinguishable in the data itself and get one id.
- Values are normalised before hashing (hex lowercased, numbers in canonical form), so the key order
  of the JSON or the formatting of a number ("0.5" vs "0.50", 12 vs 12.0) never changes the id.
- The two schemes carry different prefixes, so they cannot collide with each other; a version tag
  leaves room for a future scheme without reusing an id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

_SEP = "\x1f"  # a unit separator never found in any field, so joined parts cannot be confused


def _num(value: Any) -> str:
    # An integer as itself: through a float, share counts past 2**53 shared one id (the text of
    # every integer up to 2**53 is the same either way, so no id changes).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def trade_id(wallet_address: str, order: Mapping[str, Any]) -> str:
    """The 64-hex-digit id of one fill in one wallet's history (see the module docstring)."""
    wallet = wallet_address.lower()
    tx_hash = str(order["tx_hash"]).lower()
    token_id = str(order["token_id"])
    side = str(order["side"]).upper()
    log_index = order.get("log_index")
    if log_index is not None:
        parts = ("v1", "log", wallet, tx_hash, _num(log_index), token_id, side)
    else:
        parts = (
            "v1",
            "fill",
            wallet,
            tx_hash,
            str(order["order_hash"]).lower(),
            token_id,
            side,
            _num(order["shares"]),
            _num(order["price"]),
            _num(order["timestamp"]),
        )
    return hashlib.sha256(_SEP.join(parts).encode()).hexdigest()
