"""A run's staging and its commit: `RunStaging` knows every path of a run, `commit_staged_run` lands it.

    <staging_root>/<run_id>/_CLAIMED         the run id is taken, and for which warehouse (created first,
                                             exclusively where it can be)
    <staging_root>/<run_id>/{trades,markets,events,outcomes,rejects}/part-*.json   (the graph writes)
    <staging_root>/<run_id>/_STAGED.json    every final file, written once all writes are final
    <staging_root>/<run_id>/_COMMITTED.json written after the warehouse transaction committed
    <staging_root>/<run_id>/_REFUSED.json   the staging contradicts itself: never committed, parked

A run with _STAGED.json and without _COMMITTED.json or _REFUSED.json is what start-up recovery
commits. Each of those three files means something by its presence, so each is written whole or not
at all: to a temporary name in the same folder, then renamed (a rename on a local disk, a copy of a
whole object on gs://). A crash can still leave a temporary file behind; nothing reads those. A file
that is torn anyway (written by an older version, or by hand) is never a crash at start-up: a bad
manifest means "not staged", a bad marker "not committed" (re-committing is safe: the warehouse's
runs table knows the run and the commit only rewrites the marker).

Start-up must stay fast however many runs the root holds (on gs:// a glob over `<root>/*/...`
lists every object of every run ever written, and the Flex Template launcher has a deadline). So
start-up lists only a flat index, whose folder name holds a '.', which no run id can (run ids are
`[A-Za-z0-9_-]{1,64}`):

    <staging_root>/_index.d/staged/BUILT               the index holds every run staged before it
    <staging_root>/_index.d/staged/<run_id>.<key>.json staged, not committed yet: what recovery lists
    <staging_root>/_index.d/parked/<run_id>.json       given up on (refused, not staged, or failed
                                                       its commit MAX_FAILED_COMMITS times): why
    <staging_root>/_index.d/committed/<UTC>_<run_id>.<key>.json   committed at <UTC>: what retention
                                                       lists
    <staging_root>/_index.d/warehouses/<key>.json      a warehouse that has claimed runs here
    <staging_root>/_index.d/claimed/<UTC>_<run_id>.<key>.json   claimed at <UTC>, no manifest yet:
                                                       removed once the manifest is written (or
                                                       the claim given back); what start-up's
                                                       sweep of abandoned runs lists
    <staging_root>/_index.d/claimed/BUILT              (local roots) the folders claimed before
                                                       `claimed/` existed are in it

One staging root may serve several warehouses (the default `./staging` does, for every local
DuckDB file): each run records its warehouse (`warehouse_identity`) in its claim, and `<key>`, a
short hash of that identity, in the names of its index entries, so start-up and retention tell
their own runs from the others' by the listing alone, reading no file of a run that is not theirs.
Entries written before runs recorded their warehouse have no `.<key>` (see `runs_to_recover`).

A run's `staged` entry is written just before its manifest and removed once its marker is written,
so recovery lists as many entries as there are uncommitted runs. Runs staged by older versions have
no entry: while `BUILT` is missing, start-up scans the whole root once (the old glob) and writes
their entries, then `BUILT`.

Before a commit touches the warehouse it checks that the run is the warehouse's (a run recorded
for another warehouse is never committed into this one), then the staging against itself: every wallet whose
outcome says it fetched N trades must have exactly N staged trade lines. A run that fails the check
is refused and parked (_REFUSED.json): production is untouched, its wallets stay pending and the
next run fetches them again. A run whose commit fails in the warehouse is retried by the next
start-ups, and parked once MAX_FAILED_COMMITS of them failed (`commit --run_id` still lands it).
Staging files are kept after the commit, so any load can be replayed; only retention
(`delete_expired_staging`) deletes them. A run killed before its manifest left part files no run
will ever read: start-up deletes those of its own warehouse once their claim is a day old
(`delete_abandoned_staging`), found from `claimed/`, never by listing the root. Paths go through Beam's FileSystems, so that a folder
and gs:// work alike. The graph's last step, start-up recovery and `python -m pipeline commit` all
commit through `commit_staged_run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import failpoints
from pipeline.lease import WarehouseBusy
from pipeline.schema import STAGED_KINDS
from pipeline.warehouse import (
    CommitError,
    CommitReport,
    TableNames,
    WarehouseRef,
    parse_warehouse_spec,
)

log = logging.getLogger(__name__)

MANIFEST = "_STAGED.json"
COMMITTED = "_COMMITTED.json"
REFUSED = "_REFUSED.json"
CLAIMED = "_CLAIMED"
# What production holds, lacks and found missing, read once at start-up for a run of several
# processes (transforms.lookups.read_plan_rows): each process reads it here, not the warehouse.
LOOKUP_PLAN = "lookup_plan.json.gz"
MISMATCHES_NAMED = 5  # wallets a refusal names (of however many disagree)
INDEX = "_index.d"  # the '.' keeps it from ever being a run id
INDEX_BUILT = (
    "BUILT"  # in `staged/`, so one listing gives it and the entries; never `<run_id>.json`
)
INDEX_REFRESH_S = 86_400.0  # BUILT is rewritten daily, so a bucket age rule never deletes it
INDEX_BUILD_THREADS = 8  # the one-time build writes one entry per run: in parallel on gs://
MAX_FAILED_COMMITS = 3  # start-ups that try to commit an earlier run before it is parked
RETENTION_RUNS_PER_START = 50  # staging folders one start-up deletes at most
# A claim this old without a manifest is a run that died before staging (never one still
# writing): no run without a budget is expected to live longer, and a budgeted one's lease (its
# TTL) is taken as the bound when it is longer. A run whose process is alive on this machine is
# kept whatever its age.
ABANDONED_AFTER_S = 86_400.0
_STAMP = "%Y%m%dT%H%M%SZ"  # committed entries' names start with the commit time in UTC
KEY_CHARS = 16  # hex digits of a warehouse's key in entry names: 64 bits, no collision in practice


class StagingError(ValueError):
    """A run's staging cannot be used as it is: no or a torn manifest, or a refused run."""


class StagingRefused(StagingError):
    """The staging contradicts itself (short or long trades, unreadable outcomes): committing it
    would mark wallets done whose trades production would not hold."""


class RunIdTaken(StagingError):
    """Another run already claimed this run id (or left staging under it)."""


def _write_json(path: str, payload: Any, failpoint: str | None = None) -> None:
    """Writes `path` whole or not at all: a temporary name in the same folder, then a rename.

    The temporary name does not end in `.json`, so no listing of state files ever sees it.
    `failpoint`: the instant between the two, where tests kill the process.
    """
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with FileSystems.create(temporary, mime_type="application/json") as handle:
        handle.write(json.dumps(payload, indent=1, sort_keys=True).encode())
    if failpoint is not None:
        failpoints.reached(failpoint)
    try:
        FileSystems.rename([temporary], [path])
    except Exception:
        _delete_quietly(temporary)
        raise


