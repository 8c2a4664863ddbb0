"""`verify`: trade ids production holds more than once, and done wallets whose trade count in
production differs from the checkpoint's.

It finds them with two grouped queries and (unless `--report_only`, which only reads) repairs them
in one transaction: each duplicated id is kept once, and the done wallets whose count still differs
are reset, so the next run fetches their whole history again and the commit lands only what
production is missing. A repair holds the warehouse's lease while it runs, so it never races a
backfill's commit: while a backfill holds it, verify says so and repairs nothing (exit code 3).
`--report_only` exits 1 when it finds anything, so that monitoring can act on it. It
creates and alters no table: a missing checkpoint or trades table is reported, and there is nothing
to check (nor a lease to take).
"""

from __future__ import annotations

import argparse
import secrets

from pipeline import lease
from pipeline.options import BackfillOptions, OptionsError, flag, resolve_command
from pipeline.warehouse import VerifyReport, Warehouse, open_warehouse

# How long a repair may hold the lease: far longer than its few statements take, and short
# enough that a verify killed midway does not keep backfills out for long.
REPAIR_LEASE_SECONDS = 30 * 60.0
LEASE_HELD = 3
FOUND_PROBLEMS = 1  # --report_only found duplicates or wrong counts (a repair's findings are fixed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    BackfillOptions._add_argparse_args(parser)
    parser.add_argument(
        "--report_only",
        type=flag,  # `--report_only=false` as `run --verify=false` (it was refused)
        nargs="?",
        const=True,
        default=False,
        help="list the duplicates and mismatches, repair nothing (only reads)",
    )


def main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = resolve_command(args)
    except OptionsError as exc:
        print(exc)
        return 2
    with open_warehouse(config.warehouse, config.tables) as warehouse:
        if args.report_only:
            report = warehouse.verify(reset=False)
        else:
            outcome = repair(warehouse)
            if isinstance(outcome, str):
                print(outcome)
                return LEASE_HELD
            report = outcome
    print(report.render())
    # --report_only is what monitoring runs: it must be able to tell a finding from a clean bill.
    return FOUND_PROBLEMS if args.report_only and not report.clean else 0


def repair(warehouse: Warehouse) -> VerifyReport | str:
    """`verify` with its repair, holding the lease meanwhile; the refusal's text if a backfill
    holds it. A warehouse no run of this version has prepared has no lease table yet: then it
    repairs without one, as verify always did."""
    if not warehouse.has_lease_table():
        return warehouse.verify(reset=True)
    # Named like a local run's holder, and taken as a run takes it: a run (or verify) of this
    # machine that was killed is seen to be gone and its lease taken over; a verify killed
    # midway is likewise not mistaken for a live one by the next run.
    holder = lease.holder_name(f"verify-{secrets.token_hex(3)}", local=True)
    try:
        lease.take(warehouse, holder, REPAIR_LEASE_SECONDS)
    except lease.WarehouseBusy:
        held = warehouse.read_lease()
        described = held.describe() if held else "the backfill lease is held"
        return (
            f"verify: repairing nothing while a backfill runs: {described} "
            "(--report_only only reads)"
        )
    try:
        return warehouse.verify(reset=True)
    finally:
        warehouse.release_lease(holder)
