"""One source client per worker process, shared by every fetching DoFn, with its counts for Metrics.

Rate limits belong to the API key (Dome) or the IP (Polymarket), so the trades, markets and events
steps of one process must draw from one limiter: a `Shared` handle, pickled into each DoFn, gives
them the same source.
"""

from __future__ import annotations

from apache_beam.utils.shared import Shared

from pipeline.sources import Source, SourceSpec, open_source
from transforms.metrics import CountingTelemetry


class ProcessApi:
    """What a process shares: the source (session + limiter) and its telemetry."""

    def __init__(self, spec: SourceSpec) -> None:
        self.telemetry = CountingTelemetry()
        self.source: Source = open_source(spec, self.telemetry)


class ApiHandle:
    """Picklable; `acquire()` in `DoFn.setup` returns the process's one ProcessApi."""

    def __init__(self, spec: SourceSpec) -> None:
        self._spec = spec
        self._shared = Shared()

    def acquire(self) -> ProcessApi:
        return self._shared.acquire(lambda: ProcessApi(self._spec), tag=repr(self._spec))
