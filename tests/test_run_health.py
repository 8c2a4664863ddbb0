"""RunHealth on its own: a streak of source-is-gone failures stops the run and marks no wallet;
anything less stays each wallet's own failure."""

import pickle
import traceback

from pipeline.sources.errors import HTTPStatusError, PageError, SourceUnavailable
from transforms.run_health import RunHealth, RunStopped

GONE = SourceUnavailable("gave up after 5 attempts: /v2/trades: ConnectionError")


def test_a_streak_stops_the_run_and_drops_every_held_failure():
    health = RunHealth(threshold=3)
    assert health.failed(GONE, "w1") == [] and health.failed(GONE, "w2") == []
    assert health.stopped is None
    assert health.failed(HTTPStatusError("HTTP 401", 401), "w3") == []
    assert health.stopped and "3 wallets in a row" in health.stopped and "401" in health.stopped
    assert health.release() == [] and health.failed(PageError("bad page"), "w4") == []


def test_a_success_between_keeps_them_ordinary_failures():
    health = RunHealth(threshold=3)
    assert health.failed(GONE, "w1") == [] and health.failed(GONE, "w2") == []
    assert health.succeeded() == ["w1", "w2"]
    assert health.failed(GONE, "w3") == [] and health.failed(GONE, "w4") == []
    assert health.release() == ["w3", "w4"] and health.stopped is None


def test_a_wallet_level_failure_proves_the_source_answers():
    health = RunHealth(threshold=2)
    assert health.failed(GONE, "w1") == []
    assert health.failed(HTTPStatusError("HTTP 404", 404), "w2") == ["w1", "w2"]
    assert health.failed(GONE, "w3") == [] and health.stopped is None
    assert health.failed(HTTPStatusError("HTTP 403", 403), "w4") == []
    assert health.stopped is not None


def test_the_stop_is_announced_once_whichever_thread_asks():
    health = RunHealth(threshold=2)
    assert health.failed(GONE, "w1") == [] and health.announce() is None
    assert health.failed(GONE, "w2") == []
    reason = health.announce()
    assert reason == health.stopped and health.announce() is None


def test_a_stopped_run_is_found_however_the_runner_wrapped_it():
    stopped = RunStopped(
        "r1", "5 wallets in a row failed as if the source were gone: 'HTTP 401'", 3
    )
    assert RunStopped.find(stopped) is stopped
    assert RunStopped.find(pickle.loads(pickle.dumps(stopped))).line() == stopped.line()
    try:  # in-process the runner raises a new exception from it, with more text
        try:
            raise stopped
        except RunStopped as inner:
            raise RuntimeError(f"{inner} [while running 'Commit']") from inner
    except RuntimeError as outer:
        assert RunStopped.find(outer).line() == stopped.line()
    # multi_processing: only the worker's traceback survives, as (escaped) text
    text = repr("".join(traceback.format_exception(stopped)))
    found = RunStopped.find(RuntimeError(f"Pipeline failed: {text}"))
    assert (found.run_id, found.reason, found.wallets_done) == ("r1", stopped.reason, 3)
    assert found.line().startswith("run r1 stopped: the source looks gone: 5 wallets")
    assert "(3 wallets done)" in found.line() and "\n" not in found.line()
    assert RunStopped.find(RuntimeError("HTTP 401 for every wallet")) is None
