"""Values a hostile or broken Polymarket serves, each ending in a counted outcome that names it,
never a frozen process, a wallet marked done without its trades, or a batch failed for good.

- An absurd /v2/status lag (a timestamp sent as a lag, or a lag past a day) put the run's `end`
  before the wallets' trades, and every wallet was marked DONE with 0 trades: now the run does
  not start, in one line naming the value.
- int() of a Decimal like 1E+10000000 (three bytes of JSON) held the GIL for minutes to hours:
  every thread of the process froze. Magnitudes are checked before any conversion.
- Gamma's `volumeNum: 1E+400` landed as inf, staged as the non-JSON token `Infinity`.
- One malformed market in a keyset page failed its whole batch of 50, every run, forever.

Real parts: the simulator, or a loopback HTTP server where the simulator cannot serve the value.
"""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.rows import NotJson, json_line, to_ndjson
from pipeline.run import run_and_report
from pipeline.sources import SourceSpec, open_source, prepare_run
from pipeline.sources.errors import PageError, SourceUnavailable
from pipeline.sources.fields import MAX_INT64, Bad, integer, timestamp
from pipeline.sources.http import HttpSettings
from pipeline.sources.polymarket.parse import MARKET_FIELDS, parse_items
from pipeline.sources.polymarket.rows import market_status
from pipeline.sources.polymarket.source import (
    MAX_LAG_S,
    ImplausibleStatus,
    PolymarketSource,
    has_slug,
    run_end,
    windows,
)
from tests import support
from tests.support import REPO, query, run_argv, seed_traders
from tests.test_polymarket_source import Recorder, make_source, walk

FAST = HttpSettings(read_timeout_s=2.0, max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02)
# How long a check of one absurd value may take: it took minutes to hours before.
QUICK_S = 10.0


# ---- a loopback server answering Polymarket's routes with whatever text a test sets ----------


