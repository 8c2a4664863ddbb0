"""Start-up's recovery listing as runs pile up: the old glob over the whole staging root vs the
staging index (`pipeline.staging.runs_to_recover`), side by side, on a local folder and on gs://
(Beam's real GCS filesystem against gcp-storage-emulator).

The staging root holds N committed runs (N = 10, 100, 1000), each laid out as a real run leaves it
(`_CLAIMED`, every kind in PARTS part files, `_STAGED.json`, `_COMMITTED.json`, and its committed
index entry), plus one staged run not committed yet, which both ways must find. The warehouse's
committed run ids are all N, as its runs table would hold them. Each way runs REPEATS times; the
median wall time is reported, with the HTTP requests one start-up sends on gs://. Also timed once
per backend: the one-time index build of a root staged by an older version (locally at the largest
N; on the emulator at the smallest, as each write there rewrites a metadata file of every object).

Times on the emulator are not GCS's (a loopback server, no network latency, and it answers a listing
in one page where GCS pages every 1,000 objects): compare the columns, old ÷ new, not the absolute
figures.

    .venv/bin/python bench/startup.py [--runs 10 --runs 100 --runs 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from pipeline import staging
from pipeline.schema import STAGED_KINDS
from tests.gcs_emulator import StorageEmulator

RUNS = (10, 100, 1000)
PARTS = 2
REPEATS = 3
BUCKET = "bench-startup"
PENDING = "pending"
RESULTS = common.REPO / "bench" / "results" / "startup.json"


def old_runs_to_recover(root: str, committed_run_ids: Collection[str]) -> list[str]:
    """What start-up did before the index: one glob over `<root>/*/_*.json` (on gs://, a listing
    of every object under the root), then a manifest read per run not yet committed."""
    found: dict[str, set[str]] = {}
    for meta in staging._match_metadata(f"{root}/*/_*.json"):
        run_id, name = meta.path.split("/")[-2:]
        found.setdefault(run_id, set()).add(name)
    runs = []
    for run_id, names in sorted(found.items()):
        if staging.MANIFEST not in names or staging.REFUSED in names:
            continue
        if staging.COMMITTED in names and run_id in committed_run_ids:
            continue
        staging.RunStaging(root, run_id).read_manifest()
        runs.append(run_id)
    return runs


def new_runs_to_recover(root: str, committed_run_ids: Collection[str]) -> list[str]:
    return [run.run_id for run in staging.runs_to_recover(root, committed_run_ids)]


class Store:
    """Writes objects under a root fast (threads; the GCS client on gs://, files locally): the
    bench lays out the runs as the pipeline would, without timing how it writes them."""

    def __init__(self, root: str, bucket: storage.Bucket | None) -> None:
        self.root, self.bucket = root, bucket

    def put_all(self, objects: dict[str, str]) -> None:
        with ThreadPoolExecutor(8 if self.bucket else 4) as pool:
            list(pool.map(lambda item: self.put(*item), objects.items()))

    def put(self, path: str, text: str) -> None:
        if self.bucket is not None:
            name = path.removeprefix(f"gs://{BUCKET}/")
            self.bucket.blob(name).upload_from_string(text)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)


def run_objects(root: str, run_id: str, committed: bool) -> dict[str, str]:
    """Every object a run leaves: its claim, part files, manifest, marker and index entry."""
    run = staging.RunStaging(root, run_id)
    trade = {"id": f"{run_id}-1", "wallet_address": f"0x{run_id}", "run_id": run_id}
    files = {
        kind: [f"{run.file_prefix(kind)}-{n:05d}-of-{PARTS:05d}.json" for n in range(PARTS)]
        for kind in STAGED_KINDS
    }
    objects = {path: json.dumps(trade) + "\n" for paths in files.values() for path in paths}
    objects[run.claim_file] = "0\n"
    objects[run.manifest] = json.dumps({"run_id": run_id, "files": files})
    if committed:
        objects[run.marker] = json.dumps({"run_id": run_id, "already_committed": False})
        entry = f"{root}/{staging.INDEX}/committed/20261101T000000Z_{run_id}.json"
        objects[entry] = "{}"
    else:
        objects[run.index_entry] = json.dumps({"run_id": run_id, "failed_commits": 0})
    return objects


def count_requests() -> tuple[list[str], Callable[[], None]]:
    """Watches every HTTP request of this process (sent unchanged); returns the log and undo."""
    seen: list[str] = []
    send = requests.Session.send

    def watched(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any):
        seen.append(f"{request.method} {urllib.parse.unquote(request.url or '')}")
        return send(self, request, **kwargs)

    requests.Session.send = watched  # type: ignore[method-assign]
    return seen, lambda: setattr(requests.Session, "send", send)


def measure(name: str, way: Callable[[str, Collection[str]], list[str]], root: str, ids: set[str]):
    seen, undo = count_requests()
    times = []
    try:
        for _ in range(REPEATS):
            seen.clear()
            start = time.perf_counter()
            found = way(root, ids)
            times.append(time.perf_counter() - start)
    finally:
        undo()
    if found != [PENDING]:
        raise SystemExit(f"{name} found {found}, not [{PENDING!r}]")
    return statistics.median(times), len(seen)


def layout(root: str, size: int) -> dict[str, str]:
    """A staging root as the pipeline leaves it after `size` committed runs and one staged run
    not committed yet (the index built)."""
    objects = run_objects(root, PENDING, committed=False)
    objects[f"{root}/{staging.INDEX}/staged/{staging.INDEX_BUILT}"] = "{}"
    for n in range(size):
        objects.update(run_objects(root, f"run-{n:05d}", committed=True))
    return objects


def seed_gcs(emulator: StorageEmulator, sizes: list[int]) -> None:
    """Uploads one root of one committed run through the GCS client, then (emulator stopped)
    copies its objects into one root per size, `gs://BUCKET/n<size>`, by writing the emulator's
    store. gcp-storage-emulator rewrites a metadata file of every object at each upload, so
    uploading 14,000 objects one by one takes longer than the bench; what is measured (listing
    and reading through Beam) is then served by the real emulator, from the store as uploads
    would have left it. A cloned object keeps its template's bytes: nothing reads them."""
    template, run = "tpl", "run-00000"
    emulator.start()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(emulator.credentials_file())
    client = storage.Client(project="bench", credentials=AnonymousCredentials())
    Store(f"gs://{BUCKET}/{template}", client.create_bucket(BUCKET)).put_all(
        layout(f"gs://{BUCKET}/{template}", 1)
    )
    emulator.stop()
    store = emulator.objects_root / BUCKET
    meta_path = emulator.objects_root / ".meta"
    meta = json.loads(meta_path.read_text())
    objects = meta["objects"][BUCKET]
    originals = {name: obj for name, obj in objects.items() if name.startswith(f"{template}/")}
    for size in sizes:
        for n in range(size):
            run_id = f"run-{n:05d}"
            for name, obj in originals.items():
                if run not in name and n > 0:
                    continue  # the root's own objects (pending run, BUILT): once

                def moved(text: str, size: int = size, run_id: str = run_id) -> str:
                    return text.replace(f"{template}/", f"n{size}/").replace(run, run_id)

                clone = moved(name)
                objects[clone] = json.loads(moved(json.dumps(obj)))
                (store / clone).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(store / name, store / clone)
    meta_path.write_text(json.dumps(meta))


def bench_root(backend: str, root: str, size: int, ids: set[str]) -> dict[str, Any]:
    old_s, old_requests = measure("old", old_runs_to_recover, root, ids)
    new_s, new_requests = measure("new", new_runs_to_recover, root, ids)
    row = {
        "backend": backend,
        "committed_runs": size,
        "objects": size * (3 + PARTS * len(STAGED_KINDS) + 1),
        "old_glob_s": round(old_s, 4),
        "new_index_s": round(new_s, 4),
        "old_over_new": round(old_s / new_s, 1),
        "old_http_requests": old_requests if backend == "gcs" else None,
        "new_http_requests": new_requests if backend == "gcs" else None,
    }
    print_row(row)
    return row


def one_time_build(backend: str, root: str, ids: set[str], row: dict[str, Any]) -> None:
    """Times the index build of a root staged before the index existed (its index deleted)."""
    if backend == "gcs":
        client = storage.Client(project="bench", credentials=AnonymousCredentials())
        prefix = f"{root.removeprefix(f'gs://{BUCKET}/')}/{staging.INDEX}/"
        for blob in client.bucket(BUCKET).list_blobs(prefix=prefix):
            blob.delete()
    else:
        shutil.rmtree(Path(root) / staging.INDEX)
    start = time.perf_counter()
    staging.ensure_index(root, ids)
    row["one_time_index_build_s"] = round(time.perf_counter() - start, 3)
    print(
        f"  {backend}: one-time index build at {row['committed_runs']} runs: "
        f"{row['one_time_index_build_s']} s"
    )


HEADER = f"{'backend':8} {'runs':>6} {'objects':>8} {'old glob s':>11} {'index s':>9} {'old/new':>8} {'requests old/new':>17}"


def print_row(row: dict[str, Any]) -> None:
    calls = (
        f"{row['old_http_requests']}/{row['new_http_requests']}"
        if row["old_http_requests"] is not None
        else "-"
    )
    print(
        f"{row['backend']:8} {row['committed_runs']:>6} {row['objects']:>8} "
        f"{row['old_glob_s']:>11.4f} {row['new_index_s']:>9.4f} {row['old_over_new']:>8} {calls:>17}"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR)  # the one-time build's warning is in the table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, action="append", help="committed runs (repeatable)")
    args = parser.parse_args(argv)
    sizes = args.runs or list(RUNS)
    print(HEADER)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as workdir:
        for backend in ("local", "gcs"):
            if backend == "gcs":
                emulator = StorageEmulator(Path(workdir) / "gcs")
                seed_gcs(emulator, sizes)
                emulator.start()  # stopping it stopped its token stub too: a fresh one
                os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(emulator.credentials_file())
            for size in sizes:
                ids = {f"run-{n:05d}" for n in range(size)}
                if backend == "local":
                    root = f"{workdir}/local/n{size}"
                    Store(root, None).put_all(layout(root, size))
                else:
                    root = f"gs://{BUCKET}/n{size}"
                rows.append(bench_root(backend, root, size, ids))
            # On the emulator every write rewrites a metadata file of all its objects (~17,000
            # here): there the build is timed on the smallest root, locally on the largest.
            small = min(sizes)
            if backend == "gcs":
                root, ids = f"gs://{BUCKET}/n{small}", {f"run-{n:05d}" for n in range(small)}
            one_time_build(backend, root, ids, rows[-len(sizes) if backend == "gcs" else -1])
            if backend == "gcs":
                emulator.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": common.rerun("startup.py", *(f"--runs={n}" for n in sizes)),
                "repeats": REPEATS,
                "parts_per_kind": PARTS,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(common.REPO)}")
    print(common.rerun("startup.py", *(f"--runs={n}" for n in sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
