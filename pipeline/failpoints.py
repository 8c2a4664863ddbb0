"""Named instants where a test can kill the process, to prove that a crash there loses nothing.

Exactly-once rests on what survives a crash at each instant that changes state (a state file being
written, the commit's load and transaction, the marker). A random SIGKILL rarely lands inside those
few milliseconds, so each such instant calls `reached(name)`; when the environment variable
`BACKFILL_KILL_AT` names it, the process dies there at once, as a SIGKILL would leave it (no
`finally`, no flush, no atexit). Unset, as in every real run, a failpoint is one dictionary lookup.
The same idea as FreeBSD's fail points and TiKV's `fail-rs`; tests/test_chaos.py drives it.
"""

from __future__ import annotations

import os

ENVIRONMENT_VARIABLE = "BACKFILL_KILL_AT"
KILLED_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL

# Every failpoint, in the order a run reaches them; tests iterate over this.
INDEXED = "staging.indexed_no_manifest"
MANIFEST_WRITTEN = "staging.manifest_written_not_renamed"
STAGED = "staging.staged_not_committed"
LOADED = "warehouse.loaded_not_in_transaction"
IN_TRANSACTION = "warehouse.in_transaction_not_committed"
TRANSACTION_COMMITTED = "warehouse.committed_load_tables_not_dropped"
MARKER_DUE = "staging.committed_no_marker"
MARKER_WRITTEN = "staging.marker_written_not_renamed"
MARKED = "staging.marked_index_not_moved"

# Start-up's, reached only by a run of several processes (it stages the lookup plan): tests drive
# it with multi_processing, apart from ALL.
LOOKUP_PLAN_STAGED = "startup.lookup_plan_staged_graph_not_run"

ALL = (
    INDEXED,
    MANIFEST_WRITTEN,
    STAGED,
    LOADED,
    IN_TRANSACTION,
    TRANSACTION_COMMITTED,
    MARKER_DUE,
    MARKER_WRITTEN,
    MARKED,
)


def reached(name: str) -> None:
    """Dies here, as if killed, when the environment names this failpoint."""
    if name not in ALL and name != LOOKUP_PLAN_STAGED:
        raise ValueError(f"unknown failpoint {name!r}")
    if os.environ.get(ENVIRONMENT_VARIABLE) == name:
        os._exit(KILLED_EXIT_CODE)
