"""Figure 3, against the way it was done before: the pipeline and the old job (bench/old_job.py: 10
threads, `requests`, a fixed 0.05 s delay, no shared limiter, markets per 100 with an in-memory set,
429 -> sleep 1 s and retry) on the same data and tier, each against a fresh simulator process with
the same seed (so the same data and the same latency sequence).

wall ratio = the pipeline's process wall time ÷ the old job's process wall time, start to exit. The
pipeline's includes what the old job does not do: Beam's start-up (~3 s) and the transactional commit
into DuckDB; so the time from first to last API request is compared too. Both 429 counts are what
the simulator sent.

    .venv/bin/python bench/vs_baseline.py [--tier free] [--tier dev]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import rate_use


def run_baseline(tier: str, workdir: Path) -> dict[str, Any]:
    profile = rate_use.PROFILES[tier]
    with common.simulator(workdir, tier=tier, max_trades=profile["max_trades"]) as sim:
        truth = sim.truth()
        folder = workdir / f"old-job-{tier}"
        folder.mkdir()
        wallet_file = folder / "wallets.txt"
        wallet_file.write_text("\n".join(sorted(truth["wallets"])) + "\n")
        command = [
            common.PYTHON, str(common.REPO / "bench" / "old_job.py"), "--base_url", sim.base_url,
            "--wallets", str(wallet_file), "--out", str(folder),
            "--page_limit", str(profile["page_limit"]),
        ]  # fmt: skip
        env = {**os.environ, "DOME_API_KEY": sim.api_key}
        run = common.run_child(command, env).check()
        stats = sim.stats()
    summary = json.loads(run.output.strip().splitlines()[-1])
    complete = (
        summary["wallets"] == len(truth["wallets"])
        and summary["trades"] == truth["totals"]["trades"]
        and summary["markets"] == len(truth["totals"]["traded_markets"])
        and summary["events"] == len(truth["totals"]["traded_events"])
    )
    first, last = stats["first_request_at"], stats["last_request_at"]
    return {
        "tier": tier,
        "page_limit": profile["page_limit"],
        "wall_s": run.wall_s,
        "span_s": last - first,
        "requests": stats["requests_total"],
        "http_429": stats["http_429"],
        "peak_1s": stats["peak_1s"],
        "peak_10s": stats["peak_10s"],
        "complete": complete,
        "fetched": {k: summary[k] for k in ("wallets", "trades", "markets", "events")},
    }


def compare(pipeline: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    return {
        "tier": pipeline["tier"],
        "wall_ratio": pipeline["wall_s"] / baseline["wall_s"],
        "span_ratio": pipeline["span_s"] / baseline["span_s"],
        "pipeline": {
            k: pipeline[k]
            for k in ("wall_s", "span_s", "requests", "http_429", "peak_1s", "peak_10s", "complete")
        },
        "baseline": baseline,
    }


def report(result: dict[str, Any]) -> str:
    p, b = result["pipeline"], result["baseline"]
    return "\n".join(
        [
            f"{result['tier']} (page {b['page_limit']}): wall pipeline ÷ old job = "
            f"{result['wall_ratio']:.3f}; first-to-last request {result['span_ratio']:.3f}",
            f"  pipeline: {p['wall_s']:.1f} s wall, {p['span_s']:.1f} s of requests, "
            f"{p['requests']} requests, {p['http_429']} 429s, peaks {p['peak_1s']}/1 s "
            f"{p['peak_10s']}/10 s{'' if p['complete'] else ', INCOMPLETE'}",
            f"  old job:  {b['wall_s']:.1f} s wall, {b['span_s']:.1f} s of requests, "
            f"{b['requests']} requests, {b['http_429']} 429s, peaks {b['peak_1s']}/1 s "
            f"{b['peak_10s']}/10 s{'' if b['complete'] else ', INCOMPLETE'}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", action="append", choices=sorted(rate_use.PROFILES))
    args = parser.parse_args()
    tiers = args.tier or ["free"]
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        for tier in tiers:
            pipeline = rate_use.run_tier(tier, Path(tmp))
            print(report(compare(pipeline, run_baseline(tier, Path(tmp)))))
    print("target: wall ratio <= 1 with 0 429s for the pipeline")
    print("rerun:", common.rerun("vs_baseline.py", *[f"--tier={t}" for t in tiers]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
