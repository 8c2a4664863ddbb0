"""The real DomeClient (requests) against the real simulator over a loopback socket."""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
import tracemalloc
from dataclasses import replace

import pytest

from pipeline.sources.dome.client import DomeClient, DomeSettings, RateLimit
from pipeline.sources.dome.ids import trade_id
from pipeline.sources.errors import (
    ConfigError,
    HTTPStatusError,
    PageError,
    PaginationError,
    SourceError,
)
from pipeline.sources.http import BUSY_IN_FLIGHT, HttpClient, HttpSettings, Telemetry
from pipeline.sources.limiter import (
    ARRIVAL_FLOOR_S,
    QUEUE_STEP_S,
    QUEUED_S,
    RateLimiter,
    Window,
)

UNLIMITED = RateLimit(10_000, 100_000)
FAST = HttpSettings(read_timeout_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.2)


class Recorder(Telemetry):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def _add(self, name: str) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def request(self, endpoint):
        self._add("requests")

    def retry(self, endpoint, reason):
        self._add("retries")

    def throttled(self, endpoint, status):
        self._add("429")

    def unknown_fields(self, kind, counts):
        self._add("unknown")


def make_client(server, dome=None, limit=UNLIMITED, events=None, http=FAST, key=None):
    dome = DomeSettings(**{**(dome or DomeSettings()).__dict__, "base_url": server.base_url})
    limiter = RateLimiter(limit.windows())
    return DomeClient.build(dome, key or server.api_key, limiter, events, http)


def fetch_all(client, wallet):
    return [order for page in client.order_pages(wallet) for order in page.items]


def ids(wallet, orders):
    return sorted(trade_id(wallet, order) for order in orders)


def test_20k_trade_wallet_fetched_exactly_in_ceil_pages_with_flat_memory(sim_server):
    server = sim_server(seed=3, wallets=3, trade_counts={0: 20_000, 1: 2_000})
    big, small = server.simulator.wallet_addresses()[:2]
    client = make_client(server)

    orders = fetch_all(client, big)
    assert ids(big, orders) == ids(big, server.simulator.orders(big))
    assert len(set(ids(big, orders))) == 20_000
    assert server.stats()["requests"]["orders"] == math.ceil(20_000 / DomeSettings().page_limit)

    def peak_while_streaming(wallet):
        tracemalloc.start()
        pages = sum(1 for _ in client.order_pages(wallet))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return pages, peak

    small_pages, small_peak = peak_while_streaming(small)
    big_pages, big_peak = peak_while_streaming(big)
    assert (small_pages, big_pages) == (2, 20)
    # Ten times the trades; the peak is one page either way (plus noise), not ten times more.
    assert big_peak < 1.5 * small_peak, (small_peak, big_peak)


@pytest.mark.slow
def test_eight_threads_share_a_free_tier_limiter_without_a_429(sim_server):
    server = sim_server(seed=5, wallets=40, tier="free", max_trades=300)
    wallets = server.simulator.wallet_addresses()
    events = Recorder()
    client = make_client(server, DomeSettings(page_limit=50), RateLimit.for_tier("free"), events)
    stop = time.monotonic() + 30
    errors: list[Exception] = []

    def worker(offset):
        i = offset
        while time.monotonic() < stop:
            try:
                fetch_all(client, wallets[i % len(wallets)])
            except Exception as exc:  # any failure fails the test below
                errors.append(exc)
            i += 8

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = server.stats()
    assert errors == []
    assert stats["http_429"] == 0 and events.counts.get("429", 0) == 0
    assert stats["peak_1s"] <= 10 and stats["peak_10s"] <= 100, stats
    assert stats["requests_total"] >= 200  # it did run at a useful rate for 30 s


def run_with_fault(server, rule, wallet, settings=FAST):
    server.set_faults([rule])
    events = Recorder()
    client = make_client(server, events=events, http=settings)
    try:
        return fetch_all(client, wallet), None, events
    except SourceError as error:
        return None, error, events


TRANSIENT = [
    {"kind": "http_5xx", "times": 2},
    {"kind": "storm_429", "times": 3},
    {"kind": "slow", "times": 1, "delay_s": 3.0},
    {"kind": "reset", "times": 2},
    {"kind": "malformed_json", "times": 2},
    {"kind": "truncated", "times": 2},
]


@pytest.mark.parametrize("rule", TRANSIENT, ids=[r["kind"] for r in TRANSIENT])
def test_transient_faults_recover_with_all_data(sim_server, rule, caplog):
    caplog.set_level(logging.DEBUG)
    server = sim_server(seed=9, wallets=4, trade_counts={0: 2_500}, retry_after=False)
    wallet = server.simulator.wallet_addresses()[0]
    orders, error, events = run_with_fault(server, {**rule, "wallets": [wallet]}, wallet)
    assert error is None
    assert ids(wallet, orders) == ids(wallet, server.simulator.orders(wallet))
    assert events.counts["retries"] == rule["times"]
    assert server.api_key not in caplog.text


