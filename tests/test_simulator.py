"""The Dome API simulator over a real loopback socket: faithful to dome-api.md, deterministic, faulty on cue."""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from simulator import FAULT_KINDS, FaultRule, SimConfig, Simulator, parse_fault_spec
from simulator.cli import add_arguments
from simulator.dome_api import ENCODE_CHUNK, _dumps
from simulator.server import _scope, encode_key

ROOT = Path(__file__).resolve().parents[1]
ORDER_FIELDS = (
    "token_id", "token_label", "side", "market_slug", "condition_id", "shares",
    "shares_normalized", "price", "tx_hash", "title", "timestamp", "order_hash", "user", "taker",
    "block_number", "log_index",
)  # fmt: skip
MARKET_FIELDS = (
    "market_slug", "condition_id", "title", "start_time", "end_time", "completed_time",
    "close_time", "game_start_time", "tags", "volume_1_week", "volume_1_month", "volume_1_year",
    "volume_total", "resolution_source", "image", "description", "negative_risk_id", "side_a",
    "side_b", "winning_side", "status", "extra_fields",
)  # fmt: skip
EVENT_FIELDS = (
    "event_slug", "title", "subtitle", "status", "start_time", "end_time", "volume_fiat_amount",
    "settlement_sources", "rules_url", "image", "tags", "market_count",
)  # fmt: skip
HEX64 = re.compile(r"^0x[0-9a-f]{64}$")
ADDR = re.compile(r"^0x[0-9a-f]{40}$")


def api(server, endpoint, params=None, session=None, key=True, timeout=5.0):
    headers = {"Authorization": f"Bearer {server.api_key}"} if key else {}
    getter = session or requests
    url = f"{server.base_url}/polymarket/{endpoint}"
    return getter.get(url, params=params, headers=headers, timeout=timeout)


def walk(server, wallet, limit, session=None, **filters):
    """Every page of a wallet's orders, following pagination_key until has_more is false."""
    pages, params = [], {"user": wallet, "limit": limit, **filters}
    while True:
        response = api(server, "orders", params, session)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        if not body["pagination"]["has_more"]:
            assert "pagination_key" not in body["pagination"]
            return pages
        assert len(pages) < 1000
        params = {**params, "pagination_key": body["pagination"]["pagination_key"]}


def truth(server, wallet):
    return requests.get(f"{server.root_url}/_sim/truth", params={"wallet": wallet}).json()


# ---- data -------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_answers_and_another_seed_does_not(sim_server):
    one, two = sim_server(seed=42, wallets=30), sim_server(seed=42, wallets=30)
    other = sim_server(seed=43, wallets=30)
    wallets = one.simulator.wallet_addresses()
    assert wallets == two.simulator.wallet_addresses()
    assert set(wallets).isdisjoint(other.simulator.wallet_addresses())
    busy = max(wallets, key=one.simulator.trade_count)
    calls = [
        ("orders", {"user": busy, "limit": 50}),
        ("markets", {"limit": 100}),
        ("events", {"include_markets": "true", "limit": 100}),
    ]
    for endpoint, params in calls:
        first, second = api(one, endpoint, params), api(two, endpoint, params)
        assert first.status_code == 200 and first.content == second.content
    assert requests.get(f"{one.root_url}/_sim/truth").content == (
        requests.get(f"{two.root_url}/_sim/truth").content
    )
    assert (
        api(other, "markets", {"limit": 100}).content != api(one, "markets", {"limit": 100}).content
    )


def test_trade_counts_are_heavy_tailed_and_overridable():
    counts = sorted(Simulator(SimConfig(seed=1, wallets=300)).trade_counts().values())
    assert 10 <= counts.count(0) <= 60  # ~10% have none
    assert 10 <= statistics.median(counts) < 100  # most have tens
    assert counts[-1] >= 10_000 and sum(c >= 300 for c in counts) >= 5  # a heavy tail
    capped = Simulator(SimConfig(seed=1, wallets=300, max_trades=500)).trade_counts()
    assert max(capped.values()) == 500
    plain = Simulator(SimConfig(seed=1, wallets=3)).trade_counts()
    exact = Simulator(SimConfig(seed=1, wallets=3, trade_counts={1: 200_000})).trade_counts()
    second = list(plain)[1]
    assert exact == {**plain, second: 200_000}  # the others are untouched


def test_orders_have_every_field_consistent_with_their_markets():
    sim = Simulator(SimConfig(seed=7, wallets=40, max_trades=800))
    markets = {m["condition_id"]: m for m in sim.markets()}
    fills: set[tuple[str, int]] = set()
    shared_tx = 0
    for wallet in sim.wallet_addresses():
        orders = sim.orders(wallet)
        assert [o["timestamp"] for o in orders] == sorted(
            (o["timestamp"] for o in orders), reverse=True
        )
        txs = [o["tx_hash"] for o in orders]
        shared_tx += len(txs) - len(set(txs))
        for order in orders:
            assert tuple(order) == ORDER_FIELDS
            market = markets[order["condition_id"]]
            side = market["side_a"] if order["token_id"] == market["side_a"]["id"] else None
            side = side or market["side_b"]
            assert order["token_id"] == side["id"] and order["token_label"] == side["label"]
            assert re.fullmatch(r"[1-9][0-9]{76}", order["token_id"])
            assert (order["market_slug"], order["title"]) == (
                market["market_slug"],
                market["title"],
            )
            assert order["side"] in ("BUY", "SELL") and 0 < order["price"] < 1
            assert isinstance(order["shares"], int)
            assert order["shares"] == round(order["shares_normalized"] * 1e6)
            assert HEX64.match(order["tx_hash"]) and HEX64.match(order["order_hash"])
            assert HEX64.match(order["condition_id"]) and ADDR.match(order["user"])
            assert order["taker"] is None or ADDR.match(order["taker"])
            assert wallet in (order["user"], order["taker"])
            assert isinstance(order["block_number"], int) and isinstance(order["log_index"], int)
            fills.add((order["tx_hash"], order["log_index"]))
    assert len(fills) == sim.total_trades()  # (tx_hash, log_index) names one fill
    assert shared_tx >= 3  # a few fills share a transaction, told apart by log_index
    roles = [o["user"] == w for w in sim.wallet_addresses()[:10] for o in sim.orders(w)]
    assert 0.3 < sum(roles) / len(roles) < 0.9  # maker and taker both occur


