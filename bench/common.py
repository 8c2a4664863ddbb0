"""What every benchmark shares: the simulator as a separate process, a fresh warehouse, the pipeline
run as its own process, and the simulator's stats and truth. Every helper takes the source it
measures: `source="dome"` (the default, every Dome benchmark) or `source="polymarket"`.

The simulator runs in its own process (its CPU and GIL never compete inside the pipeline's process)
and answers with a seeded lognormal latency (median `LATENCY_MS`), so the figures measure how the
pipeline overlaps requests, not how fast a loopback socket is. The pipeline runs as
`python -m pipeline run ...` in a child process (Dome: with `DOME_API_KEY` set; Polymarket: no
key, `--data_api_url`/`--gamma_api_url`), exactly as a user runs it;
`os.wait4` gives that child's own peak RSS and CPU time.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LATENCY_MS = 150.0  # median per-request latency of the simulated API (lognormal tail, sigma 0.6)
SEED = 7
WALLETS = 300
# Sustained rates of the pipeline's tiers (dome-api.md): min(per second, per 10 s / 10).
TIER_LIMITS = {"free": (10, 100), "dev": (100, 500), "pro": (300, 3000)}
SOURCES = ("dome", "polymarket")
READY = re.compile(r"base_url=(\S+) api_key=(\S+)")
PM_READY = re.compile(r"data_api_url=(\S+) gamma_api_url=(\S+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sustained(tier: str) -> float:
    per_second, per_10s = TIER_LIMITS[tier]
    return min(per_second, per_10s / 10)


def rerun(script: str, *args: str) -> str:
    """The command that reruns one benchmark, as printed under its figures."""
    return " ".join([".venv/bin/python", f"bench/{script}", *args])


# ---- the simulator process -------------------------------------------------------------------
class SimProcess:
    """`python -m pipeline simulate ...`, a separate process. It prints a Dome ready line, then a
    Polymarket one; `source` says which one to wait for."""

    def __init__(self, command: list[str], workdir: Path, source: str = "dome") -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        self.source = source
        self.log_path = workdir / f"simulator-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = READY.search(line)
            if match:
                self.base_url, self.api_key = match.group(1), match.group(2)
                self.root_url = self.base_url.rsplit("/v1", 1)[0]
                if source == "dome":
                    return
            match = PM_READY.search(line)
            if match:
                self.data_api_url, self.gamma_api_url = match.group(1), match.group(2)
                self.root_url = self.data_api_url.rstrip("/")
                return
        self.close()
        raise RuntimeError(f"the simulator exited before it was ready: {self.log_tail()}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.root_url}{path}", timeout=60) as response:
            return json.load(response)

    def stats(self) -> dict[str, Any]:
        return self.get("/_sim/stats")

    def truth(self, rows: bool = True) -> dict[str, Any]:
        """The data a complete backfill lands, in this simulator's source's shape (Polymarket:
        `rows=False` leaves each wallet's rows out)."""
        if self.source == "polymarket":
            return self.get(f"/_sim/truth?source=polymarket&rows={'true' if rows else 'false'}")
        return self.get("/_sim/truth")

    def reset_stats(self) -> None:
        request = urllib.request.Request(f"{self.root_url}/_sim/reset_stats", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def cpu_seconds(self) -> float:
        """The simulator process's user + system CPU so far (from /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


@contextlib.contextmanager
def simulator(
    workdir: Path,
    *,
    tier: str,
    wallets: int = WALLETS,
    max_trades: int = 30_000,
    latency_ms: float = LATENCY_MS,
    seed: int = SEED,
    trade_counts: dict[int, int] | None = None,
    source: str = "dome",
    pm_limits: dict[str, int] | None = None,
) -> Iterator[SimProcess]:
    """The bundled simulator's own CLI, as a separate process. `tier` sets Dome's limits;
    Polymarket's buckets are the published ones unless `pm_limits` lowers some (per 10 s)."""
    command = [
        PYTHON, "-m", "pipeline", "simulate", "--port", "0", "--seed", str(seed),
        "--wallets", str(wallets), "--max_trades", str(max_trades), "--tier", tier,
        "--latency_ms", str(latency_ms),
    ]  # fmt: skip
    if trade_counts:
        command += ["--trade_counts", ",".join(f"{i}={n}" for i, n in trade_counts.items())]
    if pm_limits:
        command += ["--pm_limits", ",".join(f"{k}={v}" for k, v in pm_limits.items())]
    sim = SimProcess(command, workdir, source)
    try:
        yield sim
    finally:
        sim.close()


class Sample(NamedTuple):
    """One poll of /_sim/stats: when, and the API requests received so far (all, per endpoint)."""

    at: float  # unix time
    total: int
    orders: int
    markets: int
    events: int


class PmSample(NamedTuple):
    """One poll of /_sim/stats' `polymarket` part: when, all requests so far, and per endpoint
    (the simulator's names: gamma_markets is /markets/keyset, gamma_markets_slug the slug route)."""

    at: float  # unix time
    total: int
    trades: int
    status: int
    resolutions: int
    gamma_markets: int
    gamma_markets_slug: int
    gamma_events: int
    gamma_events_slug: int


# ---- the warehouse and the pipeline process --------------------------------------------------
def fresh_warehouse(workdir: Path, name: str, wallets: list[str]) -> tuple[Path, Path]:
    """(DuckDB file, staging folder) for one run, whose `traders` holds exactly `wallets`."""
    from pipeline.warehouse.seed import seed_traders

    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=False)
    db_path, staging = folder / "backfill.duckdb", folder / "staging"
    seed_traders(db_path, wallets)
    return db_path, staging


@dataclass
class ProcessRun:
    """One child process: how long it took, what it cost, what it printed."""

    returncode: int
    wall_s: float
    cpu_s: float  # user + system of the child and every descendant it waited for
    maxrss_mb: float  # the child's own peak resident set (ru_maxrss of wait4)
    output: str
    started_at: float  # unix time the child was started
    samples: list[Any] = field(default_factory=list)  # Sample (Dome) or PmSample
    rss: list[tuple[float, float]] = field(default_factory=list)  # (unix time, child's RSS in MB)
    counters: dict[str, int] = field(default_factory=dict)

    def check(self) -> ProcessRun:
        if self.returncode != 0:
            tail = "\n".join(self.output.splitlines()[-30:])
            raise RuntimeError(f"the run failed (exit {self.returncode}):\n{tail}")
        return self


SUMMARY_PATTERNS = {
    "wallets_fetched": r"wallets: (\d+) fetched",
    "wallets_failed": r"fetched, (\d+) failed",
    "trades": r"trades: (\d+) fetched",
    "requests": r"requests: (\d+) \(",
    "requests_orders": r"\(orders (\d+),",
    "requests_markets": r"markets (\d+), events",
    "requests_events": r"events (\d+)\); retries",
    "retries": r"retries: (\d+);",
    "http_429": r"HTTP 429: (\d+)",
}


def parse_summary(output: str) -> dict[str, int]:
    """The Beam counters `python -m pipeline run` prints in its summary."""
    counters = {}
    for name, pattern in SUMMARY_PATTERNS.items():
        match = re.search(pattern, output)
        if match:
            counters[name] = int(match.group(1))
    return counters


def run_child(
    command: list[str],
    env: dict[str, str] | None = None,
    sample: SimProcess | None = None,
    timeout_s: float = 900,
    track_rss: bool = False,
) -> ProcessRun:
    """Runs a child to completion; with `sample`, polls the simulator's request count meanwhile;
    with `track_rss`, the child's resident set (/proc, every 0.1 s)."""
    with tempfile.TemporaryFile("w+") as out:
        started_at, start = time.time(), time.monotonic()
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
        samples: list[Sample] = []
        rss: list[tuple[float, float]] = []
        stop = threading.Event()
        pollers = []
        if sample is not None:
            pollers.append(threading.Thread(target=_poll, args=(sample, samples, stop)))
        if track_rss:
            pollers.append(threading.Thread(target=_poll_rss, args=(process.pid, rss, stop)))
        for poller in pollers:
            poller.start()
        deadline = start + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
            time.sleep(0.05)
        wall = time.monotonic() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        for poller in pollers:
            poller.join()
        out.seek(0)
        output = out.read()
    return ProcessRun(
        returncode=process.returncode,
        wall_s=wall,
        started_at=started_at,
        cpu_s=usage.ru_utime + usage.ru_stime,
        maxrss_mb=usage.ru_maxrss / 1024,
        output=output,
        samples=samples,
        rss=rss,
        counters=parse_summary(output),
    )


def _poll(sim: SimProcess, samples: list[Any], stop: threading.Event) -> None:
    while not stop.wait(0.1):
        with contextlib.suppress(OSError, ValueError, KeyError):
            before = time.time()
            stats = sim.stats()
            at = (before + time.time()) / 2
            if sim.source == "polymarket":
                pm = stats["polymarket"]
                by = pm["requests"]
                fields = PmSample._fields[2:]
                samples.append(PmSample(at, pm["requests_total"], *(by[f] for f in fields)))
            else:
                by = stats["requests"]
                samples.append(
                    Sample(at, stats["requests_total"], by["orders"], by["markets"], by["events"])
                )


def _poll_rss(pid: int, rss: list[tuple[float, float]], stop: threading.Event) -> None:
    status = Path(f"/proc/{pid}/status")
    while not stop.wait(0.1):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss.append((time.time(), int(line.split()[1]) / 1024))


def run_pipeline(
    sim: SimProcess,
    db_path: Path,
    staging: Path,
    *extra: str,
    sample: bool = False,
    track_rss: bool = False,
    timeout_s: float = 900,
) -> ProcessRun:
    """`python -m pipeline run` against the simulator, in its own process, with the simulator's
    source: Dome (`--api_base_url`, `DOME_API_KEY`) or Polymarket (the two URLs, no key)."""
    argv = [f"--warehouse=duckdb:{db_path}", f"--staging_root={staging}"]
    if sim.source == "polymarket":
        argv += [
            "--source=polymarket",
            f"--data_api_url={sim.data_api_url}",
            f"--gamma_api_url={sim.gamma_api_url}",
        ]
        env = {k: v for k, v in os.environ.items() if k != "DOME_API_KEY"}
    else:
        argv += ["--source=dome", f"--api_base_url={sim.base_url}"]
        env = {**os.environ, "DOME_API_KEY": sim.api_key}
    argv += extra
    command = [PYTHON, "-m", "pipeline", "run", *argv]
    return run_child(command, env, sim if sample else None, timeout_s, track_rss).check()


# ---- what the figures are computed from ------------------------------------------------------
def requests_at(samples: list[Sample], moment: float, field: str = "total") -> float:
    """Requests (all, or of one endpoint) the simulator had seen at `moment`, interpolated."""
    times = [sample.at for sample in samples]
    i = bisect.bisect_left(times, moment)
    if i == 0:
        return 0.0
    if i == len(samples):
        return float(getattr(samples[-1], field))
    before, after = samples[i - 1], samples[i]
    n0, n1 = getattr(before, field), getattr(after, field)
    return n0 + (n1 - n0) * (moment - before.at) / (after.at - before.at)


def phases(samples: list[Sample], origin: float) -> dict[str, list[float] | None]:
    """Per endpoint, [first seen, last seen] in seconds after `origin` (to the 0.1 s poll)."""
    out: dict[str, list[float] | None] = {}
    for name in ("orders", "markets", "events"):
        counts = [(sample.at, getattr(sample, name)) for sample in samples]
        final = counts[-1][1] if counts else 0
        if not final:
            out[name] = None
            continue
        first = next(at for at, n in counts if n > 0)
        last = next(at for at, n in counts if n == final)
        out[name] = [round(first - origin, 1), round(last - origin, 1)]
    return out


def ideal_requests(truth: dict[str, Any], page_limit: int) -> dict[str, int]:
    """The fewest requests that fetch this data: per wallet max(1, ceil(trades / page)) (a wallet
    with no trades still takes one request to learn so), ceil(distinct markets / 100), one per event."""
    orders = sum(max(1, math.ceil(n / page_limit)) for n in truth["wallets"].values())
    markets = math.ceil(len(truth["totals"]["traded_markets"]) / 100)
    events = len(truth["totals"]["traded_events"])
    return {"orders": orders, "markets": markets, "events": events}


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
