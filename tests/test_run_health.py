"""RunHealth on its own: a streak of source-is-gone failures stops the run and marks no wallet;
anything less stays each wallet's own failure, unless not one attempt of the whole run got an
answer (Attempts, SourceVerdict): then the source is gone however few wallets the run tried."""

import pickle
import traceback

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.run import RunReport
from pipeline.sources.errors import HTTPStatusError, PageError, SourceUnavailable
from tests.support import local_pipeline
from transforms.run_health import (
    Attempts,
    RunHealth,
    RunStopped,
    SourceVerdict,
    total_by_kind,
)
from transforms.stage import _one_reason

GONE = SourceUnavailable("gave up after 5 attempts: /v2/trades: ConnectionError")


def test_a_streak_stops_the_run_and_drops_every_held_failure():
    health = RunHealth(threshold=3)
    assert health.failed(GONE, "w1") == [] and health.failed(GONE, "w2") == []
    assert health.stopped is None
    assert health.failed(HTTPStatusError("HTTP 401", 401), "w3") == []
    assert health.stopped and "3 wallets in a row" in health.stopped and "401" in health.stopped
    assert health.end_bundle()[0] == [] and health.failed(PageError("bad page"), "w4") == []


def test_a_success_between_keeps_them_ordinary_failures():
    health = RunHealth(threshold=3)
    assert health.failed(GONE, "w1") == [] and health.failed(GONE, "w2") == []
    assert health.succeeded() == ["w1", "w2"]
    assert health.failed(GONE, "w3") == [] and health.failed(GONE, "w4") == []
    assert health.end_bundle()[0] == ["w3", "w4"] and health.stopped is None


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


def test_a_bundle_ends_with_its_held_outcomes_and_its_tally():
    health = RunHealth(threshold=5)
    assert health.failed(GONE, "w1") == [] and health.failed(GONE, "w2") == []
    held, attempts = health.end_bundle()
    assert held == ["w1", "w2"] and attempts == Attempts(gone=2, last=str(GONE))
    assert attempts.source_gone and health.stopped is None  # the run's tally decides, not this
    assert health.succeeded() == [] and health.failed(PageError("bad page"), "w3") == ["w3"]
    assert health.end_bundle() == ([], Attempts(answered=2))  # the tally starts again


def test_one_answer_anywhere_in_the_run_means_the_source_is_there():
    refused = Attempts.of(HTTPStatusError("HTTP 403", 403))
    assert refused.source_gone and not Attempts().source_gone and not Attempts()
    assert not (refused + Attempts.of(None)).source_gone  # a success on another worker
    assert not (refused + Attempts.of(HTTPStatusError("HTTP 400", 400))).source_gone
    assert not (refused + Attempts.of(PageError("bad page"))).source_gone
    total = refused + Attempts.of(GONE) + Attempts()
    assert total == Attempts(gone=2, last=max(str(GONE), "HTTP 403")) and total.source_gone
    assert pickle.loads(pickle.dumps(total)) == total


GONE_410 = Attempts.of(HTTPStatusError("HTTP 410", 410))


@pytest.mark.parametrize(
    ("parts", "reasons"),
    [
        ([GONE_410, GONE_410], ["all 2 gone; the last: HTTP 410"]),
        ([GONE_410, Attempts.of(None)], []),  # one bundle's wallets refused, another's fetched
        ([], []),  # a run that tried nothing is no failure
    ],
)
def test_the_verdict_names_a_gone_source_once_and_nothing_else(parts, reasons):
    """Each kind is judged on its own attempts: the wallets' source gone says nothing of the
    markets' (one answered lookup), and a kind with no attempt at all is no failure."""
    templates = {kind: f"{kind}: all {{gone}} gone; the last: {{last}}" for kind in ("w", "m", "e")}
    with local_pipeline() as p:
        marked = [{"w": part} for part in parts] + [{"m": Attempts.of(None)}]
        verdict = p | beam.Create(marked, reshuffle=False) | SourceVerdict(templates)
        assert_that(verdict["w"], equal_to([f"w: {r}" for r in reasons]), label="wallets")
        assert_that(verdict["m"], equal_to([]), label="markets")
        assert_that(verdict["e"], equal_to([]), label="events")
        kinds = verdict["total"] | beam.Map(lambda total: sorted(total))
        assert_that(kinds, equal_to([["m", "w"] if parts else ["m"]]), label="total")


def test_sums_by_kind_add_up_whatever_the_grouping():
    """CombineGlobally hands partial sums back in: every grouping gives the same total."""
    a, b, c = {"w": GONE_410}, {"w": Attempts.of(None), "m": GONE_410}, {"m": GONE_410}
    one_go = total_by_kind([a, b, c])
    assert one_go == total_by_kind([total_by_kind([a, c]), b]) == total_by_kind([c, b, a])
    assert one_go == {"w": GONE_410 + Attempts.of(None), "m": GONE_410 + GONE_410}
    assert total_by_kind([]) == {}


def test_the_stop_line_names_each_kind_of_reason_once():
    streak = "5 wallets in a row failed as if the source were gone; the last: "
    reason = _one_reason(
        [
            f"{streak}wallet 0xb: HTTP 401",
            f"{streak}wallet 0xa: HTTP 401",
            "markets: all 3 lookup batches failed; the last: HTTP 503",
            "events: all 1 lookup batches failed; the last: HTTP 503",
        ]
    )
    assert reason == (
        "5 wallets in a row failed as if the source were gone; the last: wallet 0xa: HTTP 401; "
        "1 more worker(s) stopped alike; also events: all 1 lookup batches failed; the last: "
        "HTTP 503; also markets: all 3 lookup batches failed; the last: HTTP 503"
    )


def test_the_summary_names_failed_lookups():
    counters = {"markets": 148, "markets_failed": 3, "events": 20}
    summary = RunReport("r1", "DONE", counters).render()
    assert "markets: 148 (3 failed: the next run asks again); events: 20\n" in summary, summary