def test_markets_and_events_have_every_field_and_the_truth_sets():
    sim = Simulator(SimConfig(seed=3, wallets=100, max_trades=50))
    markets = sim.markets()
    assert len(markets) == 50
    for market in markets:
        assert set(MARKET_FIELDS) <= set(market)
        assert market["status"] in ("open", "closed") and isinstance(market["tags"], list)
        if market["winning_side"] is not None:
            assert market["winning_side"] in (market["side_a"], market["side_b"])
    with_event = [m for m in markets if "event_slug" in m]
    assert 0.7 <= len(with_event) / len(markets) < 1.0
    assert any(m["winning_side"] is None for m in markets)
    assert any(m["close_time"] is None for m in markets)
    events = sim.events()
    slugs = {e["event_slug"] for e in events}
    assert slugs == {m["event_slug"] for m in with_event}
    for event in events:
        assert tuple(event) == EVENT_FIELDS and isinstance(event["settlement_sources"], str)
        members = [m for m in with_event if m["event_slug"] == event["event_slug"]]
        assert 1 <= event["market_count"] == len(members) <= 5
    traded = {o["condition_id"] for w in sim.wallet_addresses() for o in sim.orders(w)}
    assert sim.traded_condition_ids() == traded
    by_id = {m["condition_id"]: m for m in markets}
    expected = {by_id[c]["event_slug"] for c in traded if "event_slug" in by_id[c]}
    assert sim.traded_event_slugs() == expected


def test_truth_endpoint_matches_the_python_api(sim_server):
    server = sim_server(seed=12, wallets=25, max_trades=300)
    sim = server.simulator
    body = requests.get(f"{server.root_url}/_sim/truth").json()
    totals = body["totals"]
    assert (totals["wallets"], totals["markets"], totals["events"]) == (
        25,
        len(sim.markets()),
        len(sim.events()),
    )
    assert totals["trades"] == sum(body["wallets"].values()) == sim.total_trades()
    assert list(body["wallets"]) == sim.wallet_addresses()
    assert set(totals["traded_markets"]) == sim.traded_condition_ids()
    assert set(totals["traded_events"]) == sim.traded_event_slugs()
    assert body["markets"] == sim.markets() and body["events"] == sim.events()
    wallet = sim.wallet_addresses()[0]
    one = truth(server, wallet)
    assert one["trade_count"] == len(one["orders"]) == body["wallets"][wallet]
    assert truth(server, "0x" + "00" * 20)["orders"] == []


def test_omit_log_index_and_extra_fields(sim_server):
    server = sim_server(
        seed=2, wallets=3, trade_counts={0: 5}, omit_log_index=True, extra_fields=True
    )
    wallet = server.simulator.wallet_addresses()[0]
    orders = api(server, "orders", {"user": wallet}).json()["orders"]
    assert len(orders) == 5
    for order in orders:
        assert "block_number" not in order and "log_index" not in order
        assert order["fee_rate_bps"] == 0
    assert all(m["fee_rate_bps"] == 0 for m in api(server, "markets").json()["markets"])


# ---- orders endpoint --------------------------------------------------------------------------
@pytest.mark.parametrize("count,limit", [(2_345, 1000), (1_000, 1000), (37, 7), (0, 100)])
def test_pagination_walks_a_wallet_exactly(sim_server, count, limit):
    server = sim_server(seed=5, wallets=2, trade_counts={0: count})
    wallet = server.simulator.wallet_addresses()[0]
    pages = walk(server, wallet, limit)
    assert len(pages) == max(1, math.ceil(count / limit))
    orders = [o for page in pages for o in page["orders"]]
    assert orders == truth(server, wallet)["orders"] == server.simulator.orders(wallet)
    assert len({(o["tx_hash"], o["log_index"]) for o in orders}) == count
    assert all(
        p["pagination"]["total"] == count and p["pagination"]["limit"] == limit for p in pages
    )


def test_default_limit_unknown_wallet_and_checksummed_address(sim_server):
    server = sim_server(seed=5, wallets=2, trade_counts={0: 150})
    wallet = server.simulator.wallet_addresses()[0]
    body = api(server, "orders", {"user": wallet.upper().replace("0X", "0x")}).json()
    assert len(body["orders"]) == 100 and body["pagination"]["has_more"] is True
    unknown = api(server, "orders", {"user": "0x" + "ab" * 20}).json()
    assert unknown == {"orders": [], "pagination": {"limit": 100, "total": 0, "has_more": False}}


