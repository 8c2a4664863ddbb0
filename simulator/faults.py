"""Decides, request by request, which fault rule (if any) fires: the seeded, replaceable rule set.

Rules are tried in list order and the first that fires wins, so a later rule's `times` budget is
not spent on a request an earlier rule already took. A rule with `wallets` only matches requests
that name one of those wallets (orders requests), never markets or events. `page` is the 0-based
page of a listing, derived from the request's offset (offset // limit).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from simulator.config import FaultRule, coerce_rules


class FaultEngine:
    """The current rules, their `times` budgets and the seeded RNG behind `rate`, behind one lock."""

    def __init__(self, rules: Iterable[FaultRule] = (), seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._rules: list[FaultRule] = []
        self._fired: list[int] = []
        self._rng = random.Random()
        self.set_rules(list(rules))

    def set_rules(
        self, rules: str | Iterable[FaultRule | Mapping[str, Any]] | None
    ) -> list[FaultRule]:
        """Replace every rule; budgets and the RNG restart, so a replay is reproducible."""
        parsed = coerce_rules(rules)
        with self._lock:
            self._rules = parsed
            self._fired = [0] * len(parsed)
            self._rng = random.Random(f"faults|{self._seed}")
        return list(parsed)

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def pick(self, endpoint: str, wallet: str | None, page: int | None) -> FaultRule | None:
        """The rule that fires for this request, or None: counts it against that rule's budget."""
        with self._lock:
            for i, rule in enumerate(self._rules):
                if rule.endpoint != endpoint:
                    continue
                if rule.wallets is not None and (wallet is None or wallet not in rule.wallets):
                    continue
                if rule.page is not None and page != rule.page:
                    continue
                if rule.times is not None:
                    if self._fired[i] >= rule.times:
                        continue
                elif rule.rate is not None and self._rng.random() >= rule.rate:
                    continue
                self._fired[i] += 1
                return rule
        return None
