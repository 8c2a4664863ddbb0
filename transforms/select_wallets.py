"""SelectPending: wallets not yet done (anti-join with the checkpoint), optionally the first N."""

from __future__ import annotations

import apache_beam as beam

from pipeline.warehouse import TableNames
from transforms.read_wallets import ReadWarehouseFn


def _pending(element: tuple[str, dict[str, list]]):
    wallet, groups = element
    if groups["wanted"] and not groups["done"]:
        yield wallet


class SelectPending(beam.PTransform):
    """Wallets minus those whose trades are landed, capped at `max_wallets`, then redistributed.

    The cap keeps the N smallest addresses, so the same state always selects the same wallets;
    the Reshuffle spreads them over workers before the slow, rate-limited fetching.
    """

    def __init__(self, warehouse: str, tables: TableNames, max_wallets: int | None) -> None:
        super().__init__()
        self._warehouse, self._tables, self._max_wallets = warehouse, tables, max_wallets

    def expand(self, wallets):
        done = (
            wallets.pipeline
            | "StartCheckpoint" >> beam.Create([None])
            | "ReadDone"
            >> beam.ParDo(ReadWarehouseFn(self._warehouse, self._tables, "read_done_wallets"))
            | "KeyDone" >> beam.Map(lambda wallet: (wallet, True))
        )
        wanted = wallets | "KeyWanted" >> beam.Map(lambda wallet: (wallet, True))
        pending = (
            {"wanted": wanted, "done": done}
            | "AntiJoin" >> beam.CoGroupByKey()
            | "NotDone" >> beam.FlatMap(_pending)
        )
        if self._max_wallets is not None:
            pending = (
                pending
                | "FirstN" >> beam.combiners.Top.Smallest(self._max_wallets)
                | "Unlist" >> beam.FlatMap(lambda chosen: chosen)
            )
        return pending | "Reshuffle" >> beam.Reshuffle()
