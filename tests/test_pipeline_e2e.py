"""The whole graph on the DirectRunner against the simulator and a DuckDB file: production == truth,
for each source (Polymarket and Dome, served by the simulator from one world)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from pipeline.run import run_backfill
from pipeline.staging import RunStaging, commit_staged_run
from pipeline.warehouse import TableNames, WarehouseRef
from tests.support import (
    INVALID_TRADERS,
    TRADES_ENDPOINT,
    assert_production_is_truth,
    checkpoint,
    production_trade_ids,
    query,
    run_subprocess,
    seed_traders,
    source_stats,
    trade_requests,
    trade_requests_by_wallet,
)

WALLETS = 24

# A simulator, a DuckDB warehouse whose traders are its wallets plus junk, a staging folder, and
# the source the runs fetch from: each test runs against each source.
pytestmark = pytest.mark.world(
    seed=11,
    wallets=WALLETS,
    max_trades=2500,
    traders=lambda wallets: [*wallets, wallets[0].upper().replace("0X", "0x"), *INVALID_TRADERS],
)


@pytest.fixture(params=["polymarket", "dome"])
def source(request):
    return request.param


def test_backfill_lands_truth_once_and_a_second_run_fetches_nothing(world):
    server, _wallets, db, staging = world
    summary = run_backfill(world.argv())
    assert summary.state == "DONE"
    assert summary.counters["wallets_rejected"] == len(INVALID_TRADERS)
    assert summary.counters["wallets_fetched"] == WALLETS
    empty = [w for w in _wallets if not server.simulator.orders(w)]
    assert summary.counters.get("wallets_empty", 0) == len(empty) > 0  # landed done, nothing
    assert_production_is_truth(world)
    sources = query(
        db, "SELECT DISTINCT source FROM trades UNION SELECT DISTINCT source FROM markets"
    )
    assert sources == [(world.source,)]
    if world.source == "polymarket":  # at the published limits, no bucket went over its own
        for name, bucket in server.stats()["polymarket"]["buckets"].items():
            assert bucket["http_429"] == bucket["http_503"] == 0, name
            assert bucket["limit"] is None or bucket["peak_accepted"] <= bucket["limit"], name
    rejects = list((staging / summary.run_id / "rejects").glob("*.json"))
    assert sum(len(p.read_text().splitlines()) for p in rejects) == len(INVALID_TRADERS)

    server.reset_stats()
    second = run_backfill(world.argv())
    # Nothing again but /v2/status and the markets no source has: those are asked every run
    # (keyset closed/open, then by slug), so that one that appears later lands.
    missing = server.truth(source="polymarket")["missing_markets"] if world.source != "dome" else []
    assert source_stats(server, world.source)["requests_total"] <= 1 + 3 * len(missing)
    assert trade_requests(server, world.source) == 0
    assert second.counters.get("trades", 0) == 0
    assert_production_is_truth(world)


@pytest.mark.slow
def test_once_the_backfill_is_done_a_scheduled_run_changes_nothing(world):
    """After the backfill (and the runs that record the markets no source has), a run has nothing
    to fetch and nothing to commit: the warehouse is left as it was, with no runs row, no load
    table, no row anywhere, so 48 scheduled runs a day cost only their reads."""
    server = world.server
    for _ in range(4):  # the backfill, then 3 runs that find the same markets missing
        assert run_backfill(world.argv()).state == "DONE"
        # A day apart (sightings seconds apart are not the source's word): earlier ones go back.
        query(world.db, "UPDATE backfill_missing SET seen_at = seen_at - INTERVAL 1 DAY")
    tables = ("trades", "markets", "events", "backfill_checkpoint", "backfill_runs")
    before = {t: query(world.db, f"SELECT * FROM {t} ORDER BY ALL") for t in tables}
    server.reset_stats()
    quiet = run_backfill(world.argv())
    assert quiet.state == "DONE" and quiet.counters.get("committed_trades_inserted", 0) == 0
    assert {t: query(world.db, f"SELECT * FROM {t} ORDER BY ALL") for t in tables} == before
    leftovers = query(
        world.db, "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '_stg_%'"
    )
    assert leftovers == []
    assert trade_requests(server, world.source) == 0
    # Nothing asked but what tells a run where the feed ends (Polymarket's /v2/status).
    assert source_stats(server, world.source)["requests_total"] <= 1


def test_commit_twice_changes_nothing(world):
    _server, _, db, staging = world
    summary = run_backfill(world.argv())
    before = query(db, "SELECT * FROM trades ORDER BY id"), checkpoint(db)
    warehouse = WarehouseRef(f"duckdb:{db}", TableNames())
    outcome = commit_staged_run(RunStaging(str(staging), summary.run_id), warehouse)
    assert outcome.already_committed is True
    assert (query(db, "SELECT * FROM trades ORDER BY id"), checkpoint(db)) == before


def test_permanent_fault_marks_wallet_failed_then_next_run_completes_it(world):
    server, wallets, db, _staging = world
    broken = [w for w in wallets if server.simulator.orders(w)][:2]
    endpoint = TRADES_ENDPOINT[world.source]
    server.set_faults(
        [
            {"kind": "http_4xx", "status": 403, "wallets": [broken[0]], "endpoint": endpoint},
            {
                "kind": "missing_field",
                "field": "price",
                "wallets": [broken[1]],
                "endpoint": endpoint,
            },
        ]
    )
    first = run_backfill(world.argv())
    assert first.counters["wallets_failed"] == 2
    marks = checkpoint(db)
    assert marks[broken[0]][:2] == (True, False) and "HTTP 403" in marks[broken[0]][3]
    assert marks[broken[1]][:2] == (True, False) and "'price'" in marks[broken[1]][3]
    landed = {wallet for wallet, _ in production_trade_ids(db)}
    assert not landed & set(broken)

    server.set_faults([])
    server.reset_stats()
    run_backfill(world.argv())
    assert set(trade_requests_by_wallet(server, world.source)) == set(broken)
    assert_production_is_truth(world)


def test_same_result_with_multi_processing(world):
    _server, _wallets, _db, _staging = world
    argv = world.argv("--direct_running_mode=multi_processing", "--direct_num_workers=2")
    summary = run_backfill(argv)
    assert summary.state == "DONE"
    assert_production_is_truth(world)
    # Two processes: they read what production holds from the plan start-up staged once.
    assert (_staging / summary.run_id / "lookup_plan.json.gz").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_at_a_random_point_then_rerun_is_exact(world, seed):
    server, _wallets, db, _staging = world
    # With slow limits and small pages the run outlives the kill, which lands between 1 and 5.5 s:
    # in start-up or fetching (the chaos test kills at each staging and commit instant). Dome at
    # 20 per page takes ~9.5 s; at 100 it took 5.3-5.6 s, and once ended before a kill at 5.3 s.
    slow = (
        ("--tier=free", "--page_limit=20")
        if world.source == "dome"
        else ("--bucket_limits=trades=20", "--page_limit=100")
    )
    slow_argv = world.argv(*slow)
    process = run_subprocess(slow_argv, server.api_key)
    time.sleep(random.Random(seed).uniform(1.0, 5.5))
    assert process.poll() is None, "the run ended before the kill: the test would prove nothing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    rerun = run_subprocess(world.argv(), server.api_key)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert_production_is_truth(world)
    # Nothing twice: every trade id once, and every run's staging committed at most once.
    assert query(db, "SELECT COUNT(*) - COUNT(DISTINCT id) FROM trades") == [(0,)]


def test_start_up_commits_a_run_that_was_staged_but_not_committed(world, tmp_path):
    """A crash between staging and commit, made deterministic: a staged run nobody committed."""
    server, wallets, db, staging = world
    summary = run_backfill(world.argv())
    (staging / summary.run_id / "_COMMITTED.json").unlink()
    crashed = RunStaging(str(staging), summary.run_id)  # as a crash before the marker leaves it
    crashed.write_manifest(crashed.read_manifest())
    _as_before_the_commit(db, wallets)
    server.reset_stats()
    recovered = run_backfill(world.argv())
    assert [r.run_id for r in recovered.recovered] == [summary.run_id]
    # The recovered staging already completed every wallet: the new run fetched none of them.
    assert trade_requests(server, world.source) == 0
    assert_production_is_truth(world)
    assert (staging / summary.run_id / "_COMMITTED.json").exists()


def test_a_staged_run_that_cannot_commit_does_not_block_later_runs(world, tmp_path):
    _server, wallets, db, staging = world
    broken = run_backfill(world.argv())
    (staging / broken.run_id / "_COMMITTED.json").unlink()
    crashed = RunStaging(str(staging), broken.run_id)  # as a crash before the marker leaves it
    crashed.write_manifest(crashed.read_manifest())
    next(iter((staging / broken.run_id / "trades").glob("*.json"))).write_text("not json\n")
    _as_before_the_commit(db, wallets)
    summary = run_backfill(world.argv())
    assert summary.state == "DONE"
    assert [(r.run_id, r.failed) for r in summary.recovered] == [(broken.run_id, True)]
    assert "still fail to commit" in summary.render()
    assert summary.counters["wallets_fetched"] == WALLETS  # fetched again, so nothing is lost
    assert_production_is_truth(world)


def _as_before_the_commit(db, wallets: list[str]) -> None:
    """The warehouse file as it was before the run committed: the same file (a staged run belongs
    to the warehouse that claimed it), holding only its traders."""
    db.unlink()
    seed_traders(db, wallets)


@pytest.mark.world(extra_fields=True, wallets=3, max_trades=200)
def test_fields_the_api_added_are_named_in_the_log_and_counted_in_the_summary(world, caplog):
    """A count in a Beam counter told nobody which field the API had added (the simulator adds
    `fee_rate_bps` to every order and trade row)."""
    with caplog.at_level("WARNING", logger="transforms.metrics"):
        summary = run_backfill(world.argv())
    assert summary.state == "DONE"
    kind = {"dome": "orders"}.get(world.source, "trades")
    rows = summary.counters["trades"]
    assert f"fields the parser does not know (rows): {kind}.fee_rate_bps {rows}" in summary.render()
    assert f"{kind}: fields the parser does not know: fee_rate_bps" in caplog.text
    assert_production_is_truth(world)
