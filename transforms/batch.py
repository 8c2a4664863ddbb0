"""BatchPerKey: full batches of N values per key, the remainder when the input ends.

Beam's GroupIntoBatches always declares a processing-time timer, which makes the DirectRunner drop
from the FnApiRunner to its legacy bundle runner (slower, and it fails on this graph). This needs
only an event-time timer: batches are emitted as they fill, the last partial one at window end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder, VarIntCoder
from apache_beam.transforms.combiners import CountCombineFn
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    CombiningValueStateSpec,
    TimerSpec,
    on_timer,
)


class _BatchFn(beam.DoFn):
    # Values are strings or (string, string|None) pairs: FastPrimitivesCoder holds both.
    BUFFER = BagStateSpec("buffer", FastPrimitivesCoder())
    COUNT = CombiningValueStateSpec("count", VarIntCoder(), CountCombineFn())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, size: int) -> None:
        self._size = size

    def process(
        self,
        element: tuple[str, Any],
        window=beam.DoFn.WindowParam,
        buffer=beam.DoFn.StateParam(BUFFER),
        count=beam.DoFn.StateParam(COUNT),
        flush=beam.DoFn.TimerParam(FLUSH),
    ) -> Iterator[list[Any]]:
        flush.set(window.max_timestamp())
        buffer.add(element[1])
        count.add(1)
        if count.read() >= self._size:
            yield list(buffer.read())
            buffer.clear()
            count.clear()

    @on_timer(FLUSH)
    def on_flush(
        self, buffer=beam.DoFn.StateParam(BUFFER), count=beam.DoFn.StateParam(COUNT)
    ) -> Iterator[list[Any]]:
        remainder = list(buffer.read())
        if remainder:
            yield remainder
        buffer.clear()
        count.clear()


class BatchPerKey(beam.PTransform):
    """(key, value) pairs -> lists of at most `size` values of one key."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def expand(self, keyed):
        return keyed | "Batch" >> beam.ParDo(_BatchFn(self._size))
