"""What a hostile world does to a run, end to end (DirectRunner, simulator, DuckDB): nothing that a
production trade names is lost for good, whichever source and whichever endpoint fails."""

from __future__ import annotations

import pytest

from pipeline.run import run_backfill
from pipeline.status import show_status
from pipeline.warehouse import TableNames
from tests.support import query, truth_markets_and_events

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
