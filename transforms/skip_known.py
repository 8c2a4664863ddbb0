"""Which markets (or events) a run asks the source for, decided from what production holds.

A settled market never changes again, so it is never requested twice; one awaiting its
resolution is asked again once its row is an hour old, until it is final; an open one is fetched again at most
once per `--refresh_after` (never, when refresh is off). With refresh on, stale open ones
are asked for even if no trade of this run names them, so open markets stay current. Keys
production's trades name but production lacks (a fetch that failed, a market the source did not
have) are asked for every run, so a failed fetch is retried until it lands; but a key that enough
runs found missing at the source (the warehouse's missing table) is dropped, whoever names it:
asking again would cost a request every run, forever, for an answer already given. The plan
(`KeyPlan`) is read once per run, before any trade is fetched, and the trades stage's lookups
(transforms/lookups.py) follow it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transforms.select_wallets import RefreshPolicy

FINAL_STATUSES = frozenset({"closed", "resolved", "settled", "finalized"})
# Closed and waiting for its resolution (pipeline/sources/polymarket/rows.py): asked again once
# its row is an hour old, refresh or not, until it is final. Its winner is what the users wait
# for, and with refresh off it was never asked again (a market landed `resolving` stayed so, with
# no winner, forever). An hour: a run right after another asks nothing, and a resolution lands
# within the hour; it costs Gamma and /v2/resolutions requests, buckets beside the trades'.
AWAITING_RESOLUTION = "resolving"
RESOLUTION_RECHECK_S = 3600.0


def needs_fetch(wanted: bool, known: Iterable[tuple], policy: RefreshPolicy) -> bool:
    """`known`: production's (status, updated_at unix seconds) for the key, if it has the key."""
    row = next(iter(known), None)
    if row is None:
        return wanted
    status, updated_at = row
    if status is not None and status.lower() in FINAL_STATUSES:
        return False
    if status is not None and status.lower() == AWAITING_RESOLUTION:
        return updated_at is None or policy.now - updated_at >= RESOLUTION_RECHECK_S
    if policy.refresh_after_s is None:
        return False
    return updated_at is None or policy.now - updated_at >= policy.refresh_after_s


class KeyPlan:
    """One kind's keys as production decides them before any trade is fetched (computed in
    Python, so that the lookups can run inside the trades stage): `skip`, the keys no trade may
    make the run ask for (held final or fresh, or missing at the source and not held); `always`,
    (key, value) pairs the run asks for whoever names them (named by production's trades but not
    held, or held open and stale). Any other key is asked for when a trade of this run names it."""

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
        """From the warehouse's reads: known (key, status, updated_at), unlanded (key[, value])
        and missing-at-the-source (key,) rows."""
        held = {row[0]: (row[1], row[2]) for row in known}
        skip = {key for key, state in held.items() if not needs_fetch(False, [state], policy)}
        always: dict[str, Any] = {key: None for key in held if key not in skip}
        skip.update(row[0] for row in missing if row[0] not in held)
        for row in unlanded:
            key, value = row[0], row[1] if len(row) > 1 else None
            if key not in skip and always.get(key) is None:
                always[key] = value
        return cls(frozenset(skip), tuple(sorted(always.items())))
