"""The simulator's Polymarket contract (Data API v2 + Gamma) over a real loopback socket: every trap."""

from __future__ import annotations

import email.utils
import json
import threading
import time

import pytest
import requests

from simulator import SimConfig, Simulator

ROW_FIELDS = (
    "proxy_wallet", "side", "token_id", "condition_id", "size", "price", "timestamp", "title",
    "slug", "icon", "event_slug", "outcome", "outcome_index", "name", "pseudonym", "bio",
    "profile_image", "profile_image_optimized", "transaction_hash",
)  # fmt: skip
FULL = {"taker_only": "false", "start": 1}
THREE_YEARS = 3 * 365 * 86_400


def trades(server, params, session=None):
    return (session or requests).get(f"{server.root_url}/v2/trades", params=params, timeout=10)


def walk(server, wallet, **params):
    """Every row of a wallet following next_cursor; the same filters on every page."""
    rows, query, pages = [], {"user": wallet, **params}, 0
    while True:
        response = trades(server, query)
        assert response.status_code == 200, response.text
        assert response.headers["x-trace-id"]
        body = response.json()
        rows += body["data"]
        pagination = body["pagination"]
        assert pagination["has_more"] == (pagination["next_cursor"] is not None)
        if not pagination["has_more"]:
            return rows
        pages += 1
        assert pages < 500
        query = {**query, "cursor": pagination["next_cursor"]}


def gamma(server, path, params=None):
    return requests.get(f"{server.root_url}{path}", params=params, timeout=10)


