"""What a hostile world does to a run, end to end (DirectRunner, simulator, DuckDB): nothing that a
production trade names is lost for good, whichever source and whichever endpoint fails."""

from __future__ import annotations

import pytest

from pipeline.__main__ import main
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
def test_markets_and_events_gone_for_a_run_fail_it_and_are_fetched_by_the_next(
    source, world, capsys
):
    """Every lookup batch fails as if the source were gone (503 until retries run out): the
    trades are committed, but the run is failed, in one line that names the lookups, exit 1."""
    server, wallets, db, _staging = world
    markets, events = truth_markets_and_events(server, source)
    server.set_faults([{"kind": "http_5xx", "status": 503, "endpoint": e} for e in LOOKUPS[source]])
    capsys.readouterr()
    code = main(["run", *world.argv("--max_attempts=2")])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(out) == 1, out
    assert " stopped: " in out[0] and f"({len(wallets)} wallets done)" in out[0], out
    assert "markets: all " in out[0] and "lookup batches failed" in out[0], out
    assert "the next run asks again" in out[0] and "DONE" not in out[0], out
    # The trades landed, their markets did not: status says so instead of looking finished.
    assert len(checkpoint(db)) == len(wallets)
    assert all(mark[:2] == (True, True) for mark in checkpoint(db).values())
    assert query(db, "SELECT COUNT(*) FROM markets") == [(0,)]
    report = show_status(f"duckdb:{db}", TableNames())
    assert f"markets {len(markets) + len(_missing(server, source))}" in report, report

    server.set_faults([])
    second = run_backfill(world.argv())
    assert second.state == "DONE"
    assert second.counters.get("trades", 0) == 0  # no wallet was fetched again
    assert {r[0] for r in query(db, "SELECT condition_id FROM markets")} == markets
    assert {r[0] for r in query(db, "SELECT event_slug FROM events")} == events
    report = show_status(f"duckdb:{db}", TableNames())
    assert f"markets {len(_missing(server, source))}, events 0" in report, report
    assert_production_is_truth(world)


# Each source's endpoint that a batch of market lookups asks first.
MARKETS_ENDPOINT = {"dome": "markets", "polymarket": "gamma_markets"}


@pytest.mark.parametrize("source", ["polymarket", "dome"])
@pytest.mark.world(seed=5, wallets=10, max_trades=800, markets=300)
def test_some_lookup_batches_failing_is_no_run_failure_but_the_summary_names_them(source, world):
    """The first batch of market lookups fails until its retries run out (one thread: the first
    two requests are its two attempts), the later ones are answered: the source is there, so the
    run succeeds; its summary says how many markets failed."""
    server, _wallets, _db, _staging = world
    endpoint = MARKETS_ENDPOINT[source]
    server.set_faults([{"kind": "http_5xx", "status": 503, "times": 2, "endpoint": endpoint}])
    first = run_backfill(world.argv("--max_attempts=2", "--fetch_threads=1"))
    assert first.state == "DONE" and first.stopped is None
    failed = first.counters.get("markets_failed", 0)
    assert 0 < failed < len(truth_markets_and_events(server, source)[0])
    summary = first.render()
    assert f"markets: {first.counters['markets']} ({failed} failed: the next run asks again)" in (
        summary
    ), summary

    server.set_faults([])
    run_backfill(world.argv())
    assert_production_is_truth(world)


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