def test_start_and_end_time_filter_inclusively(sim_server):
    server = sim_server(seed=6, wallets=2, trade_counts={0: 900})
    wallet = server.simulator.wallet_addresses()[0]
    everything = server.simulator.orders(wallet)
    end, start = everything[100]["timestamp"], everything[700]["timestamp"]
    expected = [o for o in everything if start <= o["timestamp"] <= end]
    pages = walk(server, wallet, 250, start_time=start, end_time=end)
    assert [o for p in pages for o in p["orders"]] == expected
    assert pages[0]["pagination"]["total"] == len(expected) >= 601
    only_start = walk(server, wallet, 1000, start_time=start)
    assert [o for p in only_start for o in p["orders"]] == everything[
        : len(only_start[0]["orders"])
    ]
    assert only_start[0]["pagination"]["total"] == sum(o["timestamp"] >= start for o in everything)
    empty = api(server, "orders", {"user": wallet, "start_time": end, "end_time": start}).json()
    assert empty["orders"] == [] and empty["pagination"]["total"] == 0


def test_filter_by_condition_id(sim_server):
    server = sim_server(seed=6, wallets=2, trade_counts={0: 400})
    wallet = server.simulator.wallet_addresses()[0]
    everything = server.simulator.orders(wallet)
    cid = everything[0]["condition_id"]
    pages = walk(server, wallet, 20, condition_id=cid)
    assert [o for p in pages for o in p["orders"]] == [
        o for o in everything if o["condition_id"] == cid
    ]


def test_auth_is_required_but_not_for_sim_hooks(sim_server):
    server = sim_server(seed=1, wallets=2, api_key="the-key")
    wallet = server.simulator.wallet_addresses()[0]
    missing = api(server, "orders", {"user": wallet}, key=False)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    url = f"{server.base_url}/polymarket/markets"
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "the-key" not in wrong.text
    assert requests.get(url, headers={"Authorization": "Bearer the-key"}).status_code == 200
    assert requests.get(f"{server.root_url}/_sim/stats").status_code == 200
    assert server.stats()["responses_by_status"] == {"200": 1, "401": 2}
    assert sim_server(wallets=1).api_key != sim_server(wallets=1).api_key  # random per start


@pytest.mark.parametrize(
    "params,error",
    [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "abc"}, "invalid_limit"),
        ({"limit": ""}, "invalid_limit"),
        ({"limit": "1.5"}, "invalid_limit"),
        ({"user": None}, "invalid_user"),
        ({"user": "0x1234"}, "invalid_user"),
        ({"user": "0x" + "g" * 40}, "invalid_user"),
        ({"start_time": "yesterday"}, "invalid_start_time"),
        ({"pagination_key": "!!not-base64!!"}, "invalid_pagination_key"),
        ({"condition_id": "0x1", "market_slug": "x"}, "invalid_filter"),
    ],
)
def test_orders_bad_requests_are_400(sim_server, params, error):
    server = sim_server(seed=1, wallets=2)
    query = {"user": server.simulator.wallet_addresses()[0], **params}
    response = api(server, "orders", {k: v for k, v in query.items() if v is not None})
    assert response.status_code == 400 and response.json()["error"] == error
    assert response.json()["message"]


def test_a_key_from_another_wallet_or_filter_is_400(sim_server):
    server = sim_server(seed=1, wallets=2, trade_counts={0: 50, 1: 50})
    first, second = server.simulator.wallet_addresses()
    key = api(server, "orders", {"user": first, "limit": 10}).json()["pagination"]["pagination_key"]
    assert api(server, "orders", {"user": first, "limit": 10, "pagination_key": key}).ok
    for params in ({"user": second}, {"user": first, "start_time": 1}):
        response = api(server, "orders", {**params, "pagination_key": key})
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_pagination_key"
    markets_key = api(server, "markets", {"limit": 1}).json()["pagination"]["pagination_key"]
    response = api(server, "orders", {"user": first, "pagination_key": markets_key})
    assert response.status_code == 400


# ---- markets and events -----------------------------------------------------------------------
def test_markets_by_100_condition_ids_and_paginated(sim_server):
    server = sim_server(seed=4, wallets=300, markets=120)
    markets = server.simulator.markets()
    wanted = [m["condition_id"] for m in markets[:97]] + ["0x" + "00" * 32] * 3
    body = api(server, "markets", [("condition_id", c) for c in wanted] + [("limit", 100)]).json()
    assert body["markets"] == markets[:97]
    assert body["pagination"] == {"limit": 100, "total": 97, "has_more": False}
    params = [("condition_id", c) for c in wanted]
    got, key = [], None
    while True:
        page = api(server, "markets", params + ([("pagination_key", key)] if key else [])).json()
        got += page["markets"]
        if not page["pagination"]["has_more"]:
            break
        key = page["pagination"]["pagination_key"]
    assert got == markets[:97]  # default limit 10: ten pages
    too_many = api(server, "markets", [("condition_id", c) for c in [*wanted, "0x1"]])
    assert too_many.status_code == 400 and too_many.json()["error"] == "too_many_values"
    assert api(server, "markets", {"limit": 101}).status_code == 400
    slug = markets[5]["market_slug"]
    assert api(server, "markets", {"market_slug": slug}).json()["markets"] == [markets[5]]
    event_slug = next(m["event_slug"] for m in markets if "event_slug" in m)
    by_event = api(server, "markets", {"event_slug": event_slug, "limit": 100}).json()["markets"]
    assert by_event == [m for m in markets if m.get("event_slug") == event_slug]


