"""Polymarket figures: the pipeline (`--source polymarket`, DirectRunner, default parallelism) over
300 wallets at Polymarket's published per-IP limits, the simulator in its own process answering with
a ~150 ms median latency. The same data shape as rate_use.py's Dome runs (seed 7, trades per wallet
capped at 2,000).

Polymarket's limits are per bucket and per 10 s sliding window (no 1 s window): /v2/trades 200 (the
bottleneck, 20/s sustained), markets 300, events 500, listing 900, data 1,000, gamma 4,000, all
15,000. Figures (bench/README.md, "Polymarket", has the definitions):

- rate use of the trades bucket: trades requests in the whole 10 s windows after the first 10 s,
  up to the last trades request, ÷ 200 per window (also: the same to the last request exactly, as
  the Dome figure is computed); every other bucket's requests, use and peak; 429s (all buckets).
- requests ÷ ideal, overall and per endpoint (ideal: the fewest calls the API allows for this data).
- wall ÷ physical limit: process wall (start to exit) ÷ max over buckets of
  max(0, (ideal requests - limit per window) ÷ sustained rate); start to first request, last
  request to exit.

Page size: 50 trades per page by default (~895 trades requests, ~35 s past the first window's 200).
At the pipeline's default (1,000: ~310 requests) the run fits in about one and a half windows and
leaves nothing steady to measure; `--page_limit=1000` measures it anyway.

    .venv/bin/python bench/polymarket.py [--page_limit 50] [--pipeline_arg=--fetch_threads=16]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import PmSample, fmt

from pipeline.sources.polymarket.source import (
    EVENTS_PER_REQUEST,
    LIMITS_PER_10S,
    MARKETS_PER_REQUEST,
    RESOLUTIONS_PER_REQUEST,
    ROUTES,
)

MAX_TRADES = 2000
PAGE_LIMIT = 50
WINDOW_S = 10.0
STEADY_AFTER_S = 10.0
# The simulator's endpoint names -> the pipeline's (source.ROUTES keys).
ENDPOINTS = {
    "trades": "trades",
    "status": "status",
    "resolutions": "resolutions",
    "gamma_markets": "markets_keyset",
    "gamma_markets_slug": "markets_slug",
    "gamma_events": "events_keyset",
    "gamma_events_slug": "events_slug",
}
BUCKETS = tuple(LIMITS_PER_10S)


def sustained(bucket: str) -> float:
    return LIMITS_PER_10S[bucket] / WINDOW_S


# ---- counts over time, from the 0.1 s polls of /_sim/stats ----------------------------------
def bucket_count(bucket: str) -> Callable[[PmSample], int]:
    """A sample's requests drawn from `bucket` (`all`: every Polymarket request)."""
    if bucket == "all":
        return lambda sample: sample.total
    names = [sim for sim, route in ENDPOINTS.items() if bucket in ROUTES[route]]
    return lambda sample: sum(getattr(sample, name) for name in names)


def endpoint_count(name: str) -> Callable[[PmSample], int]:
    return lambda sample: getattr(sample, name)


def count_at(samples: list[PmSample], moment: float, count: Callable[[PmSample], int]) -> float:
    """Requests counted by `count` at `moment`, interpolated between polls."""
    before = [s for s in samples if s.at <= moment]
    after = [s for s in samples if s.at > moment]
    if not before:
        return 0.0
    if not after:
        return float(count(before[-1]))
    a, b = before[-1], after[0]
    return count(a) + (count(b) - count(a)) * (moment - a.at) / (b.at - a.at)


def first_last(
    samples: list[PmSample], count: Callable[[PmSample], int]
) -> tuple[float, float] | None:
    """When the first and the last request counted by `count` arrived: the midpoint of the two
    polls around each (±0.05 s)."""
    values = [(s.at, count(s)) for s in samples]
    if not values or values[-1][1] == 0:
        return None
    final = values[-1][1]
    i = next(i for i, (_, n) in enumerate(values) if n > 0)
    j = next(j for j, (_, n) in enumerate(values) if n == final)
    first = values[i][0] if i == 0 else (values[i - 1][0] + values[i][0]) / 2
    last = values[j][0] if j == 0 else (values[j - 1][0] + values[j][0]) / 2
    return first, last


