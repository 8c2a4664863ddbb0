"""The whole graph on the DirectRunner against the simulator and a DuckDB file: production == truth."""

from __future__ import annotations

import random
import signal
import time

import pytest

from pipeline.lifecycle import commit_staged_run
from pipeline.run import run_backfill
from pipeline.warehouse import TableNames
from tests.support import (
    INVALID_TRADERS,
    checkpoint,
    production_trade_ids,
    query,
    run_argv,
    run_subprocess,
    seed_traders,
    truth_trade_ids,
)

WALLETS = 24


@pytest.fixture
def world(tmp_path, sim_server, monkeypatch):
    """A simulator, a DuckDB warehouse whose traders are its wallets plus junk, a staging folder."""
    server = sim_server(seed=11, wallets=WALLETS, tier="unlimited", max_trades=2500)
    wallets = server.simulator.wallet_addresses()
    db = tmp_path / "wh.duckdb"
    seed_traders(db, [*wallets, wallets[0].upper().replace("0X", "0x"), *INVALID_TRADERS])
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    return server, wallets, db, tmp_path / "staging"


def assert_production_is_truth(server, wallets, db):
    simulator = server.simulator
    assert production_trade_ids(db) == truth_trade_ids(simulator, wallets)
    markets = {row[0] for row in query(db, "SELECT condition_id FROM markets")}
    assert markets == set(simulator.traded_condition_ids())
    assert query(db, "SELECT COUNT(*) - COUNT(DISTINCT condition_id) FROM markets") == [(0,)]
    events = {row[0] for row in query(db, "SELECT event_slug FROM events")}
    assert events == set(simulator.traded_event_slugs())
    marks = checkpoint(db)
    assert set(marks) == set(wallets)
    for wallet in wallets:
        assert marks[wallet][:3] == (True, True, len(simulator.orders(wallet))), wallet


def test_backfill_lands_truth_once_and_a_second_run_fetches_nothing(world):
    server, wallets, db, staging = world
    summary = run_backfill(run_argv(db, staging, server))
    assert summary.state == "DONE"
    assert summary.counters["wallets_rejected"] == len(INVALID_TRADERS)
    assert summary.counters["wallets_fetched"] == WALLETS
    assert_production_is_truth(server, wallets, db)
    rejects = list((staging / summary.run_id / "rejects").glob("*.json"))
    assert sum(len(p.read_text().splitlines()) for p in rejects) == len(INVALID_TRADERS)

    server.reset_stats()
    second = run_backfill(run_argv(db, staging, server))
    assert server.stats()["requests"].get("orders", 0) == 0
    assert second.counters.get("trades", 0) == 0
    assert_production_is_truth(server, wallets, db)


def test_commit_twice_changes_nothing(world):
    server, _, db, staging = world
    summary = run_backfill(run_argv(db, staging, server))
    before = query(db, "SELECT * FROM trades ORDER BY id"), checkpoint(db)
    report = commit_staged_run(f"duckdb:{db}", TableNames(), str(staging), summary.run_id)
    assert report["already_committed"] is True
    assert (query(db, "SELECT * FROM trades ORDER BY id"), checkpoint(db)) == before


def test_permanent_fault_marks_wallet_failed_then_next_run_completes_it(world):
    server, wallets, db, staging = world
    broken = [w for w in wallets if server.simulator.orders(w)][:2]
    server.set_faults(
        [
            {"kind": "http_4xx", "status": 403, "wallets": [broken[0]]},
            {"kind": "missing_field", "field": "price", "wallets": [broken[1]]},
        ]
    )
    first = run_backfill(run_argv(db, staging, server))
    assert first.counters["wallets_failed"] == 2
    marks = checkpoint(db)
    assert marks[broken[0]][:2] == (True, False) and "HTTP 403" in marks[broken[0]][3]
    assert marks[broken[1]][:2] == (True, False) and "'price'" in marks[broken[1]][3]
    landed = {wallet for wallet, _ in production_trade_ids(db)}
    assert not landed & set(broken)

    server.set_faults([])
    server.reset_stats()
    run_backfill(run_argv(db, staging, server))
    assert set(server.stats()["orders_requests_by_wallet"]) == set(broken)
    assert_production_is_truth(server, wallets, db)


def test_same_result_with_multi_processing(world):
    server, wallets, db, staging = world
    argv = run_argv(
        db, staging, server, "--direct_running_mode=multi_processing", "--direct_num_workers=2"
    )
    summary = run_backfill(argv)
    assert summary.state == "DONE"
    assert_production_is_truth(server, wallets, db)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_at_a_random_point_then_rerun_is_exact(world, seed):
    server, wallets, db, staging = world
    # At the Free tier with small pages the run takes ~6 s (start-up, ~3.5 s of fetching, staging,
    # commit), so a kill between 1 and 5.5 s lands in fetching, staging or committing.
    slow_argv = run_argv(db, staging, server, "--tier=free", "--page_limit=100")
    process = run_subprocess(slow_argv, server.api_key)
    time.sleep(random.Random(seed).uniform(1.0, 5.5))
    assert process.poll() is None, "the run ended before the kill: the test would prove nothing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    rerun = run_subprocess(run_argv(db, staging, server), server.api_key)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert_production_is_truth(server, wallets, db)
    # Nothing twice: every trade id once, and every run's staging committed at most once.
    assert query(db, "SELECT COUNT(*) - COUNT(DISTINCT id) FROM trades") == [(0,)]


def test_start_up_commits_a_run_that_was_staged_but_not_committed(world, tmp_path):
    """A crash between staging and commit, made deterministic: a staged run nobody committed."""
    server, wallets, db, staging = world
    summary = run_backfill(run_argv(db, staging, server))
    (staging / summary.run_id / "_COMMITTED.json").unlink()
    fresh = tmp_path / "fresh.duckdb"
    seed_traders(fresh, wallets)
    server.reset_stats()
    recovered = run_backfill(run_argv(fresh, staging, server))
    assert [r["run_id"] for r in recovered.recovered] == [summary.run_id]
    # The recovered staging already completed every wallet: the new run fetched none of them.
    assert server.stats()["requests"].get("orders", 0) == 0
    assert_production_is_truth(server, wallets, fresh)
    assert (staging / summary.run_id / "_COMMITTED.json").exists()


def test_a_staged_run_that_cannot_commit_does_not_block_later_runs(world, tmp_path):
    server, wallets, db, staging = world
    broken = run_backfill(run_argv(db, staging, server))
    (staging / broken.run_id / "_COMMITTED.json").unlink()
    next(iter((staging / broken.run_id / "trades").glob("*.json"))).write_text("not json\n")
    fresh = tmp_path / "fresh.duckdb"
    seed_traders(fresh, wallets)
    summary = run_backfill(run_argv(fresh, staging, server))
    assert summary.state == "DONE"
    assert [(r["run_id"], "error" in r) for r in summary.recovered] == [(broken.run_id, True)]
    assert "still fail to commit" in summary.render()
    assert summary.counters["wallets_fetched"] == WALLETS  # fetched again, so nothing is lost
    assert_production_is_truth(server, wallets, fresh)
