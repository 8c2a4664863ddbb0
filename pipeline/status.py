"""`status`: done, failed (with their errors), remaining and percent done as the users' monitoring
counts them, beside the true work left (valid distinct addresses not done), markets and events
pending (the next run asks again) or missing at the source (asked again weekly), trades per
source, who holds the backfill's lease and the last runs; then, from the staging index, the runs
staged and waiting for the next start-up's commit (with their failed commits) and the parked ones.
It only reads: missing tables are named, never created, and the staging root is never listed
whole (only `_index.d/staged/` and `_index.d/parked/`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Collection

from pipeline.lease import WarehouseBusy, holder_is_gone
from pipeline.options import BackfillOptions, OptionsError, resolve_command
from pipeline.staging import RunStaging, parked_runs, waiting_runs, warehouse_identity
from pipeline.status_report import render_status
from pipeline.warehouse import open_warehouse

MAX_LAST_RUNS = 1000  # a screen's worth many times over; a bigger number overflowed the LIMIT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    BackfillOptions._add_argparse_args(parser)
    parser.add_argument("--last_runs", type=int, default=5, help="how many recent runs to list")


MAX_ERROR_CHARS = 300  # of a waiting run's last commit error: one readable line each


def show_status(warehouse: str, tables, last_runs: int = 5) -> str:
    """Only reads: a missing table is reported in the output, never created or altered."""
    return _status(warehouse, tables, last_runs)[0]


def _status(warehouse: str, tables, last_runs: int) -> tuple[str, set[str]]:
    """The warehouse's part of the report, and the run ids its runs table holds (none when the
    table is missing: status creates nothing), which tell a waiting run from one whose commit
    landed but whose index entry was not moved yet."""
    with open_warehouse(warehouse, tables) as handle:
        report = handle.status(last_runs=last_runs)
        committed = set() if tables.runs in report.missing_tables else handle.committed_run_ids()
    if report.lease_holder is not None:
        report = dataclasses.replace(report, lease_holder_gone=holder_is_gone(report.lease_holder))
    return render_status(report), committed


def main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = resolve_command(args)
    except OptionsError as exc:
        print(exc)
        return 2
    if not 0 <= args.last_runs <= MAX_LAST_RUNS:
        print(f"status: --last_runs must be 0 to {MAX_LAST_RUNS}")
        return 2
    try:
        text, committed = _status(config.warehouse, config.tables, args.last_runs)
    except WarehouseBusy as exc:  # a DuckDB file another process holds open: busy, one line
        print(f"status: {exc}")
        return 3
    print(text)
    ours = warehouse_identity(config.warehouse_ref)
    print(show_waiting(config.staging_root, committed, ours))
    print(show_parked(config.staging_root, ours))
    return 0


def _no_root(staging_root: str, what: str) -> str | None:
    """The line for a local root that is not there, or None: "none" read from the default
    ./staging, where production's root is gs://, would hide every run staged there."""
    if "://" not in staging_root and not os.path.isdir(staging_root):
        return (
            f"{what:<16} not known: no staging folder {staging_root} here (give the runs' "
            "--staging_root, e.g. gs://BUCKET/staging)"
        )
    return None


def show_waiting(
    staging_root: str, committed_run_ids: Collection[str], warehouse: str | None = None
) -> str:
    """The runs staged and not committed yet (a run killed after its manifest, or whose commit
    failed in the warehouse and is retried), which the next start-up commits: without this an
    operator reads "0 done, nothing parked" and may delete staging that holds a whole run.
    From one listing of the staging index (`waiting_runs`); only reads. `warehouse` (a
    `warehouse_identity`): list only its runs and count the others'."""
    missing = _no_root(staging_root, "staged runs")
    if missing is not None:
        return missing
    found = waiting_runs(staging_root, committed_run_ids, warehouse)
    elsewhere = f"; {found.others} of other warehouses sharing this root" if found.others else ""
    unbuilt = (
        ""
        if found.built
        else " (index not built yet: runs staged by older code show after the next start-up)"
    )
    if not found.runs:
        return f"staged runs      none waiting for a commit{elsewhere}{unbuilt}"
    lines = [
        f"staged runs      {len(found.runs)} staged, not committed yet: the next run's start-up "
        f"commits them (their wallets stay pending until then){elsewhere}{unbuilt}"
    ]
    for run in found.runs:
        line = f"  {run.run_id}"
        if run.failed_commits:
            times = "time" if run.failed_commits == 1 else "times"
            line += f": commit failed {run.failed_commits} {times}"
        if run.last_error:
            error = " ".join(run.last_error.split())
            if len(error) > MAX_ERROR_CHARS:
                error = error[: MAX_ERROR_CHARS - 3] + "..."
            line += f"{',' if run.failed_commits else ':'} last error: {error}"
        lines.append(line)
    return "\n".join(lines)


def show_parked(staging_root: str, warehouse: str | None = None) -> str:
    """The runs start-up gave up committing (refused staging, or commits that kept failing), from
    the staging index; only reads. Their wallets are not done: later runs fetch them again.

    `warehouse` (a `warehouse_identity`): list only its runs and count the others, since one root
    may serve several warehouses; a run that recorded no warehouse (staged by older code) is
    listed, as nothing tells whose it is. A local root that is not there says so: "none" read
    from the default ./staging, where production's root is gs://, hid every parked run."""
    missing = _no_root(staging_root, "parked runs")
    if missing is not None:
        return missing
    parked, others = [], 0
    for run in parked_runs(staging_root):
        owner = RunStaging(staging_root, run.run_id).recorded_warehouse()
        if warehouse is not None and owner is not None and owner != warehouse:
            others += 1
        else:
            parked.append(run)
    elsewhere = f"; {others} of other warehouses sharing this root" if others else ""
    if not parked:
        return f"parked runs      none{elsewhere}"
    lines = [
        f"parked runs      {len(parked)} (their wallets are fetched again; see the reasons)"
        f"{elsewhere}"
    ]
    for run in parked:
        tries = f" after {run.failed_commits} failed commits" if run.failed_commits else ""
        lines.append(f"  {run.run_id}{tries}: {run.reason}")
    return "\n".join(lines)
