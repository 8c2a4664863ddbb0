"""A source that is gone (nothing listening, a refused key, an API that says Gone) stops the run:
it commits what was complete, marks no wallet failed, and exits non-zero with one line. A wallet's
own 4xx stays that wallet's failure, and such a run succeeds.

Each test runs the real graph (DirectRunner, DuckDB file) against the simulator over 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.run import RunReport, run_backfill
from tests.bq_emulator import free_port  # a port nothing listens on
from tests.support import (
    REPO,
    TRADES_ENDPOINT,
    assert_landed_exact,
    assert_production_is_truth,
    checkpoint,
    production_fills,
    query,
    run_argv,
    seed_traders,
    trade_requests,
    truth_counts,
    truth_fills,
    truth_markets_and_events,
)

WALLETS = 14
STREAK = 5  # transforms.run_health.RUN_FAILURE_STREAK: the wallets in a row that stop a run


@pytest.fixture
def server(sim_server, monkeypatch):
    """A small world: every wallet's history fits one page, so one trades request is one wallet."""
    sim = sim_server(seed=23, wallets=WALLETS, tier="unlimited", max_trades=300)
    monkeypatch.setenv("DOME_API_KEY", sim.api_key)
    return sim


def _warehouse(tmp_path: Path, server) -> tuple[Path, Path, list[str]]:
    wallets = server.simulator.wallet_addresses()
    db = tmp_path / "wh.duckdb"
    seed_traders(db, wallets)
    return db, tmp_path / "staging", wallets


def _assert_stopped(report: RunReport, committed: int, *named: str) -> None:
    assert report.state == "STOPPED" and report.stopped is not None
    line = report.render()
    assert "\n" not in line and line.startswith(f"run {report.run_id} stopped:"), line
    assert f"({committed} wallets done)" in line, line
    assert "5 wallets in a row" in line, line
    for text in named:
        assert text in line, line


def test_nothing_listening_stops_the_run_with_one_line_and_exit_1(tmp_path, server):
    db, staging, _wallets = _warehouse(tmp_path, server)
    argv = [
        f"--warehouse=duckdb:{db}",
        f"--staging_root={staging}",
        "--source=dome",
        f"--api_base_url=http://127.0.0.1:{free_port()}/v1",
        "--tier=pro",
        "--max_attempts=2",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith("run ") and " stopped: the source looks gone: " in lines[0]
    assert "(0 wallets done)" in lines[0] and "gave up after 2 attempts" in lines[0]
    assert "DONE" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert checkpoint(db) == {}
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]


@pytest.mark.parametrize(("source", "status"), [("polymarket", 401), ("dome", 403)])
def test_a_refused_key_for_every_wallet_stops_the_run_and_marks_none(
    tmp_path, server, source, status
):
    db, staging, _wallets = _warehouse(tmp_path, server)
    server.set_faults([{"kind": "http_4xx", "status": status, "endpoint": TRADES_ENDPOINT[source]}])
    report = run_backfill(run_argv(db, staging, server, source=source))
    _assert_stopped(report, 0, f"HTTP {status}")
    assert checkpoint(db) == {}
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]


@pytest.mark.parametrize("source", ["polymarket", "dome"])
def test_a_source_gone_mid_run_lands_the_wallets_before_and_leaves_the_rest_pending(
    tmp_path, server, source
):
    db, staging, wallets = _warehouse(tmp_path, server)
    served = 4
    endpoint = TRADES_ENDPOINT[source]
    # The first `served` trades requests are answered (a zero-second `slow`), then 410 Gone.
    server.set_faults(
        [
            {"kind": "slow", "delay_s": 0, "times": served, "endpoint": endpoint},
            {"kind": "http_4xx", "status": 410, "endpoint": endpoint},
        ]
    )
    argv = run_argv(db, staging, server, "--fetch_threads=1", source=source)
    report = run_backfill(argv)
    _assert_stopped(report, served, "HTTP 410")
    landed = sorted(checkpoint(db))
    assert len(landed) == served
    assert_landed_exact(db, server, landed, source)

    server.set_faults([])
    again = run_backfill(run_argv(db, staging, server, source=source))
    assert again.state == "DONE" and again.counters["wallets_fetched"] == WALLETS - served
    assert_landed_exact(db, server, wallets, source)
    truth_markets, truth_events = truth_markets_and_events(server, source)
    assert {row[0] for row in query(db, "SELECT condition_id FROM markets")} == truth_markets
    assert {row[0] for row in query(db, "SELECT event_slug FROM events")} == truth_events


@pytest.mark.parametrize("source", ["polymarket", "dome"])
def test_a_few_wallets_refused_are_their_own_failures_and_the_run_succeeds(
    tmp_path, server, source
):
    db, staging, wallets = _warehouse(tmp_path, server)
    endpoint = TRADES_ENDPOINT[source]
    # Fewer "gone"-looking refusals (403, 410) than the streak, and plain 4xx (400, 404).
    broken = dict(zip(wallets[:6], (403, 400, 410, 404, 403, 400), strict=True))
    assert sum(status in (403, 410) for status in broken.values()) < STREAK
    server.set_faults(
        [
            {"kind": "http_4xx", "status": status, "wallets": [wallet], "endpoint": endpoint}
            for wallet, status in broken.items()
        ]
    )
    report = run_backfill(run_argv(db, staging, server, source=source))
    assert report.state == "DONE" and report.stopped is None
    assert report.counters["wallets_failed"] == len(broken)
    assert report.counters.get("wallets_not_started", 0) == 0
    marks = checkpoint(db)
    for wallet, status in broken.items():
        completed, ok, _count, error = marks[wallet]
        assert (completed, ok) == (True, False) and f"HTTP {status}" in error, error
        assert wallet in error, error
    _assert_landed_exact_but(db, server, wallets, broken, source)


