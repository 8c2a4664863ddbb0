"""`make bench`: runs the five pipeline benchmarks, prints their figures beside the targets and writes
them to bench/results/latest.json (committed, so that runs can be compared).

  1. rate-limit use at Free and Dev (bench/rate_use.py)
  2. requests made ÷ ideal, from the same runs (bench/request_efficiency.py)
  3. wall time and 429s against the old job (bench/vs_baseline.py, bench/old_job.py)
  4. peak RSS, one wallet of 10,000 vs 200,000 trades (bench/memory.py)
  5. trades/s per core with the API unlimited, in-process vs multi_processing (bench/overhead.py)
  6. the Polymarket source at its published limits: rate use per bucket, requests ÷ ideal, wall ÷
     the physical limit (bench/polymarket.py); its keys start with `pm_`

Every run is a separate `python -m pipeline run` process against a simulator process. About 4-5
minutes on 2 cores
(Dome; the Polymarket run adds about one).

    .venv/bin/python bench/run_all.py [--out bench/results/latest.json] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import limit_gap
import memory
import overhead
import polymarket
import rate_use
import request_efficiency
import vs_baseline

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=common.REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _step(
    name: str,
    errors: dict[str, str],
    fn: Callable[[], Any],
    report: Callable[[Any], str] | None = None,
) -> Any:
    """`fn()`, timed; a failure goes to `errors` and gives None. With `report`, prints its figures."""
    start = time.monotonic()
    print(f"-- {name} ...", flush=True)
    try:
        result = fn()
    except Exception as exc:
        traceback.print_exc()
        errors[name] = f"{type(exc).__name__}: {exc}"
        print(f"-- {name} FAILED after {time.monotonic() - start:.0f} s", flush=True)
        return None
    print(f"-- {name} done in {time.monotonic() - start:.0f} s", flush=True)
    if report is not None and result:
        print(report(result), flush=True)
    return result


def _each(
    name: str,
    keys: tuple[str, ...],
    errors: dict[str, str],
    fn: Callable[[str, Path], Any],
    workdir: Path,
    report: Callable[[Any], str],
) -> dict[str, Any]:
    """`_step` of `fn(key, workdir)` for each key (a tier, a mode), named `name` and the key."""
    return {
        key: _step(f"{name} {key}", errors, lambda k=key: fn(k, workdir), report) for key in keys
    }


def measure(workdir: Path) -> dict[str, Any]:
    errors: dict[str, str] = {}
    started = time.monotonic()
    load = [round(x, 2) for x in os.getloadavg()]
    rate = _each(
        "1+2 pipeline at", ("free", "dev"), errors, rate_use.run_tier, workdir, rate_use.report
    )
    efficiency = {t: request_efficiency.efficiency(r) for t, r in rate.items() if r}
    baseline = {}
    for tier in ("free", "dev"):
        old = _step(
            f"3 old job at {tier}", errors, lambda t=tier: vs_baseline.run_baseline(t, workdir)
        )
        if old and rate[tier]:
            baseline[tier] = vs_baseline.compare(rate[tier], old)
            print(vs_baseline.report(baseline[tier]), flush=True)
    mem = _step("4 memory", errors, lambda: memory.measure(workdir), memory.report)
    modes = ("inprocess", "multiprocess")
    speed = _each("5 overhead", modes, errors, overhead.throughput, workdir, overhead.report)
    pm = _step("6 polymarket", errors, lambda: polymarket.run(workdir), polymarket.report)

    def get(source: dict | None, *path: str) -> Any:
        for key in path:
            if source is None:
                return None
            source = source.get(key)
        return source

    ratios = [e["ratio"] for e in efficiency.values()]
    http_429 = [r["http_429"] for r in rate.values() if r]
    # Issue 14's figures (bench/limit_gap.py) from the same runs: wall ÷ requests ÷ rate, the gap.
    gap: dict[str, Any] = {}
    if pm:
        gap.update(limit_gap.keys(limit_gap.polymarket_figures(pm), common.WALLETS))
    if rate.get("free"):
        gap.update(limit_gap.keys(limit_gap.dome_figures(rate["free"]), common.WALLETS))
    return {
        "rate_use_free": get(rate, "free", "rate_use"),
        "rate_use_dev": get(rate, "dev", "rate_use"),
        "http_429": sum(http_429) if len(http_429) == 2 else None,
        "request_ratio": max(ratios) if len(ratios) == 2 else None,
        "request_ratio_free": get(efficiency, "free", "ratio"),
        "request_ratio_dev": get(efficiency, "dev", "ratio"),
        "wall_vs_baseline": get(baseline, "free", "wall_ratio"),
        "baseline_429": get(baseline, "free", "baseline", "http_429"),
        "wall_vs_baseline_dev": get(baseline, "dev", "wall_ratio"),
        "baseline_429_dev": get(baseline, "dev", "baseline", "http_429"),
        "rss_growth": get(mem, "rss_growth"),
        "rss_growth_fetching": get(mem, "rss_growth_fetching"),
        "trades_per_s_per_core_inprocess": get(speed, "inprocess", "trades_per_s_per_core"),
        "trades_per_s_per_core_multiprocess": get(speed, "multiprocess", "trades_per_s_per_core"),
        "pm_rate_use_trades": get(pm, "rate_use_trades"),
        "pm_rate_use_trades_to_last": get(pm, "rate_use_trades_to_last"),
        "pm_http_429": get(pm, "http_429"),
        "pm_peaks_ok": None if pm is None else all(b["peak_ok"] for b in pm["buckets"].values()),
        "pm_request_ratio": get(pm, "request_ratio"),
        "pm_wall_vs_limit": get(pm, "wall_vs_limit"),
        "pm_physical_limit_s": get(pm, "physical_limit_s"),
        "pm_wall_s": get(pm, "wall_s"),
        "pm_start_to_first_request_s": get(pm, "start_to_first_request_s"),
        "pm_last_request_to_exit_s": get(pm, "last_request_to_exit_s"),
        **gap,
        "cores": os.cpu_count(),
        "beam_version": importlib.metadata.version("apache-beam"),
        "python": platform.python_version(),
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.monotonic() - started, 1),
        "latency_ms": common.LATENCY_MS,
        "loadavg_at_start": load,
        "git": _git(),
        "errors": errors,
        "details": {
            "rate_use": rate,
            "request_efficiency": efficiency,
            "vs_baseline": baseline,
            "memory": mem,
            "overhead": speed,
            "polymarket": pm,
        },
    }


def table(r: dict[str, Any]) -> str:
    d = r["details"]
    rate, base, mem, speed = d["rate_use"], d["vs_baseline"], d["memory"], d["overhead"]
    pm = d.get("polymarket")
    fmt = common.fmt

    def verdict(ok: bool | None) -> str:
        return "" if ok is None else ("ok" if ok else "MISSED")

    def at_least(value: float | None, target: float) -> str:
        return verdict(None if value is None else value >= target)

    def at_most(value: float | None, target: float) -> str:
        return verdict(None if value is None else value <= target)

    def peaks(tier: str) -> tuple[str, str]:
        run = rate.get(tier)
        if not run:
            return "n/a", ""
        limits = run["limits"]
        ok = run["peak_1s"] <= limits[0] and run["peak_10s"] <= limits[1]
        return f"{run['peak_1s']} / {run['peak_10s']}", verdict(ok)

    def pair(tier: str) -> str:
        b = base.get(tier)
        return "n/a" if not b else f"{b['pipeline']['http_429']} / {b['baseline']['http_429']}"

    rows = [
        ("1 rate use, Free (10/s sustained)", fmt(r["rate_use_free"]), ">= 0.95",
         at_least(r["rate_use_free"], 0.95)),
        ("1 rate use, Dev (50/s sustained)", fmt(r["rate_use_dev"]), ">= 0.95",
         at_least(r["rate_use_dev"], 0.95)),
        ("1 429s received (Free + Dev runs)", str(r["http_429"]), "0",
         verdict(None if r["http_429"] is None else r["http_429"] == 0)),
        ("1 peak 1 s / 10 s window, Free", peaks("free")[0], "<= 10 / 100", peaks("free")[1]),
        ("1 peak 1 s / 10 s window, Dev", peaks("dev")[0], "<= 100 / 500", peaks("dev")[1]),
        ("2 requests ÷ ideal, Free", fmt(r["request_ratio_free"]), "<= 1.02",
         at_most(r["request_ratio_free"], 1.02)),
        ("2 requests ÷ ideal, Dev", fmt(r["request_ratio_dev"]), "<= 1.02",
         at_most(r["request_ratio_dev"], 1.02)),
        ("3 wall pipeline ÷ old job, Free", fmt(r["wall_vs_baseline"]), "lower is better", ""),
        ("3 429s pipeline / old job, Free", pair("free"), "0 / -", ""),
        ("3 wall pipeline ÷ old job, Dev", fmt(r["wall_vs_baseline_dev"]), "lower is better", ""),
        ("3 429s pipeline / old job, Dev", pair("dev"), "0 / -", ""),
        ("4 peak RSS growth 10k -> 200k trades",
         "n/a" if r["rss_growth"] is None else f"{100 * r['rss_growth']:.1f}%", "< 20%",
         verdict(None if r["rss_growth"] is None else r["rss_growth"] < 0.20)),
        ("4   of which while fetching",
         "n/a" if r["rss_growth_fetching"] is None else f"{100 * r['rss_growth_fetching']:.1f}%",
         "", ""),
        ("5 trades/s/core, in-process", fmt(r["trades_per_s_per_core_inprocess"], 0), "report", ""),
        (f"5 trades/s/core, multi_processing x{overhead.WORKERS}",
         fmt(r["trades_per_s_per_core_multiprocess"], 0), "report", ""),
        ("6 PM rate use, trades bucket (20/s)", fmt(r.get("pm_rate_use_trades")), ">= 0.95",
         at_least(r.get("pm_rate_use_trades"), 0.95)),
        ("6 PM 429s (all buckets)", str(r.get("pm_http_429")), "0",
         verdict(None if r.get("pm_http_429") is None else r["pm_http_429"] == 0)),
        ("6 PM peak accepted <= limit, every bucket", str(r.get("pm_peaks_ok")), "True",
         verdict(r.get("pm_peaks_ok"))),
        ("6 PM requests ÷ ideal", fmt(r.get("pm_request_ratio")), "<= 1.0",
         at_most(r.get("pm_request_ratio"), 1.0)),
        ("6 PM wall ÷ physical limit", fmt(r.get("pm_wall_vs_limit")), "lower is better", ""),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    lines = [f"{'figure':{width}}  {'measured':>10}  {'target':16}", "-" * (width + 38)]
    lines += [f"{a:{width}}  {b:>10}  {c:16}  {e}".rstrip() for a, b, c, e in rows]
    if mem:
        small, large = mem["runs"]
        lines.append(
            f"  peak RSS {small['peak_rss_mb']:.0f} -> {large['peak_rss_mb']:.0f} MB; while "
            f"fetching {fmt(small['peak_rss_fetching_mb'], 0)} -> "
            f"{fmt(large['peak_rss_fetching_mb'], 0)} MB"
        )
    lines.append(
        f"{r['cores']} cores, Beam {r['beam_version']}, Python {r['python']}, simulated latency "
        f"{r['latency_ms']:g} ms median, {r['measured_at']}, {r['duration_s']:.0f} s"
    )
    if speed.get("inprocess") and speed.get("multiprocess"):
        lines.append(
            "  trades/s: in-process {:.0f}, multi_processing {:.0f} (fetching part)".format(
                speed["inprocess"]["trades_per_s"], speed["multiprocess"]["trades_per_s"]
            )
        )
    if pm:
        lines.append(
            f"  PM: process wall {pm['wall_s']:.1f} s, limit {pm['physical_limit_s']:.2f} s "
            f"({pm['physical_limit_bucket']}); start -> first request "
            f"{pm['start_to_first_request_s']:.1f} s, last request -> exit "
            f"{pm['last_request_to_exit_s']:.1f} s"
        )
    lines.append(f"load average at start: {r.get('loadavg_at_start')}")
    for name, error in r["errors"].items():
        lines.append(f"FAILED {name}: {error}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, staging)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        result = measure(workdir)
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    print()
    print(table(result))
    print(f"written to {args.out}")
    print("rerun:", common.rerun("run_all.py"), "(or: make bench)")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
