"""The fetching steps, with the real client against the simulator: FetchTrades in a TestPipeline,
the lookups it runs (transforms/lookups.py) on their own."""

from __future__ import annotations

import threading
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.options import resolve
from pipeline.sources.dome.ids import trade_id
from tests.support import local_pipeline, seed_traders
from transforms.api import ApiHandle
from transforms.fetch_trades import LOOKUP_FAILURES, FetchTrades
from transforms.lookups import (
    EVENTS,
    MARKETS,
    MISSING,
    LookupPlan,
    Lookups,
    LookupSettings,
    LookupSpec,
)
from transforms.metrics import ThreadCounters
from transforms.select_wallets import RefreshPolicy
from transforms.skip_known import KeyPlan


@pytest.fixture
def setup(sim_server, monkeypatch, tmp_path):
    server = sim_server(seed=17, wallets=12, max_trades=1500)
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])  # the tables the known-market anti-join reads, empty
    config = resolve(
        PipelineOptions(
            [
                f"--warehouse=duckdb:{db}",
                "--source=dome",
                f"--api_base_url={server.base_url}",
                f"--staging_root={tmp_path}",
                "--run_id=r1",
                "--tier=pro",
                "--page_limit=100",
            ]
        )
    )
    return server, config, ApiHandle(config.source)


def test_fetch_trades_pages_outcomes_and_their_markets_and_events(setup):
    """Dome: the trades name markets, the markets name events (Dome's trades do not); both are
    looked up inside the trades stage, each key once, in batches."""
    server, config, api = setup
    simulator = server.simulator
    wallets = simulator.wallet_addresses()
    broken = next(w for w in wallets if simulator.trade_count(w) > 100)
    server.set_faults([{"kind": "http_4xx", "status": 404, "wallets": [broken], "page": 1}])
    good = [w for w in wallets if w != broken]
    expected_ids = sorted(trade_id(w, o) for w in good for o in simulator.orders(w))
    # The broken wallet's first page was fetched before its failure: it is staged but never landed.
    first_page = [trade_id(broken, o) for o in simulator.orders(broken)[:100]]
    policy = RefreshPolicy(now=config.started_at, refresh_after_s=None, overlap_s=3600.0)
    lookups = LookupSettings(config.warehouse_ref, policy, 100, 1)
    with local_pipeline() as p:
        fetch = FetchTrades(
            api,
            config.run_id,
            "dome",
            config.staging.kind_folder("trades"),
            config.fetch_threads,
            lookups=lookups,
        )
        out = p | beam.Create([(w, None) for w in wallets]) | fetch
        ids = out["trade_pages"] | "Ids" >> beam.FlatMap(lambda page: [row["id"] for row in page])
        assert_that(ids, equal_to(expected_ids + first_page), label="ids")
        outcomes = out["outcomes"] | beam.Map(
            lambda o: (o["wallet_address"], o["upload_successful"], o["trade_count"])
        )
        expected_outcomes = [(w, True, simulator.trade_count(w)) for w in good]
        expected_outcomes.append((broken, False, 100))
        assert_that(outcomes, equal_to(expected_outcomes), label="outcomes")
        # Every market a fetched page names (the broken wallet's first page too), each once.
        named = [*(o for w in good for o in simulator.orders(w)), *simulator.orders(broken)[:100]]
        traded = sorted({o["condition_id"] for o in named})
        markets = out["markets"] | "MarketIds" >> beam.Map(lambda m: m["condition_id"])
        assert_that(markets, equal_to(traded), label="markets")
        by_id = {m["condition_id"]: m for m in simulator.markets()}
        slugs = sorted({by_id[c]["event_slug"] for c in traded if by_id[c].get("event_slug")})
        events = out["events"] | "EventSlugs" >> beam.Map(lambda e: e["event_slug"])
        assert_that(events, equal_to(slugs), label="events")
        assert_that(out[LOOKUP_FAILURES], equal_to([]), label="lookup failures")
    requests = server.stats()["requests"]
    assert requests["events"] == len(slugs)  # one slug per request, each once