def per_second(
    samples: list[PmSample], count: Callable[[PmSample], int], origin: float, seconds: int
) -> list[int]:
    return [
        round(count_at(samples, origin + s + 1, count) - count_at(samples, origin + s, count))
        for s in range(seconds)
    ]


def idle_gaps(
    samples: list[PmSample], count: Callable[[PmSample], int], origin: float, min_s: float = 1.0
) -> list[list[float]]:
    """[from, to] (seconds after `origin`) of every stretch of at least `min_s` in which no
    request counted by `count` arrived, between its first and last request."""
    span = first_last(samples, count)
    if span is None:
        return []
    inside = [s for s in samples if span[0] <= s.at <= span[1] + 0.1]
    gaps, start = [], None
    for prev, cur in itertools.pairwise(inside):
        if count(cur) == count(prev):
            start = prev.at if start is None else start
        elif start is not None:
            if prev.at - start >= min_s:
                gaps.append([round(start - origin, 1), round(prev.at - origin, 1)])
            start = None
    return gaps


# ---- the ideal -----------------------------------------------------------------------------
def ideal_requests(truth: dict[str, Any], page_limit: int) -> dict[str, Any]:
    """The fewest calls the API allows for this data (bench/README.md, "Polymarket"), per
    endpoint (the pipeline's names) and what each is computed from."""
    wallets = truth["wallets"]
    rows = [row for wallet in wallets.values() for row in wallet["rows"]]
    traded = {row["condition_id"].lower(): row.get("slug") or "" for row in rows}
    slugs = {row.get("event_slug") or "" for row in rows} - {""}
    found = {m["conditionId"].lower(): m for m in truth["markets"]}
    keyset_missing = {cid.lower() for cid in truth["keyset_missing_markets"]}
    missing = [cid for cid in traded if cid not in found]
    closed_by_keyset = sum(
        1 for cid, m in found.items() if cid in traded and m["closed"] and cid not in keyset_missing
    )
    left_for_open_pass = len(traded) - closed_by_keyset  # open, keyset-missing, missing
    closed = sum(1 for cid, m in found.items() if cid in traded and m["closed"])
    events = {e["slug"]: e for e in truth["events"] if e["slug"] in slugs}
    closed_events = sum(1 for e in events.values() if e.get("closed"))
    events_missing = len(slugs) - len(events)
    ideal = {
        "trades": sum(max(1, math.ceil(w["count"] / page_limit)) for w in wallets.values()),
        "status": 1,
        "markets_keyset": math.ceil(len(traded) / MARKETS_PER_REQUEST)
        + math.ceil(left_for_open_pass / MARKETS_PER_REQUEST),
        "markets_slug": len(keyset_missing & set(traded)) + sum(1 for c in missing if traded[c]),
        "resolutions": math.ceil(closed / RESOLUTIONS_PER_REQUEST),
        "events_keyset": math.ceil(len(slugs) / EVENTS_PER_REQUEST)
        + math.ceil((len(slugs) - closed_events) / EVENTS_PER_REQUEST),
        "events_slug": events_missing,
    }
    basis = {
        "traded_markets": len(traded),
        "closed_by_keyset": closed_by_keyset,
        "left_for_open_pass": left_for_open_pass,
        "keyset_missing_markets": len(keyset_missing & set(traded)),
        "missing_markets": len(missing),
        "closed_markets": closed,
        "traded_events": len(slugs),
        "closed_events": closed_events,
        "missing_events": events_missing,
    }
    return {"by_endpoint": ideal, "basis": basis}


