"""The run lifecycle in one place: prepare (claim, tables, recovery), then the graph stages, then commit.

A run only ever adds staging under its own run_id, which it claims first; the warehouse changes in
exactly one transaction per run (`pipeline.staging.commit_staged_run`), which is idempotent. So a
crash anywhere leaves either staging that a later start-up commits (manifest written), or staging
nobody commits (no manifest, or a torn one: those wallets are simply fetched again), never a
half-landed run. A run whose staging contradicts itself is refused once and parked, not retried;
a run whose commit keeps failing in the warehouse is retried by a few start-ups, then parked too.

Start-up stays as fast with ten thousand runs staged as with ten: it lists the staging index (the
runs not committed yet), never the root (see `pipeline.staging`), and deletes the staging of at
most a few dozen expired runs per start-up, and of at most as many runs that died before
staging (a day old; found from the index too: `staging.delete_abandoned_staging`).

One staging root may serve several warehouses (the default `./staging` serves every local DuckDB
file): a run records its warehouse when it claims its id, and start-up recovers, and retention
deletes, only the runs of the warehouse that is starting; the others are left to theirs.

A start-up that fails after the claim (the warehouse, a dead source, anything before the graph
wrote a file) gives the run id back: its folder held only the claim, and a run scheduled every
30 minutes against a dead source would otherwise leave 48 such folders a day.
"""

from __future__ import annotations

import logging

from pipeline import failpoints, lease
from pipeline.options import BackfillConfig, OptionsError
from pipeline.staging import (
    ABANDONED_AFTER_S,
    CommitOutcome,
    RunIdTaken,
    delete_abandoned_staging,
    delete_expired_staging,
    recover_staged_run,
    runs_to_recover,
    warehouse_identity,
)
from transforms.lookups import read_plan_rows

log = logging.getLogger(__name__)


def prepare(config: BackfillConfig) -> list[CommitOutcome]:
    """Start of every run: create missing tables, take the warehouse's lease (one backfill at a
    time: WarehouseBusy if another holds it), claim the run id, drop load tables a killed commit
    left, commit any earlier run left staged, delete the staging of this warehouse's runs that died
    before staging (a day old), and of runs committed more than --staging_retention_days ago (by
    default none is), then (with --verify) repair production.

    The lease is given back by the run's commit step; if start-up itself fails, here (and the
    run id with it, see `release`)."""
    with config.warehouse_ref.open() as warehouse:
        warehouse.ensure_tables()
        wrong = warehouse.traders_without_addresses()
        if wrong is not None:  # the run would die inside its first step, in Beam's traceback
            raise OptionsError(
                f"table {wrong} has no wallet_address column: give --traders_table the table "
                "that holds the wallets (one address a row, in wallet_address)"
            )
        ttl = lease.ttl_seconds(config.max_run_minutes, config.lease_minutes)
        lease.take(warehouse, config.lease_holder, ttl)
    try:
        return _prepare_holding_the_lease(config)
    except BaseException:
        release(config)
        raise


def release(config: BackfillConfig, lease: bool = True) -> None:
    """Gives the run's lease back (a run that ends before its commit step does), and its run id
    if the run staged nothing: its folder holds only the claim this run made (`run` calls this
    once its graph is over, or could not start; a folder holding anything else is never
    deleted, so a run that staged keeps it for recovery)."""
    try:
        if lease:  # False: the commit step gave it back already
            with config.warehouse_ref.open() as warehouse:
                warehouse.release_lease(config.lease_holder)
    except Exception as exc:  # it expires by itself; the error that ended the run matters more
        log.warning("could not give back the lease of %s: %s", config.lease_holder, exc)
    try:
        if config.staging.release_claim(config.lease_holder):
            log.info("run %s staged nothing: its run id is given back", config.run_id)
    except Exception as exc:  # a claim-only folder is litter, not harm: the error matters more
        log.warning("could not give back run id %s: %s", config.run_id, exc)


def _sweep_abandoned(config: BackfillConfig, ours: str) -> None:
    """Deletes the staging of this warehouse's runs that died before staging (a day old, or
    older than the lease's TTL when that is longer): a run that keeps crashing mid-fetch would
    otherwise fill the disk, since nothing will ever read those part files. Holding the lease,
    no live run of this warehouse writes there. A failure only leaves them for the next
    start-up: it must not stop this run."""
    age = max(ABANDONED_AFTER_S, lease.ttl_seconds(config.max_run_minutes, config.lease_minutes))
    try:
        delete_abandoned_staging(config.staging_root, ours, older_than_s=age, keep=(config.run_id,))
    except Exception as exc:
        log.warning("could not delete the staging of runs that died before staging: %s", exc)


def _prepare_holding_the_lease(config: BackfillConfig) -> list[CommitOutcome]:
    ours = warehouse_identity(config.warehouse_ref)
    try:
        config.staging.claim(ours, config.lease_holder)
    except RunIdTaken as exc:
        raise OptionsError(f"{exc}: use a new run id (or omit --run_id)") from None
    with config.warehouse_ref.open() as warehouse:
        # Holding the lease, no other commit is using a load table: these are a killed one's.
        warehouse.drop_orphan_load_tables()
        committed = warehouse.committed_run_ids()
    if config.run_id in committed:  # under another staging root: the claim could not see it
        raise OptionsError(
            f"run_id {config.run_id} is committed in this warehouse already (its commit would "
            "land nothing, whatever the run fetched): use a new run id (or omit --run_id)"
        )
    recovered = []
    for earlier in runs_to_recover(config.staging_root, committed, ours):
        log.warning("recovering run %s: staged but not committed", earlier.run_id)
        # A failed commit never blocks later runs: its wallets are not marked done, so this run
        # fetches them again; the staging stays for `commit --run_id` by hand (a refused run is
        # parked instead: its staging is wrong, so committing it by hand would not help).
        # After MAX_FAILED_COMMITS failed start-ups it is parked, and start-up stops trying.
        recovered.append(recover_staged_run(earlier, config.warehouse_ref))
    _sweep_abandoned(config, ours)
    if config.staging_retention_days:
        delete_expired_staging(
            config.staging_root, committed, config.staging_retention_days, warehouse=ours
        )
    if config.verify:
        with config.warehouse_ref.open() as warehouse:
            log.warning("%s", warehouse.verify(reset=True).render())
    if config.stage_lookup_plan:  # last: after the recovered runs landed what they had
        with config.warehouse_ref.open() as warehouse:
            config.staging.write_lookup_plan(read_plan_rows(warehouse))
        failpoints.reached(failpoints.LOOKUP_PLAN_STAGED)
    return recovered
