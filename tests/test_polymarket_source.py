"""The Polymarket source (real requests client) against the simulator over loopback: every trap the
API sets is avoided, ids are stable, markets and events are found every way the API allows, and the
per-endpoint rate limits hold, with each way the server may refuse recovered."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from decimal import Decimal

import pytest

from pipeline.sources import SourceSpec, open_source
from pipeline.sources.errors import PageError, PaginationError, SourceError
from pipeline.sources.http import HttpSettings, Telemetry
from pipeline.sources.polymarket import ids
from pipeline.sources.polymarket.parse import iso_time
from pipeline.sources.polymarket.source import run_end, windows

THREE_YEARS = 3 * 365 * 86_400
FAST = HttpSettings(read_timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)


class Recorder(Telemetry):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def request(self, endpoint):
        with self.lock:
            self.counts[f"requests_{endpoint}"] += 1

    def retry(self, endpoint, reason):
        with self.lock:
            self.counts["retries"] += 1

    def throttled(self, endpoint, status):
        with self.lock:
            self.counts[f"throttled_{status}"] += 1

    def slowed(self, endpoint):
        with self.lock:
            self.counts["slowed"] += 1

    def outside_window(self, endpoint, rows):
        with self.lock:
            self.counts["outside_window"] += rows


def make_source(server, telemetry=None, page_limit=1000, limits=None, http=FAST, **spec):
    return open_source(
        SourceSpec(
            name="polymarket",
            run_id="r1",
            windows=windows(limits),
            http=http,
            page_limit=page_limit,
            data_api_url=server.root_url,
            gamma_api_url=server.root_url,
            **spec,
        ),
        telemetry,
    )


def content(row: dict) -> tuple:
    return (row["tx_hash"], row["token_id"], row["side"], row["shares"], row["timestamp"])


def truth_content(row: dict) -> tuple:
    shares = int(Decimal(str(row["size"])) * 1_000_000)
    return (row["transaction_hash"], row["token_id"], row["side"], shares, row["timestamp"])


def walk(source, wallet, start=None):
    return [row for page in source.trade_pages(wallet, start) for row in page]


@pytest.fixture
def world(sim_server):
    server = sim_server(seed=4, wallets=12)
    sim = server.simulator
    return server, sim.wallet_addresses()[sim.showcase]


def test_a_wallets_walk_is_its_whole_history_with_every_trap_in_it(world):
    server, wallet = world
    truth = server.wallet_truth(wallet, source="polymarket")["rows"]
    now = server.simulator.now()
    # The world holds each trap the parameters avoid, or this test would prove nothing:
    assert any(r["timestamp"] < now - THREE_YEARS for r in truth)  # start=1
    orders = server.simulator.orders(wallet)
    assert any(o["user"] == wallet and o["shares"] >= 10_000 for o in orders)  # taker_only=false
    assert truth[0] == truth[1]  # identical rows, two real fills
    assert any(o["shares"] < 10_000 for o in orders)  # dust, which the API never serves

    for page_limit in (1000, 7):  # small pages: twins split across pages, many cursors
        rows = walk(make_source(server, page_limit=page_limit), wallet)
        assert Counter(map(content, rows)) == Counter(map(truth_content, truth))
        assert len({row["id"] for row in rows}) == len(truth)
        assert all(
            row["source"] == "polymarket" and row["wallet_address"] == wallet for row in rows
        )


def test_ids_are_stable_across_walks_and_an_incremental_walk_agrees(world):
    server, wallet = world
    full = walk(make_source(server, page_limit=5), wallet)
    again = walk(make_source(server, page_limit=1000), wallet)
    # Small pages split the walk into windows (walk.py), whose pages interleave: same ids.
    assert sorted(r["id"] for r in full) == sorted(r["id"] for r in again)
    twins = [r for r in full if content(r) == content(full[0])]
    assert len(twins) == 2 and twins[0]["id"] != twins[1]["id"]
    assert sorted(r["fill_ordinal"] for r in twins) == [0, 1]
    # An incremental walk that starts at the twins' own timestamp sees both and numbers them alike.
    start = full[0]["timestamp"]
    recent = walk(make_source(server), wallet, start)
    by_id = {r["id"]: r for r in full}
    assert recent and all(r["id"] in by_id for r in recent)
    assert {r["id"] for r in recent} == {r["id"] for r in full if r["timestamp"] >= start}


def _monotone(values: list[int]) -> bool:
    pairs = list(itertools.pairwise(values))
    return all(a >= b for a, b in pairs) or all(a <= b for a, b in pairs)


@pytest.mark.parametrize("oldest_first", [False, True], ids=["newest_first", "oldest_first"])
def test_a_deep_walk_split_into_windows_lands_the_same_rows_and_ids(sim_server, oldest_first):
    """The order /v2/trades serves is undocumented: split walks must be exact either way."""
    server = sim_server(seed=9, wallets=3, trade_counts={0: 900}, pm_oldest_first=oldest_first)
    wallet = server.simulator.wallet_addresses()[0]
    truth = server.wallet_truth(wallet, source="polymarket")["rows"]
    # Twins (identical rows, two fills) are what a window boundary must never cut.
    assert len(Counter(map(truth_content, truth))) < len(truth)

    seen = Recorder()
    whole = walk(make_source(server, page_limit=20, split_walks=False), wallet)
    split = walk(make_source(server, seen, page_limit=20), wallet)
    assert _monotone([r["timestamp"] for r in whole])
    assert not _monotone([r["timestamp"] for r in split])  # it did walk windows at once
    assert sorted(r["id"] for r in split) == sorted(r["id"] for r in whole)
    assert Counter(map(content, split)) == Counter(map(truth_content, truth))
    assert len({r["id"] for r in split}) == len(truth)
    # At most one partial page per window, and windows made only while there was room.
    pages = -(-len(truth) // 20)
    assert pages < seen.counts["requests_trades"] <= 2 * pages


def test_a_server_in_no_time_order_is_walked_whole_by_cursor(sim_server):
    """The order is undocumented. Pages of 3 rows served in a shuffled order look sorted one time
    in three: when one page was taken as proof, the walk split there and lost most of the wallet
    (the rows it thought served already). A window now splits only once all it served shows one
    order, so this walk goes on by cursor and lands every row once."""
    server = sim_server(seed=9, wallets=3, trade_counts={0: 300}, pm_unsorted=True)
    wallet = server.simulator.wallet_addresses()[0]
    source = make_source(server, seen := Recorder(), page_limit=3)
    end = source.trades_end()
    truth = [
        r for r in server.wallet_truth(wallet, source="polymarket")["rows"] if r["timestamp"] <= end
    ]
    rows = walk(source, wallet)
    assert not _monotone([r["timestamp"] for r in rows])  # served in no order at all
    assert Counter(map(content, rows)) == Counter(map(truth_content, truth))
    assert len({r["id"] for r in rows}) == len(rows) == len(truth)
    assert seen.counts["requests_trades"] == -(-len(truth) // 3)  # one cursor walk, no window


def injected(server) -> dict[str, int]:
    return {k: n for k, n in server.stats()["polymarket"]["faults_injected"].items() if n}


@pytest.mark.parametrize("split", [True, False], ids=["split", "by_cursor"])
def test_an_empty_page_that_skipped_rows_fails_the_wallet_one_that_did_not_lands_it(
    sim_server, split
):
    """The docs say never to stop on an empty page that says more (a filter may empty it), so
    the walk steps over it; but a server that skipped the page's rows lost them unseen, the
    wallet marked done. The page's range is asked again at the end of its window's walk."""
    server = sim_server(seed=9, wallets=3, trade_counts={0: 300})
    wallet = server.simulator.wallet_addresses()[0]
    truth = server.wallet_truth(wallet, source="polymarket")["rows"]

    server.set_faults("empty_page:endpoint=trades,page=2,times=1")  # nothing skipped
    seen = Recorder()
    rows = walk(make_source(server, seen, page_limit=20, split_walks=split), wallet)
    assert injected(server) == {"empty_page": 1}
    assert Counter(map(content, rows)) == Counter(map(truth_content, truth))
    assert len({r["id"] for r in rows}) == len(rows) == len(truth)

    server.reset_stats()
    server.set_faults("empty_has_more:endpoint=trades,page=2,times=1")  # its 20 rows skipped
    with pytest.raises(PaginationError, match=f"wallet {wallet} trades: an empty page said more"):
        walk(make_source(server, page_limit=20, split_walks=split), wallet)
    assert injected(server) == {"empty_has_more": 1}


@pytest.mark.parametrize(
    "fault",
    ["http_4xx:endpoint=trades,rate=0.2,status=404", "absurd_value:endpoint=trades,rate=0.2"],
)
def test_a_window_that_fails_fails_its_wallet_whole(sim_server, fault):
    """The seeded faults spare the walk's first page (the first draw), so the failure comes from
    a window the split made: one bad window fails the wallet, with its name, never a part of
    the history passed off as the whole."""
    server = sim_server(seed=9, wallets=3, trade_counts={0: 900}, faults=fault)
    wallet = server.simulator.wallet_addresses()[0]
    source = make_source(server, seen := Recorder(), page_limit=20)
    with pytest.raises(SourceError, match=wallet):
        walk(source, wallet)
    assert seen.counts["requests_trades"] > 1  # the first page passed: windows were walked


def test_a_server_ignoring_the_windows_bounds_still_lands_each_row_once(sim_server):
    """Split windows trust `start`/`end`: a server that ignores them serves every window the
    whole history. Rows outside the window asked for are dropped (counted), so none lands twice."""
    server = sim_server(
        seed=9,
        wallets=3,
        trade_counts={0: 300},
        pm_ignore_bounds=True,
        pm_limits={"trades": None, "data": None},  # every window walks the whole history
    )
    wallet = server.simulator.wallet_addresses()[0]
    roomy = {"trades": 1000}
    source = make_source(server, seen := Recorder(), page_limit=20, limits=roomy)
    end = source.trades_end()
    truth = [
        r for r in server.wallet_truth(wallet, source="polymarket")["rows"] if r["timestamp"] <= end
    ]
    rows = walk(source, wallet)
    assert Counter(map(content, rows)) == Counter(map(truth_content, truth))
    assert len({r["id"] for r in rows}) == len(rows)
    assert seen.counts["outside_window"] > 0  # windows were split, and each saw the others' rows
    whole = walk(make_source(server, page_limit=20, limits=roomy, split_walks=False), wallet)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in whole)


def test_trade_id_ignores_number_formatting_and_key_order():
    row = {
        "transaction_hash": "0xABC",
        "token_id": "1",
        "side": "buy",
        "size": Decimal("10.50"),
        "price": Decimal("0.5"),
        "timestamp": 7,
    }
    same = {**row, "transaction_hash": "0xabc", "size": Decimal("10.5"), "price": Decimal("0.50")}
    key = ids.fill_key("0xW", row)
    assert key == ids.fill_key("0xw", same)
    assert ids.trade_id(key, 0) != ids.trade_id(key, 1)
    assert ids.trade_id(key, 0) != ids.trade_id(ids.fill_key("0xw", {**row, "timestamp": 8}), 0)
    assert len(ids.trade_id(key, 0)) == 64
    ordinals = ids.Ordinals()
    assert [ordinals.next(key), ordinals.next(key), ordinals.next(ids.fill_key("0xv", row))] == [
        0,
        1,
        0,
    ]


def test_markets_closed_open_by_slug_and_missing_are_all_accounted_for(world):
    server, _ = world
    truth = server.truth(source="polymarket")
    found = {m["conditionId"].lower(): m for m in truth["markets"]}
    refs = [(cid, m["slug"]) for cid, m in found.items()]
    missing = truth["missing_markets"]
    slugs = {r["condition_id"]: r["slug"] for w in truth["wallets"].values() for r in w["rows"]}
    refs += [(cid, slugs.get(cid)) for cid in missing]
    assert any(m["closed"] for m in found.values()) and any(not m["closed"] for m in found.values())
    assert truth["keyset_missing_markets"] and missing

    recorder = Recorder()
    source = make_source(server, recorder)
    rows, lost = [], []
    for start in range(0, len(refs), source.markets_per_batch):
        lookup = source.markets(refs[start : start + source.markets_per_batch])
        rows += lookup.rows
        lost += lookup.missing
    assert {r["condition_id"] for r in rows} == set(found)
    assert sorted(lost) == sorted(missing)
    assert recorder.counts["requests_markets_slug"] >= len(truth["keyset_missing_markets"])

    payouts = {r["condition_id"].lower(): r["payouts"] for r in truth["resolutions"]}
    for row in rows:
        market = found[row["condition_id"]]
        assert row["title"] == market["question"] and row["market_slug"] == market["slug"]
        assert row["token_ids"] == [str(t) for t in _json(market["clobTokenIds"])]
        assert row["end_time"] == iso_time(market["endDate"])
        if not market["closed"]:
            assert row["status"] == "open" and row["winning_side_id"] is None
            continue
        paid = payouts.get(row["condition_id"])
        assert row["status"] == ("resolved" if paid else "resolving")
        if paid and sorted(paid) == [0, 1_000_000]:
            assert row["winning_side_id"] == row["token_ids"][paid.index(1_000_000)]
        elif paid:  # 50/50: no winner, the payouts say so
            assert row["winning_side_id"] is None and row["payouts"] == paid
    assert any(r["payouts"] and r["winning_side_id"] is None for r in rows) or not any(
        p and p[0] == p[1] for p in payouts.values()
    )


def _json(text):
    import json

    return json.loads(text) if isinstance(text, str) else text


def test_events_closed_and_open_are_found_and_unknown_ones_missing(world):
    server, _ = world
    truth = server.truth(source="polymarket")
    slugs = sorted(e["slug"] for e in truth["events"])
    assert any(e["closed"] for e in truth["events"]) and any(
        not e["closed"] for e in truth["events"]
    )
    source = make_source(server)
    lookup = source.events([*slugs, "no-such-event"])
    assert sorted(r["event_slug"] for r in lookup.rows) == slugs
    assert lookup.missing == ["no-such-event"]
    statuses = {r["event_slug"]: r["status"] for r in lookup.rows}
    assert statuses == {e["slug"]: "closed" if e["closed"] else "open" for e in truth["events"]}


def test_the_run_end_trails_the_feeds_lag():
    assert run_end(30, now=1_000_000) == 1_000_000 - 30 - 120
    assert run_end(-5, now=1_000_000) == 1_000_000 - 120


def test_a_repeated_cursor_ends_the_wallet_with_a_clear_error(world):
    server, wallet = world
    server.set_faults([{"kind": "repeat_key", "endpoint": "trades", "wallets": [wallet]}])
    with pytest.raises(PaginationError, match=f"wallet {wallet}.*cursor repeated"):
        walk(make_source(server, page_limit=7), wallet)


def test_an_unreachable_source_is_a_clear_error():
    spec = SourceSpec(
        name="polymarket",
        run_id="r1",
        windows=windows(),
        http=HttpSettings(max_attempts=2, backoff_initial_s=0.01, connect_timeout_s=1),
        data_api_url="http://127.0.0.1:9",
        gamma_api_url="http://127.0.0.1:9",
    )
    source = open_source(spec)
    with pytest.raises(SourceError, match="/v2/status: ConnectionError"):
        source.trades_end()


# ---- rate limits ---------------------------------------------------------------------------------


def hammer(source, wallets, threads=8):
    errors: list[Exception] = []
    fetched: dict[str, list] = {}

    def worker(mine):
        for wallet in mine:
            try:
                fetched[wallet] = walk(source, wallet)
            except Exception as exc:  # any failure fails the test below
                errors.append(exc)

    pool = [threading.Thread(target=worker, args=(wallets[i::threads],)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return fetched, errors


@pytest.mark.slow
def test_no_bucket_goes_over_its_limit_at_the_limits_the_client_knows(sim_server):
    server = sim_server(seed=2, wallets=30, max_trades=400, pm_limits={"trades": 20})
    source = make_source(server, page_limit=50, limits={"trades": 20})
    wallets = server.simulator.wallet_addresses()
    fetched, errors = hammer(source, wallets)
    assert errors == []
    buckets = server.stats()["polymarket"]["buckets"]
    assert buckets["trades"]["requests"] > 20  # it had to wait for a second window
    for name, bucket in buckets.items():
        assert bucket["http_429"] == 0 and bucket["http_503"] == 0, name
        assert bucket["limit"] is None or bucket["peak_accepted"] <= bucket["limit"], name
    for wallet in wallets:
        assert len(fetched[wallet]) == server.wallet_truth(wallet, "polymarket")["trade_count"]


@pytest.mark.parametrize("mode", ["429", "429_date", "503", "delay"])
def test_every_way_the_server_refuses_is_recovered(sim_server, mode):
    # The server allows 6 requests a second; the client believes the published 200 per 10 s.
    server = sim_server(
        seed=2,
        wallets=16,
        max_trades=300,
        pm_limits={"trades": 6},
        pm_window_s=1.0,
        pm_throttle=mode,
    )
    recorder = Recorder()
    http = HttpSettings(read_timeout_s=10, max_attempts=8, backoff_initial_s=0.05, slow_min_s=0.3)
    source = make_source(server, recorder, page_limit=50, http=http)
    wallets = server.simulator.wallet_addresses()
    fetched, errors = hammer(source, wallets)
    assert errors == []
    for wallet in wallets:
        assert len(fetched[wallet]) == server.wallet_truth(wallet, "polymarket")["trade_count"]
    trades = server.stats()["polymarket"]["buckets"]["trades"]
    if mode == "delay":
        assert trades["delayed"] > 0 and recorder.counts["retries"] == 0
    else:
        status = 503 if mode == "503" else 429
        assert trades[f"http_{status}"] > 0
        assert recorder.counts[f"throttled_{status}"] == trades[f"http_{status}"]


@pytest.mark.parametrize("written", ["1700000000.0", "1.7e9", "17E8"])
def test_an_integral_timestamp_written_as_a_float_is_the_integer(written):
    """The client parses every JSON float as a Decimal: `1700000000.0` was refused, and every
    wallet would have failed on every run had the API written its timestamps so."""
    import json

    from pipeline.sources.polymarket.parse import trades_page

    row = {
        "proxy_wallet": "0x" + "a" * 40,
        "side": "BUY",
        "token_id": "1",
        "condition_id": "0x" + "c" * 64,
        "size": 2,
        "price": 0.5,
        "timestamp": "TS",
        "transaction_hash": "0x" + "f" * 64,
        "outcome_index": "OI",
    }
    text = json.dumps({"data": [row], "pagination": {"has_more": False}})
    text = text.replace('"TS"', written).replace('"OI"', "1.0")
    _, items = trades_page(json.loads(text, parse_float=Decimal), "test page")
    assert items[0]["timestamp"] == 1_700_000_000 and items[0]["outcome_index"] == 1
    fractional = text.replace(written, "1700000000.5")
    with pytest.raises(PageError, match="'timestamp' should be an integer"):
        trades_page(json.loads(fractional, parse_float=Decimal), "test page")
