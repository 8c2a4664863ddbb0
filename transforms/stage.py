"""WriteStaging and CommitRun: rows become NDJSON staging, then one commit, last of all."""

from __future__ import annotations

import json
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList

from pipeline.lifecycle import commit_staged_run
from pipeline.options import BackfillConfig
from pipeline.rows import to_ndjson
from pipeline.schema import STAGED_KINDS
from pipeline.staging import kind_prefix, write_manifest
from transforms.api import NAMESPACE


def _after(row: object, _finished: list) -> object:
    return row


class WriteStaging(beam.PTransform):
    """Writes one kind's rows (or lists of rows, `batched`) as NDJSON; outputs the final file names.

    `after`: another write's file names. The rows are held until that write is final, which is how
    a wallet's outcome is never staged before its trades are.
    """

    def __init__(
        self,
        config: BackfillConfig,
        kind: str,
        batched: bool = False,
        after: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        if kind not in STAGED_KINDS:
            raise ValueError(f"unknown staging kind {kind!r}")
        self._prefix = kind_prefix(config.staging_root, config.run_id, kind)
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
    def __init__(self, config: BackfillConfig) -> None:
        self._config = config

    def process(self, run_id: str, **files: list[str]) -> Iterator[dict]:
        config = self._config
        write_manifest(config.staging_root, run_id, files)
        report = commit_staged_run(config.warehouse, config.tables, config.staging_root, run_id)
        for name in ("trades_inserted", "markets_merged", "events_merged"):
            Metrics.counter(NAMESPACE, f"committed_{name}").inc(report.get(name) or 0)
        yield report


class CommitRun(beam.PTransform):
    """Runs once, after every staging write is final: manifest, warehouse transaction, marker."""

    def __init__(self, config: BackfillConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, staged: dict):
        pipeline = next(iter(staged.values())).pipeline
        side_inputs = {kind: AsList(files) for kind, files in staged.items()}
        return (
            pipeline
            | "RunId" >> beam.Create([self._config.run_id])
            | "Commit" >> beam.ParDo(_CommitFn(self._config), **side_inputs)
        )
