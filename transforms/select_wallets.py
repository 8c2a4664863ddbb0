"""SelectWallets: what this run fetches: new wallets first, then refreshes of stale done wallets.

The checkpoint is anti-joined in the graph (CoGroupByKey), never loaded into a Python set, so the
step scales with the traders table. Each selected wallet becomes a `(wallet, start_time)` request:
`start_time` is None for a whole history, or the refresh's lower bound (newest landed trade minus
the overlap, so a trade landing late at the API's boundary is not missed; the commit's id dedup
makes the overlap harmless).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import apache_beam as beam

from pipeline.warehouse import WarehouseRef
from transforms.read_wallets import ReadFromWarehouse

NEW, REFRESH = 0, 1  # selection priority: new wallets always come before refreshes


@dataclass(frozen=True)
class RefreshPolicy:
    """When something fetched before is fetched again; `now` is fixed at launch for every worker."""

    now: float
    refresh_after_s: float | None
    overlap_s: float


def plan_fetch(
    wallet: str, states: Iterable[tuple], policy: RefreshPolicy
) -> tuple[int, float, str, int | None] | None:
    """(priority, since, wallet, start_time) if the wallet is to be fetched this run, else None.

    `states` holds the wallet's checkpoint row, if any, as
    (wallet_address, done, last_trade_at, last_refreshed_at) with times in unix seconds.
    `since` orders refreshes oldest fetch first (new wallets: 0), so that a cap smaller than
    the stale wallets refreshes them in turn: by address, the highest ones starved. Times the
    checkpoint holds in the future (a clock that ran ahead) count as now: a refresh stamped two
    days ahead would have kept the wallet from being refreshed for two days, and a trade stamped
    in 2100 would have started every refresh there.
    """
    state = next(iter(states), None)
    if state is None or not state[1]:
        return NEW, 0.0, wallet, None
    if policy.refresh_after_s is None:
        return None
    _, _, last_trade_at, last_refreshed_at = state
    if (
        last_refreshed_at is not None
        and 0 <= policy.now - last_refreshed_at < policy.refresh_after_s
    ):
        return None
    since = 0.0 if last_refreshed_at is None else min(last_refreshed_at, policy.now)
    if last_trade_at is None:
        return REFRESH, since, wallet, None
    return REFRESH, since, wallet, max(0, int(min(last_trade_at, policy.now) - policy.overlap_s))


def _planned(element: tuple[str, dict[str, list]], policy: RefreshPolicy) -> Iterator[tuple]:
    wallet, groups = element
    if groups["wanted"]:
        plan = plan_fetch(wallet, groups["state"], policy)
        if plan is not None:
            yield plan


class SelectWallets(beam.PTransform):
    """Wallets (an address may come more than once) -> one `(wallet, start_time)` request per
    wallet to fetch, at most `max_wallets`.

    The join with the checkpoint groups by wallet, which makes each one request and spreads them
    over workers by key. The cap keeps the first N by (new before refresh, oldest fetch, address),
    so the same
    state always selects the same wallets; they come out of it as one list, which a Reshuffle
    spreads again. No other barrier stands before the first request: each costs a stage.
    """

    def __init__(
        self, warehouse: WarehouseRef, policy: RefreshPolicy, max_wallets: int | None
    ) -> None:
        super().__init__()
        self._warehouse, self._policy, self._max_wallets = warehouse, policy, max_wallets

    def expand(self, wallets):
        states = (
            wallets.pipeline
            | "ReadCheckpoint" >> ReadFromWarehouse(self._warehouse, "read_checkpoint_states")
            | "KeyState" >> beam.Map(lambda state: (state[0], tuple(state)))
        )
        wanted = wallets | "KeyWanted" >> beam.Map(lambda wallet: (wallet, True))
        plans = (
            {"wanted": wanted, "state": states}
            | "AntiJoin" >> beam.CoGroupByKey()
            | "Plan" >> beam.FlatMap(_planned, self._policy)
        )
        if self._max_wallets is not None:
            # One list of the first N: spread them over workers again before the fetching.
            plans = (
                plans
                | "FirstN" >> beam.combiners.Top.Smallest(self._max_wallets)
                | "Unlist" >> beam.FlatMap(lambda chosen: chosen)
                | "Reshuffle" >> beam.Reshuffle()
            )
        return plans | "Request" >> beam.Map(lambda plan: (plan[2], plan[3]))
