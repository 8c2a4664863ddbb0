"""Markets and events the source does not have (issue 12): found missing, counted per run, and after
MISSING_AFTER runs no longer asked for; a failed fetch is not "missing", it is retried.

The simulator's Polymarket view has traded markets Gamma knows by no lookup (its combo markets):
FetchMarkets must name them in its `missing` output, the warehouse must count the runs that did,
and the runs after the third must not ask Gamma for them again.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.options import resolve
from pipeline.run import run_backfill
from pipeline.warehouse import TableNames, WarehouseRef
from pipeline.warehouse.base import MISSING_AFTER
from tests.support import seed_traders, source_argv, source_stats
from transforms.api import ApiHandle
from transforms.fetch_markets import MISSING, FetchEvents, FetchMarkets
from transforms.select_wallets import RefreshPolicy

NO_SUCH_EVENT = "no-such-event-anywhere"
GAMMA_MARKETS = ("gamma_markets", "gamma_markets_slug")


@pytest.fixture
def polymarket(sim_server, tmp_path):
    """A simulator, an empty DuckDB warehouse (tables made) and a Polymarket config against both."""
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
    policy = RefreshPolicy(now=config.started_at, refresh_after_s=None, overlap_s=3600.0)
    return server, config, policy


def _fetch_markets(config, policy) -> FetchMarkets:
    return FetchMarkets(
        ApiHandle(config.source), config.warehouse_ref, policy, 50, config.fetch_threads
    )


def _keys(rows, label: str):
    return rows | label >> beam.Map(lambda row: (row["kind"], row["key"], bool(row["seen_at"])))


def _assert_found_and_missing(
    fetched, kind: str, key: str, found: list[str], missing: list[str]
) -> None:
    """In the pipeline: the `kind` output of a fetch holds exactly the rows of `found` (by `key`),
    and its `missing` output names exactly the keys of `missing`, each with when it was seen."""
    assert_that(
        fetched[kind] | f"{kind} keys" >> beam.Map(lambda row: row[key]),
        equal_to(found),
        label=kind,
    )
    assert_that(
        _keys(fetched[MISSING], f"missing {kind} keys"),
        equal_to([(kind, k, True) for k in missing]),
        label=f"missing {kind}",
    )


def test_fetch_markets_and_events_emit_a_missing_row_per_key_the_source_lacks(polymarket):
    server, config, policy = polymarket
    truth = server.truth(source="polymarket")
    gone = sorted(truth["missing_markets"])
    assert gone, "the world must hold a traded market Gamma does not know"
    found = sorted(m["conditionId"].lower() for m in truth["markets"])
    slugs = {m["condition_id"]: m["market_slug"] for m in server.simulator.markets()}
    refs = [(cid, slugs[cid]) for cid in found + gone]
    events = sorted(e["slug"] for e in truth["events"])[:3]
    with TestPipeline() as p:
        fetched = p | beam.Create(refs) | _fetch_markets(config, policy)
        _assert_found_and_missing(fetched, "markets", "condition_id", found, gone)
        asked = p | "Slugs" >> beam.Create([*events, NO_SUCH_EVENT])
        looked_up = asked | FetchEvents(
            ApiHandle(config.source), config.warehouse_ref, policy, 20, config.fetch_threads
        )
        _assert_found_and_missing(looked_up, "events", "event_slug", events, [NO_SUCH_EVENT])


def test_a_failed_lookup_is_not_missing(polymarket):
    """Gamma refuses every keyset request: the batch failed, which says nothing about whether the
    source has its markets, so no `missing` row (the next run asks again)."""
    server, config, policy = polymarket
    gone = server.truth(source="polymarket")["missing_markets"]
    slugs = {m["condition_id"]: m["market_slug"] for m in server.simulator.markets()}
    refs = [(cid, slugs[cid]) for cid in gone]
    server.set_faults([{"kind": "http_4xx", "endpoint": "gamma_markets"}])
    with TestPipeline() as p:
        fetched = p | beam.Create(refs) | _fetch_markets(config, policy)
        assert_that(fetched["markets"], equal_to([]), label="markets")
        assert_that(fetched[MISSING], equal_to([]), label="missing")
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