def by_bucket(per_endpoint: dict[str, int]) -> dict[str, int]:
    """Requests per bucket from requests per endpoint (the pipeline's names), through ROUTES."""
    out = dict.fromkeys(BUCKETS, 0)
    for endpoint, n in per_endpoint.items():
        for bucket in ROUTES[endpoint]:
            out[bucket] += n
    return out


def limit_s(requests: int, bucket: str) -> float:
    """The physical limit of one bucket: max(0, (requests - limit per window) ÷ sustained rate)."""
    return max(0.0, (requests - LIMITS_PER_10S[bucket]) / sustained(bucket))


def window_floor_s(requests: int, bucket: str) -> float:
    """The sliding window's exact floor: request k (0-based) cannot be sent before
    floor(k / limit) windows have passed since the first."""
    return math.floor(max(0, requests - 1) / LIMITS_PER_10S[bucket]) * WINDOW_S


# ---- one run -------------------------------------------------------------------------------
def run(
    workdir: Path,
    page_limit: int = PAGE_LIMIT,
    pipeline_args: tuple[str, ...] = (),
    wallets: int = common.WALLETS,
) -> dict[str, Any]:
    with common.simulator(
        workdir, tier="unlimited", max_trades=MAX_TRADES, wallets=wallets, source="polymarket"
    ) as sim:
        truth = sim.truth(rows=True)
        addresses = sorted(truth["wallets"])
        db_path, staging = common.fresh_warehouse(workdir, f"pipeline-pm-{page_limit}", addresses)
        load = os.getloadavg()
        result = common.run_pipeline(
            sim, db_path, staging, f"--page_limit={page_limit}", *pipeline_args, sample=True
        )
        stats = sim.stats()["polymarket"]
    return summarize(truth, stats, result, page_limit, pipeline_args, load)