def test_events_by_slug_with_markets_and_all_by_offset(sim_server):
    server = sim_server(seed=4, wallets=100)
    events = server.simulator.events()
    slug = events[3]["event_slug"]
    body = api(server, "events", {"event_slug": slug}).json()
    assert body["events"] == [events[3]] and "markets" not in body["events"][0]
    with_markets = api(server, "events", {"event_slug": slug, "include_markets": "true"}).json()
    members = [m for m in server.simulator.markets() if m.get("event_slug") == slug]
    assert with_markets["events"][0]["markets"] == members
    assert api(server, "events", {"event_slug": "nope"}).json()["events"] == []
    got, offset = [], 0
    while True:
        page = api(server, "events", {"limit": 7, "offset": offset}).json()
        got += page["events"]
        assert page["pagination"]["offset"] == offset
        if not page["pagination"]["has_more"]:
            break
        offset += 7
    assert got == events


# ---- rate limits ------------------------------------------------------------------------------
def test_free_tier_answers_429_with_retry_after_and_counts_peaks(sim_server):
    server = sim_server(seed=1, wallets=2, tier="free")
    with requests.Session() as session:
        answers = [api(server, "markets", {"limit": 1}, session) for _ in range(15)]
    assert [a.status_code for a in answers] == [200] * 10 + [429] * 5
    assert answers[-1].headers["Retry-After"] == "1" and answers[-1].json()["error"]
    assert requests.get(f"{server.root_url}/_sim/stats").ok  # hooks: not limited, not counted
    stats = server.stats()
    assert stats["http_429"] == stats["rate_limited"] == 5 and stats["requests_total"] == 15
    assert (stats["peak_1s"], stats["peak_1s_accepted"], stats["peak_10s_accepted"]) == (15, 10, 10)
    assert stats["responses_by_status"] == {"200": 10, "429": 5}
    assert stats["connections"] == 2  # keep-alive: one pooled for 15 requests, one for the hook
    assert requests.post(f"{server.root_url}/_sim/reset_stats").json() == {"ok": True}
    stats = requests.get(f"{server.root_url}/_sim/stats").json()
    assert stats["requests_total"] == 0 and stats["peak_1s"] == 0 and stats["http_429"] == 0


def test_429_without_retry_after_and_the_10s_window(sim_server):
    server = sim_server(seed=1, wallets=2, per_second=5, per_10s=8, retry_after=False)
    first = [api(server, "markets").status_code for _ in range(6)]
    assert first == [200] * 5 + [429]
    time.sleep(1.05)
    second = [api(server, "markets") for _ in range(4)]
    assert [a.status_code for a in second] == [200] * 3 + [429]
    assert "Retry-After" not in second[-1].headers
    stats = server.stats()
    assert stats["peak_10s_accepted"] == 8 and stats["peak_10s"] == 10
    assert stats["peak_1s_accepted"] == 5
    with_header = sim_server(seed=1, wallets=2, per_second=100, per_10s=3)
    answers = [api(with_header, "markets") for _ in range(4)]
    assert answers[-1].status_code == 429 and int(answers[-1].headers["Retry-After"]) == 10


def test_sixteen_concurrent_clients_get_exact_answers(sim_server):
    server = sim_server(seed=8, wallets=16, max_trades=400)
    wallets = server.simulator.wallet_addresses()
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def worker(wallet):
        try:
            with requests.Session() as session:
                pages = walk(server, wallet, 25, session)
            results[wallet] = [o for p in pages for o in p["orders"]]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in wallets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert all(results[w] == server.simulator.orders(w) for w in wallets)
    assert server.stats()["responses_by_status"].keys() == {"200"}


def test_latency_is_slept(sim_server):
    server = sim_server(seed=1, wallets=2, latency_ms=40)
    start = time.monotonic()
    for _ in range(5):
        assert api(server, "markets").ok
    assert time.monotonic() - start >= 0.08


# ---- faults -----------------------------------------------------------------------------------
@pytest.fixture
def faulty(sim_server):
    server = sim_server(seed=9, wallets=3, trade_counts={0: 250, 1: 250})
    return server, *server.simulator.wallet_addresses()[:2]


def test_http_5xx_4xx_and_storm_429(faulty):
    server, wallet, _ = faulty
    server.set_faults("http_5xx:times=1;http_4xx:times=1,status=404;storm_429:times=1")
    first = api(server, "orders", {"user": wallet})
    assert first.status_code == 503 and first.json()["error"] == "service_unavailable"
    second = api(server, "orders", {"user": wallet})
    assert second.status_code == 404 and second.json()["error"] == "not_found"
    third = api(server, "orders", {"user": wallet})
    assert third.status_code == 429 and third.headers["Retry-After"] == "1"
    assert api(server, "orders", {"user": wallet}).status_code == 200
    injected = server.stats()["faults_injected"]
    assert (injected["http_5xx"], injected["http_4xx"], injected["storm_429"]) == (1, 1, 1)
    assert server.stats()["http_429"] == 1 and server.stats()["rate_limited"] == 0


