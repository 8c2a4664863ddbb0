"""What a hostile world does to a run, end to end (DirectRunner, simulator, DuckDB): nothing that a
production trade names is lost for good, whichever source and whichever endpoint fails."""

from __future__ import annotations

import pytest

from pipeline.run import run_backfill
from pipeline.status import show_status
from pipeline.warehouse import TableNames
from tests.support import (
    TRADES_ENDPOINT,
    assert_production_is_truth,
    checkpoint,
    production_trade_ids,
    query,
    truth_markets_and_events,
)

# Each source's endpoints that name markets and events, as the simulator's faults call them.
LOOKUPS = {
    "dome": ("markets", "events"),
    "polymarket": ("gamma_markets", "gamma_markets_slug", "resolutions", "gamma_events"),
}


@pytest.mark.parametrize("source", ["polymarket", "dome"])
@pytest.mark.world(seed=5, wallets=10, max_trades=800)
def test_markets_and_events_down_for_a_run_are_fetched_by_the_next(source, world):
    server, wallets, db, _staging = world
    markets, events = truth_markets_and_events(server, source)
    server.set_faults([{"kind": "http_5xx", "status": 503, "endpoint": e} for e in LOOKUPS[source]])
    first = run_backfill(world.argv("--max_attempts=2"))
    assert first.state == "DONE" and first.counters["wallets_fetched"] == len(wallets)
    assert first.counters.get("markets_failed", 0) > 0
    # The trades landed, their markets did not: status says so instead of looking finished.
    assert query(db, "SELECT COUNT(*) FROM markets") == [(0,)]
    report = show_status(f"duckdb:{db}", TableNames())
    assert f"markets {len(markets) + len(_missing(server, source))}" in report, report

    server.set_faults([])
    second = run_backfill(world.argv())
    assert second.counters.get("trades", 0) == 0  # no wallet was fetched again
    assert {r[0] for r in query(db, "SELECT condition_id FROM markets")} == markets
    assert {r[0] for r in query(db, "SELECT event_slug FROM events")} == events
    report = show_status(f"duckdb:{db}", TableNames())
    assert f"markets {len(_missing(server, source))}, events 0" in report, report


def _missing(server, source: str) -> list[str]:
    return server.truth(source="polymarket")["missing_markets"] if source == "polymarket" else []


# A served page whose values no sane source sends, per source: (field, what the reason says).
ABSURD_FIELDS = {
    "dome": [("timestamp", "before the year 10000"), ("shares", "INT64"), ("title", "surrogate")],
    "polymarket": [
        ("timestamp", "before the year 10000"),
        ("size", "size from 0"),
        ("title", "surrogate"),
    ],
}


@pytest.mark.parametrize("source", ["polymarket", "dome"])
@pytest.mark.world(seed=9, wallets=8, max_trades=300)
def test_absurd_values_in_a_served_page_end_that_wallet_only(source, world):
    """The year 33658, an amount past 2**64, a lone surrogate: each one wallet's counted failure
    naming the field; every other wallet lands exactly, and the run is not failed."""
    server, wallets, db, _staging = world
    traded = [w for w in wallets if server.simulator.orders(w)]
    cases = ABSURD_FIELDS[source]
    bent = {traded[i]: case for i, case in enumerate(cases)}
    server.set_faults(
        [
            {
                "kind": "absurd_value",
                "field": field,
                "wallets": [w],
                "endpoint": TRADES_ENDPOINT[source],
            }
            for w, (field, _says) in bent.items()
        ]
    )
    summary = run_backfill(world.argv())
    assert summary.state == "DONE"
    assert summary.counters["wallets_failed"] == len(bent)
    marks = checkpoint(db)
    for wallet, (field, says) in bent.items():
        done, ok, _, reason = marks[wallet][:4]
        assert (done, ok) == (True, False), (wallet, marks[wallet])
        assert f"'{field}'" in reason and says in reason, reason
    landed = {wallet for wallet, _ in production_trade_ids(db)}
    assert not landed & set(bent)

    server.set_faults([])
    run_backfill(world.argv())
    assert_production_is_truth(world)
