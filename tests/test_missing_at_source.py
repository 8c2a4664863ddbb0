"""Markets and events the source does not have (issue 12): found missing, counted per run, and after
MISSING_AFTER runs no longer asked for; a failed fetch is not "missing", it is retried.

The simulator's Polymarket view has traded markets Gamma knows by no lookup (its combo markets):
the lookups (`transforms.lookups.look_up`, which the trades stage calls per batch) must emit a
`missing` row for each, the warehouse must count the runs that did, and the runs after the third
must not ask Gamma for them again.
"""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import resolve
from pipeline.run import run_backfill
from pipeline.warehouse import TableNames, WarehouseRef
from pipeline.warehouse.base import MISSING_AFTER
from tests.support import in_duckdb, query, seed_traders, source_argv, source_stats
from transforms.api import ProcessApi
from transforms.lookups import ATTEMPTS, EVENTS, MARKETS, MISSING, look_up
from transforms.metrics import ThreadCounters
from transforms.run_health import Attempts

NO_SUCH_EVENT = "no-such-event-anywhere"
GAMMA_MARKETS = ("gamma_markets", "gamma_markets_slug")


@pytest.fixture
def polymarket(sim_server, tmp_path):
    """A simulator and the Polymarket source (its real client) against it."""
    server = sim_server(seed=5, wallets=8, max_trades=300, tier="unlimited")
    db = tmp_path / "w.duckdb"
    seed_traders(db, [])  # the tables, traders empty
    config = resolve(
        PipelineOptions(
            [
                f"--warehouse=duckdb:{db}",
                *source_argv(server, "polymarket"),
                f"--staging_root={tmp_path / 'staging'}",
                "--run_id=r1",
                "--max_attempts=1",
                "--read_timeout=2",
            ]
        )
    )
    return server, ProcessApi(config.source).source


def _look_up(source, kind: str, batch: list) -> tuple[dict[str, list], ThreadCounters]:
    """One batch through `look_up`: what it emitted, by tag, and its counters."""
    emitted: dict[str, list] = {}
    counters = ThreadCounters()
    look_up(
        source, kind, batch, counters, lambda tag, value: emitted.setdefault(tag, []).append(value)
    )
    return emitted, counters


def _assert_found_and_missing(
    emitted: dict[str, list], kind: str, key: str, found: list[str], missing: list[str]
) -> None:
    """The `kind` rows emitted are exactly those of `found` (by `key`); the `missing` rows name
    exactly the keys of `missing`, each with its kind and when it was seen; one answered attempt."""
    assert sorted(row[key] for row in emitted.get(kind, [])) == found
    rows = emitted.get(MISSING, [])
    assert sorted((r["kind"], r["key"]) for r in rows) == [(kind, k) for k in missing]
    assert all(r["seen_at"] for r in rows)
    assert emitted[ATTEMPTS] == [{kind: Attempts(answered=1)}]


def test_look_up_emits_a_missing_row_per_key_the_source_lacks(polymarket):
    server, source = polymarket
    truth = server.truth(source="polymarket")
    gone = sorted(truth["missing_markets"])
    assert gone, "the world must hold a traded market Gamma does not know"
    found = sorted(m["conditionId"].lower() for m in truth["markets"])
    slugs = {m["condition_id"]: m["market_slug"] for m in server.simulator.markets()}
    refs = [(cid, slugs[cid]) for cid in found + gone]
    emitted, _ = _look_up(source, MARKETS, refs)
    _assert_found_and_missing(emitted, MARKETS, "condition_id", found, gone)
    events = sorted(e["slug"] for e in truth["events"])[:3]
    emitted, _ = _look_up(source, EVENTS, [*events, NO_SUCH_EVENT])
    _assert_found_and_missing(emitted, EVENTS, "event_slug", events, [NO_SUCH_EVENT])


def test_a_failed_lookup_is_not_missing(polymarket):
    """Gamma refuses every keyset request: the batch failed, which says nothing about whether the
    source has its markets, so no `missing` row (the next run asks again), only the failed
    attempt (counted)."""
    server, source = polymarket
    gone = server.truth(source="polymarket")["missing_markets"]
    slugs = {m["condition_id"]: m["market_slug"] for m in server.simulator.markets()}
    refs = [(cid, slugs[cid]) for cid in gone]
    server.set_faults([{"kind": "http_4xx", "endpoint": "gamma_markets"}])
    emitted, counters = _look_up(source, MARKETS, refs)
    assert set(emitted) == {ATTEMPTS}  # no market row, no missing row
    assert [a[MARKETS].answered + a[MARKETS].gone for a in emitted[ATTEMPTS]] == [1]
    assert counters._counts["markets_failed"] == len(refs)
    assert source_stats(server, "polymarket")["requests"]["gamma_markets"] >= 1


def _gamma_market_requests(server) -> int:
    requests = source_stats(server, "polymarket")["requests"]
    return sum(requests.get(endpoint, 0) for endpoint in GAMMA_MARKETS)


@pytest.mark.world(seed=5, wallets=8, max_trades=300)
@pytest.mark.parametrize("source", ["polymarket"])
def test_the_requests_for_a_market_missing_at_the_source_stop_after_the_third_run(world):
    """Run 1 lands everything but the markets Gamma does not know; runs 2 and 3 ask for those
    again (a failed fetch would need that); each of the three finds them missing, so run 4 asks
    Gamma for no market at all, and status tells them apart from pending ones."""
    server = world.server
    gone = server.truth(source="polymarket")["missing_markets"]
    assert gone, "the world must hold a traded market Gamma does not know"
    warehouse = WarehouseRef(f"duckdb:{world.db}", TableNames())
    assert MISSING_AFTER == 3

    for run in range(1, MISSING_AFTER + 2):
        server.reset_stats()
        summary = run_backfill(world.argv())
        assert summary.state == "DONE", run
        # Runs a day apart: sightings seconds apart are not the source's word (a crash, its
        # recovery and a rerun). What the earlier runs saw is moved a day back.
        query(world.db, in_duckdb("UPDATE {missing} SET seen_at = seen_at - INTERVAL 1 DAY"))
        with warehouse.open() as opened:
            report = opened.status()
        if run < MISSING_AFTER:
            assert _gamma_market_requests(server) >= 1, run
            assert (report.markets_pending, report.markets_missing) == (len(gone), 0), run
        elif run == MISSING_AFTER:
            assert _gamma_market_requests(server) >= 1, run  # the third finds them missing
            assert (report.markets_pending, report.markets_missing) == (0, len(gone))
        else:
            assert _gamma_market_requests(server) == 0  # asked for no more
            assert (report.markets_pending, report.markets_missing) == (0, len(gone))
    rows = world.rows("SELECT DISTINCT key FROM {missing} WHERE kind = 'markets'")
    assert sorted(key for (key,) in rows) == sorted(gone)