def _nothing_known() -> LookupPlan:
    """A plan of a production that holds nothing (module-level: a spec must pickle)."""
    nothing = KeyPlan(frozenset(), ())
    return LookupPlan(nothing, nothing)


class _GatedPlan:
    """A plan whose reading waits for the test to open the gate, and counts its reads."""

    def __init__(self, plan: LookupPlan) -> None:
        self.plan, self.gate, self.reads = plan, threading.Event(), 0

    def __call__(self) -> LookupPlan:
        self.reads += 1
        assert self.gate.wait(30), "the test never opened the gate"
        return self.plan


def _failing_plan() -> LookupPlan:
    raise RuntimeError("the warehouse is not there")


def _spec(read_plan=_nothing_known, markets_per_batch: int = 100) -> LookupSpec:
    return LookupSpec(markets_per_batch, 1, 4, f"test-{uuid.uuid4().hex}", read_plan)


def _end_bundle(lookups: Lookups) -> dict[str, list]:
    lookups.drain()
    outputs: dict[str, list] = {}
    for tag, value in lookups.wait():
        outputs.setdefault(tag, []).append(value)
    return outputs


def _run_lookups(lookups: Lookups, refs: list) -> dict[str, list]:
    """Names `refs` (markets) as trade pages would, in two calls, then ends the bundle: every
    output, by tag."""
    lookups.start()
    half = len(refs) // 2
    lookups.named(MARKETS, refs[:half])
    lookups.named(MARKETS, refs[half:])
    return _end_bundle(lookups)