def keyset(server, kind, params, cursor_name="after_cursor", max_pages=50):
    """Every item of a Gamma keyset listing; returns (items, pages)."""
    items, query, pages = [], dict(params), 0
    while True:
        response = gamma(server, f"/{kind}/keyset", query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body[kind]
        pages += 1
        if "next_cursor" not in body or pages >= max_pages:
            return items, pages
        query = {**query, cursor_name: body["next_cursor"]}


@pytest.fixture
def world(sim_server):
    """A default small world: every trap is in it whatever the seed."""
    server = sim_server(seed=4, wallets=12)
    return server, server.truth(source="polymarket")


def showcase(server):
    sim = server.simulator
    return sim.wallet_addresses()[sim.showcase]


# ---- the data ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_every_small_world_has_every_trap(seed):
    sim = Simulator(SimConfig(seed=seed, wallets=10))
    assert sim.showcase >= 0
    wallet = sim.wallet_addresses()[sim.showcase]
    orders = sim.orders(wallet)
    assert any(o["timestamp"] < sim.now() - THREE_YEARS for o in orders)  # old history
    assert any(o["shares"] < 10_000 for o in orders)  # dust
    first, second = orders[0], orders[1]  # exact twins: only order_hash and log_index differ
    same = ("tx_hash", "token_id", "side", "price", "shares", "timestamp", "user", "taker")
    assert all(first[k] == second[k] for k in same) and first["log_index"] != second["log_index"]
    everyone = [o for w in sim.wallet_addresses() for o in sim.orders(w)]
    assert any(o["user"] in sim.wallet_addresses() for o in everyone)  # maker fills


def test_rows_map_the_dome_fills_of_the_same_world(world):
    server, truth = world
    sim = server.simulator
    wallet = showcase(server)
    rows = truth["wallets"][wallet]["rows"]
    orders = [o for o in sim.orders(wallet) if o["shares"] >= 10_000]
    assert len(rows) == len(orders) == truth["wallets"][wallet]["count"]
    markets = {m["condition_id"]: m for m in sim.markets()}
    for row, order in zip(rows, orders, strict=True):
        assert tuple(row) == ROW_FIELDS
        assert row["proxy_wallet"] == wallet and row["size"] == order["shares_normalized"]
        assert (row["side"], row["price"], row["timestamp"]) == (
            order["side"], order["price"], order["timestamp"],
        )  # fmt: skip
        assert row["transaction_hash"] == order["tx_hash"] and row["slug"] == order["market_slug"]
        assert isinstance(row["token_id"], str) and row["outcome"] == order["token_label"]
        market = markets[row["condition_id"]]
        assert row["outcome_index"] == (0 if row["token_id"] == market["side_a"]["id"] else 1)
        assert row["event_slug"] in ("", market.get("event_slug", ""))
    assert rows[0] == rows[1]  # twins: two identical rows, both real fills
    stamps = [r["timestamp"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)


def test_full_walk_is_the_truth_and_each_forgotten_parameter_loses_rows(world):
    server, truth = world
    wallet = showcase(server)
    expected = truth["wallets"][wallet]["rows"]
    assert walk(server, wallet, limit=7, **FULL) == expected  # small pages, twins kept
    assert walk(server, wallet, limit=1000, **FULL) == expected
    no_start = walk(server, wallet, taker_only="false")
    assert 0 < len(no_start) < len(expected)
    assert all(r["timestamp"] >= server.simulator.now() - THREE_YEARS for r in no_start)
    takers = walk(server, wallet, start=1)
    assert len(takers) < len(expected)
    assert walk(server, wallet, takerOnly="false", start=1) == expected  # camelCase
    # dust is never served, whatever filter_amount says
    assert walk(server, wallet, filter_amount=0, **FULL) == expected
    assert all(r["size"] >= 0.01 for w in truth["wallets"].values() for r in w["rows"])
    big = walk(server, wallet, filter_amount=100, **FULL)
    assert big == [r for r in expected if r["size"] >= 100]
    cash = walk(server, wallet, filter_type="CASH", filter_amount=50, **FULL)
    assert cash == [r for r in expected if r["size"] * r["price"] >= 50 - 1e-9]
    total = sum(w["count"] for w in truth["wallets"].values())
    assert total == truth["totals"]["trades"]
    assert total < server.simulator.total_trades()  # the dust


def test_filters_window_side_condition_and_default_limit(world):
    server, truth = world
    wallet = showcase(server)
    expected = truth["wallets"][wallet]["rows"]
    first = trades(server, {"user": wallet.upper().replace("0X", "0x"), **FULL}).json()
    assert len(first["data"]) == min(100, len(expected))  # default limit, case-insensitive user
    assert first["pagination"]["limit"] == 100
    mid = expected[len(expected) // 2]["timestamp"]
    window = walk(server, wallet, taker_only="false", start=1, end=mid)
    assert window == [r for r in expected if r["timestamp"] <= mid]
    assert walk(server, wallet, side="BUY", **FULL) == [r for r in expected if r["side"] == "BUY"]
    cid = expected[0]["condition_id"]
    assert walk(server, wallet, condition=cid, **FULL) == [
        r for r in expected if r["condition_id"] == cid
    ]
    assert walk(server, wallet, condition_id="0x" + "ab" * 32, **FULL) == []
    unknown = trades(server, {"user": "0x" + "00" * 20}).json()
    assert unknown == {
        "data": [],
        "pagination": {"limit": 100, "offset": 0, "has_more": False, "next_cursor": None},
    }


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user": "0x12"},
        {"limit": 1001},
        {"limit": -1},
        {"offset": 100},
        {"taker_only": "maybe"},
        {"filter_type": "USD"},
        {"filter_amount": "-1"},
        {"side": "HOLD"},
        {"condition": "0x12"},
        {"condition": ",".join("0x" + f"{i:064x}" for i in range(21))},
        {"cursor": "garbage"},
        {"start": "yesterday"},
    ],
)
def test_bad_trades_requests_are_400_with_the_error_shape(world, params):
    server, _ = world
    query = {"user": showcase(server), **params} if params else {}
    response = trades(server, query)
    assert response.status_code == 400, params
    body = response.json()
    assert body["code"] == "invalid_request" and body["retryable"] is False
    assert body["trace_id"] == response.headers["x-trace-id"] and body["error"]


def test_cursor_is_signed_bound_to_its_filters_and_a_snapshot(world):
    server, truth = world
    wallet = showcase(server)
    body = trades(server, {"user": wallet, "limit": 3, **FULL}).json()
    cursor = body["pagination"]["next_cursor"]
    payload, _, mac = cursor.partition(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    assert trades(server, {"user": wallet, "cursor": tampered, **FULL}).status_code == 400
    other = server.simulator.wallet_addresses()[server.simulator.showcase + 1]
    assert trades(server, {"user": other, "cursor": cursor}).status_code == 400
    assert trades(server, {"user": wallet, "cursor": cursor, "side": "BUY"}).status_code == 400
    # the cursor's size wins over a later limit; filters ride in the cursor
    second = trades(server, {"user": wallet, "cursor": cursor, "limit": 50}).json()
    assert second["data"] == truth["wallets"][wallet]["rows"][3:6]
    # fills added mid-walk show on the next walk, not this one
    server.add_trades(wallet, 5)
    again = trades(server, {"user": wallet, "cursor": cursor, **FULL}).json()
    assert again["data"] == second["data"]
    fresh = walk(server, wallet, **FULL)
    assert len(fresh) > len(truth["wallets"][wallet]["rows"])
    assert fresh == server.wallet_truth(wallet, source="polymarket")["rows"]


def test_lag_hides_the_newest_fills_until_the_clock_moves(sim_server):
    server = sim_server(seed=4, wallets=12, lag_seconds=600)
    wallet = showcase(server)
    status = requests.get(f"{server.root_url}/v2/status", timeout=5).json()
    assert status == {"data": {"serving": {"lag_seconds": 600}}}
    before = server.wallet_truth(wallet, source="polymarket")["trade_count"]
    server.add_trades(wallet, 3)
    now = server.simulator.now()
    served = walk(server, wallet, **FULL)
    assert all(r["timestamp"] <= now - 600 for r in served)
    assert len(served) == server.wallet_truth(wallet, source="polymarket")["trade_count"]
    assert len(served) < before + 3  # the newest added fill is within the lag
    server.settle_markets(count=0)  # no clock move on an empty settle
    other = next(w for w in server.simulator.wallet_addresses() if w != wallet)
    server.add_trades(other, 500)  # moves the clock on, far past the lag
    assert len(walk(server, wallet, **FULL)) == before + 3


def test_truth_endpoint_and_admin_calls_keep_both_views(world):
    server, truth = world
    body = requests.get(
        f"{server.root_url}/_sim/truth", params={"source": "polymarket"}, timeout=10
    ).json()
    assert body == json.loads(json.dumps(truth))
    assert set(body) >= {"totals", "wallets", "markets", "missing_markets", "events", "resolutions"}
    light = requests.get(
        f"{server.root_url}/_sim/truth", params={"source": "polymarket", "rows": "false"}
    ).json()
    assert all(set(w) == {"count"} for w in light["wallets"].values())
    wallet = showcase(server)
    one = requests.get(
        f"{server.root_url}/_sim/truth", params={"source": "polymarket", "wallet": wallet}
    ).json()
    assert one["rows"] == truth["wallets"][wallet]["rows"]
    dome = requests.get(f"{server.root_url}/_sim/truth").json()
    assert set(dome) == {"totals", "wallets", "markets", "events"}  # unchanged
    assert requests.get(f"{server.root_url}/_sim/truth", params={"source": "x"}).status_code == 400
    open_ids = server.simulator.open_market_ids()
    if open_ids:
        server.settle_markets(open_ids[:1])
        after = server.truth(source="polymarket", rows=False)
        known = {r["condition_id"]: r for r in after["resolutions"]}
        if open_ids[0] in known:
            assert known[open_ids[0]]["resolved"] is True


# ---- Gamma ------------------------------------------------------------------------------------
def test_markets_keyset_closed_default_and_the_ignored_cursor(world):
    server, truth = world
    ids = [m["conditionId"] for m in truth["markets"]]
    keyset_ids = [c for c in ids if c not in truth["keyset_missing_markets"]]
    found = []
    for closed in ("true", "false"):
        items, _ = keyset(
            server, "markets", {"condition_ids": keyset_ids, "closed": closed, "limit": 5}
        )
        found += items
    assert {m["conditionId"] for m in found} == set(keyset_ids)
    default, _ = keyset(server, "markets", {"condition_ids": keyset_ids, "limit": 100})
    assert len(default) < len(keyset_ids) and not any(m["closed"] for m in default)
    # `cursor` instead of `after_cursor`: page 1 again and again
    looped, pages = keyset(
        server, "markets", {"closed": "true", "limit": 2}, cursor_name="cursor", max_pages=4
    )
    assert pages == 4 and looped[:2] == looped[2:4] == looped[4:6]
    # a full last page is followed by an empty one
    listing, _ = keyset(server, "markets", {"closed": "true", "limit": 100})
    size = len(listing)
    body = gamma(server, "/markets/keyset", {"closed": "true", "limit": size}).json()
    assert len(body["markets"]) == size and "next_cursor" in body
    tail = gamma(
        server,
        "/markets/keyset",
        {"closed": "true", "limit": size, "after_cursor": body["next_cursor"]},
    ).json()
    assert tail == {"markets": []}


def test_market_objects_agree_with_the_dome_view_and_resolutions(world):
    server, truth = world
    dome = {m["condition_id"]: m for m in server.simulator.markets()}
    resolutions = {r["condition_id"]: r for r in truth["resolutions"]}
    for market in truth["markets"]:
        twin = dome[market["conditionId"]]
        assert isinstance(market["id"], str) and isinstance(market["volume"], str)
        assert json.loads(market["clobTokenIds"]) == [twin["side_a"]["id"], twin["side_b"]["id"]]
        assert json.loads(market["outcomes"]) == [twin["side_a"]["label"], twin["side_b"]["label"]]
        assert market["closed"] == (twin["status"] == "closed")
        assert market["endDate"].endswith("Z") and ("closedTime" in market) == market["closed"]
        payouts = resolutions[market["conditionId"]]["payouts"]
        if twin["winning_side"] is not None:
            wins_a = twin["winning_side"]["id"] == twin["side_a"]["id"]
            assert payouts == ([1_000_000, 0] if wins_a else [0, 1_000_000])
            assert json.loads(market["outcomePrices"]) == (["1", "0"] if wins_a else ["0", "1"])
        elif twin["status"] == "open":
            assert payouts is None
    cids = list(resolutions)[:20]
    body = requests.get(f"{server.root_url}/v2/resolutions", params={"condition": ",".join(cids)})
    assert body.json()["data"] == [resolutions[c] for c in cids]
    too_many = ",".join("0x" + f"{i:064x}" for i in range(21))
    assert (
        requests.get(
            f"{server.root_url}/v2/resolutions", params={"condition": too_many}
        ).status_code
        == 400
    )


def test_fifty_fifty_resolutions_exist():
    sim_config = SimConfig(seed=1, wallets=10, markets=400)
    from simulator.polymarket_view import PolymarketView

    view = PolymarketView(Simulator(sim_config), 30)
    payouts = [view.resolution_at(j)["payouts"] for j in range(400)]
    assert [500_000, 500_000] in payouts and None in payouts
    assert payouts.count([1_000_000, 0]) > 50 and payouts.count([0, 1_000_000]) > 50


def test_keyset_missing_markets_are_found_by_slug_and_missing_ones_nowhere(world):
    server, truth = world
    assert truth["keyset_missing_markets"] and truth["missing_markets"]
    by_id = {m["conditionId"]: m for m in truth["markets"]}
    for cid in truth["keyset_missing_markets"]:
        for closed in ("true", "false"):
            body = gamma(server, "/markets/keyset", {"condition_ids": cid, "closed": closed}).json()
            assert body["markets"] == []
        slug = by_id[cid]["slug"]
        found = gamma(server, f"/markets/slug/{slug}")
        assert found.status_code == 200 and found.json() == by_id[cid]
        assert gamma(server, f"/markets/{by_id[cid]['id']}").json() == by_id[cid]
    dome = {m["condition_id"]: m for m in server.simulator.markets()}
    for cid in truth["missing_markets"]:
        missing = gamma(server, f"/markets/slug/{dome[cid]['market_slug']}")
        assert missing.status_code == 404 and set(missing.json()) == {"type", "error"}
        assert any(  # its fills still land: they are trades like any other
            r["condition_id"] == cid for w in truth["wallets"].values() for r in w["rows"]
        )


def test_gamma_validation_is_422_and_long_urls_414(world):
    server, _ = world
    for params in ({"limit": 101}, {"limit": 0}, {"offset": 20}, {"closed": "maybe"}):
        response = gamma(server, "/markets/keyset", params)
        assert response.status_code == 422 and set(response.json()) == {"type", "error"}
    ids = ["0x" + f"{i:064x}" for i in range(101)]
    assert gamma(server, "/markets/keyset", {"condition_ids": ids[:100]}).status_code == 200
    assert gamma(server, "/markets/keyset", {"condition_ids": ids}).status_code == 414  # 8 KB
    short = [f"0x{i:x}" for i in range(101)]
    assert gamma(server, "/markets/keyset", {"condition_ids": short}).status_code == 422
    assert gamma(server, "/events/keyset", {"limit": 501}).status_code == 422
    assert gamma(server, "/events/keyset", {"after_cursor": "nope"}).status_code == 422
    assert gamma(server, "/markets/slug/no-such-market").status_code == 404


def test_events_keyset_closed_default_loses_closed_events(world):
    server, truth = world
    slugs = [e["slug"] for e in truth["events"]]
    found = []
    for closed in ("true", "false"):
        items, _ = keyset(server, "events", {"slug": slugs, "closed": closed, "limit": 3})
        found += items
    assert sorted(found, key=lambda e: e["slug"]) == sorted(
        truth["events"], key=lambda e: e["slug"]
    )
    default, _ = keyset(server, "events", {"slug": slugs})
    assert len(default) < len(slugs) and not any(e["closed"] for e in default)
    event = truth["events"][0]
    assert gamma(server, f"/events/slug/{event['slug']}").json() == event
    assert gamma(server, f"/events/{event['id']}").json() == event
    assert set(event) >= {"id", "slug", "title", "description", "startDate", "endDate", "closed",
                          "negRisk", "tags", "markets"}  # fmt: skip
    assert all(set(t) == {"id", "label", "slug"} for t in event["tags"])
    looped, pages = keyset(
        server, "events", {"closed": "true", "limit": 1}, cursor_name="cursor", max_pages=3
    )
    assert pages == 3 and looped[0] == looped[1] == looped[2]


def test_no_key_needed_and_an_authorization_header_is_ignored(world):
    server, _ = world
    headers = {"Authorization": "Bearer whatever"}
    assert requests.get(f"{server.root_url}/v2/status", headers=headers).status_code == 200
    assert requests.get(f"{server.root_url}/v2/nothing").status_code == 404
    stats = server.stats()
    assert stats["requests_total"] == 0  # Dome counters untouched
    assert stats["polymarket"]["requests"]["status"] == 1


# ---- rate limits ------------------------------------------------------------------------------
def hammer(server, wallet, n, threads=1):
    statuses, headers = [], []
    lock = threading.Lock()

    def one():
        with requests.Session() as session:
            for _ in range(n // threads):
                response = trades(server, {"user": wallet, "limit": 1}, session)
                with lock:
                    statuses.append(response.status_code)
                    headers.append(response.headers)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return statuses, headers


def test_trades_bucket_answers_429_with_retry_after_seconds(sim_server):
    server = sim_server(seed=4, wallets=12, pm_limits={"trades": 20})
    statuses, headers = hammer(server, showcase(server), 30)
    assert statuses.count(200) == 20 and statuses.count(429) == 10
    retry = [h["Retry-After"] for s, h in zip(statuses, headers, strict=True) if s == 429]
    assert all(r.isdigit() and 1 <= int(r) <= 10 for r in retry)
    bucket = server.stats()["polymarket"]["buckets"]["trades"]
    assert bucket["requests"] == 30 and bucket["http_429"] == 10 and bucket["peak_accepted"] == 20
    data = server.stats()["polymarket"]["buckets"]["data"]
    assert data["http_429"] == 0 and data["peak_accepted"] == 20  # rejects cost nothing


def test_429_with_an_http_date_and_503_forms(sim_server):
    dated = sim_server(seed=4, wallets=12, pm_limits={"trades": 5}, pm_throttle="429_date")
    statuses, headers = hammer(dated, showcase(dated), 8)
    assert statuses.count(429) == 3
    when = email.utils.parsedate_to_datetime(headers[-1]["Retry-After"]).timestamp()
    assert time.time() - 1 <= when <= time.time() + 11
    busy = sim_server(seed=4, wallets=12, pm_limits={"data": 5}, pm_throttle="503")
    response = None
    for _ in range(6):
        response = requests.get(f"{busy.root_url}/v2/status", timeout=5)
    assert response.status_code == 503 and response.json()["code"] == "request_timeout"
    assert response.json()["retryable"] is True and response.headers["Retry-After"].isdigit()
    assert busy.stats()["polymarket"]["buckets"]["data"]["http_503"] == 1


def test_delay_form_holds_requests_without_errors(sim_server):
    server = sim_server(
        seed=4, wallets=12, pm_limits={"trades": 10}, pm_throttle="delay", pm_window_s=0.5
    )
    started = time.monotonic()
    statuses, _ = hammer(server, showcase(server), 24, threads=4)
    elapsed = time.monotonic() - started
    assert statuses == [200] * 24
    assert elapsed >= 0.9  # 24 requests at 10 per 0.5 s take at least two more windows
    bucket = server.stats()["polymarket"]["buckets"]["trades"]
    assert bucket["delayed"] >= 4 and bucket["delay_seconds"] > 0
    assert bucket["peak_accepted"] <= 10 and bucket["http_429"] == 0


def test_listing_bucket_covers_both_keysets(sim_server):
    server = sim_server(seed=4, wallets=12, pm_limits={"listing": 4})
    codes = [gamma(server, "/markets/keyset", {"closed": "true"}).status_code for _ in range(3)]
    codes += [gamma(server, "/events/keyset", {"closed": "true"}).status_code for _ in range(3)]
    assert codes == [200] * 4 + [429] * 2
    assert gamma(server, "/markets/slug/none").status_code == 404  # not a listing: not limited
    buckets = server.stats()["polymarket"]["buckets"]
    assert buckets["listing"]["peak_accepted"] == 4 and buckets["listing"]["http_429"] == 2
    assert buckets["markets"]["requests"] == 4 and buckets["events"]["requests"] == 3
    for name, bucket in buckets.items():
        assert bucket["limit"] is None or bucket["peak_accepted"] <= bucket["limit"], name


# ---- faults -----------------------------------------------------------------------------------
def test_faults_on_polymarket_endpoints(world):
    server, truth = world
    wallet = showcase(server)
    server.set_faults("http_5xx:times=1,endpoint=trades;http_4xx:times=1,endpoint=gamma_markets")
    broken = trades(server, {"user": wallet})
    assert broken.status_code == 503 and broken.json()["retryable"] is True
    assert gamma(server, "/markets/keyset").json()["type"] == "forbidden"
    server.set_faults("repeat_key:page=1,endpoint=trades")
    first = trades(server, {"user": wallet, "limit": 2, **FULL}).json()
    second = trades(server, {"user": wallet, "cursor": first["pagination"]["next_cursor"]}).json()
    assert second["pagination"]["next_cursor"] == first["pagination"]["next_cursor"]
    server.set_faults("empty_has_more:times=1,endpoint=trades")
    empty = trades(server, {"user": wallet, **FULL}).json()
    assert empty["data"] == [] and empty["pagination"]["has_more"] is True
    server.set_faults("missing_field:times=1,endpoint=trades;wrong_type:times=1,endpoint=status")
    assert all(
        "condition_id" not in r for r in trades(server, {"user": wallet, **FULL}).json()["data"]
    )
    status = requests.get(f"{server.root_url}/v2/status").json()
    assert status["data"]["serving"]["lag_seconds"] == "30"
    server.set_faults("malformed_json:times=1,endpoint=gamma_events_slug")
    slug = truth["events"][0]["slug"]
    with pytest.raises(ValueError):
        gamma(server, f"/events/slug/{slug}").json()
    server.set_faults(f"reset:times=1,endpoint=trades,wallets={wallet}")
    with pytest.raises(requests.ConnectionError):
        trades(server, {"user": wallet})
    injected = server.stats()["polymarket"]["faults_injected"]
    assert injected["http_5xx"] == injected["reset"] == injected["repeat_key"] == 1
    assert server.stats()["faults_injected"]["reset"] == 0  # Dome's counters are apart