def _assert_landed_exact_but(db, server, wallets, broken, source) -> None:
    fine = [w for w in wallets if w not in broken]
    counts = truth_counts(server, fine, source)
    marks = checkpoint(db)
    for wallet in fine:
        assert marks[wallet][:3] == (True, True, counts[wallet]), wallet
    assert production_fills(db) == truth_fills(server, fine, source)


def test_a_refused_key_stops_a_multi_processing_run_too(tmp_path, sim_server, monkeypatch):
    """Each worker process keeps its own streak (40 wallets: each of the two sees well over the
    streak); the stop still reaches the launcher, as one line."""
    server = sim_server(seed=29, wallets=40, tier="unlimited", max_trades=300)
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    db, staging, _wallets = _warehouse(tmp_path, server)
    server.set_faults([{"kind": "http_4xx", "status": 401, "endpoint": "trades"}])
    argv = run_argv(
        db,
        staging,
        server,
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
        source="polymarket",
    )
    report = run_backfill(argv)
    _assert_stopped(report, 0, "HTTP 401")
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]
    assert checkpoint(db) == {}


# A run of fewer wallets than the streak (--max_wallets, the last few pending, a refresh) against a
# source that is gone: no streak can trip, so it is the run's whole tally that stops it.
SMALL = 3
GONE_SMALL = {
    "gone 410": ("polymarket", "410"),
    "gone 410 dome": ("dome", "410"),
    "nothing listening": ("dome", "listening"),
    "wrong key": ("dome", "key"),
}


@pytest.mark.world(seed=7, wallets=10, max_trades=300)
@pytest.mark.parametrize(("source", "how"), list(GONE_SMALL.values()), ids=list(GONE_SMALL))
def test_a_run_too_small_for_the_streak_stops_on_a_gone_source_and_marks_none(
    world, how, capsys, monkeypatch
):
    server, wallets, db, _staging = world
    endpoint = TRADES_ENDPOINT[world.source]
    extra = [f"--max_wallets={SMALL}", "--max_attempts=2"]
    argv = world.argv(*extra)
    if how == "410":
        server.set_faults([{"kind": "http_4xx", "status": 410, "endpoint": endpoint}])
        says = "HTTP 410"
    elif how == "key":
        monkeypatch.setenv("DOME_API_KEY", "not-the-key")
        says = "HTTP 401"
    else:
        dead = f"--api_base_url=http://127.0.0.1:{free_port()}/v1"
        argv = [dead if a.startswith("--api_base_url=") else a for a in argv]
        says = "gave up after 2 attempts"
    capsys.readouterr()
    code = main(["run", *argv])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1, out
    assert len(out) == 1 and " stopped: the source looks gone: " in out[0], out
    assert f"all {SMALL} wallets the run tried failed as if the source were gone" in out[0], out
    assert says in out[0] and "(0 wallets done)" in out[0] and "DONE" not in out[0], out
    assert checkpoint(db) == {}  # no wallet marked failed: all of them stay pending
    assert query(db, "SELECT COUNT(*) FROM trades") == [(0,)]
    if how == "410":
        assert trade_requests(server, world.source) == SMALL  # a 410 is not retried

    server.set_faults([])
    monkeypatch.setenv("DOME_API_KEY", server.api_key)
    again = run_backfill(world.argv())
    assert again.state == "DONE" and again.counters["wallets_fetched"] == len(wallets)
    assert again.counters.get("wallets_failed", 0) == 0
    assert_production_is_truth(world)


@pytest.mark.parametrize("source", ["polymarket", "dome"])
@pytest.mark.world(seed=7, wallets=4, max_trades=300)
def test_one_wallet_refused_in_a_small_run_is_that_wallets_failure(world):
    """Fewer wallets than the streak, one refused (403, a "gone"-looking status), the others
    fetched: the source answered, so the refusal is that wallet's, and the run succeeds."""
    server, wallets, db, _staging = world
    refused = wallets[0]
    server.set_faults(
        [
            {
                "kind": "http_4xx",
                "status": 403,
                "wallets": [refused],
                "endpoint": TRADES_ENDPOINT[world.source],
            }
        ]
    )
    report = run_backfill(world.argv("--fetch_threads=1"))
    assert report.state == "DONE" and report.stopped is None, report.render()
    assert report.counters["wallets_failed"] == 1
    assert report.counters["wallets_fetched"] == len(wallets) - 1
    marks = checkpoint(db)
    assert marks[refused][:2] == (True, False) and "HTTP 403" in marks[refused][3]
    assert all(marks[w][:2] == (True, True) for w in wallets if w != refused)
    assert "1 failed" in report.render()