def _delete_quietly(path: str) -> None:
    try:
        FileSystems.delete([path])
    except Exception:  # the temporary file is harmless where it stays
        log.warning("could not delete the temporary file %s", path)


def _read_json(path: str) -> Any:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return json.loads(handle.read().decode())


def _match(pattern: str) -> list[str]:
    return [meta.path for meta in _match_metadata(pattern)]


def _match_metadata(pattern: str) -> list[Any]:
    """FileMetadata (path, size, last_updated_in_seconds) of what `pattern` matches, from one
    listing of the pattern's fixed prefix (on gs://, every object under that prefix)."""
    try:
        results = FileSystems.match([pattern])
    except Exception:  # some filesystems raise BeamIOError when nothing matches
        return []
    return [meta for result in results for meta in result.metadata_list]


def _delete_if_there(paths: Sequence[str]) -> None:
    """Deletes those of `paths` that exist (a local delete of a missing file raises)."""
    there = [path for path in paths if FileSystems.exists(path)]
    if there:
        FileSystems.delete(there)


def _write_empty(path: str) -> None:
    """An object whose presence and name say everything: it cannot be torn, so no rename."""
    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(b"{}")


def _index(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), INDEX, *parts])


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line of a staged file, streamed."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def warehouse_identity(ref: WarehouseRef) -> str:
    """The warehouse a run belongs to, as one string that two spellings of it agree on.

    `duckdb:` and the file's resolved absolute path (`wh.duckdb`, `./wh.duckdb` and a symlink to
    it are one warehouse; the file need not exist yet), or `bigquery:PROJECT.DATASET` as given
    (BigQuery names are exact). The table names are part of it when they are not the defaults:
    two sets of tables in one file or dataset are two warehouses (each has its own runs table,
    checkpoint and trades), and leaving defaults out keeps the common identity short to read.
    """
    kind, target = parse_warehouse_spec(ref.spec)
    if kind == "duckdb":  # as DuckDBWarehouse opens it, then resolved
        target = str(Path(target).expanduser().resolve())
    defaults = TableNames().as_dict()
    changed = [f"{k}={v}" for k, v in sorted(ref.tables.as_dict().items()) if defaults[k] != v]
    return f"{kind}:{target}" + (f" tables {','.join(changed)}" if changed else "")


def warehouse_key(identity: str) -> str:
    """The short, file-name-safe stand-in for a warehouse identity in index entry names."""
    return hashlib.sha256(identity.encode()).hexdigest()[:KEY_CHARS]


def _split_stem(stem: str) -> tuple[str, str | None]:
    """`<run_id>.<key>` -> (run id, key); `<run_id>` (an entry written before runs recorded
    their warehouse) -> (run id, None). A run id never holds a '.'."""
    run_id, _, key = stem.partition(".")
    return run_id, key or None


