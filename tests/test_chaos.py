"""Killed at every instant that changes state, then run again: production ends exact every time.

A random SIGKILL (tests/test_pipeline_e2e.py, four seeds per source) mostly lands while wallets are
being fetched; the instants that decide what a crash leaves (a state file half written, the commit
between its load and its transaction, inside the transaction, after it but before the marker) last
milliseconds. Each is a failpoint (pipeline/failpoints.py): the run is killed exactly there, as a
SIGKILL would leave it, then a second run (and, for the last instants, a third) must land the truth
once, with no trade twice and no load table left behind.
"""

from __future__ import annotations

import pytest

from pipeline import failpoints
from tests.support import (
    assert_production_is_truth,
    query,
    run_subprocess,
)

pytestmark = pytest.mark.world(seed=23, wallets=12, max_trades=800)


# The instants are the commit's and the staging's, which no source touches: every one on the
# default source, and on Dome the three that end each phase (staged, in the transaction, marked).
CASES = [("polymarket", kill_at) for kill_at in failpoints.ALL] + [
    ("dome", kill_at)
    for kill_at in (failpoints.STAGED, failpoints.IN_TRANSACTION, failpoints.MARKER_WRITTEN)
]


def run(world, kill_at: str | None = None) -> tuple[int, str]:
    env = {failpoints.ENVIRONMENT_VARIABLE: kill_at} if kill_at else {}
    process = run_subprocess(world.argv(), world.server.api_key, env=env)
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize(("source", "kill_at"), CASES)
def test_killed_at_each_instant_that_changes_state_then_rerun_is_exact(world, kill_at):
    code, output = run(world, kill_at)
    assert code == failpoints.KILLED_EXIT_CODE, f"the run never reached {kill_at}:\n{output}"

    code, output = run(world)
    assert code == 0, output
    assert_production_is_truth(world)
    assert query(world.db, "SELECT COUNT(*) - COUNT(DISTINCT id) FROM trades") == [(0,)]
    leftovers = query(
        world.db,
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '\\_stg\\_%' ESCAPE '\\'",
    )
    assert leftovers == [], "a killed commit's load tables outlived the next start-up"
    # Whatever the first run left, no run is committed twice and none is left half-committed.
    runs = query(world.db, "SELECT run_id, COUNT(*) FROM backfill_runs GROUP BY run_id")
    assert all(count == 1 for _, count in runs)


@pytest.mark.slow
def test_killed_after_start_up_staged_the_lookup_plan_then_later_runs_are_exact(world):
    """A run of several processes stages what production holds before its graph runs: killed
    right after, it leaves a claim and that file, and blocks no later run (its lease names a
    process that is gone); the next runs, one of several processes, land the truth once."""
    several = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    env = {failpoints.ENVIRONMENT_VARIABLE: failpoints.LOOKUP_PLAN_STAGED}
    process = run_subprocess(world.argv(*several), world.server.api_key, env=env)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == failpoints.KILLED_EXIT_CODE, output
    assert list(world.staging.glob("*/lookup_plan.json.gz")), "the plan was not staged"

    again = run_subprocess(world.argv(*several), world.server.api_key)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert_production_is_truth(world)
    assert query(world.db, "SELECT COUNT(*) - COUNT(DISTINCT id) FROM trades") == [(0,)]
