"""Validation of Dome API pages: the error names the field and the place; unknown fields counted."""

import copy

import pytest

from pipeline.sources.dome.parse import EVENT_FIELDS, MARKET_FIELDS, ORDER_FIELDS, parse_page
from pipeline.sources.errors import PageError

ORDER = {
    "token_id": "12345678901234567890123456789012345678901234567890123456789012345678901234567",
    "token_label": "Yes",
    "side": "BUY",
    "market_slug": "will-it-rain",
    "condition_id": "0x" + "aa" * 32,
    "shares": 2_500_000,
    "shares_normalized": 2.5,
    "price": 0.42,
    "tx_hash": "0x" + "bb" * 32,
    "title": "Will it rain?",
    "timestamp": 1_700_000_000,
    "order_hash": "0x" + "cc" * 32,
    "user": "0x" + "dd" * 20,
    "taker": None,
    "block_number": 123,
    "log_index": 4,
}
WHERE = "wallet 0xdd orders page 3"


def page(*orders, has_more=False, key=None):
    pagination = {"limit": 1000, "total": len(orders), "has_more": has_more}
    if key:
        pagination["pagination_key"] = key
    return {"orders": list(orders), "pagination": pagination}


def test_valid_page_parses_and_keeps_big_integers_as_text():
    big = int(ORDER["token_id"])
    parsed = parse_page(page({**ORDER, "token_id": big}), "orders", ORDER_FIELDS, WHERE)
    assert parsed.items[0]["token_id"] == ORDER["token_id"]
    assert parsed.has_more is False and parsed.next_cursor is None and parsed.total == 1


def test_optional_fields_may_be_absent():
    order = {k: v for k, v in ORDER.items() if k not in ("block_number", "log_index", "taker")}
    parsed = parse_page(page(order), "orders", ORDER_FIELDS, WHERE)
    assert parsed.items[0]["log_index"] is None and parsed.items[0]["taker"] is None


@pytest.mark.parametrize("field", ["condition_id", "price", "timestamp", "tx_hash", "user"])
def test_missing_required_field_names_field_and_place(field):
    order = {k: v for k, v in ORDER.items() if k != field}
    with pytest.raises(PageError) as error:
        parse_page(page(ORDER, order), "orders", ORDER_FIELDS, WHERE)
    assert repr(field) in str(error.value)
    assert "wallet 0xdd orders page 3, item 1" in str(error.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("shares", "5"), ("price", "0.4"), ("timestamp", 1.5), ("side", "HOLD"), ("shares", True)],
)
def test_wrong_type_is_an_error(field, value):
    with pytest.raises(PageError, match=repr(field)):
        parse_page(page({**ORDER, field: value}), "orders", ORDER_FIELDS, WHERE)


def test_integral_float_accepted_for_integer_fields():
    parsed = parse_page(page({**ORDER, "timestamp": 1.7e9}), "orders", ORDER_FIELDS, WHERE)
    assert parsed.items[0]["timestamp"] == 1_700_000_000


def test_unknown_fields_are_dropped_and_counted():
    parsed = parse_page(
        page({**ORDER, "fee_rate_bps": 0}, {**ORDER, "fee_rate_bps": 1, "x": 2}),
        "orders",
        ORDER_FIELDS,
        WHERE,
    )
    assert parsed.unknown_fields == {"fee_rate_bps": 2, "x": 1}
    assert "fee_rate_bps" not in parsed.items[0]


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"orders": {}, "pagination": {"has_more": False}},
        {"orders": []},
        {"orders": [], "pagination": {"has_more": "no"}},
        {"orders": [], "pagination": {"has_more": True, "pagination_key": 5}},
        {"orders": [5], "pagination": {"has_more": False}},
    ],
)
def test_malformed_envelopes_are_page_errors(body):
    with pytest.raises(PageError, match="page 3"):
        parse_page(copy.deepcopy(body), "orders", ORDER_FIELDS, WHERE)


def test_market_and_event_shapes():
    market = {
        "condition_id": "0x01",
        "market_slug": "m",
        "title": "M",
        "status": "closed",
        "side_a": {"id": 10**76, "label": "Yes"},
        "side_b": {"id": "2", "label": "No"},
        "winning_side": None,
        "tags": ["a"],
        "extra_fields": {"b": 1, "a": 2},
    }
    parsed = parse_page(
        {"markets": [market], "pagination": {"has_more": False}}, "markets", MARKET_FIELDS, "m"
    )
    assert parsed.items[0]["side_a"] == {"id": str(10**76), "label": "Yes"}
    assert parsed.items[0]["extra_fields"] == '{"a":2,"b":1}'
    assert parsed.items[0]["event_slug"] is None
    with pytest.raises(PageError, match="'tags'"):
        parse_page(
            {"markets": [{**market, "tags": "a"}], "pagination": {"has_more": False}},
            "markets",
            MARKET_FIELDS,
            "m",
        )
    event = {"event_slug": "e", "settlement_sources": ["x"], "markets": [1], "tags": []}
    parsed = parse_page(
        {"events": [event], "pagination": {"has_more": False}}, "events", EVENT_FIELDS, "e"
    )
    assert parsed.items[0]["settlement_sources"] == '["x"]'
    assert parsed.items[0]["markets"] is None


def test_a_wrong_typed_value_is_shown_whole_or_by_its_length_never_cut():
    """A cut value could end inside an API key the server echoed, where no scrub can find it."""
    with pytest.raises(PageError, match=r"'shares' should be an integer, got str '5'$"):
        parse_page(page({**ORDER, "shares": "5"}), "orders", ORDER_FIELDS, WHERE)
    long = "x" * 50 + "sk_live_0123456789abcdef"
    with pytest.raises(PageError) as error:
        parse_page(page({**ORDER, "shares": long}), "orders", ORDER_FIELDS, WHERE)
    assert str(error.value).endswith("got str (76 characters, not shown)")
    assert "xxxxxx" not in str(error.value) and "sk_liv" not in str(error.value)


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("shares", -5_000_000, "a share count from 0"),
        ("shares", 10**18 + 1, "a share count from 0"),
        ("shares_normalized", -5.0, "a share count from 0"),
        ("price", -0.5, "a price from 0 to 1"),
        ("price", 1e300, "a price from 0 to 1"),
        ("price", 1.5, "a price from 0 to 1"),
    ],
)
def test_a_value_no_sane_source_sends_fails_the_page_naming_it(field, value, said):
    """Negative shares or prices, or a price of 1e300, were accepted and would have landed."""
    with pytest.raises(PageError, match=f"{field!r} should be {said}"):
        parse_page(page({**ORDER, field: value}), "orders", ORDER_FIELDS, WHERE)


def test_share_counts_past_2_to_the_53_keep_ids_of_their_own():
    """Through a float, 2**53 and 2**53 + 1 shares gave one id: two fills, one landed."""
    from pipeline.sources.dome.ids import trade_id

    fill = {**ORDER, "log_index": None}
    big = trade_id("0xw", {**fill, "shares": 2**53})
    assert big != trade_id("0xw", {**fill, "shares": 2**53 + 1})
    # The text of an integer below 2**53 is what it was: no id changes.
    assert trade_id("0xw", {**fill, "shares": 12}) == trade_id("0xw", {**fill, "shares": 12.0})
