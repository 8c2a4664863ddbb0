"""WriteStaging and CommitRun: rows become NDJSON staging, then one commit, last of all."""

from __future__ import annotations

import json
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList

from pipeline.rows import to_ndjson
from pipeline.staging import CommitOutcome, RunStaging, commit_staged_run
from pipeline.warehouse import CommitError, WarehouseRef
from transforms.metrics import NAMESPACE


def _after(row: object, _finished: list) -> object:
    return row


class WriteStaging(beam.PTransform):
    """Writes one kind's rows (or lists of rows, `batched`) as NDJSON; outputs the final file names.

    `after`: another write's file names. The rows are held until that write is final, which is how
    a wallet's outcome is never staged before its trades are.
    """

    def __init__(
        self,
        staging: RunStaging,
        kind: str,
        batched: bool = False,
        after: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        self._prefix = staging.file_prefix(kind)
        self._batched, self._after = batched, after

    def expand(self, rows):
        if self._after is not None:
            rows = rows | "WaitForEarlierWrite" >> beam.Map(_after, AsList(self._after))
        encode = to_ndjson if self._batched else json.dumps
        return (
            rows
            | "ToJsonLines" >> beam.Map(encode)
            | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".json")
        )


class _CommitFn(beam.DoFn):
    def __init__(self, staging: RunStaging, warehouse: WarehouseRef) -> None:
        self._staging, self._warehouse = staging, warehouse

    def process(self, run_id: str, **files: list[str]) -> Iterator[CommitOutcome]:
        self._staging.write_manifest(files)  # from here on, start-up recovery can commit the run
        outcome = commit_staged_run(self._staging, self._warehouse, files)
        if outcome.report is None:
            raise CommitError(outcome.error)
        for name in ("trades_inserted", "markets_merged", "events_merged"):
            Metrics.counter(NAMESPACE, f"committed_{name}").inc(getattr(outcome.report, name))
        yield outcome


class CommitRun(beam.PTransform):
    """Runs once, after every staging write is final: manifest, warehouse transaction, marker."""

    def __init__(self, staging: RunStaging, warehouse: WarehouseRef) -> None:
        super().__init__()
        self._staging, self._warehouse = staging, warehouse

    def expand(self, staged: dict):
        pipeline = next(iter(staged.values())).pipeline
        side_inputs = {kind: AsList(files) for kind, files in staged.items()}
        return (
            pipeline
            | "RunId" >> beam.Create([self._staging.run_id])
            | "Commit" >> beam.ParDo(_CommitFn(self._staging, self._warehouse), **side_inputs)
        )
