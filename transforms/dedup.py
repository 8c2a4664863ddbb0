"""DedupFirst: each key once per run, so a market or event is requested once however many trades name it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec


class _FirstPerKeyFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def process(
        self, element: tuple[str, Any], seen=beam.DoFn.StateParam(SEEN)
    ) -> Iterator[tuple[str, Any]]:
        if not seen.read():
            seen.write(True)
            yield element


class DedupFirst(beam.PTransform):
    """Emits the first (key, value) pair that arrives for each distinct string key (state per key,
    no global set)."""

    def expand(self, pairs):
        return (
            pairs
            # Without this break, the runner fuses the stateful step with whatever produced the
            # keys (the fetching), and a stage holding state runs on one worker only.
            | "Redistribute" >> beam.Reshuffle()
            | "Keyed" >> beam.Map(lambda pair: pair).with_output_types(tuple[str, Any])
            | "First" >> beam.ParDo(_FirstPerKeyFn())
        )
