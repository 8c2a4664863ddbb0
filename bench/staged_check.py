"""The commit's staged-count check (issue 14, the end of a run): seconds to check a run of N staged
trades, this checkout against another, side by side in one invocation; with `--commit`, the
seconds of the whole DuckDB commit of that run (the load, the check asked of the load tables, then
the transaction) into a fresh warehouse file.

Before a run lands, `check_staged_counts` reads every staged trade line to count them per wallet
(a run whose files lost lines is refused). It ran on the commit's critical path, after the last
request: at 3,000 wallets (~350,000 trades) it was several seconds of the run's tail. Since session
11 the DuckDB commit asks the same question of its load tables and reads the files only to name a
disagreement; BigQuery's commit still reads them first.

The run is synthetic but staged as the pipeline stages it (rows of the trade table's shape, compact
NDJSON, 4 shards, one outcome per wallet). Each tree's code runs in its own child process on the
same files, alternately, `--repeat` times; the median is reported.

    .venv/bin/python bench/staged_check.py [--trades 350000] [--wallets 3000] [--repeat 3]
        [--tree /path/to/other/checkout] [--commit]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

CHILD = """
import json, sys, time
from pipeline.staging import check_staged_counts
files = json.load(open(sys.argv[1]))
start = time.perf_counter()
check_staged_counts("bench", files)
print(time.perf_counter() - start)
"""

# The commit as a run makes it (pipeline.staging: the load, the check, then the transaction), on
# a new DuckDB file in the manifest's folder; the file is deleted after.
CHILD_COMMIT = """
import json, sys, time
from pathlib import Path
from pipeline import staging
from pipeline.warehouse import TableNames, WarehouseRef
files = json.load(open(sys.argv[1]))
db = Path(sys.argv[1]).with_name("commit.duckdb")
ref = WarehouseRef(f"duckdb:{db}", TableNames())
with ref.open() as warehouse:
    warehouse.ensure_tables()
start = time.perf_counter()
report = staging._check_and_commit("bench", ref, files)
print(time.perf_counter() - start)
assert report.trades_inserted == sum(1 for f in files["trades"] for _ in open(f)), report
for leftover in (db, db.with_name(db.name + ".wal")):
    leftover.unlink(missing_ok=True)
"""


def stage(folder: Path, trades: int, wallets: int, shards: int = 4) -> dict[str, list[str]]:
    """A staged run's files, as the pipeline writes them; returns them by kind (the manifest)."""
    rng = random.Random(7)
    addresses = [f"0x{rng.getrandbits(160):040x}" for _ in range(wallets)]
    counts = dict.fromkeys(addresses, 0)
    paths = [folder / f"trades-{i}.json" for i in range(shards)]
    handles = [path.open("w") for path in paths]
    for n in range(trades):
        wallet = addresses[n % wallets]
        counts[wallet] += 1
        row = {
            "id": f"{rng.getrandbits(256):064x}",
            "wallet_address": wallet,
            "token_id": str(rng.getrandbits(250)),
            "token_label": "Yes",
            "side": "BUY",
            "market_slug": "will-bitcoin-reach-95-000-by-june-2026-ac4678",
            "condition_id": f"0x{rng.getrandbits(256):064x}",
            "shares": 6462570000,
            "shares_normalized": 6462.57,
            "price": 0.664,
            "tx_hash": f"0x{rng.getrandbits(256):064x}",
            "title": "Will Bitcoin reach $95,000 by June 2026?",
            "timestamp": 1757792217,
            "traded_at": "2025-09-13 19:36:57.000000+00:00",
            "order_hash": None,
            "source": "polymarket",
            "event_slug": "bitcoin-june",
            "outcome_index": 0,
            "fill_ordinal": 0,
            "extra": "{}",
            "run_id": "bench",
            "fetched_at": "2026-11-27 02:12:28.631418+00:00",
        }
        handles[n % shards].write(json.dumps(row, separators=(",", ":")) + "\n")
    for handle in handles:
        handle.close()
    outcomes = folder / "outcomes-0.json"
    with outcomes.open("w") as handle:
        for wallet, count in counts.items():
            row = {
                "wallet_address": wallet,
                "upload_successful": True,
                "trade_count": count,
                "error": None,
                "last_trade_at": "2025-09-13 19:36:57.000000+00:00",
                "gcs_file": str(folder),
                "processed_at": "2026-11-27 02:12:29.000000+00:00",
                "run_id": "bench",
                "fetched_from": None,
                "source": "polymarket",
            }
            handle.write(json.dumps(row) + "\n")
    return {"trades": [str(p) for p in paths], "outcomes": [str(outcomes)]}


def seconds(tree: Path, manifest: Path, commit: bool = False) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD_COMMIT if commit else CHILD, str(manifest)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])  # after DuckDB's progress bar, if any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=350_000)
    parser.add_argument("--wallets", type=int, default=3_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="another checkout, measured alongside")
    parser.add_argument("--commit", action="store_true", help="time the whole DuckDB commit")
    args = parser.parse_args()
    trees = [("this", common.REPO)] + ([("other", args.tree.resolve())] if args.tree else [])
    times: dict[str, list[float]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "files.json"
        manifest.write_text(json.dumps(stage(Path(tmp), args.trades, args.wallets)))
        for _ in range(args.repeat):
            for name, tree in trees:
                times[name].append(seconds(tree, manifest, args.commit))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, tree in trees:
        what = "to commit" if args.commit else "to check"
        print(f"{name} ({tree}): {medians[name]:.2f} s {what} {args.trades} staged trades")
    if args.tree:
        print(f"this ÷ other: {medians['this'] / medians['other']:.3f}")
    print("rerun:", common.rerun("staged_check.py", *sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