@dataclass(frozen=True)
class RunStaging:
    """One run's staging: its folders, file prefixes, manifest and markers (picklable)."""

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

    @property
    def refusal(self) -> str:
        return f"{self.folder}/{REFUSED}"

    @property
    def claim_file(self) -> str:
        return f"{self.folder}/{CLAIMED}"

    @property
    def lookup_plan(self) -> str:
        return f"{self.folder}/{LOOKUP_PLAN}"

    def write_lookup_plan(self, rows: Any) -> None:
        """Written by start-up before the graph runs (nothing reads it before it is whole)."""
        with FileSystems.create(
            self.lookup_plan, mime_type="application/json", compression_type=CompressionTypes.GZIP
        ) as handle:
            handle.write(json.dumps(rows, separators=(",", ":")).encode())

    def read_lookup_plan(self) -> Any:
        with FileSystems.open(self.lookup_plan, compression_type=CompressionTypes.GZIP) as handle:
            return json.loads(handle.read().decode())

    @property
    def index_entry(self) -> str:
        """`<root>/_index.d/staged/<run_id>.json`: the run is staged and not committed yet, as
        entries were named before runs recorded their warehouse (`staged_entry` names new ones;
        `staged_entries` finds either)."""
        return _index(self.root, "staged", f"{self.run_id}.json")

    def staged_entry(self, key: str | None) -> str:
        """The run's `staged/` entry for a warehouse key (None: the name without a key)."""
        if key is None:
            return self.index_entry
        return _index(self.root, "staged", f"{self.run_id}.{key}.json")

    def staged_entries(self) -> list[str]:
        """The run's `staged/` entries, keyed or not (normally none or one), by one listing of
        `staged/<run_id>.` (a run id holds no '.', so no other run's entry matches)."""
        return sorted(_match(_index(self.root, "staged", f"{self.run_id}.*json")))

    @property
    def parked_entry(self) -> str:
        """`<root>/_index.d/parked/<run_id>.json`: start-up no longer tries to commit the run."""
        return _index(self.root, "parked", f"{self.run_id}.json")

    # -- claim -----------------------------------------------------------------------------------

    def claim(self, warehouse: str | None = None, holder: str = "") -> None:
        """Takes this run id for one run, or raises RunIdTaken.

        `warehouse` (a `warehouse_identity`) is what the run belongs to: `_CLAIMED` records it,
        the run's index entries carry its key, and only that warehouse's start-up recovers the
        run, only its retention deletes it, and `commit --run_id` lands it nowhere else. It is
        also registered under `_index.d/warehouses/` (once per warehouse), which is how start-up
        knows that the root is shared (see `runs_to_recover`). `holder` (the run's lease holder)
        lets `release_claim` give back only a claim this run made.

        In a local folder the claim is atomic: `_CLAIMED` is created with O_CREAT|O_EXCL, so of
        two runs started with the same id exactly one wins. Beam's FileSystems has no exclusive
        create for gs://: there the claim is check-then-write, and what keeps two runs from
        sharing a warehouse (and so a staging root) at once is the warehouse's run lease.
        """
        if self.has_files():
            raise RunIdTaken(f"run_id {self.run_id} already has staging under {self.root}")
        claimed_at = time.time()
        content = json.dumps(
            {
                "run_id": self.run_id,
                "warehouse": warehouse,
                "holder": holder,
                "pid": os.getpid(),
                "claimed_at": claimed_at,
            },
            sort_keys=True,
        ).encode()
        if "://" in self.root:
            with FileSystems.create(self.claim_file, mime_type="application/json") as handle:
                handle.write(content)
        else:
            os.makedirs(self.folder, exist_ok=True)
            try:
                descriptor = os.open(self.claim_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise RunIdTaken(f"run_id {self.run_id} was claimed by another run") from None
                raise
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
        if warehouse is not None:
            registered = _index(self.root, "warehouses", f"{warehouse_key(warehouse)}.json")
            if not FileSystems.exists(registered):
                _write_json(registered, {"warehouse": warehouse})
            # Until the manifest is written: a kill before it leaves this entry, by which
            # start-up finds the abandoned folder without listing the root.
            _write_empty(self.claimed_entry(claimed_at, warehouse_key(warehouse)))

    def claimed_entry(self, claimed_at: float, key: str) -> str:
        """`_index.d/claimed/<UTC>_<run_id>.<key>.json`: the run claimed at `claimed_at` for the
        warehouse of `key` has no manifest yet. The time in the name sorts the listing oldest
        first and dates the claim without reading it."""
        stamp = dt.datetime.fromtimestamp(claimed_at, dt.UTC)
        return _index(self.root, "claimed", f"{stamp:{_STAMP}}_{self.run_id}.{key}.json")

    def _drop_claimed_entry(self, claim: Mapping[str, Any] | None) -> None:
        """Removes the run's `claimed/` entry (named from its claim): it is staged, or gave its
        id back. A failure leaves an entry the sweep drops once it sees the manifest."""
        if claim is None:
            return
        at, warehouse = claim.get("claimed_at"), claim.get("warehouse")
        if not isinstance(at, int | float) or not isinstance(warehouse, str) or not warehouse:
            return
        try:
            _delete_if_there([self.claimed_entry(float(at), warehouse_key(warehouse))])
        except Exception as exc:
            log.warning("could not remove run %s's claimed index entry: %s", self.run_id, exc)

    def _read_claim(self) -> dict[str, Any] | None:
        """The claim's content, or None: no claim, a claim written before claims were JSON (a
        pid and a time), or one unreadable."""
        # Checked first: on gs:// opening a missing object raises the client's NotFound, which
        # is no OSError; any other error propagates (it says nothing about whose run it is).
        if not FileSystems.exists(self.claim_file):
            return None
        try:
            claim = _read_json(self.claim_file)
        except (OSError, ValueError):  # a pid and a time, as claims were before
            return None
        return claim if isinstance(claim, dict) else None

    def recorded_warehouse(self) -> str | None:
        """The `warehouse_identity` the run claimed its id for; None for a run claimed before
        runs recorded it (or without a claim, as tests stage by hand)."""
        warehouse = (self._read_claim() or {}).get("warehouse")
        return warehouse if isinstance(warehouse, str) and warehouse else None

    def _recorded_key(self) -> str | None:
        warehouse = self.recorded_warehouse()
        return None if warehouse is None else warehouse_key(warehouse)

    def release_claim(self, holder: str) -> bool:
        """Gives the run id back (True) when the run's folder holds nothing but the claim that
        `holder` made: a run whose start-up failed (warehouse, source, options) staged nothing,
        and a run scheduled every 30 minutes against a dead source would otherwise leave 48
        claim-only folders a day. Never deletes a folder that holds anything else (a part file,
        a temporary file, a manifest), nor another run's claim (another holder, or a claim that
        names none: an older one, or one made by hand)."""
        if not holder:
            return False
        names = sorted(_name(path) for path in _match(f"{self.folder}/**"))
        if names not in ([CLAIMED], [CLAIMED, LOOKUP_PLAN]):  # the plan start-up staged
            return False
        claim = self._read_claim()
        if claim is None or claim.get("holder") != holder:
            return False
        if LOOKUP_PLAN in names:
            FileSystems.delete([self.lookup_plan])
        self._drop_claimed_entry(claim)
        FileSystems.delete([self.claim_file])
        if "://" not in self.root:  # on gs:// a folder is only a prefix: gone with its object
            # Something that appeared meanwhile (or an empty kind folder) keeps the folder.
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)
        return True

    # -- manifest ----------------------------------------------------------------------------------

    def write_manifest(self, files: Mapping[str, Sequence[str]]) -> None:
        unknown = set(files) - set(STAGED_KINDS)
        if unknown:
            raise ValueError(f"unknown staging kinds {sorted(unknown)}")
        # The graph's commit step knows only the run's folder: the claim says whose run it is.
        claim = self._read_claim()
        warehouse = (claim or {}).get("warehouse")
        warehouse = warehouse if isinstance(warehouse, str) and warehouse else None
        manifest = {
            "run_id": self.run_id,
            "warehouse": warehouse,
            "files": {kind: sorted(files.get(kind, [])) for kind in STAGED_KINDS},
        }
        # The index entry first: a crash between the two leaves an entry without a manifest,
        # which start-up parks as "not staged"; the other order could hide a staged run from it.
        # A retried write keeps the entry's count of failed commits.
        if not self.staged_entries():
            _write_json(
                self.staged_entry(None if warehouse is None else warehouse_key(warehouse)),
                {"run_id": self.run_id, "warehouse": warehouse, "failed_commits": 0},
            )
        failpoints.reached(failpoints.INDEXED)
        _write_json(self.manifest, manifest, failpoints.MANIFEST_WRITTEN)
        self._drop_claimed_entry(claim)  # staged: the `staged/` entry tracks it from here

    def read_manifest(self) -> dict[str, list[str]]:
        """The run's staged files by kind; StagingError (naming the file) when the manifest is
        missing, unreadable, torn, or not this run's."""
        if not FileSystems.exists(self.manifest):
            raise StagingError(
                f"run {self.run_id} has no {MANIFEST} under {self.root}: not fully staged"
            )
        try:
            manifest = _read_json(self.manifest)
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError too
            raise StagingError(f"{self.manifest} is unreadable or torn: {exc}") from None
        if not isinstance(manifest, dict):
            raise StagingError(f"{self.manifest} is not a JSON object: torn or not a manifest")
        if manifest.get("run_id") != self.run_id:
            raise StagingError(
                f"{self.manifest} belongs to run {manifest.get('run_id')!r}, not {self.run_id!r}"
            )
        listed = manifest.get("files")
        if not isinstance(listed, dict) or not all(
            isinstance(paths, list) and all(isinstance(p, str) for p in paths)
            for paths in listed.values()
        ):
            raise StagingError(f"{self.manifest} lists no files by kind: torn or not a manifest")
        return {kind: list(listed.get(kind, [])) for kind in STAGED_KINDS}

    # -- markers -----------------------------------------------------------------------------------

    def mark_committed(
        self, report: CommitReport, now: float | None = None, warehouse: str | None = None
    ) -> None:
        """Writes the marker, then moves the run's index entry to `committed/` (named by the
        time and the key of `warehouse`, the one it was committed into, so retention finds its
        own expired runs from the listing alone): start-up stops listing it. `warehouse` None:
        the one the run recorded, if any."""
        failpoints.reached(failpoints.MARKER_DUE)
        marker = {**dataclasses.asdict(report), "warehouse": warehouse}
        _write_json(self.marker, marker, failpoints.MARKER_WRITTEN)
        failpoints.reached(failpoints.MARKED)
        key = self._recorded_key() if warehouse is None else warehouse_key(warehouse)
        self._index_committed(now, key=key)

    def _index_committed(
        self, now: float | None = None, tidy: bool = True, key: str | None = None
    ) -> None:
        stamp = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
        name = f"{stamp:{_STAMP}}_{self.run_id}" + ("" if key is None else f".{key}")
        _write_empty(_index(self.root, "committed", f"{name}.json"))
        if tidy:  # False: the caller knows the run has no other entry
            _delete_if_there([*self.staged_entries(), self.parked_entry])

    def is_committed(self) -> bool:
        """Whether a whole commit marker of this run is there. A torn or unreadable marker counts
        as not committed (with a warning): committing again is safe, the warehouse's runs table
        answers `already_committed` and the marker is written anew."""
        if not FileSystems.exists(self.marker):
            return False
        try:
            marker = _read_json(self.marker)
        except (OSError, ValueError) as exc:
            log.warning(
                "%s is unreadable or torn (%s): run %s counts as not committed",
                self.marker,
                exc,
                self.run_id,
            )
            return False
        if not isinstance(marker, dict) or marker.get("run_id") != self.run_id:
            log.warning(
                "%s is not run %s's commit marker: it counts as not committed",
                self.marker,
                self.run_id,
            )
            return False
        return True

    def committed_nothing(self) -> bool:
        """Whether the whole marker says every staging file was empty (so the warehouse's runs
        table has no row for the run, and the marker alone records that it is done)."""
        if not self.is_committed():
            return False
        return _read_json(self.marker).get("nothing_to_commit") is True

    def mark_refused(self, reason: str) -> None:
        _write_json(self.refusal, {"run_id": self.run_id, "reason": reason, "at": time.time()})
        self.park(f"refused: {reason}")

    def park(self, reason: str, failed_commits: int = 0) -> None:
        """Start-up stops trying to commit this run: its entry moves from `staged/` to
        `parked/`, with why. Its wallets were never marked done, so later runs fetch them."""
        _write_json(
            self.parked_entry,
            {
                "run_id": self.run_id,
                "reason": reason,
                "failed_commits": failed_commits,
                "at": time.time(),
            },
        )
        _delete_if_there(self.staged_entries())

    def failed_commits(self) -> int:
        """Failed commits recorded in the run's index entry (0 without a whole entry)."""
        entries = self.staged_entries()
        try:
            count = _read_json(entries[0]).get("failed_commits", 0)
        except (IndexError, OSError, ValueError, AttributeError):
            return 0
        return count if isinstance(count, int) and count >= 0 else 0

    def record_failed_commit(self, error: str) -> bool:
        """Counts one failed start-up commit in the run's index entry (keeping its name, so its
        warehouse key); parks the run (True) once it has failed MAX_FAILED_COMMITS times."""
        entries = self.staged_entries()
        entry = entries[0] if entries else self.staged_entry(self._recorded_key())
        failed = self.failed_commits() + 1
        if failed >= MAX_FAILED_COMMITS:
            log.error(
                "run %s failed its commit %d times and is parked (%s); its wallets are fetched "
                "again by later runs, `commit --run_id %s` still lands it by hand",
                self.run_id,
                failed,
                self.parked_entry,
                self.run_id,
            )
            self.park(f"commit failed {failed} times, last: {error}", failed)
            return True
        _write_json(
            entry,
            {
                "run_id": self.run_id,
                "warehouse": self.recorded_warehouse(),
                "failed_commits": failed,
                "last_error": error,
            },
        )
        return False

    def refused_reason(self) -> str | None:
        """Why this run was refused, or None if it was not. The refusal counts by its presence:
        a torn one still parks the run (its wallets are fetched again either way)."""
        if not FileSystems.exists(self.refusal):
            return None
        try:
            reason = _read_json(self.refusal).get("reason")
        except (OSError, ValueError, AttributeError):
            reason = None
        return str(reason) if reason else f"{self.refusal} is there (unreadable)"

    def has_files(self) -> bool:
        return bool(_match(f"{self.folder}/**"))


