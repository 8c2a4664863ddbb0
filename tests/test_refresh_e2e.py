"""After the backfill: refresh keeps wallets current, settled markets are never fetched twice,
and verification repairs a production that lost trades. DirectRunner, simulator, DuckDB."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.run import run_backfill
from tests.support import (
    REPO,
    checkpoint,
    production_fills,
    production_trade_ids,
    query,
    seed_traders,
    truth_fills,
    truth_trade_ids,
)

HALF = 10  # the wallets in `traders` before the backfill over settled markets
pytestmark = pytest.mark.world(seed=23, wallets=16, max_trades=1500)


def market_states(db):
    return dict(query(db, "SELECT condition_id, status FROM markets"))


@pytest.mark.world(open_fraction=1.0)
def test_refresh_lands_new_trades_once_and_an_unchanged_wallet_costs_one_request(world):
    server, wallets, db, _staging = world
    simulator = server.simulator
    run_backfill(world.argv())
    assert production_trade_ids(db) == truth_trade_ids(simulator, wallets)

    changed = wallets[:4]
    server.add_trades({wallet: 5 for wallet in changed})
    settled = server.settle_markets(count=3)
    server.reset_stats()
    summary = run_backfill(world.argv("--refresh_after=0s"))

    assert summary.state == "DONE"
    ids = production_trade_ids(db)
    assert ids == truth_trade_ids(simulator, wallets)  # the new truth, each trade once
    assert max(ids.values()) == 1
    by_wallet = server.stats()["orders_requests_by_wallet"]
    assert {w: by_wallet.get(w) for w in wallets if w not in changed} == {
        w: 1 for w in wallets if w not in changed
    }
    marks = checkpoint(db)
    for wallet in wallets:
        assert marks[wallet][:3] == (True, True, len(simulator.orders(wallet))), wallet
    # Open markets were refreshed: the settled ones are closed in production now, and the
    # markets only the new trades reach were fetched.
    states = market_states(db)
    assert all(states[cid] == "closed" for cid in settled)
    assert set(states) == set(simulator.traded_condition_ids())


@pytest.mark.world(wallets=20, markets=6, open_fraction=0.0, traders=lambda w: w[:HALF])
def test_a_backfill_over_settled_markets_in_production_requests_no_market(world):
    server, wallets, db, _staging = world
    simulator = server.simulator
    run_backfill(world.argv())
    first_markets = set(market_states(db))
    later = [w for w in wallets[HALF:] if simulator.orders(w)]
    needed = {o["condition_id"] for w in later for o in simulator.orders(w)}
    assert later and needed <= first_markets, (
        "test set-up: the later wallets must trade known markets"
    )
    assert all(status == "closed" for status in market_states(db).values())

    seed_traders(db, wallets[HALF:])
    server.reset_stats()
    run_backfill(world.argv())
    requests = server.stats()["requests"]
    assert requests["orders"] >= len(later)
    assert requests.get("markets", 0) == 0 and requests.get("events", 0) == 0
    assert production_trade_ids(db) == truth_trade_ids(simulator, wallets)


def test_verify_finds_exactly_the_wallets_missing_trades_and_the_next_run_restores_them(world):
    server, wallets, db, _staging = world
    simulator = server.simulator
    run_backfill(world.argv())
    damaged = sorted(w for w in wallets if simulator.orders(w))[:3]
    query(db, f"DELETE FROM trades WHERE wallet_address IN {tuple(damaged)!r}")
    # A partial loss too: one trade of another wallet.
    partial = sorted(w for w in wallets if len(simulator.orders(w)) > 1 and w not in damaged)[0]
    query(
        db,
        f"DELETE FROM trades WHERE id = (SELECT MIN(id) FROM trades WHERE wallet_address = '{partial}')",
    )

    def verify(*extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "pipeline", "verify", f"--warehouse=duckdb:{db}", *extra]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True)

    # What monitoring runs: it only reads, and its exit code says something was found.
    reported = verify("--report_only")
    assert reported.returncode == 1 and f"{len(damaged) + 1} done wallets differ" in reported.stdout
    assert all(mark[:2] == (True, True) for mark in checkpoint(db).values())
    repaired = verify()
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    found = repaired.stdout
    assert f"verify: {len(damaged) + 1} done wallets differ" in found
    for wallet in [*damaged, partial]:
        assert wallet in found
    marks = checkpoint(db)
    assert {w for w, mark in marks.items() if not mark[1]} == {*damaged, partial}

    server.reset_stats()
    run_backfill(world.argv())
    assert set(server.stats()["orders_requests_by_wallet"]) == {*damaged, partial}
    assert production_trade_ids(db) == truth_trade_ids(simulator, wallets)
    assert all(mark[:2] == (True, True) for mark in checkpoint(db).values())
    clean = verify("--report_only")
    assert clean.returncode == 0, clean.stdout
    # A reader that leaves early (`status | head -1`) ends nothing in a traceback.
    piped = subprocess.run(
        f"{sys.executable} -m pipeline status --warehouse=duckdb:{db} | head -1",
        shell=True, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr


@pytest.mark.world(lag_seconds=0)
def test_a_dome_backfill_refreshed_from_polymarket_lands_each_fill_once(world):
    """The users' tables were filled from Dome; a refresh from Polymarket overlaps them (the
    overlap window re-reads fills Dome landed, with other ids) and must not land any twice."""
    server, wallets, db, _staging = world
    run_backfill(world.argv(source="dome"))
    before = truth_fills(server, wallets, "dome")
    assert production_fills(db) == before

    server.add_trades({wallet: 4 for wallet in wallets[:6]})
    new = truth_fills(server, wallets, "dome") - before
    served = truth_fills(server, wallets, "polymarket")
    # The overlap is real: Polymarket serves fills Dome already landed, under other ids.
    assert sum((served & before).values()) > 0
    summary = run_backfill(
        world.argv("--refresh_after=0s", "--refresh_overlap=30d", source="polymarket")
    )
    assert summary.state == "DONE" and summary.counters.get("wallets_failed", 0) == 0
    # Every fill once: what Dome landed (dust included) plus the new ones Polymarket serves.
    assert production_fills(db) == before + (new & served)
    assert query(db, "SELECT COUNT(*) FROM trades WHERE source = 'polymarket'") == [
        (sum((new & served).values()),)
    ]
    counts = dict(query(db, "SELECT wallet_address, COUNT(*) FROM trades GROUP BY 1"))
    marks = checkpoint(db)
    assert {w: marks[w][2] for w in wallets} == {w: counts.get(w, 0) for w in wallets}
