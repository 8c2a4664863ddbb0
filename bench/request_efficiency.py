"""Figure 2, request efficiency: requests the pipeline made ÷ the fewest that fetch the same data.

The ideal comes from the simulator's truth (/_sim/truth): per wallet max(1, ceil(trades / page size))
(a wallet with no trades still takes one request to learn that), plus ceil(distinct traded markets
/ 100) (100 condition_ids per markets request), plus one request per traded event (the API has no
batch form for events). "Made" is what the simulator received (/_sim/stats), 429s and retries
included. It is computed from the same runs as figure 1 (bench/rate_use.py); alone, this script
makes those runs itself.

    .venv/bin/python bench/request_efficiency.py [--tier free --tier dev]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import rate_use


def efficiency(run: dict[str, Any]) -> dict[str, Any]:
    """From a rate_use.run_tier result: made ÷ ideal, overall and per endpoint."""
    ideal, made = run["ideal"], run["requests_by_endpoint"]
    ideal_total = sum(ideal.values())
    return {
        "tier": run["tier"],
        "page_limit": run["page_limit"],
        "requests": run["requests"],
        "ideal": ideal_total,
        "ratio": run["requests"] / ideal_total,
        "by_endpoint": {
            name: {"made": made.get(name, 0), "ideal": ideal[name]}
            for name in ("orders", "markets", "events")
        },
        "complete": run["complete"],
    }


def report(result: dict[str, Any]) -> str:
    parts = ", ".join(
        f"{name} {v['made']}/{v['ideal']}" for name, v in result["by_endpoint"].items()
    )
    return (
        f"{result['tier']} (page {result['page_limit']}): {result['requests']} requests ÷ "
        f"{result['ideal']} ideal = {result['ratio']:.3f} ({parts}); "
        f"{'all data fetched' if result['complete'] else 'INCOMPLETE'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", action="append", choices=sorted(rate_use.PROFILES))
    args = parser.parse_args()
    tiers = args.tier or ["free", "dev"]
    with tempfile.TemporaryDirectory(prefix="bench-efficiency-") as tmp:
        for tier in tiers:
            print(report(efficiency(rate_use.run_tier(tier, Path(tmp)))))
    print("target: <= 1.02")
    print("rerun:", common.rerun("request_efficiency.py", *[f"--tier={t}" for t in tiers]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