def _scan_state_files(staging_root: str) -> dict[str, dict[str, float]]:
    """run id -> {name of a state file (`_STAGED.json`, ...): when it was last written}, from one
    listing of the whole root: on gs:// that lists every object of every run ever staged, so
    only the one-time index build and `staged_runs` do it, never an ordinary start-up."""
    found: dict[str, dict[str, float]] = {}
    for meta in _match_metadata(f"{staging_root.rstrip('/')}/*/_*.json"):
        run_id, name = meta.path.rstrip("/").split("/")[-2:]
        if run_id != INDEX:
            found.setdefault(run_id, {})[name] = meta.last_updated_in_seconds
    return found


def _indexed(staging_root: str, state: str) -> list[str]:
    """Run ids with an entry under `_index.d/<state>/`, from one listing of that flat folder."""
    return sorted(
        _name(path)[: -len(".json")] for path in _match(_index(staging_root, state, "*.json"))
    )


def ensure_index(
    staging_root: str, committed_run_ids: Collection[str], now: float | None = None
) -> list[str]:
    """The run ids indexed as staged (not committed yet), of every warehouse, from one listing
    of `_index.d/staged/`; the first time, after building the index (`_staged_index`)."""
    return sorted(_staged_index(staging_root, committed_run_ids, now))


def _staged_index(
    staging_root: str, committed_run_ids: Collection[str], now: float | None = None
) -> dict[str, str | None]:
    """Run id -> warehouse key (None: not recorded) of each run indexed as staged, from one
    listing of `_index.d/staged/`; the first time, after building the index of the runs staged
    before it existed.

    While `_index.d/staged/BUILT` is missing, one full scan of the root (the old glob) gives each
    run with a manifest but no entry its entry: refused -> parked, a whole marker -> committed
    (dated by the marker's last write), else staged (keyed by the warehouse its claim records,
    if it does); then BUILT is written. That is one old-style start-up plus one write per run,
    in parallel. BUILT is rewritten once a day, so that an age rule on the bucket never deletes
    it (which would mean another full scan).
    """
    now = time.time() if now is None else now
    built: float | None = None
    staged: dict[str, str | None] = {}
    for meta in _match_metadata(_index(staging_root, "staged", "*")):
        name = _name(meta.path)
        if name == INDEX_BUILT:
            built = meta.last_updated_in_seconds or 0.0
        elif name.endswith(".json"):
            run_id, key = _split_stem(name[: -len(".json")])
            if key is not None or run_id not in staged:  # a keyed entry says more
                staged[run_id] = key
    if built is not None:
        if now - built > INDEX_REFRESH_S:
            _write_json(_index(staging_root, "staged", INDEX_BUILT), {"refreshed_at": now})
        return staged
    known = set(staged) | set(_indexed(staging_root, "parked"))
    known.update(_split_stem(name[17:])[0] for name in _indexed(staging_root, "committed"))
    writes: list[Callable[[], tuple[str, str | None] | None]] = []
    for run_id, names in sorted(_scan_state_files(staging_root).items()):
        if MANIFEST not in names or run_id in known:
            continue
        run = RunStaging(staging_root, run_id)
        if REFUSED in names:
            writes.append(lambda run=run: run.park(f"refused: {run.refused_reason()}"))
        elif COMMITTED in names and (run_id in committed_run_ids or run.is_committed()):
            at = names[COMMITTED]
            writes.append(
                lambda run=run, at=at: run._index_committed(at, tidy=False, key=run._recorded_key())
            )
        else:
            writes.append(lambda run=run: _index_staged(run))
    with ThreadPoolExecutor(INDEX_BUILD_THREADS) as pool:
        for done in [pool.submit(write) for write in writes]:
            indexed = done.result()  # a failure propagates: BUILT is not written, redone next time
            if indexed is not None:
                staged[indexed[0]] = indexed[1]
    _write_json(_index(staging_root, "staged", INDEX_BUILT), {"built_at": now})
    log.log(
        logging.WARNING if writes else logging.INFO,
        "indexed %d runs staged before %s existed under %s",
        len(writes),
        INDEX,
        staging_root,
    )
    return staged


