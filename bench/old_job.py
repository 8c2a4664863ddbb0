"""The way the backfill was done before the pipeline, as the baseline of figure 3.

What the old job did: 10 threads over the wallet list, plain `requests`, a fixed 0.05 s sleep after
every call and no limiter shared between the threads. Each thread pages through one wallet's orders
(pagination_key), appends the trades to a newline-delimited JSON file, adds the wallet's condition_ids
that an in-memory set has not seen to a pending list, and whenever 100 are pending fetches them in one
markets request; the events those markets name are fetched one request per new slug (in-memory set
again). The remainder (<100 markets) is fetched at the end.

Its 429 handling is naive: sleep 1 s (Retry-After ignored) and retry the same call, up to 100 times,
so it does finish with all the data. A 5xx or a network error is retried the same way. Each thread
keeps one `requests.Session` (keep-alive), which flatters it next to per-call connections.

Prints one JSON line: wall time, calls made, 429s received, and what it fetched.

    DOME_API_KEY=... .venv/bin/python bench/old_job.py --base_url URL --wallets FILE --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

THREADS = 10
DELAY_S = 0.05
RETRY_SLEEP_S = 1.0
MAX_TRIES = 100
MARKETS_PER_CALL = 100


class OldJob:
    def __init__(self, base_url: str, api_key: str, page_limit: int, out: Path) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.page_limit = page_limit
        self.local = threading.local()
        self.lock = threading.Lock()
        self.out = out.open("w")
        self.seen_markets: set[str] = set()
        self.pending_markets: list[str] = []
        self.seen_events: set[str] = set()
        self.calls = self.http_429 = self.errors = 0
        self.trades = self.markets = self.events = self.wallets = 0
        self.first_call: float | None = None
        self.last_call: float | None = None

    def get(self, endpoint: str, params: list[tuple[str, Any]]) -> dict[str, Any]:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.api_key}"
        for _ in range(MAX_TRIES):
            with self.lock:
                self.calls += 1
                now = time.time()
                self.first_call = self.first_call or now
                self.last_call = now
            try:
                response = session.get(
                    f"{self.base_url}/polymarket/{endpoint}", params=params, timeout=30
                )
            except requests.RequestException:
                with self.lock:
                    self.errors += 1
                time.sleep(RETRY_SLEEP_S)
                continue
            time.sleep(DELAY_S)
            if response.status_code == 429:
                with self.lock:
                    self.http_429 += 1
                time.sleep(RETRY_SLEEP_S)
                continue
            if response.status_code >= 500:
                with self.lock:
                    self.errors += 1
                time.sleep(RETRY_SLEEP_S)
                continue
            response.raise_for_status()
            return response.json()
        raise RuntimeError(f"{endpoint}: gave up after {MAX_TRIES} tries")

    def wallet(self, wallet: str) -> None:
        key = None
        condition_ids: set[str] = set()
        while True:
            params: list[tuple[str, Any]] = [("user", wallet), ("limit", self.page_limit)]
            if key:
                params.append(("pagination_key", key))
            body = self.get("orders", params)
            orders = body["orders"]
            lines = "".join(json.dumps({"wallet": wallet, **o}) + "\n" for o in orders)
            with self.lock:
                self.out.write(lines)
                self.trades += len(orders)
            condition_ids.update(o["condition_id"] for o in orders)
            pagination = body["pagination"]
            key = pagination.get("pagination_key")
            if not pagination.get("has_more") or not key:
                break
        with self.lock:
            self.wallets += 1
            new = sorted(condition_ids - self.seen_markets)
            self.seen_markets.update(new)
            self.pending_markets.extend(new)
            batches = []
            while len(self.pending_markets) >= MARKETS_PER_CALL:
                batches.append(self.pending_markets[:MARKETS_PER_CALL])
                del self.pending_markets[:MARKETS_PER_CALL]
        for batch in batches:
            self.market_batch(batch)

    def market_batch(self, batch: list[str]) -> None:
        params: list[tuple[str, Any]] = [("condition_id", c) for c in batch]
        params.append(("limit", MARKETS_PER_CALL))
        markets = self.get("markets", params)["markets"]
        slugs = []
        with self.lock:
            self.markets += len(markets)
            for market in markets:
                slug = market.get("event_slug")
                if slug and slug not in self.seen_events:
                    self.seen_events.add(slug)
                    slugs.append(slug)
        for slug in slugs:
            events = self.get("events", [("event_slug", slug), ("limit", 10)])["events"]
            with self.lock:
                self.events += sum(1 for e in events if e["event_slug"] == slug)

    def run(self, wallets: list[str]) -> None:
        with ThreadPoolExecutor(THREADS) as pool:
            for future in [pool.submit(self.wallet, w) for w in wallets]:
                future.result()
        rest = self.pending_markets
        for start in range(0, len(rest), MARKETS_PER_CALL):
            self.market_batch(rest[start : start + MARKETS_PER_CALL])
        self.out.close()


def main() -> int:
    start = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base_url", required=True)
    parser.add_argument("--wallets", required=True, help="file with one wallet per line")
    parser.add_argument("--out", required=True, help="folder for the trades file")
    parser.add_argument("--page_limit", type=int, default=1000)
    args = parser.parse_args()
    wallets = Path(args.wallets).read_text().split()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    job = OldJob(args.base_url, os.environ["DOME_API_KEY"], args.page_limit, out / "trades.json")
    job.run(wallets)
    summary = {
        "wall_s": time.monotonic() - start,
        "calls": job.calls,
        "http_429": job.http_429,
        "errors": job.errors,
        "wallets": job.wallets,
        "trades": job.trades,
        "markets": job.markets,
        "events": job.events,
        "first_call_at": job.first_call,
        "last_call_at": job.last_call,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
