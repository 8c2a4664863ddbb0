"""Bytes BigQuery processes per commit: production trades read for the run's listed wallets
(`@wallets`, which clustering on `wallet_address` can prune to) beside the unpruned form (filters
by subquery, what a run with too many wallets to list gets, and what every commit did before).

It seeds a dataset's production with `--seed_wallets` x `--trades_per_wallet` trades spread over
`--days` days (one commit), then commits `--runs` pairs of runs of `--run_wallets` new wallets
each: the first of a pair unpruned (`wallets_listed_at_most = 0`), the second listed, so both see
the same production give or take one small run. For each commit job it reports what BigQuery
reported after running it: `totalBytesProcessed` and `totalBytesBilled` of the script, and of its
INSERT into trades. Not a dry run: BigQuery cannot know which clustered blocks a query skips until
it runs (https://docs.cloud.google.com/bigquery/docs/clustered-tables), so a dry run's estimate
shows no block pruning.

    .venv/bin/python bench/commit_bytes.py --project P --dataset scratch_commit_bytes   # BigQuery
    .venv/bin/python bench/commit_bytes.py --emulator                                  # bqemulator

Against BigQuery it needs Application Default Credentials and creates the dataset (delete it
after). bqemulator reports 0 bytes for every job, dry run or not: against it the script says so
and exits 2 rather than print zeros as figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse  # noqa: E402
from tests.support import T0, outcome, stage, trade, ts  # noqa: E402

RESULTS = REPO / "bench" / "results" / "commit_bytes.json"
DAY = 86_400


def wallet(name: str) -> str:
    """A wallet address spread over the whole key range, as real ones are."""
    return "0x" + hashlib.sha1(name.encode()).hexdigest()


def run_rows(run_id: str, wallets: list[str], trades: int, days: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {"trades": [], "outcomes": []}
    for w in wallets:
        for i in range(trades):
            day = -(i % days) * DAY
            rows["trades"].append(
                trade(w, f"{w}-{run_id}-{i}", run_id, timestamp=int(T0) + day, traded_at=ts(day))
            )
        rows["outcomes"].append(outcome(w, run_id, True, 10, trade_count=trades))
    return rows


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any]]]:
    """(project, client settings) of the BigQuery to measure: the real one or an emulator."""
    if not args.emulator:
        yield args.project, {"location": args.location}
        return
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    from tests.bq_emulator import BigQueryEmulator

    with BigQueryEmulator() as emu:
        settings = {
            "client_options": ClientOptions(api_endpoint=emu.endpoint),
            "credentials": AnonymousCredentials(),
        }
        yield emu.project, settings


def commit_bytes(wh: BigQueryWarehouse, run_id: str, since: dt.datetime) -> dict[str, Any]:
    """What BigQuery reported for the run's commit job: the script's bytes and its INSERT's."""
    prefix = f"backfill_commit_{run_id}_"
    jobs = [j for j in wh.client.list_jobs(min_creation_time=since) if j.job_id.startswith(prefix)]
    (job,) = [j for j in jobs if j.state == "DONE" and not j.error_result]
    job = wh.client.get_job(job.job_id, location=job.location)
    children = list(wh.client.list_jobs(parent_job=job.job_id))
    inserts = [c for c in children if "INSERT INTO" in (c.query or "") and "trades" in c.query]
    return {
        "bytes_processed": job.total_bytes_processed,
        "bytes_billed": job.total_bytes_billed,
        "insert_bytes_processed": inserts[0].total_bytes_processed if inserts else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project")
    parser.add_argument("--dataset", default="scratch_commit_bytes")
    parser.add_argument("--location", default=None)
    parser.add_argument("--emulator", action="store_true", help="measure bqemulator instead")
    parser.add_argument("--seed_wallets", type=int, default=2_000)
    parser.add_argument("--trades_per_wallet", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--run_wallets", type=int, default=20)
    args = parser.parse_args(argv)
    if not args.emulator and not args.project:
        parser.error("--project is required (or --emulator)")

    with target(args) as (project, settings), tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        after = BigQueryWarehouse(project, args.dataset, **settings)
        before = BigQueryWarehouse(project, args.dataset, **settings)
        before.wallets_listed_at_most = 0  # every run "too many to list": the unpruned form
        after.ensure_tables()
        seed = [wallet(f"seed{i}") for i in range(args.seed_wallets)]
        seed_rows = run_rows("seed", seed, args.trades_per_wallet, args.days)
        after.commit_run("seed", stage(staging, "seed", **seed_rows))
        pairs = []
        for n in range(args.runs):
            pair: dict[str, Any] = {"run_wallets": args.run_wallets}
            for label, wh in (("before", before), ("after", after)):
                run_id = f"{label}{n}"
                wallets = [wallet(f"{run_id}-{i}") for i in range(args.run_wallets)]
                rows = run_rows(run_id, wallets, args.trades_per_wallet, args.days)
                since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
                report = wh.commit_run(run_id, stage(staging, run_id, **rows))
                assert report.trades_inserted == len(rows["trades"]), report
                pair[label] = commit_bytes(wh, run_id, since)
            pairs.append(pair)
            print(json.dumps(pair))
        after.close()
        before.close()

    measured = [p[s]["bytes_processed"] for p in pairs for s in ("before", "after")]
    if not any(measured):
        print(
            "no figures: every commit job reported 0 bytes processed (bqemulator does not "
            "compute bytes, for dry runs or otherwise); run against BigQuery with --project",
            file=sys.stderr,
        )
        return 2
    production = args.seed_wallets * args.trades_per_wallet
    print(f"production ~{production:,} trades of {args.seed_wallets:,} wallets over {args.days} d")
    print(
        f"{'pair':>4} {'before: processed':>18} {'billed':>14} {'after: processed':>18} {'billed':>14}"
    )
    for n, p in enumerate(pairs):
        b, a = p["before"], p["after"]
        print(
            f"{n:>4} {b['bytes_processed'] or 0:>18,} {b['bytes_billed'] or 0:>14,} "
            f"{a['bytes_processed'] or 0:>18,} {a['bytes_billed'] or 0:>14,}"
        )
    RESULTS.write_text(json.dumps({"args": vars(args), "pairs": pairs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
