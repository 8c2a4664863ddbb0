"""A DoFn base that fetches several elements at once on threads and yields from the bundle's thread.

Beam hands a DoFn one element at a time, but fetching is waiting on the network: one element at a
time would use a small part of the rate limit. Subclasses implement `fetch(element, emit)`, which runs
on a thread pool (at most `threads` at once); what it emits is queued (bounded, so memory stays flat)
and yielded by `process`/`finish_bundle`, the only places Beam accepts outputs from.

A subclass can stop starting elements (`should_start`): an element not started is dropped without
any output (`not_started` sees it), so whatever it stands for stays pending for a later run.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.api import ApiHandle, ProcessApi
from transforms.metrics import ThreadCounters

Emit = Callable[[str | None, Any], None]


class _Done:
    pass


class _Crashed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = _Done()


class ConcurrentFetchFn(beam.DoFn):
    """Base for the fetching DoFns; only global windows are needed (the job is a batch job)."""

    def __init__(self, api: ApiHandle, threads: int) -> None:
        self._handle = api
        self._threads = threads

    def setup(self) -> None:
        self.api: ProcessApi = self._handle.acquire()
        self.counters = ThreadCounters()
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=type(self).__name__)

    def teardown(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def fetch(self, element: Any, emit: Emit) -> None:
        raise NotImplementedError

    def should_start(self) -> bool:
        """False once no new element may start (checked before each, on any thread)."""
        return True

    def not_started(self, element: Any) -> None:
        """An element dropped because `should_start` said no (called on any thread)."""

    def end_of_bundle(self) -> Iterable[tuple[str | None, Any]]:
        """(tag, value) outputs to yield once every fetch of the bundle has ended."""
        return ()

    def start_bundle(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=4 * self._threads)
        self._in_flight = 0

    def process(self, element: Any) -> Iterator[Any]:
        while self._in_flight >= self._threads:
            yield from self._take(block=True)
        if not self.should_start():
            self.not_started(element)
            yield from self._take(block=False)
            return
        self._in_flight += 1
        self._pool.submit(self._run, element, self._queue)
        yield from self._take(block=False)

    def finish_bundle(self) -> Iterator[Any]:
        while self._in_flight:
            for output in self._take(block=True):
                if isinstance(output, TaggedOutput):
                    yield TaggedOutput(output.tag, self._windowed(output.value))
                else:
                    yield self._windowed(output)
        for tag, value in self.end_of_bundle():
            yield self._windowed(value) if tag is None else TaggedOutput(tag, self._windowed(value))
        self.api.telemetry.counters.flush()
        self.counters.flush()

    @staticmethod
    def _windowed(value: Any) -> WindowedValue:
        return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])

    def _run(self, element: Any, outputs: queue.Queue) -> None:
        def emit(tag: str | None, value: Any) -> None:
            outputs.put((tag, value))

        try:
            if self.should_start():  # the stop may have come while this one waited for a thread
                self.fetch(element, emit)
            else:
                self.not_started(element)
        except BaseException as error:  # a bug of ours, not an API failure: fail the bundle
            outputs.put(_Crashed(error))
        finally:
            outputs.put(_DONE)

    def _take(self, block: bool) -> Iterator[Any]:
        """Yields what the threads emitted; with `block`, waits until at least one fetch ended."""
        while True:
            try:
                item = self._queue.get(block=block)
            except queue.Empty:
                break
            if item is _DONE:
                self._in_flight -= 1
                if block:
                    block = False
                continue
            if isinstance(item, _Crashed):
                raise item.error
            tag, value = item
            yield value if tag is None else TaggedOutput(tag, value)
        self.api.telemetry.counters.flush()
        self.counters.flush()
