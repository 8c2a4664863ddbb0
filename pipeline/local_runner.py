"""LocalRunner: the runner of every local run and every test, the DirectRunner's FnApiRunner.

Beam's DirectRunner (SwitchingDirectRunner) first tries Prism for any graph Prism's visitor
accepts, and Prism is a binary it downloads from GitHub: offline, a failed attempt (and a
download) per run; online, another runner than the one the tests run on. LocalRunner skips that
attempt and runs what the DirectRunner runs once Prism is out of the way: an FnApiRunner given,
as its provision info, the options of the run (`--direct_running_mode=multi_processing` workers
read their options from there), built when the pipeline runs, from the options it runs with.
It refuses nothing: whatever the FnApiRunner accepts, it runs (a graph the FnApiRunner cannot
run, a streaming one, fails there rather than falling back to the DirectRunner's legacy runner).
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineResult, PipelineRunner

# The names that mean the DirectRunner (None: the default runner); any other (Dataflow) is Beam's.
DIRECT_RUNNER_NAMES = (None, "DirectRunner", "direct", "SwitchingDirectRunner")


class LocalRunner(PipelineRunner):
    """The DirectRunner's FnApiRunner path (direct_runner.py, SwitchingDirectRunner.run_pipeline),
    without trying Prism first."""

    def run_pipeline(self, pipeline, options: PipelineOptions) -> PipelineResult:
        # As the DirectRunner does: multi_processing workers read the options from here.
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
        runner = fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))
        return runner.run_pipeline(pipeline, options)


def local_runner(options: PipelineOptions) -> PipelineRunner | None:
    """A LocalRunner when `options` name the DirectRunner (or no runner); None for any other
    runner (Dataflow), which Beam builds from the options as usual."""
    if options.view_as(StandardOptions).runner not in DIRECT_RUNNER_NAMES:
        return None
    return LocalRunner()