def _index_staged(run: RunStaging) -> tuple[str, str | None]:
    """Writes the `staged/` entry of a run the one-time scan found (its claim read for its key)."""
    warehouse = run.recorded_warehouse()
    key = None if warehouse is None else warehouse_key(warehouse)
    entry = {"run_id": run.run_id, "warehouse": warehouse, "failed_commits": 0}
    _write_json(run.staged_entry(key), entry)
    return run.run_id, key


def staged_runs(staging_root: str) -> list[RunStaging]:
    """Runs whose staging is complete (a whole manifest) and not refused, committed or not,
    oldest run id first. A torn manifest or a refusal is skipped with a warning naming the file.
    It scans the whole root (every run's state files): for tools, not for start-up."""
    runs = []
    for run_id, names in sorted(_scan_state_files(staging_root).items()):
        run = RunStaging(staging_root, run_id)
        if MANIFEST in names and _usable(run, set(names)):
            runs.append(run)
    return runs


def runs_to_recover(
    staging_root: str, committed_run_ids: Collection[str], warehouse: str | None = None
) -> list[RunStaging]:
    """Runs start-up must commit: staged whole, not refused nor parked, without a whole marker,
    and the warehouse's own (`warehouse`, a `warehouse_identity`; None: every warehouse's, for
    tools).

    Lists only `_index.d/staged/` (after the one-time `ensure_index`), so start-up reads nothing
    of the runs already committed, however many there are, nor of another warehouse's runs: the
    key in an entry's name says whose it is. Those are left as they are (counted in one INFO
    line): their own warehouse's start-up commits them. `committed_run_ids`: what the
    warehouse's runs table holds; an entry left by a commit cut short after its marker is moved
    to `committed/` here. An entry that cannot be committed (refused, no whole manifest, or
    MAX_FAILED_COMMITS failed commits) is parked, with a warning naming why, and not listed again.

    A run staged before runs recorded their warehouse has an entry without a key, and nothing
    says whose it is (its claim holds a pid and a time). It counts as this warehouse's, as it
    always did, unless another warehouse has claimed runs under this root
    (`_index.d/warehouses/`): then the root is shared and a guess could land the run in the
    wrong warehouse, which is worse than not landing it (its wallets were never marked done, so
    they are fetched again), so it is parked with a reason that says how to commit it by hand.
    Why not always park it: most roots serve one warehouse (production's bucket does), and
    there recovering it is right and saves a re-fetch. The one case this cannot tell is the
    first start-up after the upgrade of a root shared by warehouses that have not run since:
    the first to start takes the unkeyed runs, as every start-up did before. The registry costs
    one listing, and only at start-ups that find an unkeyed entry.
    """
    indexed = _staged_index(staging_root, committed_run_ids)
    own = None if warehouse is None else warehouse_key(warehouse)
    if own is not None:
        others = sorted(run_id for run_id, key in indexed.items() if key not in (own, None))
        if others:
            log.info(
                "%d staged runs under %s belong to other warehouses: left to them (%s)",
                len(others),
                staging_root,
                ", ".join(others[:MISMATCHES_NAMED])
                + (", ..." if len(others) > MISMATCHES_NAMED else ""),
            )
        unkeyed = sorted(run_id for run_id, key in indexed.items() if key is None)
        sharing = _other_warehouses(staging_root, own) if unkeyed else []
        for run_id in unkeyed if sharing else ():
            log.warning(
                "run %s was staged before runs recorded their warehouse, and %s is shared with "
                "%s: it is parked (its wallets are fetched again); commit it into its own "
                "warehouse with `commit --run_id %s`",
                run_id,
                staging_root,
                ", ".join(sharing),
                run_id,
            )
            RunStaging(staging_root, run_id).park(
                f"staged before runs recorded their warehouse, under a root shared with "
                f"{', '.join(sharing)}: commit it by hand into its own warehouse"
            )
        indexed = {
            run_id: key
            for run_id, key in indexed.items()
            if key == own or (key is None and not sharing)
        }
    runs = []
    for run_id, key in sorted(indexed.items()):
        run = RunStaging(staging_root, run_id)
        if _recoverable(run, committed_run_ids, own if own is not None else key):
            runs.append(run)
    return runs


def _other_warehouses(staging_root: str, own: str) -> list[str]:
    """The identities of the other warehouses that have claimed runs under the root, from one
    listing of `_index.d/warehouses/` (one small entry per warehouse) and one read of each."""
    others = []
    for path in _match(_index(staging_root, "warehouses", "*.json")):
        if _name(path) == f"{own}.json":
            continue
        try:
            others.append(str(_read_json(path).get("warehouse")))
        except (OSError, ValueError, AttributeError):
            others.append(f"the warehouse of {path} (unreadable)")
    return sorted(others)


def _recoverable(run: RunStaging, committed_run_ids: Collection[str], key: str | None) -> bool:
    if FileSystems.exists(run.marker) and (run.run_id in committed_run_ids or run.is_committed()):
        run._index_committed(key=key)  # committed, and cut short before its entry moved
        return False
    reason = run.refused_reason()
    if reason is not None:
        log.warning(
            "run %s was refused at commit and is parked (%s): %s", run.run_id, run.refusal, reason
        )
        run.park(f"refused: {reason}")
        return False
    # The count of failed commits is read only after a failure (`record_failed_commit`), which
    # parks the run at MAX_FAILED_COMMITS: start-up lists the entries and reads none of them.
    try:
        run.read_manifest()
    except StagingError as exc:
        log.warning(
            "run %s counts as not staged and is parked (its wallets are fetched again): %s",
            run.run_id,
            exc,
        )
        run.park(f"not staged: {exc}")
        return False
    return True


def _usable(run: RunStaging, names: set[str]) -> bool:
    if REFUSED in names:
        log.warning(
            "run %s was refused at commit and is parked (%s): %s",
            run.run_id,
            run.refusal,
            run.refused_reason(),
        )
        return False
    try:
        run.read_manifest()
    except StagingError as exc:
        log.warning(
            "run %s counts as not staged (its wallets are fetched again): %s", run.run_id, exc
        )
        return False
    return True


@dataclass(frozen=True)
class ParkedRun:
    """A run start-up no longer tries to commit, and why; its wallets are fetched again."""

    run_id: str
    reason: str
    failed_commits: int = 0
    parked_at: float | None = None


