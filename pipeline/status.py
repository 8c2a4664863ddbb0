"""`status`: done, failed (with their errors), remaining and percent done as the users' monitoring
counts them, beside the true work left (valid distinct addresses not done), markets and events
pending (the next run asks again) or missing at the source (asked for no more), trades per
source, who holds the backfill's lease and the last runs. It only reads: missing tables are named,
never created."""

from __future__ import annotations

import argparse
import dataclasses
import os

from pipeline.lease import holder_is_gone
from pipeline.options import BackfillOptions, OptionsError, resolve_command
from pipeline.staging import RunStaging, parked_runs, warehouse_identity
from pipeline.status_report import render_status
from pipeline.warehouse import open_warehouse

MAX_LAST_RUNS = 1000  # a screen's worth many times over; a bigger number overflowed the LIMIT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    BackfillOptions._add_argparse_args(parser)
    parser.add_argument("--last_runs", type=int, default=5, help="how many recent runs to list")


def show_status(warehouse: str, tables, last_runs: int = 5) -> str:
    """Only reads: a missing table is reported in the output, never created or altered."""
    with open_warehouse(warehouse, tables) as handle:
        report = handle.status(last_runs=last_runs)
    if report.lease_holder is not None:
        report = dataclasses.replace(report, lease_holder_gone=holder_is_gone(report.lease_holder))
    return render_status(report)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = resolve_command(args)
    except OptionsError as exc:
        print(exc)
        return 2
    if not 0 <= args.last_runs <= MAX_LAST_RUNS:
        print(f"status: --last_runs must be 0 to {MAX_LAST_RUNS}")
        return 2
    print(show_status(config.warehouse, config.tables, args.last_runs))
    print(show_parked(config.staging_root, warehouse_identity(config.warehouse_ref)))
    return 0


def show_parked(staging_root: str, warehouse: str | None = None) -> str:
    """The runs start-up gave up committing (refused staging, or commits that kept failing), from
    the staging index; only reads. Their wallets are not done: later runs fetch them again.

    `warehouse` (a `warehouse_identity`): list only its runs and count the others, since one root
    may serve several warehouses; a run that recorded no warehouse (staged by older code) is
    listed, as nothing tells whose it is. A local root that is not there says so: "none" read
    from the default ./staging, where production's root is gs://, hid every parked run."""
    if "://" not in staging_root and not os.path.isdir(staging_root):
        return (
            f"parked runs      not known: no staging folder {staging_root} here (give the runs' "
            "--staging_root, e.g. gs://BUCKET/staging)"
        )
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