def test_lookups_ask_for_each_market_once_in_batches_then_its_events(setup):
    """What the trades stage does with the markets its pages name: each id once per process
    (however many pages, or DoFn instances, name it), in full batches of the source's size and
    one partial at the bundle's end; the events the markets name follow, each once."""
    server, _, api = setup
    markets = server.simulator.markets()
    ids = [m["condition_id"] for m in markets]
    slugs = sorted({m["event_slug"] for m in markets if m.get("event_slug")})
    refs = [(cid, None) for cid in ids + ids[:5] + ["0xnot-a-market"] + ids[-5:]]
    spec = _spec()
    source = api.acquire().source
    first, again = (Lookups(spec, source, ThreadCounters()) for _ in range(2))
    try:
        outputs = _run_lookups(first, refs)
        assert sorted(m["condition_id"] for m in outputs[MARKETS]) == sorted(ids)
        assert sorted(e["event_slug"] for e in outputs[EVENTS]) == slugs
        assert [(r["kind"], r["key"]) for r in outputs[MISSING]] == [(MARKETS, "0xnot-a-market")]
        requests = server.stats()["requests"]
        assert requests["markets"] == -(-(len(ids) + 1) // 100)
        assert requests["events"] == len(slugs)
        # Another instance in the same process and run shares the claims: it asks for nothing.
        assert _run_lookups(again, refs) == {}
        assert server.stats()["requests"] == requests
    finally:
        first.close()
        again.close()


def test_keys_named_before_the_plan_is_read_wait_for_it_and_follow_it(setup):
    """The plan is read beside the first trade requests: keys their pages name meanwhile are not
    asked for until it is in, and then only those it does not skip; the start element's keys too.
    Every instance of the process shares one reading."""
    server, _, api = setup
    ids = [m["condition_id"] for m in server.simulator.markets()]
    known, wanted = ids[:10], ids[10:]
    # Production holds `known` final, and wants wanted[0] whoever names it.
    markets = KeyPlan(frozenset(known), ((wanted[0], None),))
    gated = _GatedPlan(LookupPlan(markets, KeyPlan(frozenset(), ())))
    spec = _spec(gated)
    source = api.acquire().source
    first, second = (Lookups(spec, source, ThreadCounters()) for _ in range(2))
    try:
        first.start()
        first.named(MARKETS, [(cid, None) for cid in known + wanted[1:]])
        first.drain()
        assert list(first.take()) == []
        assert server.stats()["requests"]["markets"] == 0  # nothing asked before the plan
        gated.gate.set()
        outputs = _end_bundle(first)
        assert sorted(m["condition_id"] for m in outputs[MARKETS]) == sorted(wanted)
        assert gated.reads == 1
        assert _end_bundle(second) == {}  # same process and run: the same plan and claims
        assert gated.reads == 1
    finally:
        gated.gate.set()
        first.close()
        second.close()


def test_a_plan_that_cannot_be_read_fails_the_bundle_that_waits_for_it(setup):
    """A warehouse that cannot say what it holds must not let the lookups guess (all, or none):
    the bundle fails with the warehouse's error, as the run did when the plan was a stage."""
    _, _, api = setup
    lookups = Lookups(_spec(_failing_plan), api.acquire().source, ThreadCounters())
    try:
        lookups.named(MARKETS, [("0xabc", None)])
        with pytest.raises(RuntimeError, match="the warehouse is not there"):
            _end_bundle(lookups)
    finally:
        lookups.close()


def test_a_staged_lookup_plan_is_what_every_process_reads_and_the_warehouses_own(tmp_path):
    """For a run of several processes start-up stages the plan once (on Dataflow each process
    read the warehouse, two scans of the whole trades table apiece): read back it is the plan
    the warehouse gives, and reading it never opens the warehouse (here a file that is not one)."""
    from pipeline.staging import RunStaging
    from pipeline.warehouse import TableNames, WarehouseRef, open_warehouse
    from tests.support import market, stage
    from transforms.lookups import ReadLookupPlan, plan_of, read_plan_rows

    db = tmp_path / "w.duckdb"
    seed_traders(db, ["0x" + "a" * 40])
    files = stage(tmp_path / "s", "r0", markets=[market("0xheld", "r0", 1_700_000_000.0)])
    with open_warehouse(f"duckdb:{db}") as warehouse:
        warehouse.commit_run("r0", files)
        rows = read_plan_rows(warehouse)
    assert rows["markets"]["known"] and rows["markets"]["known"][0][0] == "0xheld"
    policy = RefreshPolicy(1_800_000_000.0, None, 3600.0)
    staging = RunStaging(str(tmp_path / "staging"), "r1")
    staging.write_lookup_plan(rows)
    not_a_warehouse = tmp_path / "not.duckdb"
    not_a_warehouse.write_bytes(b"no")
    unusable = WarehouseRef(f"duckdb:{not_a_warehouse}", TableNames())
    staged = ReadLookupPlan(unusable, policy, staging)()
    direct = ReadLookupPlan(WarehouseRef(f"duckdb:{db}", TableNames()), policy)()
    for kind in (MARKETS, EVENTS):
        ours, theirs = staged.of_kind(kind), direct.of_kind(kind)
        assert ours.skip == theirs.skip and ours.always == theirs.always
    assert "0xheld" in staged.of_kind(MARKETS).skip
    assert plan_of(rows, policy).of_kind(MARKETS).skip == staged.of_kind(MARKETS).skip


def test_unknown_fields_are_named_up_to_a_cap_and_logged_once(caplog):
    """A server can send any number of field names: the first 20 of a kind are counted and
    logged by name, once; the rest are counted together and never logged page after page."""
    from collections import Counter

    from transforms.metrics import NAMED_FIELDS, OTHER_FIELDS, UNKNOWN_FIELD, CountingTelemetry

    telemetry = CountingTelemetry()
    names = Counter({f"f{i:02d}": 1 for i in range(NAMED_FIELDS + 5)})
    with caplog.at_level("WARNING", logger="transforms.metrics"):
        telemetry.unknown_fields("trades", names)
        telemetry.unknown_fields("trades", names)
    counts = telemetry.counters._counts
    assert counts[f"{UNKNOWN_FIELD}trades:f00"] == 2
    assert counts[f"{UNKNOWN_FIELD}trades:{OTHER_FIELDS}"] == 2 * 5
    assert len([k for k in counts if k.startswith(UNKNOWN_FIELD)]) == NAMED_FIELDS + 1
    (record,) = caplog.records  # once, naming the 20
    assert record.getMessage().count(", ") == NAMED_FIELDS - 1