def test_reset_and_truncated_break_the_connection(faulty):
    server, wallet, _ = faulty
    server.set_faults("reset:times=1;truncated:times=1")
    with requests.Session() as session:
        with pytest.raises(requests.ConnectionError):
            api(server, "orders", {"user": wallet}, session)
        with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            api(server, "orders", {"user": wallet}, session)
        assert api(server, "orders", {"user": wallet}, session).ok
    stats = server.stats()
    assert stats["faults_injected"]["reset"] == stats["faults_injected"]["truncated"] == 1
    assert stats["responses_by_status"] == {"200": 2, "reset": 1}


def test_malformed_json_is_200_but_not_json(faulty):
    server, wallet, _ = faulty
    server.set_faults([{"kind": "malformed_json", "times": 1}])
    response = api(server, "orders", {"user": wallet})
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)
    assert api(server, "orders", {"user": wallet}).json()["orders"]


def test_slow_outlasts_the_read_timeout_without_wedging_the_server(sim_server):
    server = sim_server(seed=9, wallets=2, trade_counts={0: 10}, faults="slow:times=1,delay_s=1")
    wallet = server.simulator.wallet_addresses()[0]
    with pytest.raises(requests.ReadTimeout):
        api(server, "orders", {"user": wallet}, timeout=0.3)
    assert api(server, "orders", {"user": wallet}).ok  # others are served meanwhile
    stuck = sim_server(seed=9, wallets=2, faults="slow:delay_s=30,endpoint=markets")
    with pytest.raises(requests.ReadTimeout):
        api(stuck, "markets", timeout=0.3)
    start = time.monotonic()
    stuck.close()
    assert time.monotonic() - start < 2


def test_empty_has_more_and_repeat_key(faulty):
    server, wallet, _ = faulty
    server.set_faults("empty_has_more:times=1")
    body = api(server, "orders", {"user": wallet}).json()
    assert body["orders"] == [] and body["pagination"]["has_more"] is True
    key = body["pagination"]["pagination_key"]
    assert api(server, "orders", {"user": wallet, "pagination_key": key}).json()["orders"]
    server.set_faults("repeat_key:page=1")
    first = api(server, "orders", {"user": wallet}).json()["pagination"]["pagination_key"]
    again = api(server, "orders", {"user": wallet, "pagination_key": first}).json()
    assert again["pagination"]["pagination_key"] == first and again["pagination"]["has_more"]
    assert again["orders"] == server.simulator.orders(wallet)[100:200]


def test_missing_field_and_wrong_type(faulty):
    server, wallet, _ = faulty
    server.set_faults("missing_field:times=1;missing_field:times=1,field=price;wrong_type:times=1")
    assert all(
        "condition_id" not in o for o in api(server, "orders", {"user": wallet}).json()["orders"]
    )
    assert all("price" not in o for o in api(server, "orders", {"user": wallet}).json()["orders"])
    shares = [o["shares"] for o in api(server, "orders", {"user": wallet}).json()["orders"]]
    assert shares and all(isinstance(s, str) and s.isdigit() for s in shares)
    assert server.stats()["faults_injected"]["missing_field"] == 2
    server.set_faults("missing_field:endpoint=markets")
    assert all("condition_id" not in m for m in api(server, "markets").json()["markets"])


def test_targeting_by_wallet_page_times_and_rate(faulty, sim_server):
    server, wallet, other = faulty
    server.set_faults(f"http_4xx:wallets={wallet}")
    assert [api(server, "orders", {"user": wallet}).status_code for _ in range(3)] == [403] * 3
    assert api(server, "orders", {"user": other}).ok
    assert api(server, "markets").ok  # a wallet-targeted rule never hits markets
    server.set_faults([FaultRule("http_5xx", page=2, wallets=frozenset({wallet}))])
    statuses = []
    params = {"user": wallet, "limit": 100}
    for _ in range(3):
        response = api(server, "orders", params)
        statuses.append(response.status_code)
        if response.ok:
            params["pagination_key"] = response.json()["pagination"]["pagination_key"]
    assert statuses == [200, 200, 503]

    def rate_pattern():
        rated = sim_server(seed=21, wallets=2, faults="http_5xx:rate=0.5,endpoint=markets")
        return [api(rated, "markets").status_code for _ in range(40)]

    pattern = rate_pattern()
    assert 8 <= pattern.count(503) <= 32 and pattern == rate_pattern()  # seeded


def test_runtime_fault_replacement_over_http(faulty):
    server, wallet, _ = faulty
    url = f"{server.root_url}/_sim/faults"
    answer = requests.post(url, json=[{"kind": "http_5xx", "wallets": [wallet]}])
    assert answer.json()["faults"][0]["kind"] == "http_5xx"
    assert api(server, "orders", {"user": wallet}).status_code == 503
    assert requests.post(url, json=[]).json() == {"faults": []}
    assert api(server, "orders", {"user": wallet}).ok
    requests.post(url, json={"spec": "storm_429:times=1"})
    assert api(server, "orders", {"user": wallet}).status_code == 429
    bad = requests.post(url, json=[{"kind": "gremlins"}])
    assert bad.status_code == 400 and "gremlins" in bad.json()["message"]
    assert requests.get(url).json()["faults"][0]["kind"] == "storm_429"


