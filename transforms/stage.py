"""WriteStaging and CommitRun: rows become NDJSON staging, then one commit, last of all.

A run whose source looked gone still commits what was complete, then fails the job (RunStopped):
the work done is kept, and the failure is not mistaken for a success.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import failpoints
from pipeline.rows import json_line, to_ndjson
from pipeline.staging import CommitOutcome, RunStaging, commit_staged_run
from pipeline.warehouse import CommitError, WarehouseRef
from transforms.metrics import NAMESPACE
from transforms.run_health import RunStopped

LEASE_GIVEN_BACK = "lease_given_back"  # the counter the commit step sets once it gave it back

log = logging.getLogger(__name__)


def _after(row: object, _finished: list) -> object:
    return row


class _WriteFilesFn(beam.DoFn):
    """Writes each bundle's rows to one new file and outputs its name once the file is whole.

    The file is named at random (`<prefix>-<uuid>.json`), so a bundle the runner retries writes a
    new file instead of touching the first; only the names that a successful bundle outputs reach
    the commit (which lists them in the manifest and loads nothing else), so a file left by a
    failed bundle is never read. A bundle without rows writes no file (WriteToText left an empty
    shard, which the commit step had to list, one match per file, to leave out). This is what
    WriteToText's temporary-then-rename finalisation gave, without its dozen steps per kind in
    the graph (each costs time to build, and to run before the first request).
    """

    def __init__(self, prefix: str, batched: bool) -> None:
        self._prefix, self._batched = prefix, batched
        self._path: str | None = None
        self._handle: Any = None

    def start_bundle(self) -> None:
        self._abandon()  # a bundle that failed on this instance: its file is never listed

    def process(self, row: Any) -> None:
        # Neither path writes NaN or Infinity (json_line refuses them, naming the row).
        line = (to_ndjson(row) if self._batched else json_line(row)) + "\n"
        if self._handle is None:
            self._path = f"{self._prefix}-{uuid.uuid4().hex}.json"
            self._handle = FileSystems.create(self._path, mime_type="application/json")
        self._handle.write(line.encode())

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._handle is None:
            return
        path, handle = self._path, self._handle
        self._path = self._handle = None
        handle.close()  # whole from here on (on gs://, the object exists only now)
        yield GlobalWindows.windowed_value(path, GlobalWindow().max_timestamp())

    def teardown(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        if self._handle is None:
            return
        path, handle = self._path, self._handle
        self._path = self._handle = None
        with contextlib.suppress(Exception):  # litter at worst: no manifest ever names it
            handle.close()
            FileSystems.delete([path])


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
        return rows | "Write" >> beam.ParDo(_WriteFilesFn(self._prefix, self._batched))


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
        # Every file named holds rows (a writer that got none wrote none), so a run that staged
        # nothing reaches the warehouse as "nothing to commit" with no file to list or load.
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
            return
        # `run` need not give it back once more (a warehouse session, the last thing before exit).
        Metrics.counter(NAMESPACE, LEASE_GIVEN_BACK).inc()


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
