"""One backfill at a time per warehouse: who may hold the warehouse's lease, and when a holder is gone.

The lease itself is one row in the warehouse (`Warehouse.acquire_lease`, decided by the warehouse's
own clock), so the launcher of a Dataflow job can take it and the job's commit step, on a worker,
can give it back. A holder that crashed cannot hold it forever: the lease expires after the run's
budget plus a margin. A local run (DirectRunner) is also recognised as gone at once: it names its
process in the holder, and a later run on the same machine whose holder process no longer exists
takes the lease over (so a run killed by SIGKILL does not keep the next one out for hours); so
does a later run in the same process, since one process runs one run at a time. A
Dataflow holder is never taken over that way: its launcher exits as soon as the job is submitted.
"""

from __future__ import annotations

import logging
import os
import re
import socket

from pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

# Room after the budget for the commit and Dataflow's start-up; and the lease of a run without a
# budget (a local run, whose crash is noticed through its process, or a hand-run Dataflow job,
# which the job's wall-time cap ends).
COMMIT_MARGIN_S = 30 * 60.0
UNBOUNDED_TTL_S = 24 * 3600.0

_LOCAL = re.compile(r"^(?P<run_id>\S+) local pid (?P<pid>\d+) on (?P<host>\S+)$")


class WarehouseBusy(RuntimeError):
    """Another backfill (or a repair) holds the warehouse's lease: this run must not start."""


def holder_name(run_id: str, local: bool) -> str:
    """The lease holder a run writes: its id, and for a local run the process that runs it."""
    if not local:
        return f"{run_id} dataflow"
    return f"{run_id} local pid {os.getpid()} on {socket.gethostname()}"


def ttl_seconds(max_run_minutes: float | None, lease_minutes: float | None = None) -> float:
    """`--lease_minutes` when given. On Dataflow a holder is never seen to be gone, so a job that
    failed keeps the lease this long: launch_dataflow.sh gives the schedule's period less a
    minute, so that the next launch takes over (with the default, 20 + 30 minutes on a
    30-minute schedule, it was refused and only the launch after it ran). A lease that expires
    under a job still alive is safe: the fixed job name keeps a second job from starting, and
    commits conflict on the lease row."""
    if lease_minutes is not None:
        return lease_minutes * 60.0
    if max_run_minutes is None:
        return UNBOUNDED_TTL_S
    return max_run_minutes * 60.0 + COMMIT_MARGIN_S


def holder_is_gone(holder: str | None) -> bool:
    """Whether `holder` is a local run of this machine that is over: its process has ended, or it
    is this process, whose runs are sequential (`run_backfill` returns when its run is over), so
    an earlier run of it that did not give the lease back is not running any more."""
    match = _LOCAL.match(holder or "")
    if match is None or match["host"] != socket.gethostname():
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def take(warehouse: Warehouse, holder: str, ttl_s: float) -> None:
    """Takes the lease for `holder` or raises WarehouseBusy naming who holds it and until when."""
    if warehouse.acquire_lease(holder, ttl_s):
        return
    lease = warehouse.read_lease()
    if lease is not None and holder_is_gone(lease.holder):
        log.warning("taking over the lease of %s: that process has ended", lease.holder)
        warehouse.release_lease(lease.holder or "")
        if warehouse.acquire_lease(holder, ttl_s):
            return
        lease = warehouse.read_lease()
    described = lease.describe() if lease is not None else "the lease is held"
    raise WarehouseBusy(
        f"another backfill is using this warehouse ({described}); this run did not start: "
        "wait for it to end (or for its lease to expire)"
    )
