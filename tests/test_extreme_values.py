"""Values no sane source sends end their wallet with a reason naming the field, never the run:
every value is bounded to what the warehouse's columns hold (both sources, pure parsing)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pipeline.sources.dome.parse import ORDER_FIELDS, parse_page
from pipeline.sources.errors import PageError
from pipeline.sources.polymarket.parse import trades_page
from tests.test_dome_parse import ORDER, WHERE, page

PM_ROW = {
    "proxy_wallet": "0x" + "dd" * 20,
    "side": "BUY",
    "token_id": "123",
    "condition_id": "0x" + "aa" * 32,
    "size": Decimal("2.5"),
    "price": Decimal("0.42"),
    "timestamp": 1_700_000_000,
    "title": "Will it rain?",
    "slug": "will-it-rain",
    "icon": "",
    "event_slug": "rain",
    "outcome": "Yes",
    "outcome_index": 0,
    "name": "",
    "pseudonym": "",
    "bio": "",
    "profile_image": "",
    "profile_image_optimized": "",
    "transaction_hash": "0x" + "bb" * 32,
}

# (field, value, what the error must say)
ABSURD = [
    ("timestamp", 1_000_000_000_000, "before the year 10000"),  # the year 33658
    ("timestamp", -5, "before the year 10000"),
    ("title", "rain \ud800 tomorrow", "lone surrogate"),
]


def _dome_json(order):
    # Through real JSON text, as the client sees it (a lone surrogate survives json.dumps/loads).
    return json.loads(json.dumps(page(order)))


@pytest.mark.parametrize(
    "field, value, says",
    [
        *ABSURD,
        ("shares", 2**64, "within INT64"),
        ("shares_normalized", 1e308 * 10, "finite"),
        ("shares_normalized", 10**400, "finite"),
        ("block_number", -(2**70), "within INT64"),
    ],
)
def test_dome_values_past_the_tables_name_the_field(field, value, says):
    order = {**ORDER, field: value}
    body = page(order) if field == "shares_normalized" else _dome_json(order)
    with pytest.raises(PageError, match=rf"{WHERE}, item 0: field '{field}' .*{says}"):
        parse_page(body, "orders", ORDER_FIELDS, WHERE)


@pytest.mark.parametrize(
    "field, value, says",
    [
        *ABSURD,
        ("size", Decimal(2**64), "size from 0"),
        ("size", Decimal("-1"), "size from 0"),
        ("size", Decimal("NaN"), "finite"),
        ("price", Decimal("1.5"), "price from 0 to 1"),
        ("outcome_index", 2**64, "within INT64"),
        ("token_id", "", "non-empty"),
    ],
)
def test_polymarket_values_past_the_tables_name_the_field(field, value, says):
    body = {"data": [{**PM_ROW, field: value}], "pagination": {"has_more": False}}
    with pytest.raises(PageError, match=rf"page 0, item 0: field '{field}' .*{says}"):
        trades_page(body, "wallet 0xdd trades page 0")


def test_a_sane_row_of_each_source_passes():
    assert parse_page(page(ORDER), "orders", ORDER_FIELDS, WHERE).items[0]["timestamp"] > 0
    body = {"data": [PM_ROW], "pagination": {"has_more": False, "next_cursor": None}}
    parsed, raws = trades_page(body, "w")
    assert parsed.items[0]["size"] == Decimal("2.5") and raws == [PM_ROW]
