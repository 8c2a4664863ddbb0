"""Helpers the end-to-end tests share: seed `traders`, read production, compare with the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import duckdb

from pipeline.sources.dome.ids import trade_id
from pipeline.warehouse import TableNames, open_warehouse

REPO = Path(__file__).resolve().parent.parent
INVALID_TRADERS = [None, "", "0x123", "not-a-wallet", "0x" + "g" * 40]


def seed_traders(db_path: Path, values: list[str | None]) -> None:
    """`traders` is the job's input, written by people, never by the pipeline: tests write it here."""
    with open_warehouse(f"duckdb:{db_path}", TableNames()) as warehouse:
        warehouse.ensure_tables()
    with duckdb.connect(str(db_path)) as con:
        if values:
            con.executemany(
                "INSERT INTO traders (wallet_address) VALUES (?)", [[v] for v in values]
            )


def query(db_path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db_path)) as con:
        return con.execute(sql).fetchall()


def production_trade_ids(db_path: Path) -> Counter[tuple[str, str]]:
    return Counter(query(db_path, "SELECT wallet_address, id FROM trades"))


def truth_trade_ids(simulator, wallets: list[str]) -> Counter[tuple[str, str]]:
    return Counter((w, trade_id(w, order)) for w in wallets for order in simulator.orders(w))


# The simulator's name for each source's trades endpoint (stats, faults).
TRADES_ENDPOINT = {"dome": "orders", "polymarket": "trades"}


def source_stats(server, source: str) -> dict:
    """The simulator's counters for one contract (Polymarket's are nested under its name)."""
    stats = server.stats()
    return stats if source == "dome" else stats["polymarket"]


def trade_requests(server, source: str) -> int:
    return source_stats(server, source)["requests"].get(TRADES_ENDPOINT[source], 0)


def trade_requests_by_wallet(server, source: str) -> dict[str, int]:
    return source_stats(server, source)[f"{TRADES_ENDPOINT[source]}_requests_by_wallet"]


def _micro(value) -> int:
    return int((Decimal(str(value)) * 1_000_000).to_integral_value())


def truth_fills(server, wallets: list[str], source: str) -> Counter[tuple]:
    """Every fill a complete backfill from `source` must land, by content (not by our ids):
    (wallet, tx hash, token, side, millionths of a share, millionths of a dollar, time)."""
    fills: Counter[tuple] = Counter()
    for wallet in wallets:
        if source == "dome":
            for o in server.simulator.orders(wallet):
                fills[
                    (
                        wallet,
                        o["tx_hash"].lower(),
                        str(o["token_id"]),
                        o["side"],
                        o["shares"],
                        _micro(o["price"]),
                        o["timestamp"],
                    )
                ] += 1
        else:
            for r in server.wallet_truth(wallet, source="polymarket")["rows"]:
                fills[
                    (
                        wallet,
                        r["transaction_hash"].lower(),
                        r["token_id"],
                        r["side"],
                        _micro(r["size"]),
                        _micro(r["price"]),
                        r["timestamp"],
                    )
                ] += 1
    return fills


def production_fills(db_path: Path) -> Counter[tuple]:
    rows = query(
        db_path,
        "SELECT wallet_address, tx_hash, token_id, side, shares, "
        "CAST(ROUND(price * 1000000) AS BIGINT), timestamp FROM trades",
    )
    return Counter(rows)


def truth_markets_and_events(server, source: str) -> tuple[set[str], set[str]]:
    """The condition ids and event slugs a complete backfill from `source` lands."""
    if source == "dome":
        sim = server.simulator
        return set(sim.traded_condition_ids()), set(sim.traded_event_slugs())
    truth = server.truth(source="polymarket")
    return (
        {m["conditionId"].lower() for m in truth["markets"]},
        {e["slug"] for e in truth["events"]},
    )


def truth_counts(server, wallets: list[str], source: str) -> dict[str, int]:
    if source == "dome":
        return {w: len(server.simulator.orders(w)) for w in wallets}
    return {w: server.wallet_truth(w, source="polymarket")["trade_count"] for w in wallets}


def checkpoint(db_path: Path) -> dict[str, tuple]:
    rows = query(
        db_path,
        "SELECT wallet_address, completed, upload_successful, trade_count, error "
        "FROM backfill_checkpoint",
    )
    return {row[0]: row[1:] for row in rows}


def source_argv(server, source: str) -> list[str]:
    """The options that point a run at the simulator as `source`."""
    if source == "dome":
        return ["--source=dome", f"--api_base_url={server.base_url}", "--tier=pro"]
    return [
        "--source=polymarket",
        f"--data_api_url={server.root_url}",
        f"--gamma_api_url={server.root_url}",
    ]


def run_argv(db_path: Path, staging: Path, server, *extra: str, source: str = "dome") -> list[str]:
    return [
        f"--warehouse=duckdb:{db_path}",
        f"--staging_root={staging}",
        *source_argv(server, source),
        "--read_timeout=2",
        *extra,
    ]


def run_subprocess(argv: list[str], api_key: str, timeout: float = 300) -> subprocess.Popen:
    env = {**os.environ, "DOME_API_KEY": api_key}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