def parked_runs(staging_root: str) -> list[ParkedRun]:
    """The parked runs (for `status`), from one listing of `_index.d/parked/` and one read per
    parked run. Runs refused before the index existed appear once a start-up has built it."""
    parked = []
    for run_id in _indexed(staging_root, "parked"):
        path = RunStaging(staging_root, run_id).parked_entry
        try:
            entry = _read_json(path)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            parked.append(ParkedRun(run_id, f"{path} is unreadable: {exc}"))
            continue
        failed, at = entry.get("failed_commits"), entry.get("at")
        parked.append(
            ParkedRun(
                run_id,
                str(entry.get("reason")),
                failed if isinstance(failed, int) else 0,
                float(at) if isinstance(at, int | float) else None,
            )
        )
    return parked


@dataclass(frozen=True)
class WaitingRun:
    """A run indexed as staged and not committed yet (for `status`): the next start-up of its
    warehouse commits it. `failed_commits` and `last_error`: the start-ups that tried and failed
    (MAX_FAILED_COMMITS of them park it)."""

    run_id: str
    failed_commits: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class WaitingRuns:
    """What `waiting_runs` found: this warehouse's runs, the count of other warehouses' runs,
    and whether the index is built (before it is, runs staged by older code are not in it)."""

    runs: tuple[WaitingRun, ...]
    others: int
    built: bool


def waiting_runs(
    staging_root: str, committed_run_ids: Collection[str], warehouse: str | None = None
) -> WaitingRuns:
    """The runs staged and not committed yet that start-up will commit, for `status`: one listing
    of `_index.d/staged/` and one read of each of this warehouse's entries (never the root, so
    it stays fast however many runs the root holds); only reads.

    An entry whose run the warehouse's runs table holds (`committed_run_ids`: a commit cut short
    before its entry moved) is not waiting. With `warehouse` (a `warehouse_identity`), another
    warehouse's entries are only counted; an entry without a key (staged by older code) is
    listed, as nothing tells whose it is. An unreadable entry is listed with why."""
    own = None if warehouse is None else warehouse_key(warehouse)
    built, others = False, 0
    found: dict[str, tuple[str, str | None]] = {}
    for path in _match(_index(staging_root, "staged", "*")):
        name = _name(path)
        if name == INDEX_BUILT:
            built = True
            continue
        if not name.endswith(".json"):
            continue  # a temporary file of a write in progress
        run_id, key = _split_stem(name[: -len(".json")])
        if run_id in committed_run_ids:
            continue
        if own is not None and key not in (own, None):
            others += 1
        elif key is not None or run_id not in found:  # a keyed entry says more
            found[run_id] = (path, key)
    runs = []
    for run_id, (path, _key) in sorted(found.items()):
        try:
            entry = _read_json(path)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            runs.append(WaitingRun(run_id, last_error=f"{path} is unreadable: {exc}"))
            continue
        failed, error = entry.get("failed_commits"), entry.get("last_error")
        runs.append(
            WaitingRun(
                run_id,
                failed if isinstance(failed, int) and failed >= 0 else 0,
                str(error) if error else None,
            )
        )
    return WaitingRuns(tuple(runs), others, built)


def delete_expired_staging(
    staging_root: str,
    committed_run_ids: Collection[str],
    older_than_days: float,
    *,
    limit: int = RETENTION_RUNS_PER_START,
    now: float | None = None,
    warehouse: str | None = None,
) -> list[str]:
    """Deletes the staging folders of runs committed more than `older_than_days` ago, oldest
    first, at most `limit` runs per call (so a start-up stays short; the rest go next time).

    Finds them by one listing of `_index.d/committed/`, whose names carry the commit time (a run
    committed again is dated by its latest commit) and the key of the warehouse it was
    committed into: with `warehouse` (a `warehouse_identity`), a run committed into another
    warehouse is never deleted here (its own start-up does it, by its own retention), nor read.
    A run is deleted only if the warehouse's runs table holds it (`committed_run_ids`) or its
    marker says there was nothing to commit (one read each for the others, which are kept); its
    entries go last, so a cut deletion is finished by a later call. Returns the run ids deleted.

    An entry written before entries carried a key is judged as before, by those two checks
    alone: a run id is claimed once per root, so the runs table holding it means this warehouse
    landed it (a run that landed nothing is deleted by whichever warehouse's retention comes
    first; it has nothing to replay).
    """
    if not older_than_days > 0:
        raise ValueError(
            f"older_than_days must be positive, not {older_than_days!r}: "
            "pass None to prepare to keep staging for good"
        )
    cutoff = (time.time() if now is None else now) - older_than_days * 86_400
    own = None if warehouse is None else warehouse_key(warehouse)
    # run id -> (commit time, entry, warehouse key), oldest first
    entries: dict[str, list[tuple[float, str, str | None]]] = {}
    for path in sorted(_match(_index(staging_root, "committed", "*.json"))):
        name = _name(path)
        try:
            stamp = dt.datetime.strptime(name[:16], _STAMP).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            log.warning("%s is not a committed entry's name: ignored", path)
            continue
        run_id, key = _split_stem(name[17 : -len(".json")])
        entries.setdefault(run_id, []).append((stamp, path, key))
    # A run committed again (by hand) has several entries: its latest commit dates it, and says
    # which warehouse holds it.
    expired = sorted((dated[-1][0], run_id) for run_id, dated in entries.items())
    deleted: list[str] = []
    for stamp, run_id in expired:
        if stamp > cutoff or len(deleted) >= limit:
            break
        if own is not None and entries[run_id][-1][2] not in (own, None):
            continue  # another warehouse's run: its retention, not this one's
        run = RunStaging(staging_root, run_id)
        if run_id not in committed_run_ids and not run.committed_nothing():
            log.warning(
                "run %s has a commit entry but the warehouse does not know it: staging kept",
                run_id,
            )
            continue
        _delete_folder(run.folder)
        _delete_if_there([*run.staged_entries(), run.parked_entry])
        FileSystems.delete([path for _, path, _ in entries[run_id]])
        deleted.append(run_id)
    if deleted:
        log.info(
            "deleted the staging of %d runs committed %s days ago or more",
            len(deleted),
            older_than_days,
        )
    return deleted


