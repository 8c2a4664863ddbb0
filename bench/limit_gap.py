"""How far a local run is from the physical limit, and where every second of the gap goes, for both
sources (issue 14). Each run is `python -m pipeline run` in its own process against the simulator
in its own process (150 ms median latency), 300 wallets by default.

The physical limit (the issue's definition): for each rate bucket, the requests it must serve (the
ideal count) ÷ its sustained rate; the run can be no faster than its slowest bucket. Polymarket:
/v2/trades, 200 per 10 s, 895 trade pages at 50 per page -> 44.75 s. Dome Free: 10/s, 356 requests
-> 35.6 s. Also shown: the sliding windows' exact floor (request k cannot leave before
floor(k / limit) windows after the first: bursting the first window beats requests ÷ rate by up to
one window), and the older `pm_wall_vs_limit` ((requests - one window) ÷ rate, below the floor).

The gap, second by second, in process time: start -> first request (imports, options, warehouse
DDL and recovery, /v2/status), first request -> first trades request (graph build, the reads before
fetching), the trades span (vs. the window floor), the last trades request -> the last request
(markets and events stages after the trades), the last request -> exit (staging, the commit).

Side by side: `--tree PATH` (repeatable) runs the same measurement with another checkout's code
(the child process runs in that folder), alternating trees run by run, so every tree sees the same
load; `--repeat N` does it N times, each round starting with the next tree. `--write` merges the
figures of this checkout's runs (the median wall) into bench/results/latest.json, keeping every
other key.

    .venv/bin/python bench/limit_gap.py [--source polymarket|dome|both] [--repeat 2]
        [--tree /path/to/other/checkout] [--wallets 300] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import polymarket
import rate_use
from common import fmt

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
HERE = common.REPO


def sliding_floor_s(requests: int, windows: list[tuple[int, float]]) -> float:
    """The earliest the last of `requests` can leave after the first, under every (limit, seconds)."""
    k = max(0, requests - 1)
    return max(math.floor(k / limit) * seconds for limit, seconds in windows)


def polymarket_figures(r: dict[str, Any]) -> dict[str, Any]:
    bucket = r["physical_limit_bucket"]
    ideal = r["buckets"][bucket]["ideal"]
    rate = polymarket.sustained(bucket)
    limit = max(b["ideal"] / polymarket.sustained(name) for name, b in r["buckets"].items())
    floor = r["window_floor_s"]
    first = r["start_to_first_request_s"]
    ts = r["trades_steady"]
    trades_span = ts["last_request_s"] - ts["first_request_s"]
    after_trades = r["fetch_span_s"] - ts["last_request_s"]
    return {
        "source": "polymarket",
        "complete": r["complete"],
        "wallets": r["wallets"],
        "bottleneck": bucket,
        "ideal_bottleneck_requests": ideal,
        "sustained_per_s": rate,
        "physical_limit_s": limit,
        "window_floor_s": floor,
        "wall_s": r["wall_s"],
        "wall_vs_limit": r["wall_s"] / limit,
        "wall_vs_window_floor": r["wall_s"] / floor if floor else None,
        "wall_vs_limit_old": r["wall_vs_limit"],
        "steady_rate_bottleneck": r["rate_use_trades"],
        "steady_rate_bottleneck_to_last": r["rate_use_trades_to_last"],
        "bucket_use": {name: b["use"] for name, b in r["buckets"].items()},
        "http_429": r["http_429"],
        "requests_vs_ideal": r["request_ratio"],
        "requests_by_endpoint": r["requests_by_endpoint"],
        "start_to_first_request_s": first,
        "last_request_to_exit_s": r["last_request_to_exit_s"],
        "gap": {
            "start_to_first_request": first,
            "first_request_to_first_trades": ts["first_request_s"],
            "trades_span": trades_span,
            "trades_span_over_floor": trades_span - floor,
            "after_last_trades_request": after_trades,
            "last_request_to_exit": r["last_request_to_exit_s"],
        },
        "trades_per_second": r["trades_per_second"],
        "other_per_second": r["other_per_second"],
    }


def dome_figures(r: dict[str, Any]) -> dict[str, Any]:
    per_second, per_10s = common.TIER_LIMITS[r["tier"]]
    ideal = sum(r["ideal"].values())
    rate = r["sustained_limit"]
    limit = ideal / rate
    floor = sliding_floor_s(ideal, [(per_second, 1.0), (per_10s, 10.0)])
    phases = r["phases"]
    orders = phases.get("orders") or [0.0, 0.0]
    return {
        "source": "dome",
        "tier": r["tier"],
        "complete": r["complete"],
        "wallets": r["wallets"],
        "bottleneck": "key",
        "ideal_bottleneck_requests": ideal,
        "sustained_per_s": rate,
        "physical_limit_s": limit,
        "window_floor_s": floor,
        "wall_s": r["wall_s"],
        "wall_vs_limit": r["wall_s"] / limit,
        "wall_vs_window_floor": r["wall_s"] / floor if floor else None,
        "steady_rate_bottleneck": r["rate_use"],
        "steady_rate_whole_span": r["rate_use_whole_span"],
        "http_429": r["http_429"],
        "requests_vs_ideal": r["requests"] / ideal,
        "requests_by_endpoint": r["requests_by_endpoint"],
        "start_to_first_request_s": r["start_to_first_request_s"],
        "last_request_to_exit_s": r["last_request_to_exit_s"],
        "gap": {
            "start_to_first_request": r["start_to_first_request_s"],
            "orders_span": orders[1] - orders[0],
            "after_last_orders_request": r["span_s"] - orders[1],
            "fetch_span_over_floor": r["span_s"] - floor,
            "last_request_to_exit": r["last_request_to_exit_s"],
        },
        "requests_per_second": r["requests_per_second"],
        "phases": phases,
    }


def measure(source: str, tree: Path, wallets: int) -> dict[str, Any]:
    common.REPO = tree  # the child processes run this checkout's code
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gap-") as tmp:
            if source == "polymarket":
                return polymarket_figures(polymarket.run(Path(tmp), wallets=wallets))
            return dome_figures(rate_use.run_tier("free", Path(tmp), wallets=wallets))
    finally:
        common.REPO = HERE


def line(tree: str, f: dict[str, Any]) -> str:
    gap = " ".join(f"{k} {v:.1f}" for k, v in f["gap"].items())
    return (
        f"  {tree}: {f['source']} wall {f['wall_s']:.1f} s ÷ limit {f['physical_limit_s']:.2f} s = "
        f"{fmt(f['wall_vs_limit'])} (÷ window floor {f['window_floor_s']:.0f} s: "
        f"{fmt(f['wall_vs_window_floor'])}); steady {fmt(f['steady_rate_bottleneck'])}; 429s "
        f"{f['http_429']}; requests ÷ ideal {f['requests_vs_ideal']:.3f}; "
        f"{'complete' if f['complete'] else 'INCOMPLETE'}\n      gap (s): {gap}"
    )


def keys(figures: dict[str, Any], wallets: int) -> dict[str, Any]:
    """The latest.json keys for one source's figures (pm_ for Polymarket, dome_ for Dome)."""
    prefix = "pm" if figures["source"] == "polymarket" else "dome"
    suffix = "" if wallets == common.WALLETS else f"_{wallets}"
    names = (
        "wall_vs_limit",
        "wall_vs_window_floor",
        "physical_limit_s",
        "window_floor_s",
        "steady_rate_bottleneck",
        "http_429",
        "requests_vs_ideal",
        "start_to_first_request_s",
        "last_request_to_exit_s",
        "wall_s",
    )
    out = {f"{prefix}_gap_{name}{suffix}": figures[name] for name in names}
    out[f"{prefix}_gap_seconds{suffix}"] = figures["gap"]
    if "bucket_use" in figures:
        out[f"{prefix}_gap_bucket_use{suffix}"] = figures["bucket_use"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("polymarket", "dome", "both"), default="both")
    parser.add_argument("--wallets", type=int, default=common.WALLETS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tree", action="append", default=[], type=Path)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    sources = ("polymarket", "dome") if args.source == "both" else (args.source,)
    trees = [("this", HERE)] + [(str(t), t.resolve()) for t in args.tree]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    started = time.monotonic()
    for i in range(args.repeat):
        for source in sources:
            print(f"-- {source}, round {i + 1}", flush=True)
            # Each round starts with the next tree, so that no tree always runs first.
            shift = i % len(trees)
            for name, tree in trees[shift:] + trees[:shift]:
                figures = measure(source, tree, args.wallets)
                runs.setdefault((source, name), []).append(figures)
                print(line(name, figures), flush=True)
    print("medians of wall ÷ limit:")
    for (source, name), got in runs.items():
        walls = [f["wall_vs_limit"] for f in got]
        print(f"  {source:10} {name}: {statistics.median(walls):.3f} ({len(walls)} runs)")
    if args.write:
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        for source in sources:
            got = sorted(runs[(source, "this")], key=lambda f: f["wall_s"])
            data.update(keys(got[(len(got) - 1) // 2], args.wallets))  # the lower median
        # Each wallet count's runs under its own key: a 300-wallet invocation keeps the last
        # 3,000-wallet runs' details, as the figures above keep each count's keys.
        data.setdefault("details", {}).setdefault("limit_gap", {}).update(
            {
                f"{source}_{name}_{args.wallets}": got
                for (source, name), got in runs.items()
                if name == "this"
            }
        )
        RESULTS.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        print(f"wrote {RESULTS}")
    extra = [f"--source={args.source}", f"--repeat={args.repeat}"]
    extra += [f"--wallets={args.wallets}"] if args.wallets != common.WALLETS else []
    print(f"({time.monotonic() - started:.0f} s) rerun:", common.rerun("limit_gap.py", *extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
