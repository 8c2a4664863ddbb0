"""DedupFirst: each key once per run, so a market or event is requested once however many trades name it."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec


class _FirstPerKeyFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def process(self, element: tuple[str, None], seen=beam.DoFn.StateParam(SEEN)) -> Iterator[str]:
        key, _ = element
        if not seen.read():
            seen.write(True)
            yield key


class DedupFirst(beam.PTransform):
    """Emits each distinct string key the first time it arrives (state per key, no global set)."""

    def expand(self, keys):
        return (
            keys
            # Without this break, the runner fuses the stateful step with whatever produced the
            # keys (the fetching), and a stage holding state runs on one worker only.
            | "Redistribute" >> beam.Reshuffle()
            | "Key" >> beam.Map(lambda key: (key, None)).with_output_types(tuple[str, None])
            | "First" >> beam.ParDo(_FirstPerKeyFn())
        )
