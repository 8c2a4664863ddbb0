"""The run lifecycle in one place: prepare (tables, recovery), then the graph stages, then commit.

A run only ever adds staging under its own run_id; the warehouse changes in exactly one transaction
per run (`pipeline.staging.commit_staged_run`), which is idempotent. So a crash anywhere leaves
either staging that a later start-up commits (manifest written), or staging nobody commits (no
manifest: those wallets are simply fetched again), never a half-landed run.
"""

from __future__ import annotations

import logging

from pipeline.options import BackfillConfig, OptionsError
from pipeline.staging import CommitOutcome, commit_staged_run, staged_runs

log = logging.getLogger(__name__)


def prepare(config: BackfillConfig) -> list[CommitOutcome]:
    """Start of every run: create missing tables, commit any earlier run left staged, then
    (with --verify) reset done wallets whose trades production does not hold."""
    if config.staging.has_files():
        raise OptionsError(
            f"run_id {config.run_id} already has staging under {config.staging_root}: "
            "use a new run id (or omit --run_id)"
        )
    with config.warehouse_ref.open() as warehouse:
        warehouse.ensure_tables()
    recovered = []
    for earlier in staged_runs(config.staging_root):
        if earlier.is_committed():
            continue
        log.warning("recovering run %s: staged but not committed", earlier.run_id)
        # A failed commit never blocks later runs: its wallets are not marked done, so this run
        # fetches them again; the staging stays for `commit --run_id` by hand.
        recovered.append(commit_staged_run(earlier, config.warehouse_ref))
    if config.verify:
        with config.warehouse_ref.open() as warehouse:
            log.warning("%s", warehouse.verify(reset=True).render())
    return recovered
