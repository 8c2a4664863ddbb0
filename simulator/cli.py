"""`python -m pipeline simulate`: serve the API simulator (Dome and Polymarket) on 127.0.0.1 until a signal."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from simulator.config import PM_THROTTLES, TIERS, SimConfig, parse_fault_spec
from simulator.server import serve

SWITCH_INTERVAL_S = 0.001
MAX_PORT = 65535


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (the lead's dispatcher calls this on its `simulate` sub-parser)."""
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = a free one)")
    parser.add_argument("--seed", type=int, default=0, help="data seed: same seed, same answers")
    parser.add_argument("--wallets", type=int, default=100, help="number of simulated wallets")
    parser.add_argument(
        "--max_trades", type=int, default=30_000, help="cap on one wallet's trade count"
    )
    parser.add_argument(
        "--trade_counts",
        default="",
        help="exact trade counts by wallet index, e.g. 0=200000,3=0 (not capped by --max_trades)",
    )
    parser.add_argument(
        "--latency_sigma", type=float, default=0.6, help="spread of the lognormal latency"
    )
    parser.add_argument(
        "--tier",
        choices=[t for t in TIERS if t != "custom"],
        default="unlimited",
        help="published rate-limit tier to imitate",
    )
    parser.add_argument("--per_second", type=int, default=None, help="custom 1 s limit")
    parser.add_argument("--per_10s", type=int, default=None, help="custom 10 s limit")
    parser.add_argument(
        "--no_retry_after", action="store_true", help="answer 429 without a Retry-After header"
    )
    parser.add_argument(
        "--latency_ms", type=float, default=0.0, help="median per-request latency (long tail)"
    )
    parser.add_argument(
        "--faults", default="", help='fault spec, e.g. "http_5xx:rate=0.05;reset:times=2"'
    )
    parser.add_argument(
        "--api_key", default=None, help="accepted key (default: $DOME_API_KEY, else random)"
    )
    parser.add_argument(
        "--omit_log_index", action="store_true", help="drop block_number and log_index"
    )
    parser.add_argument(
        "--extra_fields", action="store_true", help="add an unknown field to every item"
    )
    parser.add_argument(
        "--open_fraction",
        type=float,
        default=None,
        help="share of markets that start open (default: closed once end_time has passed)",
    )
    parser.add_argument(
        "--pm_throttle",
        choices=PM_THROTTLES,
        default="429",
        help="how Polymarket shows a bucket excess: 429, 429_date, 503 or delay",
    )
    parser.add_argument(
        "--lag_seconds", type=int, default=30, help="Polymarket /v2/status lag (feed trails by it)"
    )
    parser.add_argument(
        "--pm_limits",
        default="",
        help="Polymarket bucket limits per 10 s, e.g. trades=100,markets=150 (0 = unlimited)",
    )


def parse_trade_counts(text: str) -> dict[int, int]:
    """'0=200000,3=0' -> {0: 200000, 3: 0}."""
    counts: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        index, sep, count = part.partition("=")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"--trade_counts: {part!r} is not INDEX=COUNT")
        counts[int(index)] = int(count)
    return counts


def parse_pm_limits(text: str) -> dict[str, int | None]:
    """'trades=100,all=0' -> {"trades": 100, "all": None} (unknown buckets: SimConfig refuses)."""
    limits: dict[str, int | None] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--pm_limits: {part!r} is not BUCKET=N")
        limits[name.strip()] = int(value) or None
    return limits


def check_port(port: int) -> None:
    """ValueError unless `port` is one a socket can bind: out of range, `bind` raises
    OverflowError, which is no OSError and would end the command in a traceback."""
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"--port {port}: give 0-{MAX_PORT} (0 = a free one)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build the SimConfig; a bad option or fault spec raises ValueError with the reason."""
    return SimConfig(
        seed=args.seed,
        wallets=args.wallets,
        max_trades=args.max_trades,
        tier=args.tier,
        per_second=args.per_second,
        per_10s=args.per_10s,
        retry_after=not args.no_retry_after,
        latency_ms=args.latency_ms,
        latency_sigma=args.latency_sigma,
        trade_counts=parse_trade_counts(args.trade_counts),
        faults=parse_fault_spec(args.faults or ""),
        api_key=args.api_key or os.environ.get("DOME_API_KEY") or None,
        omit_log_index=args.omit_log_index,
        extra_fields=args.extra_fields,
        open_fraction=getattr(args, "open_fraction", None),
        pm_throttle=getattr(args, "pm_throttle", "429"),
        lag_seconds=getattr(args, "lag_seconds", 30),
        pm_limits=parse_pm_limits(getattr(args, "pm_limits", "")),
    )


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """Serve until a signal; print one ready line first so scripts can wait for it.

    `argv` (the raw arguments after `simulate`) is unused: the dispatcher has already parsed them
    into `args` and refused any it does not know.
    """
    try:
        config = config_from_args(args)
        check_port(args.port)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    # A request is counted only once its handler thread holds the GIL, which a thread waiting for
    # it gets after up to one switch interval (5 ms by default) per thread ahead of it; a real API
    # counts at its edge. In its own process the simulator hands the GIL over every 1 ms.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        server = serve(config, "127.0.0.1", args.port)
    except OSError as exc:
        print(f"simulate: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    with server:
        print(
            f"Dome API simulator ready: base_url={server.base_url} api_key={server.api_key}",
            flush=True,
        )
        print(
            f"Polymarket API simulator ready: data_api_url={server.data_api_url} "
            f"gamma_api_url={server.gamma_api_url}",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0