class Loopback:
    """127.0.0.1 server: `answer(path, query) -> (status, body text)` for every GET; counts
    requests per path."""

    def __init__(self, answer: Callable[[str, dict[str, list[str]]], tuple[int, str]]) -> None:
        self.answer = answer
        self.requests: Counter[str] = Counter()
        outer = self

        class Serve(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                outer.requests[url.path] += 1
                status, body = outer.answer(url.path, parse_qs(url.query))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._loopback = support.Loopback(Serve)
        self.url = self._loopback.url

    def close(self) -> None:
        self._loopback.close()


@pytest.fixture
def loopback() -> Iterator[Callable[..., Loopback]]:
    servers: list[Loopback] = []

    def start(answer: Callable[[str, dict[str, list[str]]], tuple[int, str]]) -> Loopback:
        servers.append(Loopback(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def source_at(url: str, telemetry: Recorder | None = None) -> PolymarketSource:
    spec = SourceSpec(
        name="polymarket",
        run_id="r1",
        windows=windows(),
        http=FAST,
        data_api_url=url,
        gamma_api_url=url,
    )
    return open_source(spec, telemetry)  # type: ignore[return-value]


def status_text(lag_text: str) -> str:
    """A /v2/status body whose lag is this JSON text, as written (1E+400 stays a number)."""
    return '{"data": {"serving": {"lag_seconds": LAG}}}'.replace("LAG", lag_text)


# ---- 1: the run's `end` ----------------------------------------------------------------------


def test_an_absurd_feed_lag_stops_the_run_before_any_wallet_is_marked_done(
    sim_server, tmp_path, capsys
):
    """Before: the run's `end` went negative, the wallet's history was after it, and the run
    ended DONE with the wallet done and 0 trades (what later runs then skip)."""
    lag = int(time.time()) + 1000  # a timestamp sent as a lag
    server = sim_server(seed=23, wallets=2, tier="unlimited", lag_seconds=lag)
    db, staging = tmp_path / "wh.duckdb", tmp_path / "staging"
    seed_traders(db, server.simulator.wallet_addresses())
    capsys.readouterr()
    code, report = run_and_report(run_argv(db, staging, server, source="polymarket"))
    out = capsys.readouterr().out.strip().splitlines()
    assert (code, report) == (1, None), out
    assert len(out) == 1 and out[0].startswith("the run could not start"), out
    assert "the source's answer was refused" in out[0], out
    assert f"lag_seconds is {lag}, expected at most {MAX_LAG_S} seconds" in out[0], out[0]
    assert query(db, "SELECT COUNT(*) FROM backfill_checkpoint") == [(0,)]
    assert server.stats()["polymarket"]["buckets"]["trades"]["requests"] == 0


@pytest.mark.parametrize(
    "lag, says",
    [
        ("1E+400", r"lag_seconds is Decimal\('1E\+400'\), expected at most 86400"),
        (str(MAX_LAG_S + 1), f"lag_seconds is {MAX_LAG_S + 1}, expected at most 86400"),
        ('"1E+400"', r"lag_seconds is '1E\+400', expected at most 86400"),
    ],
)
def test_a_lag_past_a_day_is_a_run_level_failure_naming_it(loopback, lag, says):
    server = loopback(lambda path, query: (200, status_text(lag)))
    source = source_at(server.url)
    with pytest.raises(ImplausibleStatus, match=f"^/v2/status: data.serving.{says}") as caught:
        source.trades_end()
    assert isinstance(caught.value, SourceUnavailable) and caught.value.run_level
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "lag, end_behind",
    [("30", 30), ('"30"', 30), ("12.5", 13), ("-5", 0), ("-1E+400", 0), ("86400", 86400)],
)
def test_a_sane_lag_sets_the_end_behind_it(loopback, lag, end_behind):
    server = loopback(lambda path, query: (200, status_text(lag)))
    before = int(time.time())
    end = source_at(server.url).trades_end()
    assert before - end_behind - 120 <= end <= int(time.time()) - end_behind - 120


@pytest.mark.parametrize("lag", ["true", "null", '"soon"', "NaN", "[30]"])
def test_a_lag_that_is_no_number_is_a_page_error_naming_it(loopback, lag):
    """A bool is no number here: `true` was a lag of 1 second."""
    server = loopback(lambda path, query: (200, status_text(lag)))
    with pytest.raises(PageError, match="lag_seconds is missing or not a number, got"):
        source_at(server.url).trades_end()


def test_prepare_run_refuses_the_run_on_an_absurd_lag(loopback):
    """prepare_run is what `run` calls before any wallet: the failure is there, not in a worker."""
    server = loopback(lambda path, query: (200, status_text(str(10**12))))
    spec = SourceSpec(
        name="polymarket",
        run_id="r1",
        windows=windows(),
        http=FAST,
        data_api_url=server.url,
        gamma_api_url=server.url,
    )
    with pytest.raises(ImplausibleStatus):
        prepare_run(spec)
    assert server.requests == Counter({"/v2/status": 1})


def test_the_end_is_refused_past_a_day_or_before_1970():
    assert run_end(MAX_LAG_S, now=1_000_000) == 1_000_000 - MAX_LAG_S - 120
    with pytest.raises(ImplausibleStatus, match=f"is {MAX_LAG_S + 1}, expected at most"):
        run_end(MAX_LAG_S + 1, now=1_000_000)
    with pytest.raises(ImplausibleStatus, match=r"end would be 1 .*expected a unix time after 1"):
        run_end(0, now=121)


def test_a_walk_whose_start_is_past_the_runs_end_sends_nothing(sim_server):
    """A refresh whose last trade is newer than this run's `end`: nothing to ask, no failure."""
    server = sim_server(seed=4, wallets=3)
    wallet = server.simulator.wallet_addresses()[0]
    source = make_source(server, seen := Recorder(), trades_end=1_700_000_000)
    assert walk(source, wallet, start=1_700_000_001) == []
    assert seen.counts["requests_trades"] == 0
    walk(source, wallet, start=1_700_000_000)  # start == end: a second's worth, asked
    assert seen.counts["requests_trades"] == 1


# ---- 2: magnitudes before conversions --------------------------------------------------------


@pytest.mark.parametrize(
    "value, says",
    [
        (Decimal("1E+400"), "within INT64"),  # 1E+10000000: in a child process, below
        (Decimal("9.3E+18"), "within INT64"),
        (Decimal("Infinity"), "finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("sNaN"), "finite"),
        (Decimal("1E-999999999"), "an integer"),
        (True, "an integer"),
    ],
)
def test_an_integer_past_int64_is_refused_before_it_is_converted(value, says):
    with pytest.raises(Bad, match=says):
        integer(value)


def test_integers_within_int64_written_any_way_are_kept():
    assert integer(Decimal("0E+999999999")) == 0
    assert integer(Decimal(MAX_INT64)) == MAX_INT64
    assert integer(Decimal("-9223372036854775807.000")) == -MAX_INT64
    assert timestamp(Decimal("17E8")) == 1_700_000_000


def test_a_huge_exponent_fails_its_field_at_once_without_freezing_the_process(loopback):
    """In a child process, timed: before, int() of 1E+10000000 held the GIL for minutes (a
    test in this process would hang instead of failing). Fields, a trades page and the lag."""
    server = loopback(lambda path, query: (200, status_text("1E+10000000")))
    script = textwrap.dedent(
        f"""
        import json
        from decimal import Decimal
        from pipeline.sources.errors import PageError, SourceError
        from pipeline.sources.fields import Bad, integer, timestamp
        from pipeline.sources.polymarket.parse import trades_page
        from tests.test_polymarket_hostile_values import source_at
        for check in (integer, timestamp):
            try:
                check(Decimal("1E+10000000"))
            except Bad as bad:
                print(check.__name__, bad)
        try:
            integer(Decimal("-1E+999999999"))
        except Bad as bad:
            print("negative", bad)
        row = json.loads({json.dumps(json.dumps(PM_ROW))})
        text = json.dumps({{"data": [row], "pagination": {{"has_more": False}}}})
        text = text.replace('"timestamp": 1700000000', '"timestamp": 1E+10000000')
        try:
            trades_page(json.loads(text, parse_float=Decimal), "page")
        except PageError as error:
            print(error)
        try:
            source_at({server.url!r}).trades_end()
        except SourceError as error:
            print("lag", error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=QUICK_S * 3,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "integer an integer within INT64", lines
    assert lines[1] == "timestamp an integer within INT64", lines
    assert lines[2] == "negative an integer within INT64", lines
    assert lines[3].startswith("page, item 0: field 'timestamp' should be an integer within"), lines
    assert lines[4].startswith("lag /v2/status: data.serving.lag_seconds is Decimal('1E+1000"), (
        lines
    )


PM_ROW = {
    "proxy_wallet": "0x" + "dd" * 20,
    "side": "BUY",
    "token_id": "123",
    "condition_id": "0x" + "aa" * 32,
    "size": 2.5,
    "price": 0.42,
    "timestamp": 1_700_000_000,
    "transaction_hash": "0x" + "bb" * 32,
}


# ---- 3 and 4: Gamma's items, one by one; nothing non-JSON is staged ---------------------------

GOOD_VOLUME = "12.5"


def gamma_market(cid: str, volume: str = GOOD_VOLUME) -> str:
    """A Gamma market as JSON text, `volumeNum` written as given (NaN, 1E+400 stay numbers)."""
    market = {
        "id": str(int(cid, 16)),
        "conditionId": cid,
        "question": f"market {cid}?",
        "slug": f"m-{cid}",
        "closed": False,
        "volumeNum": "VOLUME",
        "outcomes": '["Yes", "No"]',
        "clobTokenIds": '["1", "2"]',
    }
    return json.dumps(market).replace('"VOLUME"', volume)


def gamma_event(slug: str, closed: str = "false") -> str:
    event = {"id": "7", "slug": slug, "title": f"event {slug}", "closed": "CLOSED"}
    return json.dumps(event).replace('"CLOSED"', closed)


def keyset_text(kind: str, items: list[str], cursor: str | None = None) -> str:
    """A keyset page as JSON text, its items as written."""
    return f'{{"{kind}": [{", ".join(items)}], "next_cursor": {json.dumps(cursor)}}}'


CIDS = [f"0x{n:064x}" for n in range(1, 6)]
BAD = {CIDS[1]: "NaN", CIDS[3]: "1E+400"}  # condition id -> the volumeNum it is served with


def gamma_answer(path: str, query: dict[str, list[str]]) -> tuple[int, str]:
    """Gamma as the hostile reviewer served it: every asked market, two with a volumeNum no
    float column holds, in one page; the same broken market again by slug; events likewise."""
    if path == "/markets/keyset":
        items = [gamma_market(c, BAD.get(c, GOOD_VOLUME)) for c in query.get("condition_ids", [])]
        if query.get("closed") == ["true"]:
            items = []  # all open: the open pass serves them
        return 200, keyset_text("markets", items)
    if path.startswith("/markets/slug/m-"):
        cid = path.removeprefix("/markets/slug/m-")
        return (200, gamma_market(cid, BAD[cid])) if cid in BAD else (404, "{}")
    if path == "/events/keyset":
        slugs = query.get("slug", [])
        items = [gamma_event(s, '"yes"' if s == "bad" else "false") for s in slugs]
        if query.get("closed") == ["true"]:
            items = []
        return 200, keyset_text("events", items)
    return 404, "{}"


class Counting(Recorder):
    """The test's telemetry, with the hook a source counts set-aside items by."""

    def malformed(self, kind: str, count: int) -> None:
        with self.lock:
            self.counts[f"{kind}_malformed"] += count


def test_a_malformed_market_is_set_aside_and_missing_the_rest_of_its_page_lands(loopback, caplog):
    """Before: `volumeNum: NaN` in one market failed the whole batch (every run, forever), and
    `1E+400` landed as inf (staged as `Infinity`). Now each is dropped, counted, logged once
    naming its key and field, and reported missing (recorded; asked again by later runs)."""
    server = loopback(gamma_answer)
    source = source_at(server.url, seen := Counting())
    refs = [(cid, f"m-{cid}") for cid in CIDS]
    with caplog.at_level(logging.WARNING, logger="pipeline.sources.polymarket.source"):
        lookup = source.markets(refs)
        again = source.markets(refs)
    good = sorted(c for c in CIDS if c not in BAD)
    for found in (lookup, again):
        assert sorted(r["condition_id"] for r in found.rows) == good
        assert sorted(found.missing) == sorted(BAD)
        assert all(r["volume_total"] == 12.5 for r in found.rows)
    assert seen.counts["markets_malformed"] == 2 * len(BAD)  # counted per lookup
    logged = [r.getMessage() for r in caplog.records if "served malformed" in r.getMessage()]
    assert len(logged) == len(BAD), logged  # each key once per process, not per lookup
    for cid in BAD:
        (line,) = [m for m in logged if cid in m]
        assert "field 'volumeNum'" in line and ("finite" in line or "1e+300" in line), line
    assert server.requests["/markets/slug/m-" + CIDS[1]] == 2  # asked by slug too, each time


def test_a_malformed_event_is_set_aside_and_missing(loopback):
    server = loopback(gamma_answer)
    source = source_at(server.url, seen := Counting())
    lookup = source.events(["good-1", "bad", "good-2"])
    assert sorted(r["event_slug"] for r in lookup.rows) == ["good-1", "good-2"]
    assert lookup.missing == ["bad"]
    assert seen.counts["events_malformed"] == 1


def test_a_page_whose_items_were_all_set_aside_is_not_the_end_of_the_walk(loopback):
    """Gamma sends a cursor only after a full page: a page of malformed items with a cursor
    still has a next page, whose markets must land."""

    def answer(path: str, query: dict[str, list[str]]) -> tuple[int, str]:
        if path != "/markets/keyset" or query.get("closed") == ["true"]:
            return 200, '{"markets": [], "next_cursor": null}'
        if "after_cursor" not in query:
            return 200, keyset_text("markets", [gamma_market(CIDS[0], "NaN")], "c2")
        return 200, keyset_text("markets", [gamma_market(CIDS[1])])

    server = loopback(answer)
    lookup = source_at(server.url).markets([(CIDS[0], None), (CIDS[1], None)])
    assert [r["condition_id"] for r in lookup.rows] == [CIDS[1]]
    assert lookup.missing == [CIDS[0]]


def test_markets_gamma_serves_malformed_are_recorded_missing_not_failed(sim_server):
    """Through the lookups the trades stage runs: the simulator serves every market with a
    title no warehouse can store, by keyset and by slug. The batch is answered (not failed),
    and each market gets its `missing` row: recorded, asked again until missing at the source."""
    from transforms.lookups import ATTEMPTS, MARKETS, MISSING, look_up
    from transforms.metrics import ThreadCounters
    from transforms.run_health import Attempts

    server = sim_server(seed=5, wallets=8, max_trades=300, tier="unlimited")
    truth = server.truth(source="polymarket")
    known = sorted(m["conditionId"].lower() for m in truth["markets"])[:10]
    server.set_faults(
        "absurd_value:endpoint=gamma_markets,field=question;"
        "absurd_value:endpoint=gamma_markets_slug,field=question"
    )
    slugs = {m["condition_id"]: m["market_slug"] for m in server.simulator.markets()}
    emitted: dict[str, list] = {}
    counters = ThreadCounters()
    look_up(
        make_source(server),
        MARKETS,
        [(cid, slugs[cid]) for cid in known],
        counters,
        lambda tag, value: emitted.setdefault(tag, []).append(value),
    )
    assert emitted[ATTEMPTS] == [{MARKETS: Attempts(answered=1)}]
    assert MARKETS not in emitted
    assert sorted(r["key"] for r in emitted[MISSING]) == known
    assert counters._counts["markets_missing"] == len(known)
    assert counters._counts["markets_failed"] == 0


def test_a_volume_past_a_float_is_the_fields_error():
    body = json.loads(gamma_market(CIDS[0], "1E+400"), parse_float=Decimal)
    with pytest.raises(PageError, match=r"item 0: field 'volumeNum' should be a number within"):
        parse_items([body], MARKET_FIELDS, "markets", frozenset())


@pytest.mark.parametrize("batched", [False, True], ids=["row", "batch"])
def test_staging_refuses_nan_and_infinity_naming_the_row_and_field(tmp_path, batched):
    """json.dumps writes inf as `Infinity`, which is not JSON: a row that got past the sources'
    bounds stops at the writer, named, instead of failing (or landing wrong) at load time."""
    from transforms.stage import _WriteFilesFn

    row = {"condition_id": "0xab", "volume_total": float("inf"), "payouts": [float("nan")]}
    writer = _WriteFilesFn(str(tmp_path / "markets"), batched)
    writer.start_bundle()
    with pytest.raises(NotJson, match=r"\(condition_id '0xab'\) .* in payouts, volume_total"):
        writer.process([row] if batched else row)
    assert json.loads(json_line({"volume_total": 1e300})) == {"volume_total": 1e300}
    assert to_ndjson([{"a": 1.5}, {"b": None}]) == '{"a":1.5}\n{"b":null}'


# ---- 5: Gamma's undocumented cap on keys per keyset call --------------------------------------


@pytest.mark.parametrize("status", [422, 414])
def test_a_batch_refused_as_too_big_is_split_and_the_smaller_size_kept(loopback, status):
    """A server capping keys per call at 20 refused every batch of 50, every run. The batch is
    split in halves until it is answered, and the size that was answered is kept: the next
    lookup is not refused first."""
    refused: Counter[str] = Counter()

    def answer(path: str, query: dict[str, list[str]]) -> tuple[int, str]:
        keys = query.get("condition_ids", query.get("slug", []))
        if len(keys) > 20:
            refused[path] += 1
            return status, '{"type": "validation", "error": "at most 20 values"}'
        return gamma_answer(path, query)

    server = loopback(answer)
    source = source_at(server.url)
    cids = [f"0x{n:064x}" for n in range(100, 150)]
    slugs = [f"good-{n}" for n in range(50)]
    for _ in range(2):
        lookup = source.markets([(cid, None) for cid in cids])
        assert sorted(r["condition_id"] for r in lookup.rows) == cids and not lookup.missing
        events = source.events(slugs)
        assert sorted(r["event_slug"] for r in events.rows) == sorted(slugs)
    # 50 refused, 25 refused, then 13s answered: twice per kind, in the first lookup only.
    assert refused == Counter({"/markets/keyset": 2, "/events/keyset": 2})


# ---- a resolution is final only when it pays something ---------------------------------------


def test_a_resolution_that_pays_nothing_or_says_unresolved_is_not_final(loopback):
    """`resolved: null, payouts: []` made the market `resolved` (never asked again, no winner).
    The docs name no `resolved` field, so payouts decide when it says nothing."""
    rows = [
        {"condition_id": "0xA", "resolved": None, "payouts": []},
        {"condition_id": "0xb", "resolved": True, "payouts": [0, 0]},
        {"condition_id": "0xc", "resolved": False, "payouts": [1000000, 0]},
        {"condition_id": "0xd", "payouts": [0, 1000000]},  # no `resolved` field at all
        {"condition_id": "0xe", "resolved": True, "payouts": [500000, 500000]},
    ]
    server = loopback(lambda path, query: (200, json.dumps({"data": rows})))
    source = source_at(server.url)
    try:
        got = source.client.resolutions(["0xa", "0xb", "0xc", "0xd", "0xe"])
    finally:
        source.close()
    assert got == {
        "0xa": None,
        "0xb": None,
        "0xc": None,
        "0xd": [0, 1000000],
        "0xe": [500000, 500000],
    }
    assert [market_status(True, got[cid]) for cid in sorted(got)] == [
        "resolving",
        "resolving",
        "resolving",
        "resolved",
        "resolved",
    ]


def test_a_slug_of_dots_is_not_asked_for():
    """`/markets/slug/..` is `/markets/` once a server normalises the path: the list route,
    whose answer failed the batch on every run. Such a key is missing, like one with no slug."""
    assert [has_slug(s) for s in (".", "..", " ... ", "", None, "  ")] == [False] * 6
    assert [has_slug(s) for s in ("will-btc-hit-1.5m", ".x", "a..b")] == [True] * 3
