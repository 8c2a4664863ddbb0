"""Helpers the end-to-end tests share: seed `traders`, read production, compare with the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb

from pipeline.dome.ids import trade_id
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


def checkpoint(db_path: Path) -> dict[str, tuple]:
    rows = query(
        db_path,
        "SELECT wallet_address, completed, upload_successful, trade_count, error "
        "FROM backfill_checkpoint",
    )
    return {row[0]: row[1:] for row in rows}


def run_argv(db_path: Path, staging: Path, server, *extra: str) -> list[str]:
    return [
        f"--warehouse=duckdb:{db_path}",
        f"--staging_root={staging}",
        f"--api_base_url={server.base_url}",
        "--tier=pro",
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