def test_retry_after_is_honoured(sim_server):
    server = sim_server(seed=9, wallets=2, trade_counts={0: 10}, retry_after=True)
    wallet = server.simulator.wallet_addresses()[0]
    start = time.monotonic()
    orders, error, events = run_with_fault(server, {"kind": "storm_429", "times": 1}, wallet)
    assert error is None and len(orders) == 10
    assert time.monotonic() - start >= 0.9  # the simulator says Retry-After: 1
    assert events.counts["429"] == 1


PERMANENT = [
    ({"kind": "http_4xx", "status": 403}, HTTPStatusError, "HTTP 403", 1),
    ({"kind": "http_5xx", "rate": 1.0}, SourceError, "gave up after 5 attempts", 5),
    ({"kind": "empty_has_more"}, PaginationError, "empty page that says has_more", None),
    ({"kind": "repeat_key"}, PaginationError, "cursor repeated", None),
    ({"kind": "missing_field", "field": "price"}, PageError, "'price' is missing", None),
    ({"kind": "wrong_type"}, PageError, "'shares' should be an integer", None),
]


@pytest.mark.parametrize(
    "rule,error_type,text,requests", PERMANENT, ids=[r[0]["kind"] for r in PERMANENT]
)
def test_permanent_faults_end_the_wallet_with_a_clear_error(
    sim_server, rule, error_type, text, requests, caplog
):
    caplog.set_level(logging.DEBUG)
    server = sim_server(seed=9, wallets=4, trade_counts={0: 2_500})
    wallet = server.simulator.wallet_addresses()[0]
    orders, error, _ = run_with_fault(server, {**rule, "wallets": [wallet]}, wallet)
    assert orders is None and isinstance(error, error_type)
    assert text in str(error) and wallet in str(error)
    if requests is not None:
        assert server.stats()["requests"]["orders"] == requests
    assert server.stats()["requests"]["orders"] <= 10  # bounded: never an endless loop
    assert server.api_key not in str(error) and server.api_key not in repr(error)
    assert server.api_key not in caplog.text


def test_page_error_names_field_wallet_and_page(sim_server):
    server = sim_server(seed=9, wallets=4, trade_counts={0: 2_500})
    wallet = server.simulator.wallet_addresses()[0]
    rule = {"kind": "missing_field", "field": "condition_id", "wallets": [wallet], "page": 1}
    _, error, _ = run_with_fault(server, rule, wallet)
    assert (
        f"wallet {wallet} orders page 1, item 0: required field 'condition_id' is missing"
        in str(error)
    )


def test_max_pages_guard(sim_server):
    server = sim_server(seed=9, wallets=2, trade_counts={0: 500})
    wallet = server.simulator.wallet_addresses()[0]
    settings = DomeSettings(page_limit=100, max_pages=3)
    client = make_client(server, settings)
    with pytest.raises(PaginationError, match="more than 3 pages"):
        fetch_all(client, wallet)


def test_wrong_key_is_a_clear_401_without_the_key(sim_server):
    server = sim_server(seed=1, wallets=2)
    client = make_client(server, limit=RateLimit(100, 1000), key="wrong-key-123")
    with pytest.raises(HTTPStatusError) as error:
        fetch_all(client, server.simulator.wallet_addresses()[0])
    assert error.value.status == 401 and "wrong-key-123" not in str(error.value)
    assert "wrong-key-123" not in repr(client)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(client)


def test_page_limit_refused_is_a_configuration_error(sim_server):
    server = sim_server(seed=1, wallets=2)
    client = make_client(server, DomeSettings(page_limit=5000))
    with pytest.raises(ConfigError, match="--page_limit"):
        fetch_all(client, server.simulator.wallet_addresses()[0])


def test_markets_in_batches_of_100_and_events_by_slug(sim_server):
    server = sim_server(seed=4, wallets=300, markets=250)
    simulator = server.simulator
    wanted = sorted(m["condition_id"] for m in simulator.markets())
    client = make_client(server)
    markets = client.markets(wanted)
    assert sorted(m["condition_id"] for m in markets) == wanted
    assert server.stats()["requests"]["markets"] == 3
    slug = next(m["event_slug"] for m in simulator.markets() if m.get("event_slug"))
    event = client.event(slug)
    assert event is not None and event["event_slug"] == slug
    assert client.event("no-such-event") is None


def test_unknown_fields_are_counted_not_fatal(sim_server):
    server = sim_server(seed=2, wallets=2, trade_counts={0: 30}, extra_fields=True)
    wallet = server.simulator.wallet_addresses()[0]
    events = Recorder()
    orders = fetch_all(make_client(server, events=events), wallet)
    assert len(orders) == 30 and events.counts["unknown"] >= 1


def test_without_log_index_ids_stay_unique(sim_server):
    server = sim_server(seed=2, wallets=3, trade_counts={0: 3_000}, omit_log_index=True)
    wallet = server.simulator.wallet_addresses()[0]
    orders = fetch_all(make_client(server), wallet)
    assert len(set(ids(wallet, orders))) == len(orders) == 3_000


