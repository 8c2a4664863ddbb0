"""Derives the stable `id` of a Polymarket trade row, which carries no fill id of its own.

The choice (documented in the README as well):
- A fill of a wallet is named by what identifies it on chain as the Data API shows it: the wallet,
  transaction hash, token, side, size, price and block time.
- Two rows identical in all of those are two real fills (a transaction can fill the same order
  twice at one price): each gets its ordinal among the identical rows of the same wallet's walk
  (0, 1, 2, ...), counted in the order the API serves them. Identical rows share a timestamp, and
  an incremental walk starts at a timestamp inclusively, so it always sees all of a group and
  numbers it exactly as the full walk did: the ids of overlapping rows agree.
- Values are normalised before hashing (hex lowercased, decimals in canonical form), so "0.50"
  and "0.5", or key order, never change an id. The `v2|pm` prefix keeps these ids apart from the
  Dome scheme's; the commit recognises one fill across sources by its content (see sql.py).
- Limits: fills under 0.01 shares are never served, so they have no id; if the API ever served
  only one of two identical fills in one walk and both in another, the ordinals would differ.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_SEP = "\x1f"  # a unit separator never found in any field, so joined parts cannot be confused


def canonical_decimal(value: Decimal) -> str:
    """'0.5' for 0.50, '12' for 12.000: one text per number."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def fill_key(wallet: str, row: Mapping[str, Any]) -> tuple[str, ...]:
    """What makes two rows of one wallet 'identical' (everything but the ordinal)."""
    return (
        wallet.lower(),
        str(row["transaction_hash"]).lower(),
        str(row["token_id"]),
        str(row["side"]).upper(),
        canonical_decimal(row["size"]),
        canonical_decimal(row["price"]),
        str(int(row["timestamp"])),
    )


def trade_id(key: tuple[str, ...], ordinal: int) -> str:
    """The 64-hex-digit id of the `ordinal`-th fill with this key in the wallet's history."""
    return hashlib.sha256(_SEP.join(("v2", "pm", *key, str(ordinal))).encode()).hexdigest()


class Ordinals:
    """Counts identical rows along one walk, so each gets its ordinal (one instance per walk)."""

    def __init__(self) -> None:
        self._seen: Counter[bytes] = Counter()

    def next(self, key: tuple[str, ...]) -> int:
        # A 16-byte digest per distinct fill keeps a 200,000-fill walk at a few MB.
        digest = hashlib.blake2b(_SEP.join(key).encode(), digest_size=16).digest()
        ordinal = self._seen[digest]
        self._seen[digest] = ordinal + 1
        return ordinal