def summarize(
    truth: dict[str, Any],
    stats: dict[str, Any],
    run: common.ProcessRun,
    page_limit: int,
    pipeline_args: tuple[str, ...],
    load: tuple[float, float, float],
) -> dict[str, Any]:
    samples: list[PmSample] = run.samples
    made_by_endpoint = {
        ENDPOINTS[name]: n for name, n in stats["requests"].items() if name in ENDPOINTS
    }
    ideal = ideal_requests(truth, page_limit)
    ideal_total = sum(ideal["by_endpoint"].values())
    made_total = stats["requests_total"]
    statuses = stats["responses_by_status"]
    http_429 = statuses.get("429", 0)
    http_503 = statuses.get("503", 0)

    span = first_last(samples, bucket_count("all"))
    assert span is not None, "the simulator saw no Polymarket request"
    first, last = span
    exit_at = run.started_at + run.wall_s

    # The trades bucket: the bottleneck.
    trades = bucket_count("trades")
    t_first, t_last = first_last(samples, trades) or (first, last)
    # The simulator's own arrival stamps, where it has them, are exact (the polls: ±0.05 s).
    first_at, last_at = stats.get("first_request_at") or {}, stats.get("last_request_at") or {}
    if first_at and last_at:
        first, last = min(first_at.values()), max(last_at.values())
        t_first, t_last = first_at.get("trades", t_first), last_at.get("trades", t_last)
    n_trades = stats["buckets"]["trades"]["requests"] - stats["buckets"]["trades"]["http_429"]
    steady_from = t_first + STEADY_AFTER_S
    steady_s = t_last - steady_from
    windows = int(steady_s // WINDOW_S) if steady_s > 0 else 0
    limit_t = LIMITS_PER_10S["trades"]
    whole = None
    if windows:
        served = count_at(samples, steady_from + windows * WINDOW_S, trades) - count_at(
            samples, steady_from, trades
        )
        whole = served / (windows * limit_t)
    to_last = None
    if steady_s > 1.0:
        to_last = (
            (n_trades - count_at(samples, steady_from, trades)) / steady_s / sustained("trades")
        )

    buckets = {}
    ideal_buckets = by_bucket(ideal["by_endpoint"])
    fetch_span = last - first
    for name in BUCKETS:
        b = stats["buckets"][name]
        accepted = b["requests"] - b["http_429"] - b["http_503"]
        buckets[name] = {
            "limit": b["limit"],
            "requests": b["requests"],
            "ideal": ideal_buckets[name],
            # share of the bucket's allowance over the run's first-to-last request span
            "use": accepted / (fetch_span * sustained(name)) if fetch_span > 0 else None,
            "peak_accepted": b["peak_accepted"],
            "peak_ok": b["peak_accepted"] <= b["limit"],
            "http_429": b["http_429"],
            "http_503": b["http_503"],
            "limit_s": round(limit_s(ideal_buckets[name], name), 2),
            "window_floor_s": window_floor_s(ideal_buckets[name], name),
            "limit_s_made": round(limit_s(b["requests"], name), 2),
        }
    physical = max(bucket["limit_s"] for bucket in buckets.values())
    bottleneck = max(buckets, key=lambda n: buckets[n]["limit_s"])
    seconds = math.ceil(last - first)
    phases = {}
    for name in ENDPOINTS:
        seen = first_last(samples, endpoint_count(name))
        phases[ENDPOINTS[name]] = (
            None if seen is None else [round(seen[0] - first, 1), round(seen[1] - first, 1)]
        )
    complete = (
        run.counters.get("wallets_fetched") == len(truth["wallets"])
        and run.counters.get("trades") == truth["totals"]["trades"]
    )
    return {
        "source": "polymarket",
        "wallets": len(truth["wallets"]),
        "trades": truth["totals"]["trades"],
        "max_trades": MAX_TRADES,
        "page_limit": page_limit,
        "pipeline_args": list(pipeline_args),
        "complete": complete,
        "loadavg_at_start": [round(x, 2) for x in load],
        "rate_use_trades": whole,
        "rate_use_trades_to_last": to_last,
        "trades_steady": {
            "first_request_s": round(t_first - first, 2),
            "last_request_s": round(t_last - first, 2),
            "steady_s": round(steady_s, 2),
            "whole_windows": windows,
            "requests": n_trades,
        },
        "http_429": http_429,
        "http_503": http_503,
        "pipeline_http_429": run.counters.get("http_429"),
        "pipeline_retries": run.counters.get("retries"),
        "buckets": buckets,
        "requests": made_total,
        "ideal": ideal_total,
        "request_ratio": made_total / ideal_total,
        "requests_by_endpoint": {
            name: {
                "made": made_by_endpoint.get(name, 0),
                "ideal": n,
                "ratio": made_by_endpoint.get(name, 0) / n if n else None,
            }
            for name, n in ideal["by_endpoint"].items()
        },
        "requests_other": stats["requests"].get("other", 0),
        "ideal_basis": ideal["basis"],
        "physical_limit_s": physical,
        "physical_limit_bucket": bottleneck,
        "window_floor_s": buckets[bottleneck]["window_floor_s"],
        "wall_s": run.wall_s,
        "wall_vs_limit": run.wall_s / physical if physical else None,
        "fetch_span_s": fetch_span,
        "fetch_span_vs_limit": fetch_span / physical if physical else None,
        "start_to_first_request_s": first - run.started_at,
        "last_request_to_exit_s": exit_at - last,
        "phases": phases,
        "trades_per_second": per_second(samples, trades, first, seconds),
        "other_per_second": per_second(samples, lambda s: s.total - s.trades, first, seconds),
        "trades_idle_gaps": idle_gaps(samples, trades, first),
        "cpu_s": run.cpu_s,
        "maxrss_mb": run.maxrss_mb,
    }


def report(r: dict[str, Any]) -> str:
    ts = r["trades_steady"]
    lines = [
        f"polymarket: {r['wallets']} wallets, {r['trades']} trades, page {r['page_limit']}"
        f"{' ' + ' '.join(r['pipeline_args']) if r['pipeline_args'] else ''}; "
        f"{'complete' if r['complete'] else 'INCOMPLETE'}; load at start "
        f"{' '.join(str(x) for x in r['loadavg_at_start'])}",
        f"  rate use, trades bucket {fmt(r['rate_use_trades'])} ({ts['whole_windows']} whole 10 s "
        f"windows after the first 10 s, ÷ 200 each); to the last trades request "
        f"{fmt(r['rate_use_trades_to_last'])} ({ts['requests']} trades requests, "
        f"{ts['first_request_s']:.1f}-{ts['last_request_s']:.1f} s after the first request)",
        f"  429s {r['http_429']}, 503s {r['http_503']} (pipeline retries {r['pipeline_retries']})",
        "  buckets (requests made/ideal, use over the run, peak accepted/limit per 10 s):",
    ]
    for name, b in r["buckets"].items():
        lines.append(
            f"    {name:8} {b['requests']:5}/{b['ideal']:<5} use {fmt(b['use'])}  peak "
            f"{b['peak_accepted']}/{b['limit']}{'' if b['peak_ok'] else ' OVER'}  limit "
            f"{b['limit_s']:.2f} s"
        )
    parts = ", ".join(
        f"{name} {v['made']}/{v['ideal']}" for name, v in r["requests_by_endpoint"].items()
    )
    lines += [
        f"  requests ÷ ideal {r['request_ratio']:.3f} ({r['requests']}/{r['ideal']}: {parts}"
        f"{', other ' + str(r['requests_other']) if r['requests_other'] else ''})",
        f"  wall ÷ physical limit {fmt(r['wall_vs_limit'])} (process wall {r['wall_s']:.1f} s ÷ "
        f"{r['physical_limit_s']:.2f} s, bucket {r['physical_limit_bucket']}; the window's exact "
        f"floor {r['window_floor_s']:.0f} s); first-to-last request {r['fetch_span_s']:.1f} s "
        f"({fmt(r['fetch_span_vs_limit'])} of the limit)",
        f"  start -> first request {r['start_to_first_request_s']:.1f} s, last request -> exit "
        f"{r['last_request_to_exit_s']:.1f} s; endpoints first/last seen (s after the first "
        f"request): {r['phases']}",
        f"  trades requests per second: {' '.join(str(n) for n in r['trades_per_second'])}",
        f"  other requests per second:  {' '.join(str(n) for n in r['other_per_second'])}",
        f"  trades idle gaps >= 1 s (s after the first request): {r['trades_idle_gaps']}",
    ]
    return "\n".join(lines)


def verdicts(r: dict[str, Any]) -> str:
    def ok(good: bool) -> str:
        return "ok" if good else "MISSED"

    rate = r["rate_use_trades"]
    peaks = all(b["peak_ok"] for b in r["buckets"].values())
    return (
        f"  targets: rate use >= 0.95 {ok(rate is not None and rate >= 0.95)}; 0 429s "
        f"{ok(r['http_429'] == 0)}; peaks <= limits {ok(peaks)}; requests ÷ ideal <= 1.0 "
        f"{ok(r['request_ratio'] <= 1.0)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page_limit", type=int, default=PAGE_LIMIT)
    parser.add_argument("--wallets", type=int, default=common.WALLETS)
    parser.add_argument(
        "--pipeline_arg", action="append", default=[], help="extra option for `pipeline run`"
    )
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pm-") as tmp:
        result = run(Path(tmp), args.page_limit, tuple(args.pipeline_arg), args.wallets)
    print(report(result))
    print(verdicts(result), f"({time.monotonic() - start:.0f} s)")
    extra = [f"--pipeline_arg={a}" for a in args.pipeline_arg]
    extra += [f"--page_limit={args.page_limit}"] if args.page_limit != PAGE_LIMIT else []
    extra += [f"--wallets={args.wallets}"] if args.wallets != common.WALLETS else []
    print("rerun:", common.rerun("polymarket.py", *extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
