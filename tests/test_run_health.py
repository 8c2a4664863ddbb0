"""RunHealth on its own: a streak of source-is-gone failures stops the run and marks no wallet;
anything less stays each wallet's own failure."""

from pipeline.sources.errors import HTTPStatusError, PageError, SourceUnavailable
from transforms.run_health import RunHealth

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
