"""Figure 5, overhead where the API is not the limit: trades per second per core of the pipeline with
the simulator unlimited (no rate limit, no latency), DirectRunner in-process vs
`--direct_running_mode=multi_processing --direct_num_workers=2`.

trades/s = trades ÷ the time from the first to the last API request (the fetching part of the run:
Beam's start-up before it and the commit after it are fixed costs, reported as end-to-end trades/s).
Per core = that ÷ the cores the mode can use: 1 in-process (one process, one GIL), min(workers,
cores) with multi_processing. Also: trades per CPU-second of the whole pipeline process tree
(user + system, start-up and commit included) and the simulator's own CPU, which shares the machine.

Data: seed 7, 600 wallets, up to 30,000 trades each (~230,000 trades), page size 1000.

    .venv/bin/python bench/overhead.py [--mode inprocess --mode multiprocess]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import common

WALLETS = 600
MAX_TRADES = 30_000
WORKERS = 2
MODES: dict[str, tuple[tuple[str, ...], int]] = {
    "inprocess": ((), 1),
    "multiprocess": (
        ("--direct_running_mode=multi_processing", f"--direct_num_workers={WORKERS}"),
        min(WORKERS, os.cpu_count() or 1),
    ),
}
NO_LIMIT = ("--tier=pro", "--rate_per_second=1000000", "--rate_per_10s=10000000")


def throughput(mode: str, workdir: Path) -> dict[str, Any]:
    args, cores = MODES[mode]
    with common.simulator(workdir, tier="unlimited", max_trades=MAX_TRADES, latency_ms=0.0) as sim:
        truth = sim.truth()
        db_path, staging = common.fresh_warehouse(
            workdir, f"overhead-{mode}", sorted(truth["wallets"])
        )
        sim_cpu = sim.cpu_seconds()
        run = common.run_pipeline(sim, db_path, staging, *NO_LIMIT, *args)
        sim_cpu = sim.cpu_seconds() - sim_cpu
        stats = sim.stats()
    trades = run.counters.get("trades", 0)
    span = stats["last_request_at"] - stats["first_request_at"]
    return {
        "mode": mode,
        "args": list(args),
        "cores": cores,
        "trades": trades,
        "complete": trades == truth["totals"]["trades"],
        "requests": stats["requests_total"],
        "span_s": span,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "simulator_cpu_s": sim_cpu,
        "trades_per_s": trades / span,
        "trades_per_s_per_core": trades / span / cores,
        "trades_per_s_end_to_end": trades / run.wall_s,
        "trades_per_cpu_s": trades / run.cpu_s,
    }


def report(result: dict[str, Any]) -> str:
    r = result
    return (
        f"{r['mode']:12} {r['trades_per_s_per_core']:8.0f} trades/s/core ({r['trades_per_s']:.0f} "
        f"trades/s over {r['span_s']:.1f} s of fetching ÷ {r['cores']} core(s)); end to end "
        f"{r['trades_per_s_end_to_end']:.0f}/s in {r['wall_s']:.1f} s; {r['trades_per_cpu_s']:.0f} "
        f"trades per CPU-s ({r['cpu_s']:.1f} CPU-s); simulator {r['simulator_cpu_s']:.1f} CPU-s"
        f"{'' if r['complete'] else '; INCOMPLETE'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", action="append", choices=sorted(MODES))
    args = parser.parse_args()
    modes = args.mode or ["inprocess", "multiprocess"]
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for mode in modes:
            print(report(throughput(mode, Path(tmp))))
    print(f"cores on this machine: {os.cpu_count()}")
    print("rerun:", common.rerun("overhead.py", *[f"--mode={m}" for m in modes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
