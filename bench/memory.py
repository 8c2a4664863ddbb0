"""Figure 4, memory: the pipeline's peak RSS for one wallet of 10,000 trades vs one of 200,000.

Each run is its own `python -m pipeline run` process against a simulator process serving exactly one
wallet (`python -m pipeline simulate --wallets 1 --trade_counts 0=N`), ~150 ms median latency, no rate limit. Peak RSS is the child's `ru_maxrss` from `os.wait4`, so
it covers the whole run: Beam start-up, fetching, staging and the DuckDB commit. /proc is also polled
every 0.1 s to split the peak between the fetching part (up to the last API request) and what comes
after it (the commit).

growth = (peak RSS at 200,000 trades - peak RSS at 10,000) ÷ peak RSS at 10,000. Target < 20%.

    .venv/bin/python bench/memory.py [--small 10000] [--large 200000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import common


def peak_rss(trades: int, workdir: Path, latency_ms: float = common.LATENCY_MS) -> dict[str, Any]:
    with common.simulator(
        workdir, tier="unlimited", wallets=1, latency_ms=latency_ms, trade_counts={0: trades}
    ) as sim:
        wallets = list(sim.truth()["wallets"])
        db_path, staging = common.fresh_warehouse(workdir, f"memory-{trades}", wallets)
        run = common.run_pipeline(sim, db_path, staging, "--tier=pro", track_rss=True)
        stats = sim.stats()
    last = stats["last_request_at"]
    fetching = [mb for t, mb in run.rss if t <= last]
    after = [mb for t, mb in run.rss if t > last]
    return {
        "trades": trades,
        "fetched": run.counters.get("trades"),
        "requests": stats["requests_total"],
        "peak_rss_mb": run.maxrss_mb,
        "peak_rss_fetching_mb": max(fetching, default=None),
        "peak_rss_after_fetching_mb": max(after, default=None),
        "wall_s": run.wall_s,
    }


def growth(small: dict[str, Any], large: dict[str, Any], key: str = "peak_rss_mb") -> float | None:
    if small.get(key) is None or large.get(key) is None:
        return None
    return (large[key] - small[key]) / small[key]


def measure(workdir: Path, small: int = 10_000, large: int = 200_000) -> dict[str, Any]:
    runs = [peak_rss(n, workdir) for n in (small, large)]
    return {
        "runs": runs,
        "rss_growth": growth(*runs),
        "rss_growth_fetching": growth(*runs, key="peak_rss_fetching_mb"),
        "rss_growth_after_fetching": growth(*runs, key="peak_rss_after_fetching_mb"),
    }


def report(result: dict[str, Any]) -> str:
    lines = []
    for run in result["runs"]:
        lines.append(
            f"{run['trades']:>7} trades ({run['fetched']} fetched, {run['requests']} requests, "
            f"{run['wall_s']:.1f} s): peak RSS {run['peak_rss_mb']:.0f} MB; while fetching "
            f"{common.fmt(run['peak_rss_fetching_mb'], 0)} MB, after (commit) "
            f"{common.fmt(run['peak_rss_after_fetching_mb'], 0)} MB"
        )
    lines.append(
        f"growth {100 * result['rss_growth']:.1f}% (target < 20%); while fetching "
        f"{100 * (result['rss_growth_fetching'] or 0):.1f}%, after fetching "
        f"{100 * (result['rss_growth_after_fetching'] or 0):.1f}%"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        print(report(measure(Path(tmp), args.small, args.large)))
    print("rerun:", common.rerun("memory.py", f"--small={args.small}", f"--large={args.large}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
