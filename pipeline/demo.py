"""`demo`: the whole backfill on this machine: simulator, seeded `traders`, one run, then `status`.

It keeps its state in `--workdir` (a DuckDB file and the staging folder), so running it again shows
the backfill picking up where it stopped: completed wallets are not fetched again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TextIO

from pipeline.options import new_run_id
from pipeline.run import run_and_report
from pipeline.sources.dome.client import TIERS as DOME_TIERS
from pipeline.staging import RunStaging
from pipeline.status import show_status
from pipeline.warehouse import TableNames
from pipeline.warehouse.seed import seed_traders
from simulator import SimConfig

READY = re.compile(r"base_url=(\S+) api_key=(\S+)")
PM_READY = re.compile(r"data_api_url=(\S+) gamma_api_url=(\S+)")
# What a hand-kept traders table really holds: blanks, typos, case and whitespace variants.
BAD_TRADERS = [None, "", "0x123", "not-a-wallet", "0x" + "z" * 40, "0x" + "1" * 39]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="demo", help="where the DuckDB file and staging live")
    parser.add_argument("--wallets", type=int, default=300, help="wallets the simulator serves")
    parser.add_argument("--seed", type=int, default=7, help="the simulator's data seed")
    parser.add_argument(
        "--source",
        default="polymarket",
        choices=("polymarket", "dome"),
        help="the API contract the simulator serves to the run (both from one world)",
    )
    parser.add_argument(
        "--tier",
        default="dev",
        choices=sorted(DOME_TIERS),
        help="--source=dome: the Dome rate-limit tier",
    )
    parser.add_argument("--latency_ms", type=float, default=20.0, help="simulated API latency")


def _start_simulator(args: argparse.Namespace) -> tuple[subprocess.Popen, str, str, str]:
    """(process, Dome base URL, its key, Polymarket root URL) once both ready lines are out."""
    command = [
        sys.executable, "-m", "pipeline", "simulate", "--port", "0", "--seed", str(args.seed),
        "--wallets", str(args.wallets), "--tier", args.tier, "--latency_ms", str(args.latency_ms),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    dome: tuple[str, str] | None = None
    for line in process.stdout:
        match = READY.search(line)
        if match:
            dome = match.group(1), match.group(2)
        pm = PM_READY.search(line)
        if pm and dome:
            return process, dome[0], dome[1], pm.group(1)
    raise RuntimeError("the simulator exited before it was ready")


def _sim_json(base_url: str, path: str) -> dict:
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}{path}", timeout=10) as response:
        return json.load(response)


def _traders(wallets: list[str]) -> list[str | None]:
    """The simulator's wallets plus realistic junk: padded mixed-case duplicates and bad rows."""
    variants = [f"  {w.upper().replace('0X', '0x')} " for w in wallets[:5]]
    return [*wallets, *variants, *BAD_TRADERS]


def _count_staged_lines(folder: Path) -> int:
    """Lines staged so far; Beam renames its temporary files meanwhile, so one may vanish."""
    total = 0
    try:
        for path in folder.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    total += sum(
                        chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")
                    )
    except OSError:
        pass
    return total


def _source_stats(base_url: str, source: str) -> tuple[int, int, int]:
    """(wallets fetched so far, requests, 429s) as the simulator counted them for `source`."""
    stats = _sim_json(base_url, "/_sim/stats")
    if source == "dome":
        return len(stats["orders_requests_by_wallet"]), stats["requests_total"], stats["http_429"]
    pm = stats["polymarket"]
    refused = sum(bucket["http_429"] for bucket in pm["buckets"].values())
    return len(pm["trades_requests_by_wallet"]), pm["requests_total"], refused