def delete_abandoned_staging(
    staging_root: str,
    warehouse: str,
    *,
    older_than_s: float = ABANDONED_AFTER_S,
    keep: Collection[str] = (),
    limit: int = RETENTION_RUNS_PER_START,
    now: float | None = None,
) -> list[str]:
    """Deletes the staging folders of `warehouse`'s runs that died before writing their manifest
    (a claim, part files, nothing any run will read: their wallets were fetched again), claimed
    more than `older_than_s` ago, oldest first, at most `limit` per call. Returns their run ids.

    Called by start-up while it holds the warehouse's lease, so no live run of this warehouse
    is writing, bar one whose lease expired under it: the age (a day, or the lease TTL if
    longer) and a claim whose process is alive on this machine keep that one. Found from one
    listing of `_index.d/claimed/`, whose names carry the claim time and the warehouse key, so
    no other warehouse's run is read; each candidate's claim is read again and must record
    this very warehouse (an unreadable claim, or another warehouse's, leaves the folder as it
    is). `keep`: run ids never touched (the starting run's own). A folder that was staged
    after all (a manifest) only loses its `claimed/` entry. On a local root, the first call
    also indexes the folders claimed before `claimed/` existed (`_index_claims_once`)."""
    now = time.time() if now is None else now
    _index_claims_once(staging_root, now)
    cutoff, own = now - older_than_s, warehouse_key(warehouse)
    deleted: list[str] = []
    for path in sorted(_match(_index(staging_root, "claimed", "*.json"))):
        name = _name(path)
        try:
            stamp = dt.datetime.strptime(name[:16], _STAMP).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            continue  # not an entry's name
        if stamp > cutoff or len(deleted) >= limit:
            break
        run_id, key = _split_stem(name[17 : -len(".json")])
        if key != own or run_id in keep:
            continue  # another warehouse's: its own start-up sweeps it
        run = RunStaging(staging_root, run_id)
        if FileSystems.exists(run.manifest):  # staged after all: the index has it elsewhere
            _delete_if_there([path])
            continue
        claim = run._read_claim()
        if claim is None or claim.get("warehouse") != warehouse:
            if run.has_files():
                log.warning(
                    "run %s has no manifest but its claim %s; its staging is left as it is",
                    run_id,
                    "is unreadable" if claim is None else "records another warehouse",
                )
            _delete_if_there([path])  # looked at once: not again at every start-up
            continue
        if _claimer_alive(claim):
            continue
        _delete_folder(run.folder)
        _delete_if_there([*run.staged_entries(), run.parked_entry, path])
        deleted.append(run_id)
        log.warning(
            "deleted the staging of run %s: it was claimed at %s and died before staging "
            "(no %s; its wallets were fetched again)",
            run_id,
            dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            MANIFEST,
        )
    return deleted


def _claimer_alive(claim: Mapping[str, Any]) -> bool:
    """Whether the claim's process may still run: it names this machine and its pid exists. A
    pid of this process is over (a process runs its runs one after another, and the starting
    run is kept by the caller). Another machine's claim is judged by its age alone."""
    pid, holder = claim.get("pid"), claim.get("holder")
    if not isinstance(pid, int) or not isinstance(holder, str):
        return False
    if not holder.endswith(f" on {socket.gethostname()}") or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, someone else's
        return True
    return True


def _index_claims_once(staging_root: str, now: float) -> None:
    """Gives a `claimed/` entry to each local folder claimed before `claimed/` existed and left
    without a manifest (runs killed mid-fetch by older code), then writes `claimed/BUILT`.

    One listing of the root's folders and a check of two files in each, once per root: on a
    local disk that is milliseconds for thousands of runs. Not on gs://, where listing the root
    lists every object ever staged (the bucket's age rule deletes such folders there)."""
    if "://" in staging_root or not os.path.isdir(staging_root):
        return
    built = _index(staging_root, "claimed", INDEX_BUILT)
    if os.path.exists(built):
        return
    found = 0
    with os.scandir(staging_root) as entries:
        for entry in entries:
            if entry.name == INDEX or not entry.is_dir():
                continue
            run = RunStaging(staging_root, entry.name)
            if not os.path.exists(run.claim_file) or os.path.exists(run.manifest):
                continue
            claim = run._read_claim() or {}
            warehouse, at = claim.get("warehouse"), claim.get("claimed_at")
            if not isinstance(warehouse, str) or not warehouse:
                continue  # nothing says whose it is: left alone
            if not isinstance(at, int | float):
                at = os.path.getmtime(run.claim_file)
            _write_empty(run.claimed_entry(float(at), warehouse_key(warehouse)))
            found += 1
    _write_json(built, {"built_at": now})
    if found:
        log.info("indexed %d runs claimed without a manifest under %s", found, staging_root)


def _delete_folder(folder: str) -> None:
    """Deletes a run's folder and all under it: on gs:// the "folder/" form deletes every object
    under the prefix; locally that form would delete only the files directly in it."""
    try:
        FileSystems.delete([f"{folder}/" if "://" in folder else folder])
    except Exception:
        if _match(f"{folder}/**"):  # gone already is what a cut deletion leaves: fine
            raise


def check_staged_counts(run_id: str, files: Mapping[str, Sequence[str]]) -> None:
    """Raises StagingRefused unless every wallet whose outcome says it fetched N trades (without
    an error) has exactly N lines among the run's staged trades.

    Streams each file once and keeps one count per wallet. A listed outcome or trade file that is
    gone, a listed path of any kind that is a folder, or a line that is not JSON, refuses the run
    too; any other read error propagates (it may pass).
    """
    _no_folders(run_id, files)
    expected: dict[str, int] = {}
    for path in _existing(run_id, files.get("outcomes", ())):
        for number, line in _lines(path):
            row = _json_line(run_id, path, number, line)
            wallet, count = row.get("wallet_address"), row.get("trade_count")
            if not isinstance(wallet, str) or not isinstance(count, int) or "error" not in row:
                raise StagingRefused(
                    f"run {run_id}: line {number} of {path} is not a wallet outcome"
                )
            if row["error"] is None:
                expected[wallet] = expected.get(wallet, 0) + count
    staged: dict[str, int] = {}
    for path in _existing(run_id, files.get("trades", ())):
        for number, line in _lines(path):
            wallet = staged_wallet(line)
            if wallet is None:
                wallet = _json_line(run_id, path, number, line).get("wallet_address")
            if isinstance(wallet, str) and wallet in expected:
                staged[wallet] = staged.get(wallet, 0) + 1
    wrong = sorted(
        (wallet, count, staged.get(wallet, 0))
        for wallet, count in expected.items()
        if staged.get(wallet, 0) != count
    )
    if wrong:
        named = "; ".join(f"{w} outcome {n}, staged {s}" for w, n, s in wrong[:MISMATCHES_NAMED])
        more = (
            f" (and {len(wrong) - MISMATCHES_NAMED} more)" if len(wrong) > MISMATCHES_NAMED else ""
        )
        raise StagingRefused(
            f"run {run_id}: staged trades disagree with the outcomes of {len(wrong)} wallets: "
            f"{named}{more}"
        )


_WALLET_KEY = b'"wallet_address":'


def staged_wallet(line: bytes) -> str | None:
    """The wallet of one staged trade line, read without parsing the row, or None: then the
    caller parses it (and refuses a line that is not JSON).

    The count check reads every staged trade, and parsing each ~800-byte row only to read one
    field was most of its cost (0.7 s of 0.9 s for 35,000 trades). The first `"wallet_address":`
    of a line is its top-level key: inside a JSON string every quote is escaped, and no column
    holds a nested object. A line cut short does not end with `}` and is parsed (so refused);
    a line that is whole but not JSON elsewhere fails the warehouse's load instead.
    """
    at = line.find(_WALLET_KEY)
    if at < 0 or not line.rstrip().endswith(b"}"):
        return None
    start = line.find(b'"', at + len(_WALLET_KEY))
    end = line.find(b'"', start + 1)
    if start < 0 or end < 0 or line[at + len(_WALLET_KEY) : start].strip():
        return None
    value = line[start + 1 : end]
    return None if b"\\" in value else value.decode("utf-8", "replace")


