"""FetchTrades: each wallet's whole history, page by page, and one outcome per wallet."""

from __future__ import annotations

import logging
import time

import apache_beam as beam

from pipeline.dome.errors import DomeError
from pipeline.options import BackfillConfig
from pipeline.rows import outcome_row, trade_row
from pipeline.schema import format_timestamp
from transforms.api import ApiHandle
from transforms.concurrent import ConcurrentFetchFn, Emit

log = logging.getLogger(__name__)

OUTCOMES = "outcomes"
CONDITION_IDS = "condition_ids"


class _FetchWalletFn(ConcurrentFetchFn):
    """Main output: one list of trade rows per page; an API failure is an outcome, never a crash."""

    def __init__(self, api: ApiHandle, config: BackfillConfig) -> None:
        super().__init__(api, config.fetch_threads)
        self._run_id = config.run_id
        self._trades_path = f"{config.run_staging}/trades/"

    def fetch(self, request: tuple[str, int | None], emit: Emit) -> None:
        wallet, start_time = request
        count, newest, error = 0, None, None
        try:
            for page in self.api.client.order_pages(wallet, start_time=start_time):
                if not page.items:
                    continue
                fetched_at = format_timestamp(time.time())
                rows = [trade_row(wallet, order, self._run_id, fetched_at) for order in page.items]
                emit(None, rows)
                emit(CONDITION_IDS, sorted({row["condition_id"] for row in rows}))
                count += len(rows)
                page_newest = max(row["timestamp"] for row in rows)
                newest = page_newest if newest is None else max(newest, page_newest)
                self.counters.add("trades", len(rows))
        except DomeError as exc:
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
                gcs_file=self._trades_path,
                fetched_from=start_time,
            ),
        )


class FetchTrades(beam.PTransform):
    """(wallet, start_time) requests -> `trade_pages` (lists of trade rows), `outcomes` (one row per
    wallet) and `condition_ids` (strings)."""

    def __init__(self, api: ApiHandle, config: BackfillConfig) -> None:
        super().__init__()
        self._api, self._config = api, config

    def expand(self, wallets):
        fetched = wallets | "FetchPages" >> beam.ParDo(
            _FetchWalletFn(self._api, self._config)
        ).with_outputs(OUTCOMES, CONDITION_IDS, main="trade_pages")
        condition_ids = fetched[CONDITION_IDS] | "OnePerId" >> beam.FlatMap(lambda ids: ids)
        return {
            "trade_pages": fetched.trade_pages,
            OUTCOMES: fetched[OUTCOMES],
            CONDITION_IDS: condition_ids,
        }