class ProgressLine:
    """The demo's progress: one line rewritten in place on a terminal, a line a tick anywhere else
    (a log file, CI). A log record printed meanwhile (the run warns of markets the source lacks)
    starts on a line of its own instead of being glued to the progress: the line is ended first.
    Added to the log handlers as a filter (it lets every record through)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._in_place = stream.isatty()
        self._open = False  # a progress line is on screen, not ended
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        with self._lock:
            if self._in_place:
                self._stream.write(f"\r{text}")
                self._open = True
            else:
                self._stream.write(f"{text}\n")
            self._stream.flush()

    def end(self) -> None:
        with self._lock:
            if self._open:
                self._stream.write("\n")
                self._stream.flush()
                self._open = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.end()
        return True


def _progress(
    base_url: str,
    source: str,
    trades_dir: Path,
    stop: threading.Event,
    start: float,
    line: ProgressLine,
) -> None:
    while not stop.wait(1.0):
        try:
            wallets, requests, refused = _source_stats(base_url, source)
        except OSError:
            continue
        elapsed = time.monotonic() - start
        line.show(
            f"  {elapsed:5.0f} s  wallets {wallets:4d}"
            f"  trades {_count_staged_lines(trades_dir):7d}"
            f"  requests {requests:6d} ({requests / elapsed:5.1f}/s)  429s {refused}"
        )


MAX_WALLETS = 100_000
MAX_LATENCY_MS = 10_000


def main(args: argparse.Namespace, argv: list[str]) -> int:
    try:  # the simulator's own checks, before anything starts (it would refuse them after)
        SimConfig(seed=args.seed, wallets=args.wallets, tier=args.tier, latency_ms=args.latency_ms)
    except ValueError as exc:
        print(f"demo: {exc}")
        return 2
    # A demo's own bounds: past them the simulator spends minutes building its world (10^8
    # wallets) or every request waits as long (1e9 ms), and the demo looked hung.
    if args.wallets > MAX_WALLETS or args.latency_ms > MAX_LATENCY_MS:
        print(f"demo: --wallets at most {MAX_WALLETS:,}, --latency_ms at most {MAX_LATENCY_MS:,}")
        return 2
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db_path, staging = workdir / "backfill.duckdb", workdir / "staging"
    print(f"demo: state in {workdir} (delete it to start over)")
    simulator, base_url, api_key, pm_url = _start_simulator(args)
    try:
        truth = _sim_json(base_url, "/_sim/truth")
        wallets = sorted(truth["wallets"]) if isinstance(truth["wallets"], dict) else []
        if seed_traders(db_path, _traders(wallets), only_if_empty=True):
            print(
                f"seeded traders: {len(wallets)} wallets, 5 duplicates, {len(BAD_TRADERS)} bad rows"
            )
        run_argv = [f"--warehouse=duckdb:{db_path}", f"--staging_root={staging}"]
        if args.source == "dome":
            os.environ["DOME_API_KEY"] = api_key  # the simulator's; the pipeline reads only the env
            run_argv += ["--source=dome", f"--api_base_url={base_url}", f"--tier={args.tier}"]
        else:  # Polymarket needs no key; the simulator serves its data and gamma APIs on one port
            run_argv += [f"--data_api_url={pm_url}", f"--gamma_api_url={pm_url}"]
        print(f"source: {args.source} (the bundled simulator)")
        run_id = new_run_id()
        trades_folder = RunStaging(str(staging), run_id).kind_folder("trades")
        stop, start = threading.Event(), time.monotonic()
        line = ProgressLine(sys.stdout)
        # Warnings only (Beam's INFO is noise here), each on a line of its own.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        for handler in logging.getLogger().handlers:
            handler.addFilter(line)
        watcher = threading.Thread(
            target=_progress,
            args=(base_url, args.source, Path(trades_folder), stop, start, line),
            daemon=True,
        )
        watcher.start()
        try:
            code, _ = run_and_report([*run_argv, f"--run_id={run_id}"], wait=True)
        finally:
            stop.set()
            watcher.join()
            line.end()
        _, requests, refused = _source_stats(base_url, args.source)
        print(
            f"  simulator saw {requests} requests, {refused} answered 429; "
            f"{time.monotonic() - start:.1f} s"
        )
        print()
        print(show_status(f"duckdb:{db_path}", TableNames()))
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    return code
