"""A run's staging and its commit: `RunStaging` knows every path of a run, `commit_staged_run` lands it.

    <staging_root>/<run_id>/{trades,markets,events,outcomes,rejects}/part-*.json   (the graph writes)
    <staging_root>/<run_id>/_STAGED.json    every final file, written once all writes are final
    <staging_root>/<run_id>/_COMMITTED.json written after the warehouse transaction committed

A run with _STAGED.json and without _COMMITTED.json is what start-up recovery commits. Staging files
are kept after the commit, so any load can be replayed; only an explicit retention step deletes them.
Paths go through Beam's FileSystems, so that a folder and gs:// work alike. The graph's last step,
start-up recovery and `python -m pipeline commit` all commit through `commit_staged_run`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.schema import STAGED_KINDS
from pipeline.warehouse import CommitError, CommitReport, WarehouseRef

log = logging.getLogger(__name__)

MANIFEST = "_STAGED.json"
COMMITTED = "_COMMITTED.json"


def _write_json(path: str, payload: Any) -> None:
    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(json.dumps(payload, indent=1, sort_keys=True).encode())


def _read_json(path: str) -> Any:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode())


def _match(pattern: str) -> list[str]:
    try:
        results = FileSystems.match([pattern])
    except Exception:  # some filesystems raise BeamIOError when nothing matches
        return []
    return [meta.path for result in results for meta in result.metadata_list]


@dataclass(frozen=True)
class RunStaging:
    """One run's staging: its folders, file prefixes, manifest and commit marker (picklable)."""

    root: str
    run_id: str

    @property
    def folder(self) -> str:
        return f"{self.root.rstrip('/')}/{self.run_id}"

    def kind_folder(self, kind: str) -> str:
        """Where one kind's files go (with a trailing '/'), e.g. `<root>/<run_id>/trades/`."""
        if kind not in STAGED_KINDS:
            raise ValueError(f"unknown staging kind {kind!r}")
        return f"{self.folder}/{kind}/"

    def file_prefix(self, kind: str) -> str:
        """The prefix a writer of one kind names its files with (`.../trades/part`)."""
        return f"{self.kind_folder(kind)}part"

    @property
    def manifest(self) -> str:
        return f"{self.folder}/{MANIFEST}"

    @property
    def marker(self) -> str:
        return f"{self.folder}/{COMMITTED}"

    def write_manifest(self, files: Mapping[str, Sequence[str]]) -> None:
        unknown = set(files) - set(STAGED_KINDS)
        if unknown:
            raise ValueError(f"unknown staging kinds {sorted(unknown)}")
        manifest = {
            "run_id": self.run_id,
            "files": {kind: sorted(files.get(kind, [])) for kind in STAGED_KINDS},
        }
        _write_json(self.manifest, manifest)

    def read_manifest(self) -> dict[str, list[str]]:
        if not FileSystems.exists(self.manifest):
            raise FileNotFoundError(
                f"run {self.run_id} has no {MANIFEST} under {self.root}: not fully staged"
            )
        manifest = _read_json(self.manifest)
        if manifest.get("run_id") != self.run_id:
            raise ValueError(
                f"{self.manifest} belongs to run {manifest.get('run_id')!r}, not {self.run_id!r}"
            )
        return {kind: list(manifest["files"].get(kind, [])) for kind in STAGED_KINDS}

    def mark_committed(self, report: CommitReport) -> None:
        _write_json(self.marker, dataclasses.asdict(report))

    def is_committed(self) -> bool:
        return FileSystems.exists(self.marker)

    def has_files(self) -> bool:
        return bool(_match(f"{self.folder}/**"))


def staged_runs(staging_root: str) -> list[RunStaging]:
    """Runs whose staging is complete (committed or not), oldest run id first."""
    paths = _match(f"{staging_root.rstrip('/')}/*/{MANIFEST}")
    run_ids = sorted(path.rstrip("/").split("/")[-2] for path in paths)
    return [RunStaging(staging_root, run_id) for run_id in run_ids]


@dataclass(frozen=True)
class CommitOutcome:
    """What committing one staged run came to: the warehouse's report, or the error that left
    the run uncommitted (production untouched, the staging kept for a later commit)."""

    run_id: str
    report: CommitReport | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def already_committed(self) -> bool:
        return self.report is not None and self.report.already_committed

    @property
    def committed(self) -> bool:
        """Landed now, by this commit."""
        return self.report is not None and not self.report.already_committed


def commit_staged_run(
    staging: RunStaging,
    warehouse: WarehouseRef,
    files: Mapping[str, Sequence[str]] | None = None,
) -> CommitOutcome:
    """Lands one staged run in one warehouse transaction, then writes its commit marker.

    `files`: the run's staged files by kind (the graph passes what it wrote); None reads them
    from the run's manifest (recovery). Idempotent: a run the warehouse holds is not landed twice.
    """
    if files is None:
        files = staging.read_manifest()
    try:
        with warehouse.open() as opened:
            report = opened.commit_run(staging.run_id, files)
    except CommitError as exc:
        log.error("run %s stays uncommitted: %s", staging.run_id, exc)
        return CommitOutcome(staging.run_id, error=str(exc))
    staging.mark_committed(report)
    log.info("run %s committed: %s", staging.run_id, report)
    return CommitOutcome(staging.run_id, report)
