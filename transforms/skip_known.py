"""SkipKnown: drop the markets (or events) production already holds settled or freshly fetched.

A settled market never changes again, so it is never requested twice; an open one is fetched again
at most once per `--refresh_after` (never, when refresh is off). With refresh on, stale open ones
are added even if no trade of this run names them, so open markets stay current. Keys production's
trades name but production lacks (a fetch that failed, a market the source did not have) are added
every run, so a failed fetch is retried until it lands; but a key that enough runs found missing at
the source (the warehouse's missing table) is dropped, whoever names it: asking again would cost a
request every run, forever, for an answer already given. The anti-joins with production happen in
the graph (CoGroupByKey), not in a Python set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from pipeline.warehouse import WarehouseRef
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


def _to_fetch(
    element: tuple[str, dict[str, list]], policy: RefreshPolicy
) -> Iterator[tuple[str, Any]]:
    key, groups = element
    values = [value for value in groups["wanted"] if value is not None]
    known = list(groups["known"])
    if not known and groups["missing"]:
        return  # missing at the source: not asked again (if it lands some day, it is known)
    if needs_fetch(bool(groups["wanted"]), known, policy):
        yield key, values[0] if values else None


class SkipKnown(beam.PTransform):
    """(key, value) pairs this run wants, plus what production names but lacks, minus what
    production holds final or fresh and what is missing at the source, plus stale open ones;
    each key once. The `*_method`s name the Warehouse reads of production's known, unlanded and
    missing-at-the-source keys."""

    def __init__(
        self,
        warehouse: WarehouseRef,
        policy: RefreshPolicy,
        known_method: str,
        unlanded_method: str,
        missing_method: str,
    ) -> None:
        super().__init__()
        self._warehouse, self._policy = warehouse, policy
        self._known_method, self._unlanded_method = known_method, unlanded_method
        self._missing_method = missing_method

    def expand(self, pairs):
        def read(label: str, method: str):
            return pairs.pipeline | label >> ReadFromWarehouse(self._warehouse, method)

        known = read("ReadKnown", self._known_method) | "KeyKnown" >> beam.Map(
            lambda row: (row[0], (row[1], row[2]))
        )
        unlanded = read("ReadUnlanded", self._unlanded_method) | "KeyUnlanded" >> beam.Map(
            lambda row: (row[0], row[1] if len(row) > 1 else None)
        )
        missing = read("ReadMissing", self._missing_method) | "KeyMissing" >> beam.Map(
            lambda row: (row[0], True)
        )
        wanted = (pairs, unlanded) | "AllWanted" >> beam.Flatten()
        return (
            {"wanted": wanted, "known": known, "missing": missing}
            | "AntiJoin" >> beam.CoGroupByKey()
            | "ToFetch" >> beam.FlatMap(_to_fetch, self._policy)
        )


class KeyPlan:
    """One kind's keys as production decides them before any trade is fetched (SkipKnown's
    semantics, computed in Python so that the lookups can run inside the trades stage): `skip`,
    the keys no trade may make the run ask for (held final or fresh, or missing at the source and
    not held); `always`, (key, value) pairs the run asks for whoever names them (named by
    production's trades but not held, or held open and stale). Any other key is asked for when a
    trade of this run names it. Picklable: it travels as a side input."""

    def __init__(self, skip: frozenset[str], always: tuple[tuple[str, Any], ...]) -> None:
        self.skip, self.always = skip, always

    @classmethod
    def of(
        cls,
        known: Iterable[tuple],
        unlanded: Iterable[tuple],
        missing: Iterable[tuple],
        policy: RefreshPolicy,
    ) -> KeyPlan:
        """From the warehouse reads SkipKnown joins: known (key, status, updated_at), unlanded
        (key[, value]) and missing-at-the-source (key,) rows."""
        held = {row[0]: (row[1], row[2]) for row in known}
        skip = {key for key, state in held.items() if not needs_fetch(False, [state], policy)}
        always: dict[str, Any] = {key: None for key in held if key not in skip}
        skip.update(row[0] for row in missing if row[0] not in held)
        for row in unlanded:
            key, value = row[0], row[1] if len(row) > 1 else None
            if key not in skip and always.get(key) is None:
                always[key] = value
        return cls(frozenset(skip), tuple(sorted(always.items())))
