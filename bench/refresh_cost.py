"""What a scheduled run costs after the backfill: requests of a refresh over the demo's wallets.

The demo's world (seed 7, 300 wallets, Dev tier): a backfill; then, with `--refresh_after=0s`, a
refresh run with nothing new; then 30 wallets gain 5 trades each and 3 markets settle, and one more
refresh run. "Before" is what keeping the wallets current cost without the refresh (fetching every
history and every market again: the backfill's requests); "after" is the refresh's.

    .venv/bin/python bench/refresh_cost.py
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path

import common


def _post(sim: common.SimProcess, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{sim.root_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _requests(sim: common.SimProcess) -> dict[str, int]:
    stats = sim.stats()
    return {**stats["requests"], "total": stats["requests_total"], "http_429": stats["http_429"]}


def measure(workdir: Path) -> dict[str, dict[str, int]]:
    with common.simulator(workdir, tier="dev", latency_ms=20, max_trades=30_000) as sim:
        wallets = list(sim.truth()["wallets"])
        db_path, staging = common.fresh_warehouse(workdir, "refresh", wallets)
        results = {}
        common.run_pipeline(sim, db_path, staging, "--tier=dev")
        results["backfill (before: what a full re-fetch costs)"] = _requests(sim)
        sim.reset_stats()
        common.run_pipeline(sim, db_path, staging, "--tier=dev", "--refresh_after=0s")
        results["refresh, nothing new"] = _requests(sim)
        _post(sim, "/_sim/admin/add_trades", {"wallets": {w: 5 for w in wallets[:30]}})
        _post(sim, "/_sim/admin/settle_markets", {"count": 3})
        sim.reset_stats()
        common.run_pipeline(sim, db_path, staging, "--tier=dev", "--refresh_after=0s")
        results["refresh, 30 wallets +5 trades, 3 markets settled"] = _requests(sim)
    return results


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp))
    print(f"{'run':52} {'orders':>7} {'markets':>8} {'events':>7} {'total':>6} {'429s':>5}")
    for name, r in results.items():
        print(
            f"{name:52} {r.get('orders', 0):7d} {r.get('markets', 0):8d} "
            f"{r.get('events', 0):7d} {r['total']:6d} {r['http_429']:5d}"
        )
    out = Path(__file__).parent / "results" / "refresh_cost.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"written to {out}; rerun: {common.rerun('refresh_cost.py')}")


if __name__ == "__main__":
    main()
