"""FetchTrades: each wallet's whole history, page by page, and one outcome per wallet."""

from __future__ import annotations

import logging
import time

import apache_beam as beam

from pipeline.rows import outcome_row
from pipeline.schema import format_timestamp
from pipeline.sources.errors import SourceError
from transforms.api import ApiHandle
from transforms.concurrent import ConcurrentFetchFn, Emit

log = logging.getLogger(__name__)

OUTCOMES = "outcomes"
MARKET_REFS = "market_refs"
EVENT_SLUGS = "event_slugs"


class _FetchWalletFn(ConcurrentFetchFn):
    """Main output: one list of trade rows per page; an API failure is an outcome, never a crash."""

    def __init__(
        self, api: ApiHandle, run_id: str, source_name: str, trades_folder: str, threads: int
    ) -> None:
        super().__init__(api, threads)
        self._run_id, self._source, self._trades_folder = run_id, source_name, trades_folder

    def fetch(self, request: tuple[str, int | None], emit: Emit) -> None:
        wallet, start_time = request
        count, newest, error = 0, None, None
        try:
            for rows in self.api.source.trade_pages(wallet, start_time):
                if not rows:
                    continue
                emit(None, rows)
                emit(MARKET_REFS, sorted({(r["condition_id"], r["market_slug"]) for r in rows}))
                emit(EVENT_SLUGS, sorted({r["event_slug"] for r in rows if r.get("event_slug")}))
                count += len(rows)
                page_newest = max(row["timestamp"] for row in rows)
                newest = page_newest if newest is None else max(newest, page_newest)
                self.counters.add("trades", len(rows))
        except SourceError as exc:
            error = str(exc)
            log.warning("wallet %s failed: %s", wallet, error)
        self.counters.add("wallets_failed" if error else "wallets_fetched")
        emit(
            OUTCOMES,
            outcome_row(
                wallet,
                run_id=self._run_id,
                processed_at=format_timestamp(time.time()),
                trade_count=count,
                last_trade_ts=newest,
                error=error,
                gcs_file=self._trades_folder,
                fetched_from=start_time,
                source=self._source,
            ),
        )


class FetchTrades(beam.PTransform):
    """(wallet, start_time) requests -> `trade_pages` (lists of trade rows), `outcomes` (one row per
    wallet), `market_refs` ((condition_id, slug) pairs) and `event_slugs` (strings).

    Each outcome names `trades_folder` (where the run stages trades) and the source it came from.
    """

    def __init__(
        self, api: ApiHandle, run_id: str, source_name: str, trades_folder: str, threads: int
    ) -> None:
        super().__init__()
        self._fn = _FetchWalletFn(api, run_id, source_name, trades_folder, threads)

    def expand(self, wallets):
        fetched = wallets | "FetchPages" >> beam.ParDo(self._fn).with_outputs(
            OUTCOMES, MARKET_REFS, EVENT_SLUGS, main="trade_pages"
        )
        return {
            "trade_pages": fetched.trade_pages,
            OUTCOMES: fetched[OUTCOMES],
            MARKET_REFS: fetched[MARKET_REFS] | "OnePerRef" >> beam.FlatMap(lambda refs: refs),
            EVENT_SLUGS: fetched[EVENT_SLUGS] | "OnePerSlug" >> beam.FlatMap(lambda slugs: slugs),
        }
