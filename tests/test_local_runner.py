"""Every test and every local run on one runner, the DirectRunner's FnApiRunner, never Prism (which
the DirectRunner tries first, after downloading it from GitHub: no test may reach the network)."""

from __future__ import annotations

import logging
import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import RunnerResult
from apache_beam.testing.util import assert_that, equal_to

from pipeline.local_runner import LocalRunner, local_runner
from tests.support import REPO, local_pipeline, run_subprocess

# What Beam's FnApiRunner logs at INFO when its worker starts: proof that the log was captured.
FN_API_WORKER_LOG = "Creating state cache"


def test_a_test_pipeline_runs_on_the_fn_api_runner_and_never_tries_prism(caplog):
    caplog.set_level(logging.INFO)
    p = local_pipeline()
    assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 10), equal_to([10, 20]))
    result = p.run()
    assert isinstance(result, RunnerResult)  # the FnApiRunner's
    messages = [record.getMessage() for record in caplog.records]
    assert any(FN_API_WORKER_LOG in m for m in messages), messages
    assert not [m for m in messages if "Prism" in m]


@pytest.mark.parametrize(
    ("argv", "local"),
    [
        ([], True),
        (["--runner=DirectRunner"], True),
        (["--runner=DataflowRunner"], False),
    ],
)
def test_local_runner_only_for_the_direct_runner(argv, local):
    runner = local_runner(PipelineOptions(argv))
    assert isinstance(runner, LocalRunner) if local else runner is None


@pytest.mark.world(wallets=2, max_trades=40)
def test_a_local_run_of_python_m_pipeline_never_tries_prism(world):
    process = run_subprocess(world.argv(), world.server.api_key, timeout=120)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert FN_API_WORKER_LOG in output  # the runner's INFO log is in the output
    assert "Prism" not in output, output
    # but not Beam's line per postponed annotation (~160 a run), which drowned the rest
    assert "type hint" not in output, output


def test_every_pipeline_of_the_tests_comes_from_local_pipeline():
    """A TestPipeline (or Pipeline) made anywhere else would run on the DirectRunner, which tries
    Prism first: the tests make theirs with `tests.support.local_pipeline`."""
    made_elsewhere = [
        f"{path.name}:{number}"
        for path in sorted(REPO.glob("tests/*.py"))
        if path.name != "support.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b(Test)?Pipeline\(", line)
    ]
    assert made_elsewhere == []
