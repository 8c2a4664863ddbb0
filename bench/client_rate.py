"""Rate-limit use of the Dome client alone: 8 threads sharing one limiter against the simulator.

Prints, for the Free and Dev tiers, the sustained request rate achieved ÷ the tier's allowed
sustained rate (whole run, and steady state after the first 10 s window, whose burst allowance
would flatter the ratio), the 429s received and the simulator's peak 1 s / 10 s windows.

    .venv/bin/python bench/client_rate.py [--seconds 60] [--threads 8] [--latency_ms 50]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.dome.client import DomeClient, DomeSettings, RateLimit
from pipeline.sources.http import HttpSettings
from pipeline.sources.limiter import RateLimiter


@contextlib.contextmanager
def simulator_process(tier: str, latency_ms: float) -> Iterator[tuple[str, str]]:
    """The simulator in its own process, as the real API is: its work never competes for our GIL."""
    command = [
        sys.executable, "-m", "pipeline", "simulate", "--port", "0", "--seed", "21",
        "--wallets", "400", "--max_trades", "400", "--tier", tier, "--latency_ms", str(latency_ms),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = re.search(r"base_url=(\S+) api_key=(\S+)", line)
            if match:
                yield match.group(1), match.group(2)
                return
        raise RuntimeError("the simulator exited before it was ready")
    finally:
        process.terminate()
        process.wait(timeout=10)


def sim_json(base_url: str, path: str) -> dict:
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + path, timeout=30) as response:
        return json.load(response)


def measure(tier: str, seconds: float, threads: int, latency_ms: float) -> dict:
    with simulator_process(tier, latency_ms) as (base_url, api_key):
        limit = RateLimit.for_tier(tier)
        settings = DomeSettings(base_url=base_url, page_limit=50)
        limiter = RateLimiter(limit.windows())
        client = DomeClient.build(
            settings, api_key, limiter, http_settings=HttpSettings(pool_size=threads)
        )
        wallets = sorted(sim_json(base_url, "/_sim/truth")["wallets"])
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
        stats = sim_json(base_url, "/_sim/stats")
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