def _existing(run_id: str, paths: Sequence[str]) -> Sequence[str]:
    gone = [path for path in paths if not FileSystems.exists(path)]
    if gone:
        raise StagingRefused(f"run {run_id}: staged files are gone: {gone[:MISMATCHES_NAMED]}")
    return paths


def _no_folders(run_id: str, files: Mapping[str, Sequence[str]]) -> None:
    """A manifest that lists a folder as a staged file (edited by hand, or torn into another
    manifest's shape) contradicts itself: no retry makes a folder readable as rows, so the run is
    refused in one line rather than crashing its reader. Only local paths can be folders: on
    gs:// a prefix is no object, so such a path is gone (`_existing`) or fails the load."""
    folders = [
        path
        for paths in files.values()
        for path in paths
        if "://" not in path and os.path.isdir(path)
    ]
    if folders:
        raise StagingRefused(
            f"run {run_id}: staged paths are folders, not files: {folders[:MISMATCHES_NAMED]}"
        )


def _json_line(run_id: str, path: str, number: int, line: bytes) -> dict:
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    if not isinstance(row, dict):
        raise StagingRefused(f"run {run_id}: line {number} of {path} is not a JSON object")
    return row


@dataclass(frozen=True)
class CommitOutcome:
    """What committing one staged run came to: the warehouse's report, or the error that left
    the run uncommitted (production untouched; the staging kept for a later commit, unless
    `refused`: then the staging contradicts itself and the run is parked for good)."""

    run_id: str
    report: CommitReport | None = None
    error: str | None = None
    refused: bool = False
    parked: bool = False  # the MAX_FAILED_COMMITS-th failed start-up commit: no more tries
    foreign: bool = False  # the run belongs to another warehouse: nothing was touched
    busy: bool = False  # the warehouse was held by another process: not the run's fault

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
    """Checks one staged run against itself, lands it in one warehouse transaction, then writes
    its commit marker.

    `files`: the run's staged files by kind (the graph passes what it wrote); None reads them
    from the run's manifest (recovery). Idempotent: a run the warehouse holds is not landed twice.
    A refused run (now or earlier) never reaches the warehouse, nor does a run that recorded
    another warehouse when it claimed its id (`foreign`: neither its staging nor its state files
    are touched, so its own warehouse still commits it). A run that recorded none (staged before
    runs did, or by hand) is committed wherever it is asked to be.
    """
    ours = warehouse_identity(warehouse)
    theirs = staging.recorded_warehouse()
    if theirs is not None and theirs != ours:
        return CommitOutcome(
            staging.run_id,
            error=f"run {staging.run_id} belongs to warehouse {theirs}, not to {ours}",
            foreign=True,
        )
    reason = staging.refused_reason()
    if reason is not None:
        return CommitOutcome(staging.run_id, error=f"refused earlier: {reason}", refused=True)
    try:
        if files is None:
            files = staging.read_manifest()
        report = _check_and_commit(staging.run_id, warehouse, files)
    except StagingRefused as exc:
        log.error(
            "run %s is refused and parked (%s); its wallets stay pending: %s",
            staging.run_id,
            staging.refusal,
            exc,
        )
        staging.mark_refused(str(exc))
        return CommitOutcome(staging.run_id, error=str(exc), refused=True)
    except StagingError as exc:
        return CommitOutcome(staging.run_id, error=str(exc))
    except CommitError as exc:
        log.error("run %s stays uncommitted: %s", staging.run_id, exc)
        return CommitOutcome(staging.run_id, error=str(exc))
    except TimeoutError as exc:  # a DuckDB file another process kept open (WarehouseLocked)
        # Production is untouched (the transaction never began, or was rolled back): the run
        # stays staged for the next start-up, and a caller reports it in one line, not a trace.
        log.error("run %s stays uncommitted: %s", staging.run_id, exc)
        return CommitOutcome(staging.run_id, error=str(exc), busy=isinstance(exc, WarehouseBusy))
    staging.mark_committed(report, warehouse=ours)
    log.info("run %s committed: %s", staging.run_id, report)
    return CommitOutcome(staging.run_id, report)


def _check_and_commit(
    run_id: str, warehouse: WarehouseRef, files: Mapping[str, Sequence[str]]
) -> CommitReport:
    """`check_staged_counts`, then the warehouse's `commit_run`: the check passes before the
    transaction starts, or the run is refused (StagingRefused) with production untouched.

    A warehouse that loads privately (DuckDB: temporary tables) is asked the check's question
    of what it loaded (sql.LOADED_COUNTS_DISAGREE): reading the files again beside the load
    was the longer of the two (1.3 s against the load's 1.1 s for 350,000 trades on two
    cores; the query takes ~0.01 s). The files are still read to name a disagreement, and
    whenever the question was not reached: a refusal still wins over a failed load, and a run
    the warehouse holds already is still refused if its staging contradicts itself, as when
    the check ran first."""
    with warehouse.open() as opened:
        if not opened.loads_privately:
            check_staged_counts(run_id, files)
            return opened.commit_run(run_id, files)
        asked = False

        def check_loaded(disagreeing: int) -> None:
            nonlocal asked
            asked = True
            if disagreeing:
                check_staged_counts(run_id, files)  # refuses naming them, if the files show it
                raise StagingRefused(
                    f"run {run_id}: the loaded trades of {disagreeing} of its wallets disagree "
                    "with their outcomes"
                )

        try:
            report = opened.commit_run(run_id, files, before_transaction=check_loaded)
        except Exception:
            if not asked:
                check_staged_counts(run_id, files)  # its refusal first, as if it had run first
            raise
        if not asked:  # committed already, or nothing to commit
            check_staged_counts(run_id, files)
        return report


def recover_staged_run(staging: RunStaging, warehouse: WarehouseRef) -> CommitOutcome:
    """Start-up's commit of an earlier run: `commit_staged_run`, and a failure (not a refusal)
    counts in the run's index entry, which parks the run at MAX_FAILED_COMMITS.

    Only start-up counts: the graph's own commit may be retried by the runner (Dataflow retries a
    failed bundle), and a commit by hand is a person trying again, neither a reason to give up.
    """
    outcome = commit_staged_run(staging, warehouse)
    # A busy warehouse says nothing of the run: counting it would park a sound run after three
    # start-ups that met a dashboard holding the file open.
    if not outcome.failed or outcome.refused or outcome.foreign or outcome.busy:
        return outcome
    try:
        parked = staging.record_failed_commit(outcome.error or "")
    except Exception as exc:  # the commit's own error is the one to report
        log.warning("could not count run %s's failed commit: %s", staging.run_id, exc)
        parked = False
    return dataclasses.replace(outcome, parked=parked)
