"""`commit --run_id R`: commits one fully staged run by hand (recovery); safe to repeat.

Exit codes: 0 committed (or already committed), 1 the warehouse refused the transaction (production
untouched; fix the warehouse and run it again), 2 nothing here can be committed: no such run, no
whole manifest, a run refused because its staging contradicts itself (its wallets are fetched
again by the next run), or a run of another warehouse (it recorded which when it claimed its id:
give that warehouse's --warehouse and table names), 3 a backfill holds the warehouse's lease (try
again when it has ended).
Each failure is one line saying what to fix.

A run that start-up parked after its commit failed MAX_FAILED_COMMITS times (`status` lists it)
is committed here like any other, once the warehouse is fixed; success takes it off the parked
list. A failure here does not count toward parking: only start-up's tries do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from pipeline import lease
from pipeline.options import BackfillOptions, OptionsError, resolve_command
from pipeline.staging import StagingError, commit_staged_run, warehouse_identity

LEASE_HELD = 3  # a backfill is using the warehouse: try again when it has ended


def add_arguments(parser: argparse.ArgumentParser) -> None:
    BackfillOptions._add_argparse_args(parser)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    if not args.run_id:
        print("commit: give --run_id (a folder under --staging_root that has _STAGED.json)")
        return 2
    try:
        config = resolve_command(args)
    except OptionsError as exc:
        print(exc)
        return 2
    staging = config.staging  # --run_id's staging
    if not staging.has_files():
        print(
            f"commit: run {staging.run_id} has no staging under {staging.root}: "
            "check --run_id and --staging_root"
        )
        return 2
    ours, theirs = warehouse_identity(config.warehouse_ref), staging.recorded_warehouse()
    if theirs is not None and theirs != ours:
        print(
            f"commit: run {staging.run_id} belongs to warehouse {theirs}, not to {ours}: "
            "commit it with that warehouse's --warehouse (and table names)"
        )
        return 2
    reason = staging.refused_reason()
    if reason is not None:
        print(
            f"commit: run {staging.run_id} was refused and is not committed (its wallets are "
            f"fetched again by the next run): {reason}"
        )
        return 2
    try:
        files = staging.read_manifest()
    except StagingError as exc:
        print(f"commit: nothing to commit (its wallets are fetched again by the next run): {exc}")
        return 2
    holder = lease.holder_name(f"commit-{staging.run_id}", local=True)
    try:
        with config.warehouse_ref.open() as warehouse:
            warehouse.ensure_tables()
            lease.take(warehouse, holder, lease.COMMIT_MARGIN_S)
    except lease.WarehouseBusy as exc:
        print(f"commit: {exc}")
        return LEASE_HELD
    try:
        outcome = commit_staged_run(staging, config.warehouse_ref, files)
    finally:
        with config.warehouse_ref.open() as warehouse:
            warehouse.release_lease(holder)
    if outcome.foreign:  # recorded between the check above and the commit: said the same way
        print(f"commit: {outcome.error}")
        return 2
    if outcome.refused:
        print(
            f"commit: run {staging.run_id} is refused, production is untouched and its wallets "
            f"are fetched again by the next run: {outcome.error}"
        )
        return 2
    if outcome.report is None:
        print(f"run {args.run_id} was not committed (production is untouched): {outcome.error}")
        return 1
    print(json.dumps(dataclasses.asdict(outcome.report), indent=1, default=str))
    return 0