def test_fault_spec_grammar():
    wallet = "0x" + "ab" * 20
    rules = parse_fault_spec(
        f" http_5xx:rate=0.05 ; reset:times=2,wallets={wallet}|0x{'CD' * 20};"
        "missing_field:field=price,endpoint=markets,page=3;slow:delay_s=2.5;"
    )
    assert [r.kind for r in rules] == ["http_5xx", "reset", "missing_field", "slow"]
    assert rules[0].rate == 0.05 and rules[1].times == 2
    assert rules[1].wallets == {wallet, "0x" + "cd" * 20}
    assert (rules[2].field, rules[2].endpoint, rules[2].page) == ("price", "markets", 3)
    assert rules[3].delay_s == 2.5 and parse_fault_spec("") == []
    assert FaultRule.from_dict(rules[1].to_dict()) == rules[1]
    assert set(FAULT_KINDS) >= {r.kind for r in rules}
    for bad in (
        "gremlins",
        "http_5xx:rate=2",
        "http_5xx:rate=0.1,times=2",
        "http_5xx:color=red",
        "http_5xx:times",
        "http_5xx:times=-1",
        "reset:wallets=0x12",
        "slow:endpoint=positions",
        "repeat_key:endpoint=status",
        "http_5xx:status=404",
    ):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)


# ---- CLI --------------------------------------------------------------------------------------
def _cli_command(*options: str) -> list[str]:
    """`python -m pipeline simulate` once every command module exists, else the same main()."""
    from pipeline.__main__ import COMMANDS

    if all(importlib.util.find_spec(module) for module, _ in COMMANDS.values()):
        return [sys.executable, "-m", "pipeline", "simulate", *options]
    code = (
        "import argparse, sys; from simulator import cli; "
        "p = argparse.ArgumentParser(); cli.add_arguments(p); "
        "sys.exit(cli.main(p.parse_args(sys.argv[1:]), sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *options]


def test_cli_serves_until_sigterm():
    env = {**os.environ, "DOME_API_KEY": "from-env"}
    command = _cli_command("--seed", "3", "--wallets", "5", "--tier", "free", "--faults", "")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=20), "no ready line"
        line = proc.stdout.readline()
        match = re.fullmatch(
            r"Dome API simulator ready: base_url=(http://127\.0\.0\.1:\d+/v1) api_key=(\S+)\n", line
        )
        assert match and match.group(2) == "from-env", line
        reply = requests.get(
            f"{match.group(1)}/polymarket/markets",
            headers={"Authorization": "Bearer from-env"},
            timeout=5,
        )
        assert reply.status_code == 200 and len(reply.json()["markets"]) == 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_a_bad_fault_spec():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    from simulator.cli import main

    argv = ["--faults", "gremlins:rate=1"]
    assert main(parser.parse_args(argv), argv) == 2


