"""A run with a time budget (`--max_run_minutes`) stops starting wallets once it is spent: the
wallets it finished land exact, the rest carry no outcome and the next run fetches them."""

from __future__ import annotations

import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import OptionsError, resolve
from pipeline.run import run_backfill
from tests.support import (
    assert_landed_exact,
    checkpoint,
    run_argv,
    seed_traders,
)

WALLETS = 20


@pytest.mark.parametrize("source", ["polymarket", "dome"])
def test_a_spent_budget_stops_starting_wallets_and_the_next_run_finishes_them(
    tmp_path, sim_server, monkeypatch, source
):
    # One wallet at a time, each request ~0.6 s: the 20 wallets need ~12 s, more than the budget
    # (9 s from the run's start, of which start-up takes a few) leaves.
    server = sim_server(seed=31, wallets=WALLETS, tier="unlimited", max_trades=300, latency_ms=500)
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    wallets = server.simulator.wallet_addresses()
    db, staging = tmp_path / "wh.duckdb", tmp_path / "staging"
    seed_traders(db, wallets)

    argv = run_argv(
        db, staging, server, "--fetch_threads=1", "--max_run_minutes=0.15", source=source
    )
    first = run_backfill(argv)
    assert first.state == "DONE"
    fetched = first.counters.get("wallets_fetched", 0)
    not_started = first.counters.get("wallets_not_started", 0)
    assert not_started >= 1, "the budget stopped nothing: the test would prove nothing"
    assert fetched >= 1, "start-up spent the whole budget: the test would prove little"
    assert fetched + not_started == WALLETS
    assert first.counters.get("wallets_failed", 0) == 0
    assert f"{not_started} not started" in first.render()
    assert_landed_exact(db, server, sorted(checkpoint(db)), source)
    assert len(checkpoint(db)) == fetched

    second = run_backfill(run_argv(db, staging, server, source=source))
    assert second.state == "DONE" and second.counters["wallets_fetched"] == not_started
    assert second.counters.get("wallets_not_started", 0) == 0
    assert_landed_exact(db, server, wallets, source)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_budget_must_be_finite_minutes_above_zero(tmp_path, value):
    options = PipelineOptions(
        [f"--warehouse=duckdb:{tmp_path / 'wh.duckdb'}", f"--max_run_minutes={value}"]
    )
    with pytest.raises(OptionsError, match="--max_run_minutes must be minutes above 0"):
        resolve(options)


@pytest.mark.parametrize(
    "argv",
    [
        ["--lease_minutes=0"],
        ["--lease_minutes=nan"],
        ["--lease_minutes=inf"],
        ["--lease_minutes=1441"],
        ["--max_run_minutes=20", "--lease_minutes=20"],  # would expire under a healthy run
        ["--max_run_minutes=20", "--lease_minutes=5"],
    ],
)
def test_a_lease_must_be_minutes_that_outlast_the_budget(tmp_path, argv):
    options = PipelineOptions([f"--warehouse=duckdb:{tmp_path / 'wh.duckdb'}", *argv])
    with pytest.raises(OptionsError, match="--lease_minutes must be minutes above 0"):
        resolve(options)


def test_a_run_given_lease_minutes_holds_the_lease_that_long(tmp_path):
    """What launch_dataflow.sh gives a Dataflow run (the period less a minute): a job that fails
    keeps the lease no longer, and the next launch takes over. Without it: budget + 30 min."""
    import datetime as dt

    from pipeline import lifecycle
    from pipeline.warehouse import open_warehouse

    db = tmp_path / "wh.duckdb"
    duckdb.connect(str(db)).close()
    argv = [f"--warehouse=duckdb:{db}", f"--staging_root={tmp_path / 'staging'}"]
    for extra, minutes in [(["--lease_minutes=29"], 29), ([], 20 + 30)]:
        config = resolve(PipelineOptions([*argv, "--max_run_minutes=20", *extra]))
        before = dt.datetime.now(dt.UTC)
        lifecycle.prepare(config)
        with open_warehouse(f"duckdb:{db}") as warehouse:
            held = warehouse.read_lease()
            assert held.holder == config.lease_holder
            expected = before + dt.timedelta(minutes=minutes)
            assert abs((held.expires_at - expected).total_seconds()) < 30, held
        lifecycle.release(config)


def test_a_budget_is_minutes_from_the_runs_start(tmp_path):
    duckdb.connect(str(tmp_path / "wh.duckdb")).close()  # an existing warehouse
    options = PipelineOptions(
        [f"--warehouse=duckdb:{tmp_path / 'wh.duckdb'}", "--max_run_minutes=2.5"]
    )
    assert resolve(options).max_run_minutes == 2.5
