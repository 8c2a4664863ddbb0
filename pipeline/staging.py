"""The staging layout of a run, through Beam's FileSystems so that a folder and gs:// work alike.

    <staging_root>/<run_id>/{trades,markets,events,outcomes,rejects}/part-*.json   (the graph writes)
    <staging_root>/<run_id>/_STAGED.json    every final file, written once all writes are final
    <staging_root>/<run_id>/_COMMITTED.json written after the warehouse transaction committed

A run with _STAGED.json and without _COMMITTED.json is what start-up recovery commits. Staging files
are kept after the commit, so any load can be replayed; only an explicit retention step deletes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.schema import STAGED_KINDS

MANIFEST = "_STAGED.json"
COMMITTED = "_COMMITTED.json"


def run_dir(staging_root: str, run_id: str) -> str:
    return f"{staging_root.rstrip('/')}/{run_id}"


def kind_prefix(staging_root: str, run_id: str, kind: str) -> str:
    return f"{run_dir(staging_root, run_id)}/{kind}/part"


def _write_json(path: str, payload: Any) -> None:
    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(json.dumps(payload, indent=1, sort_keys=True).encode())


def _read_json(path: str) -> Any:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode())


def write_manifest(staging_root: str, run_id: str, files: Mapping[str, Sequence[str]]) -> None:
    unknown = set(files) - set(STAGED_KINDS)
    if unknown:
        raise ValueError(f"unknown staging kinds {sorted(unknown)}")
    manifest = {
        "run_id": run_id,
        "files": {kind: sorted(files.get(kind, [])) for kind in STAGED_KINDS},
    }
    _write_json(f"{run_dir(staging_root, run_id)}/{MANIFEST}", manifest)


def read_manifest(staging_root: str, run_id: str) -> dict[str, list[str]]:
    path = f"{run_dir(staging_root, run_id)}/{MANIFEST}"
    if not FileSystems.exists(path):
        raise FileNotFoundError(
            f"run {run_id} has no {MANIFEST} under {staging_root}: not fully staged"
        )
    manifest = _read_json(path)
    if manifest.get("run_id") != run_id:
        raise ValueError(f"{path} belongs to run {manifest.get('run_id')!r}, not {run_id!r}")
    return {kind: list(manifest["files"].get(kind, [])) for kind in STAGED_KINDS}


def mark_committed(staging_root: str, run_id: str, report: Mapping[str, Any]) -> None:
    _write_json(f"{run_dir(staging_root, run_id)}/{COMMITTED}", dict(report))


def is_committed(staging_root: str, run_id: str) -> bool:
    return FileSystems.exists(f"{run_dir(staging_root, run_id)}/{COMMITTED}")


def _match(pattern: str) -> list[str]:
    try:
        results = FileSystems.match([pattern])
    except Exception:  # some filesystems raise BeamIOError when nothing matches
        return []
    return [meta.path for result in results for meta in result.metadata_list]


def has_files(staging_root: str, run_id: str) -> bool:
    return bool(_match(f"{run_dir(staging_root, run_id)}/**"))


def staged_run_ids(staging_root: str) -> list[str]:
    """Runs whose staging is complete (committed or not), oldest run id first."""
    paths = _match(f"{staging_root.rstrip('/')}/*/{MANIFEST}")
    return sorted(path.rstrip("/").split("/")[-2] for path in paths)
