"""WriteStaging and CommitRun: rows become NDJSON staging, then one commit, last of all.

A run whose source looked gone still commits what was complete, then fails the job (RunStopped):
the work done is kept, and the failure is not mistaken for a success.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList

from pipeline import failpoints
from pipeline.rows import to_ndjson
from pipeline.staging import CommitOutcome, RunStaging, commit_staged_run
from pipeline.warehouse import CommitError, WarehouseRef
from transforms.metrics import NAMESPACE
from transforms.run_health import RunStopped

log = logging.getLogger(__name__)


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


def _non_empty(paths: list[str]) -> list[str]:
    """The files that hold rows: a writer that got none still leaves an empty shard, and a run
    whose every file is empty must reach the warehouse as "nothing to commit" (no load job)."""
    if not paths:
        return []
    sizes = {
        meta.path: meta.size_in_bytes
        for result in FileSystems.match(list(paths))
        for meta in result.metadata_list
    }
    return [path for path in paths if sizes.get(path, 1) > 0]


def _one_reason(run_failures: list[str]) -> str:
    """The run's reasons to stop, for one line: each kind once (a worker's streak, the run's
    wallets, its markets, its events: the text before the first colon), the others of a kind only
    counted, since every worker that stopped sends its own."""
    kinds: dict[str, list[str]] = {}
    for reason in sorted(set(run_failures)):
        kinds.setdefault(reason.split(":", 1)[0], []).append(reason)
    return "; also ".join(
        f"{first}; {len(others)} more worker(s) stopped alike" if others else first
        for first, *others in kinds.values()
    )


class _CommitFn(beam.DoFn):
    def __init__(self, staging: RunStaging, warehouse: WarehouseRef, lease_holder: str) -> None:
        self._staging, self._warehouse, self._lease_holder = staging, warehouse, lease_holder

    def process(
        self, run_id: str, run_failures: list[str], **files: list[str]
    ) -> Iterator[CommitOutcome]:
        files = {kind: _non_empty(paths) for kind, paths in files.items()}
        self._staging.write_manifest(files)  # from here on, start-up recovery can commit the run
        failpoints.reached(failpoints.STAGED)
        try:
            outcome = commit_staged_run(self._staging, self._warehouse, files)
        finally:  # the run's last act, landed or not: the next run may start
            self._release_lease()
        if outcome.report is None:
            raise CommitError(outcome.error)
        for name in ("trades_inserted", "markets_merged", "events_merged"):
            Metrics.counter(NAMESPACE, f"committed_{name}").inc(getattr(outcome.report, name))
        if run_failures:  # committed first: the complete wallets are kept, then the job fails
            raise RunStopped(run_id, _one_reason(run_failures), outcome.report.wallets_done)
        yield outcome

    def _release_lease(self) -> None:
        if not self._lease_holder:
            return
        try:
            with self._warehouse.open() as warehouse:
                warehouse.release_lease(self._lease_holder)
        except Exception as exc:  # the lease expires by itself; the commit's outcome matters more
            log.warning("could not give back the lease of %s: %s", self._lease_holder, exc)


class CommitRun(beam.PTransform):
    """Runs once, after every staging write is final: manifest, warehouse transaction, marker.

    `run_failures`: why the run must fail (its wallets' source, or its lookups', looked gone); if
    any, the job fails with RunStopped after the commit. `lease_holder`: the run's hold on the
    warehouse (pipeline.lease), given back once the commit is over, landed or not.
    """

    def __init__(
        self,
        staging: RunStaging,
        warehouse: WarehouseRef,
        run_failures: beam.PCollection,
        lease_holder: str = "",
    ) -> None:
        super().__init__()
        self._staging, self._warehouse = staging, warehouse
        self._run_failures, self._lease_holder = run_failures, lease_holder

    def expand(self, staged: dict):
        pipeline = next(iter(staged.values())).pipeline
        side_inputs = {kind: AsList(files) for kind, files in staged.items()}
        side_inputs["run_failures"] = AsList(self._run_failures)
        return (
            pipeline
            | "RunId" >> beam.Create([self._staging.run_id])
            | "Commit"
            >> beam.ParDo(
                _CommitFn(self._staging, self._warehouse, self._lease_holder), **side_inputs
            )
        )