def test_the_client_tells_the_limiter_when_a_request_is_sent(sim_server):
    """The real requests session over a socket: the limiter learns of the send (after the stamp,
    before the answer) and of the connection's handshake, so a slow answer frees the slot from
    the send plus the bound a loopback round trip gives (~20 ms; the margin, 5 s here, would leave
    it to the answer); not for a connection's first request, which the server counts only once it
    has accepted the connection (left to the answer); a request that never left (a refused
    connection) is never said to be sent."""
    server = sim_server(seed=3, wallets=1, latency_ms=600, latency_sigma=0.0)
    window = Window("data", 5, 10.0, margin_s=5.0, held_to_answer=True)
    limiter = RateLimiter([window])
    client = HttpClient(FAST, limiter)
    url = f"{server.data_api_url}/v2/status"
    sent_at, answered_at = [], []
    for _ in range(2):  # one connection: the pool reuses it
        sent_at.append(time.monotonic())
        assert client.get_json(url, [], endpoint="status", buckets=["data"], where="status")
        answered_at.append(time.monotonic())
        assert answered_at[-1] - sent_at[-1] >= 0.6
    first, second = [tuple(slot) for slot in limiter._states[0].slots]
    assert first[1] and second[1]  # both seen sent
    # The first: one window after its answer (the margin, 5 s, would be later).
    assert sent_at[0] + 10.6 <= first[0] <= answered_at[0] + 10.0
    # The second: within the handshake's bound of the send, which came >= 0.6 s before the
    # answer: neither the margin (5 s) nor the answer (answered + 10) sets it.
    assert sent_at[1] + 10.0 + ARRIVAL_FLOOR_S <= second[0] < answered_at[1] + 10.0 - 0.5

    refused = RateLimiter([window])
    with pytest.raises(SourceError):
        HttpClient(FAST, refused).get_json(
            "http://127.0.0.1:9/v2/status", [], endpoint="status", buckets=["data"], where="x"
        )
    assert [slot[1] for slot in refused._states[0].slots] == [0.0] * FAST.max_attempts


def burst(client, url, size, released=None):
    """`size` requests sent at once from as many threads (a barrier lines them up; `released`
    receives the time it let them go, before any was sent)."""
    released = [] if released is None else released
    ready = threading.Barrier(size, action=lambda: released.append(time.monotonic()))

    def one(_):
        ready.wait()
        return client.get_json(url, [], endpoint="s", buckets=["data"], where="s")

    with concurrent.futures.ThreadPoolExecutor(size) as pool:
        return list(pool.map(one, range(size)))


def warm_client(server, size, margin_s=2.0):
    """A client whose pool already holds `size` connections (their first requests answered, and
    their slots dropped), over a slow server: a burst's requests are all in flight together."""
    limiter = RateLimiter([Window("data", 50, 10.0, margin_s=margin_s, held_to_answer=True)])
    client = HttpClient(replace(FAST, pool_size=size, read_timeout_s=10.0), limiter)
    url = f"{server.data_api_url}/v2/status"
    assert all(burst(client, url, size))
    limiter._states[0].slots.clear()
    return client, limiter, url


def test_requests_sent_while_many_await_answers_keep_the_margin(sim_server):
    """A burst: the first BUSY_IN_FLIGHT requests count their arrival within the handshake's bound
    of their send; the ones sent while that many await their answers keep the window's margin
    (a server receiving many at once may count them late), and the count goes back to zero."""
    server = sim_server(seed=3, wallets=1, latency_ms=2500, latency_sigma=0.0)
    size = BUSY_IN_FLIGHT + 2
    client, limiter, url = warm_client(server, size)
    assert all(burst(client, url, size))
    # All were sent within the 2.5 s before the first answer: a slot freed ~20-60 ms after its
    # send, or 2 s after it (the answer, 2.5 s after, frees none sooner than that).
    free_at = sorted(slot[0] for slot in limiter._states[0].slots)
    bound, margin = free_at[:BUSY_IN_FLIGHT], free_at[BUSY_IN_FLIGHT:]
    assert len(margin) == 2 and min(margin) - max(bound) > 1.0
    assert client._in_flight == {}


def test_a_request_sent_right_behind_others_allows_for_their_counting_first(sim_server):
    """Requests sent within QUEUED_S of each other: the server counts each after the ones ahead,
    so each one's bound grows by QUEUE_STEP_S per request sent just before it and not answered.
    The last sent then frees at least min((n - 1) * step, QUEUED_S) later than a lone request
    sent when the burst was let go: the requests ahead lengthened its bound that much, or it
    was sent that much later."""
    server = sim_server(seed=3, wallets=1, latency_ms=2500, latency_sigma=0.0)
    size = 5
    client, limiter, url = warm_client(server, size)
    released: list[float] = []
    assert all(burst(client, url, size, released))
    free_at = [slot[0] for slot in limiter._states[0].slots]
    assert len(free_at) == size
    lone = released[0] + 10.0 + ARRIVAL_FLOOR_S
    assert max(free_at) >= lone + min((size - 1) * QUEUE_STEP_S, QUEUED_S)
    assert all(at < lone + 1.0 for at in free_at)  # all by the bound, none by the 2 s margin
