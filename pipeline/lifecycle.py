"""The run lifecycle in one place: prepare (tables, recovery), then the graph stages, then commit.

A run only ever adds staging under its own run_id; the warehouse changes in exactly one transaction
per run (commit_staged_run), which is idempotent. So a crash anywhere leaves either staging that a
later start-up commits (manifest written), or staging nobody commits (no manifest: those wallets
are simply fetched again), never a half-landed run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pipeline import staging
from pipeline.options import BackfillConfig, OptionsError
from pipeline.warehouse import CommitError, TableNames, open_warehouse

log = logging.getLogger(__name__)


def commit_staged_run(
    warehouse_spec: str, tables: TableNames, staging_root: str, run_id: str
) -> dict[str, Any]:
    """Commits one fully staged run (its manifest's files) and marks it committed."""
    files = staging.read_manifest(staging_root, run_id)
    with open_warehouse(warehouse_spec, tables) as warehouse:
        report = warehouse.commit_run(run_id, files)
    report_dict = dataclasses.asdict(report)
    staging.mark_committed(staging_root, run_id, report_dict)
    log.info("run %s committed: %s", run_id, report_dict)
    return report_dict


def prepare(config: BackfillConfig) -> list[dict[str, Any]]:
    """Start of every run: create missing tables, commit any earlier run left staged, then
    (with --verify) reset done wallets whose trades production does not hold."""
    if staging.has_files(config.staging_root, config.run_id):
        raise OptionsError(
            f"run_id {config.run_id} already has staging under {config.staging_root}: "
            "use a new run id (or omit --run_id)"
        )
    with open_warehouse(config.warehouse, config.tables) as warehouse:
        warehouse.ensure_tables()
    recovered = []
    for run_id in staging.staged_run_ids(config.staging_root):
        if staging.is_committed(config.staging_root, run_id):
            continue
        log.warning("recovering run %s: staged but not committed", run_id)
        try:
            recovered.append(
                commit_staged_run(config.warehouse, config.tables, config.staging_root, run_id)
            )
        except CommitError as exc:
            # Never let one bad staging block every later run: its wallets are not marked done,
            # so this run fetches them again; the staging stays for `commit --run_id` by hand.
            log.error("run %s stays uncommitted: %s", run_id, exc)
            recovered.append({"run_id": run_id, "error": str(exc)})
    if config.verify:
        with open_warehouse(config.warehouse, config.tables) as warehouse:
            log.warning("%s", warehouse.verify(reset=True).render())
    return recovered
