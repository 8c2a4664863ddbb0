"""The derived trade id: stable for one fill, distinct for different fills."""

import hashlib
import json
import re

from pipeline.sources.dome.ids import trade_id

WALLET = "0x" + "ab" * 20
ORDER = {
    "token_id": "1" * 77,
    "side": "BUY",
    "tx_hash": "0x" + "cd" * 32,
    "log_index": 7,
    "order_hash": "0x" + "ef" * 32,
    "shares": 5_000_000,
    "price": 0.5,
    "timestamp": 1_700_000_000,
}


def test_same_fill_same_id_whatever_key_order_or_number_format():
    reordered = json.loads(json.dumps(dict(reversed(list(ORDER.items())))))
    reformatted = {**ORDER, "log_index": 7.0, "price": 0.50, "tx_hash": ORDER["tx_hash"].upper()}
    assert trade_id(WALLET, ORDER) == trade_id(WALLET, reordered) == trade_id(WALLET, reformatted)
    assert trade_id(WALLET.upper().replace("0X", "0x"), ORDER) == trade_id(WALLET, ORDER)


def test_maker_and_taker_copies_of_one_fill_get_their_own_ids():
    other = "0x" + "12" * 20
    assert trade_id(WALLET, ORDER) != trade_id(other, ORDER)


def test_fills_differing_in_any_identifying_field_differ():
    base = trade_id(WALLET, ORDER)
    for changed in (
        {"log_index": 8},
        {"tx_hash": "0x" + "00" * 32},
        {"side": "SELL"},
        {"token_id": "2"},
    ):
        assert trade_id(WALLET, {**ORDER, **changed}) != base, changed


def test_without_log_index_every_describing_field_counts():
    no_log = {key: value for key, value in ORDER.items() if key != "log_index"}
    base = trade_id(WALLET, no_log)
    assert base != trade_id(WALLET, ORDER)  # the two schemes never share an id
    for changed in ({"shares": 1}, {"price": 0.25}, {"timestamp": 1}, {"order_hash": "0x01"}):
        assert trade_id(WALLET, {**no_log, **changed}) != base, changed
    assert trade_id(WALLET, {**no_log, "price": 0.5000}) == base
    assert trade_id(WALLET, {**no_log, "log_index": None}) == base


def test_id_is_sha256_hex():
    """The id is the lowercase hex SHA-256 of the fill's key: its scheme, the wallet and the
    fields that name the fill, joined by a unit separator (see pipeline.sources.dome.ids)."""
    key = ("v1", "log", WALLET, ORDER["tx_hash"], "7", ORDER["token_id"], "BUY")
    value = trade_id(WALLET, ORDER)
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert value == hashlib.sha256("\x1f".join(key).encode()).hexdigest()
    no_log = {k: v for k, v in ORDER.items() if k != "log_index"}
    key = ("v1", "fill", WALLET, ORDER["tx_hash"], ORDER["order_hash"], ORDER["token_id"], "BUY",
           "5000000", "0.5", "1700000000")  # fmt: skip
    assert trade_id(WALLET, no_log) == hashlib.sha256("\x1f".join(key).encode()).hexdigest()
