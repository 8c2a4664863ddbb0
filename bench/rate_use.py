"""Figure 1, rate-limit use: the pipeline (DirectRunner, default parallelism) over 300 wallets at the
simulator's Free and Dev tiers, the simulator in its own process answering with a ~150 ms median
latency.

rate use = sustained requests/s achieved ÷ the tier's sustained allowance (min(per 1 s, per 10 s / 10):
Free 10/s, Dev 50/s). Sustained = the requests the simulator received after the first 10 s window
(whose burst allowance would flatter the ratio) up to the last API request, over that time. The
count at "first request + 10 s" is interpolated between polls of /_sim/stats every 0.1 s. Also
printed: the 429s, the simulator's peak 1 s / 10 s windows, the requests per second of the run.

Data: seed 7, 300 wallets, trades per wallet capped by --max_trades (2000). Free uses the pipeline's
default page size (1000): ~356 requests, ~36 s at 10/s. At that size the whole Dev run would fit in
Dev's first 10 s window (500 requests), leaving no steady part to measure, so Dev uses 50 orders per
page (~950 requests for the same trades), which keeps it >10 s past the burst window.

    .venv/bin/python bench/rate_use.py [--tier free --tier dev] [--pipeline_arg=--fetch_threads=16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import fmt

PROFILES: dict[str, dict[str, int]] = {
    "free": {"max_trades": 2000, "page_limit": 1000},
    "dev": {"max_trades": 2000, "page_limit": 50},
}
STEADY_AFTER_S = 10.0


def run_tier(
    tier: str,
    workdir: Path,
    pipeline_args: tuple[str, ...] = (),
    wallets: int = common.WALLETS,
) -> dict[str, Any]:
    """One pipeline run at `tier` against a fresh simulator; every figure 1 and 2 need from it."""
    profile = PROFILES[tier]
    with common.simulator(
        workdir, tier=tier, max_trades=profile["max_trades"], wallets=wallets
    ) as sim:
        truth = sim.truth()
        wallets = sorted(truth["wallets"])
        db_path, staging = common.fresh_warehouse(workdir, f"pipeline-{tier}", wallets)
        run = common.run_pipeline(
            sim,
            db_path,
            staging,
            f"--tier={tier}",
            f"--page_limit={profile['page_limit']}",
            *pipeline_args,
            sample=True,
        )
        stats = sim.stats()
    return summarize(tier, profile, truth, stats, run, pipeline_args)


def summarize(
    tier: str,
    profile: dict[str, int],
    truth: dict[str, Any],
    stats: dict[str, Any],
    run: common.ProcessRun,
    pipeline_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    first, last = stats["first_request_at"], stats["last_request_at"]
    total, http_429 = stats["requests_total"], stats["http_429"]
    span = last - first
    steady_from = first + STEADY_AFTER_S
    steady_s = last - steady_from
    limit = common.sustained(tier)
    if steady_s > 1.0:
        # 429s are not useful work: all of them are assumed to fall in the steady part.
        steady_requests = total - common.requests_at(run.samples, steady_from) - http_429
        rate_use = steady_requests / steady_s / limit
    else:
        steady_requests, rate_use = None, None
    per_second = [
        round(
            common.requests_at(run.samples, first + s + 1)
            - common.requests_at(run.samples, first + s)
        )
        for s in range(int(span) + 1)
    ]
    complete = (
        run.counters.get("wallets_fetched") == len(truth["wallets"])
        and run.counters.get("trades") == truth["totals"]["trades"]
    )
    return {
        "tier": tier,
        "wallets": len(truth["wallets"]),
        "trades": truth["totals"]["trades"],
        "max_trades": profile["max_trades"],
        "page_limit": profile["page_limit"],
        "pipeline_args": list(pipeline_args),
        "complete": complete,
        "sustained_limit": limit,
        "limits": list(common.TIER_LIMITS[tier]),
        "requests": total,
        "requests_by_endpoint": stats["requests"],
        "http_429": http_429,
        "pipeline_http_429": run.counters.get("http_429"),
        "pipeline_retries": run.counters.get("retries"),
        "peak_1s": stats["peak_1s"],
        "peak_10s": stats["peak_10s"],
        "span_s": span,
        "start_to_first_request_s": first - run.started_at,
        "last_request_to_exit_s": run.started_at + run.wall_s - last,
        "phases": common.phases(run.samples, first),
        "steady_s": steady_s,
        "steady_requests": steady_requests,
        "rate_use": rate_use,
        "rate_use_whole_span": (total - http_429) / span / limit if span > 0 else None,
        "requests_per_second": per_second,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "maxrss_mb": run.maxrss_mb,
        "truth": {
            "traded_markets": len(truth["totals"]["traded_markets"]),
            "traded_events": len(truth["totals"]["traded_events"]),
        },
        "ideal": common.ideal_requests(truth, profile["page_limit"]),
    }


def report(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"{r['tier']}: {r['wallets']} wallets, {r['trades']} trades, page {r['page_limit']}"
        f"{' ' + ' '.join(r['pipeline_args']) if r['pipeline_args'] else ''}; "
        f"{'complete' if r['complete'] else 'INCOMPLETE'}",
        f"  rate use {fmt(r['rate_use'])} (steady {fmt(r['steady_requests'], 0)} requests in "
        f"{r['steady_s']:.1f} s after the first {STEADY_AFTER_S:g} s, ÷ {r['sustained_limit']:g}/s)"
        f"; whole span {fmt(r['rate_use_whole_span'])} ({r['requests']} in {r['span_s']:.1f} s)",
        f"  429s {r['http_429']}; peaks {r['peak_1s']}/1 s, {r['peak_10s']}/10 s "
        f"(limits {r['limits'][0]}, {r['limits'][1]}); process wall {r['wall_s']:.1f} s",
        f"  requests per second: {' '.join(str(n) for n in r['requests_per_second'])}",
        f"  start -> first request {r['start_to_first_request_s']:.1f} s, last request -> exit "
        f"{r['last_request_to_exit_s']:.1f} s; seconds after the first request when each "
        f"endpoint was first/last seen: {r['phases']}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", action="append", choices=sorted(PROFILES), default=None)
    parser.add_argument(
        "--pipeline_arg", action="append", default=[], help="extra option for `pipeline run`"
    )
    parser.add_argument(
        "--wallets",
        type=int,
        default=common.WALLETS,
        help="more wallets amortise the fixed idle between the graph's fetching stages",
    )
    args = parser.parse_args()
    tiers = args.tier or ["free", "dev"]
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp:
        for tier in tiers:
            start = time.monotonic()
            result = run_tier(tier, Path(tmp), tuple(args.pipeline_arg), args.wallets)
            print(report(result))
            print(f"  target: rate use >= 0.95, 0 429s ({time.monotonic() - start:.0f} s)")
    extra = [f"--tier={t}" for t in tiers] + [f"--pipeline_arg={a}" for a in args.pipeline_arg]
    extra += [f"--wallets={args.wallets}"] if args.wallets != common.WALLETS else []
    print("rerun:", common.rerun("rate_use.py", *extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
