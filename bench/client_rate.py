"""Rate-limit use of the Dome client alone: 8 threads sharing one limiter against the simulator.

Prints, for the Free and Dev tiers, the sustained request rate achieved ÷ the tier's allowed
sustained rate (whole run, and steady state after the first 10 s window, whose burst allowance
would flatter the ratio), the 429s received and the simulator's peak 1 s / 10 s windows.

    .venv/bin/python bench/client_rate.py [--seconds 60] [--threads 8] [--latency_ms 50]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import threading
import time
from pathlib import Path

from pipeline.dome.client import ClientSettings, DomeClient
from pipeline.dome.limiter import RateLimit, RateLimiter
from pipeline.simulator import SimConfig, serve


def measure(tier: str, seconds: float, threads: int, latency_ms: float) -> dict:
    config = SimConfig(seed=21, wallets=400, tier=tier, latency_ms=latency_ms, max_trades=400)
    with serve(config) as server:
        limit = RateLimit.for_tier(tier)
        settings = ClientSettings(base_url=server.base_url, page_limit=50, pool_size=threads)
        client = DomeClient(settings, server.api_key, RateLimiter(limit))
        wallets = server.simulator.wallet_addresses()
        stamps: list[float] = []
        lock = threading.Lock()
        start = time.monotonic()
        stop = start + seconds

        def worker(offset: int) -> None:
            i = offset
            while time.monotonic() < stop:
                for _ in client.order_pages(wallets[i % len(wallets)]):
                    with lock:
                        stamps.append(time.monotonic())
                    if time.monotonic() >= stop:
                        return
                i += threads

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        stats = server.stats()
    stamps.sort()
    steady_from = start + 10
    steady = len(stamps) - bisect.bisect_left(stamps, steady_from)
    return {
        "tier": tier,
        "requests": len(stamps),
        "rate_use": len(stamps) / seconds / limit.sustained,
        "rate_use_steady": steady / (seconds - 10) / limit.sustained,
        "http_429": stats["http_429"],
        "peak_1s": stats["peak_1s"],
        "peak_10s": stats["peak_10s"],
        "limit": [limit.per_second, limit.per_10s],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency_ms", type=float, default=50)
    args = parser.parse_args()
    results = [measure(t, args.seconds, args.threads, args.latency_ms) for t in ("free", "dev")]
    print(
        f"{args.threads} threads, {args.seconds:g} s per tier, simulated latency {args.latency_ms:g} ms"
    )
    print(
        f"{'tier':6} {'requests':>8} {'use':>6} {'steady':>6} {'429s':>5} {'peak1s':>7} {'peak10s':>8}  target"
    )
    for r in results:
        print(
            f"{r['tier']:6} {r['requests']:8d} {r['rate_use']:6.3f} {r['rate_use_steady']:6.3f} "
            f"{r['http_429']:5d} {r['peak_1s']:7d} {r['peak_10s']:8d}  >=0.95, 0 429s, peaks <= {r['limit']}"
        )
    out = Path(__file__).parent / "results" / "client_rate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"results": results, "cores": os.cpu_count(), "python": platform.python_version(),
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)},
            indent=1,
        )
    )  # fmt: skip
    print(f"written to {out}; rerun: .venv/bin/python bench/client_rate.py")


if __name__ == "__main__":
    main()