@pytest.mark.parametrize("port", [-1, 65536, 99999])
def test_cli_refuses_a_port_out_of_range_in_one_line(port, capsys):
    """`bind` raises OverflowError (no OSError) for these: the check comes first, exit 2."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    from simulator.cli import main

    argv = [f"--port={port}"]
    assert main(parser.parse_args(argv), argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"simulate: --port {port}: give 0-65535 (0 = a free one)\n"


# ---- moving the world forward: add_trades, settle_markets --------------------------------------
def admin(server, name, body):
    return requests.post(f"{server.root_url}/_sim/admin/{name}", json=body, timeout=5)


def everything(server, wallet, **filters):
    return [o for page in walk(server, wallet, 1000, **filters) for o in page["orders"]]


def test_add_trades_keeps_old_fills_and_puts_new_ones_first(sim_server):
    server = sim_server(seed=11, wallets=4, trade_counts={0: 2_345, 1: 0}, markets=200)
    sim = server.simulator
    wallet, empty = sim.wallet_addresses()[:2]
    old = everything(server, wallet)
    before = requests.get(f"{server.root_url}/_sim/truth").json()
    newest = old[0]["timestamp"]
    answer = admin(server, "add_trades", {"wallet": wallet, "count": 7})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"wallets": {wallet: 2_352}, "now": sim.now()}
    pages = walk(server, wallet, 1000)
    assert [p["pagination"]["total"] for p in pages] == [2_352] * 3
    new = [o for p in pages for o in p["orders"]]
    assert new[7:] == old  # every old fill byte for byte, in the same order
    stamps = [o["timestamp"] for o in new[:7]]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 7
    assert stamps[-1] > newest and stamps[0] == sim.now()
    assert all(tuple(o) == ORDER_FIELDS and wallet in (o["user"], o["taker"]) for o in new[:7])
    since = everything(server, wallet, start_time=newest)
    assert since == new[:7] + [o for o in old if o["timestamp"] == newest]
    assert everything(server, wallet, end_time=newest) == old
    # the truth follows
    assert truth(server, wallet)["orders"] == new == sim.orders(wallet)
    after = requests.get(f"{server.root_url}/_sim/truth").json()
    assert after["wallets"][wallet] == sim.trade_count(wallet) == 2_352
    assert after["totals"]["trades"] == before["totals"]["trades"] + 7 == sim.total_trades()
    fresh = {o["condition_id"] for o in new[:7]} - set(before["totals"]["traded_markets"])
    assert fresh and fresh <= set(after["totals"]["traded_markets"])  # a market to fetch
    untraded_open = {m["condition_id"] for m in before["markets"] if m["status"] == "open"} - set(
        before["totals"]["traded_markets"]
    )
    assert untraded_open and fresh <= untraded_open  # open ones first
    assert set(after["totals"]["traded_markets"]) == sim.traded_condition_ids()
    assert set(after["totals"]["traded_events"]) == sim.traded_event_slugs()
    by_id = {m["condition_id"]: m for m in sim.markets()}
    assert set(after["totals"]["traded_events"]) == {
        by_id[c]["event_slug"]
        for c in after["totals"]["traded_markets"]
        if "event_slug" in by_id[c]
    }
    cid = sorted(fresh)[0]
    assert api(server, "markets", {"condition_id": cid}).json()["markets"] == [by_id[cid]]
    assert everything(server, wallet, condition_id=cid) == [
        o for o in new if o["condition_id"] == cid
    ]
    # a second call, two wallets at once, one of them with no trades before
    clock = sim.now()
    answer = admin(server, "add_trades", {"wallets": {empty: 3, wallet: 2}}).json()
    assert answer["wallets"] == {empty: 3, wallet: 2_354}
    gained = everything(server, empty)
    assert len(gained) == 3 and all(o["timestamp"] > clock for o in gained)
    assert [o["timestamp"] for o in gained] == sorted(
        (o["timestamp"] for o in gained), reverse=True
    )
    latest = everything(server, wallet)
    assert latest[2:] == new and latest[1]["timestamp"] > new[0]["timestamp"]
    server.add_trades(empty, 3_000)
    stamps = [o["timestamp"] for o in sim.orders(empty)]
    assert all(x > y for x, y in itertools.pairwise(stamps)) and len(stamps) == 3_003
    fills = [(o["tx_hash"], o["log_index"]) for o in sim.iter_orders()]
    assert len(set(fills)) == len(fills) == sim.total_trades()


def test_a_key_minted_before_an_add_continues_on_its_snapshot(sim_server):
    server = sim_server(seed=12, wallets=2, trade_counts={0: 250})
    wallet = server.simulator.wallet_addresses()[0]
    old = server.simulator.orders(wallet)
    first = api(server, "orders", {"user": wallet}).json()
    server.add_trades(wallet, 10)
    params = {"user": wallet, "pagination_key": first["pagination"]["pagination_key"]}
    second = api(server, "orders", params).json()
    assert second["orders"] == old[100:200] and second["pagination"]["total"] == 250
    params["pagination_key"] = second["pagination"]["pagination_key"]
    third = api(server, "orders", params).json()
    assert third["orders"] == old[200:] and third["pagination"]["has_more"] is False
    assert len(everything(server, wallet)) == 260  # a new walk sees the new fills
    forged = encode_key("orders", _scope(wallet, None, None, None), 100, 11)  # a view not yet
    response = api(server, "orders", {"user": wallet, "pagination_key": forged})
    assert response.status_code == 400 and response.json()["error"] == "invalid_pagination_key"


def test_admin_calls_are_deterministic_and_http_equals_python(sim_server):
    config = {"seed": 13, "wallets": 6, "max_trades": 300, "markets": 200, "open_fraction": 0.5}
    over_http, in_python = sim_server(**config), sim_server(**config)
    a, b, c = over_http.simulator.wallet_addresses()[:3]
    cids = [m["condition_id"] for m in over_http.simulator.markets()[:4]]
    assert admin(over_http, "add_trades", {"wallet": a, "count": 5}).ok
    assert admin(over_http, "settle_markets", {"condition_ids": cids[:2]}).ok
    assert admin(over_http, "add_trades", {"wallets": {b: 4, c: 1, a: 2}}).ok
    assert admin(over_http, "settle_markets", {"count": 3}).ok
    assert in_python.add_trades(a, 5) == {a: in_python.simulator.trade_count(a)}
    in_python.settle_markets(cids[:2])
    in_python.add_trades({c: 1, a: 2, b: 4})  # the order of a mapping does not matter
    assert len(in_python.settle_markets(count=3)) == 3
    get = requests.get
    assert get(f"{over_http.root_url}/_sim/truth").content == (
        get(f"{in_python.root_url}/_sim/truth").content
    )
    for wallet in (a, b, c):
        assert api(over_http, "orders", {"user": wallet}).content == (
            api(in_python, "orders", {"user": wallet}).content
        )
    assert over_http.simulator.orders(a) != sim_server(**config).simulator.orders(a)
    stats = over_http.stats()
    assert stats["requests"]["admin"] == 4 and in_python.stats()["requests"]["admin"] == 4
    assert stats["requests_total"] == 3 and stats["responses_by_status"] == {"200": 3}


def test_settle_markets_closes_markets_and_then_their_event(sim_server):
    server = sim_server(seed=14, wallets=80, max_trades=200, open_fraction=0.6)
    markets = api(server, "markets", {"limit": 100}).json()["markets"]
    statuses = {m["status"] for m in markets}
    assert statuses == {"open", "closed"}
    for market in markets:
        closed = market["status"] == "closed"
        assert (market["end_time"] < 1_763_856_000) == closed
        if not closed:
            assert (
                market["winning_side"] is market["completed_time"] is market["close_time"] is None
            )
    members: dict[str, list[dict]] = {}
    for market in markets:
        if "event_slug" in market:
            members.setdefault(market["event_slug"], []).append(market)
    slug = next(s for s, ms in members.items() if sum(m["status"] == "open" for m in ms) >= 2)
    still_open = [m["condition_id"] for m in members[slug] if m["status"] == "open"]

    def event():
        return api(server, "events", {"event_slug": slug, "include_markets": "true"}).json()

    assert event()["events"][0]["status"] == "open"
    answer = admin(server, "settle_markets", {"condition_ids": still_open[:1]}).json()
    assert answer["condition_ids"] == still_open[:1] and answer["closed_events"] == []
    assert event()["events"][0]["status"] == "open"
    answer = admin(server, "settle_markets", {"condition_ids": still_open[1:]}).json()
    assert answer["closed_events"] == [slug] and answer["now"] == server.simulator.now()
    body = event()["events"][0]
    assert body["status"] == "closed"
    by_status = {
        status: {
            e["event_slug"]
            for e in api(server, "events", {"status": status, "limit": 100}).json()["events"]
        }
        for status in ("open", "closed")
    }
    assert slug in by_status["closed"] and slug not in by_status["open"]
    for market in body["markets"]:
        assert market["status"] == "closed"
        assert market["winning_side"] in (market["side_a"], market["side_b"])
        if market["condition_id"] in still_open:
            assert market["completed_time"] == market["close_time"] >= 1_763_856_000
    # {"count": n}: the n lowest-index open markets
    open_now = [m["condition_id"] for m in server.simulator.markets() if m["status"] == "open"]
    answer = admin(server, "settle_markets", {"count": 2}).json()
    assert answer["condition_ids"] == open_now[:2]
    wanted = [("condition_id", c) for c in open_now[:3]]
    got = {m["condition_id"]: m["status"] for m in api(server, "markets", wanted).json()["markets"]}
    assert got == {open_now[0]: "closed", open_now[1]: "closed", open_now[2]: "open"}
    # new fills trade open markets only (here no closed market is untraded, see data.py)
    sim = server.simulator
    status = {m["condition_id"]: m["status"] for m in sim.markets()}
    assert {c for c, s in status.items() if s == "closed"} <= sim.traded_condition_ids()
    wallet = sim.wallet_addresses()[0]
    server.add_trades(wallet, 40)
    assert {status[o["condition_id"]] for o in sim.orders(wallet)[:40]} == {"open"}
    # settling every open market closes every event; the winners are side_a and side_b alike
    answer = admin(server, "settle_markets", {"count": 100}).json()
    assert answer["condition_ids"] == open_now[2:] and len(answer["condition_ids"]) >= 8
    events = api(server, "events", {"limit": 100}).json()["events"]
    assert {e["status"] for e in events} == {"closed"}
    winners = {
        "a" if m["winning_side"] == m["side_a"] else "b"
        for m in sim.markets()
        if m["condition_id"] in open_now
    }
    assert winners == {"a", "b"}


def test_open_fraction_and_the_default_status_split():
    default = Simulator(SimConfig(seed=3, wallets=400)).markets()
    share = sum(m["status"] == "open" for m in default) / len(default)
    assert 0.01 < share < 0.1  # a few percent: closed iff end_time has passed
    assert all((m["end_time"] < 1_763_856_000) == (m["status"] == "closed") for m in default)
    assert all(m["status"] == "open" for m in Simulator(SimConfig(open_fraction=1.0)).markets())
    assert all(m["status"] == "closed" for m in Simulator(SimConfig(open_fraction=0.0)).markets())
    with pytest.raises(ValueError):
        SimConfig(open_fraction=1.5)


def test_bad_admin_calls_are_400_and_change_nothing(sim_server):
    server = sim_server(seed=15, wallets=3, trade_counts={0: 20})
    wallet = server.simulator.wallet_addresses()[0]
    state = requests.get(f"{server.root_url}/_sim/truth").content
    for name, body in [
        ("add_trades", {"wallet": "0x" + "ab" * 20, "count": 1}),
        ("add_trades", {"wallets": {wallet: 2, "0x" + "ab" * 20: 1}}),
        ("add_trades", {"wallet": wallet, "count": -1}),
        ("add_trades", {"wallet": wallet, "count": "3"}),
        ("add_trades", {"wallet": wallet}),
        ("add_trades", [wallet]),
        ("settle_markets", {"condition_ids": ["0x" + "00" * 32]}),
        ("settle_markets", {"count": -2}),
        ("settle_markets", {"count": 1, "condition_ids": []}),
    ]:
        response = admin(server, name, body)
        assert response.status_code == 400 and response.json()["error"] == "invalid_admin", body
    assert requests.get(f"{server.root_url}/_sim/truth").content == state
    with pytest.raises(ValueError):
        server.add_trades(wallet, -1)
    with pytest.raises(ValueError):
        server.settle_markets()
    assert server.stats()["requests"]["admin"] == 11


@pytest.mark.parametrize("items", [0, 1, ENCODE_CHUNK, ENCODE_CHUNK + 1, 3 * ENCODE_CHUNK + 7])
def test_a_page_encoded_in_chunks_is_the_same_bytes(items):
    """The simulator encodes a long list a chunk at a time (so that no one call holds the GIL
    while another request waits to be counted); what goes out is what one json.dumps writes."""
    rows = [{"id": i, "price": i / 7, "title": f'é "{i}"', "tags": [i, None]} for i in range(items)]
    page = {"orders": rows, "pagination": {"limit": 1000, "has_more": True}, "ünï": [1, 2]}
    expected = json.dumps(page, separators=(",", ":")).encode()
    assert _dumps(page) == expected
    assert json.loads(_dumps(page)) == page
    assert _dumps(rows) == json.dumps(rows, separators=(",", ":")).encode()  # not an object
