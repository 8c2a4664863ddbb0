"""SkipKnown: drop the markets (or events) production already holds settled or freshly fetched.

A settled market never changes again, so it is never requested twice; an open one is fetched again
at most once per `--refresh_after` (never, when refresh is off). With refresh on, stale open ones
are added even if no trade of this run names them, so open markets stay current. The anti-join with
production happens in the graph (CoGroupByKey), not in a Python set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from pipeline.options import BackfillConfig
from transforms.read_wallets import ReadFromWarehouse
from transforms.select_wallets import RefreshPolicy

FINAL_STATUSES = frozenset({"closed", "resolved", "settled", "finalized"})


def needs_fetch(wanted: bool, known: Iterable[tuple], policy: RefreshPolicy) -> bool:
    """`known`: production's (status, updated_at unix seconds) for the key, if it has the key."""
    row = next(iter(known), None)
    if row is None:
        return wanted
    status, updated_at = row
    if status is not None and status.lower() in FINAL_STATUSES:
        return False
    if policy.refresh_after_s is None:
        return False
    return updated_at is None or policy.now - updated_at >= policy.refresh_after_s


def _to_fetch(element: tuple[str, dict[str, list]], policy: RefreshPolicy) -> Iterator[str]:
    key, groups = element
    if needs_fetch(bool(groups["wanted"]), groups["known"], policy):
        yield key


class SkipKnown(beam.PTransform):
    """Keys this run wants, minus what production holds final or fresh, plus stale open ones."""

    def __init__(self, config: BackfillConfig, read_method: str) -> None:
        super().__init__()
        self._config, self._read_method = config, read_method
        self._policy = RefreshPolicy.of(config)

    def expand(self, keys):
        config = self._config
        known = (
            keys.pipeline
            | "ReadKnown" >> ReadFromWarehouse(config.warehouse, config.tables, self._read_method)
            | "KeyKnown" >> beam.Map(lambda row: (row[0], (row[1], row[2])))
        )
        wanted = keys | "KeyWanted" >> beam.Map(lambda key: (key, True))
        return (
            {"wanted": wanted, "known": known}
            | "AntiJoin" >> beam.CoGroupByKey()
            | "ToFetch" >> beam.FlatMap(_to_fetch, self._policy)
        )
