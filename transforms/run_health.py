"""RunHealth: tells a source that is gone from wallets that are bad, so a dead source or a refused key
stops the run instead of marking every wallet failed, one by one.

One failure that could mean "the source is gone" (refused, unreachable, 401/403/410, retries run
out) is still the wallet's; `threshold` of them in a row, with no success between, is the run's.
Until then such a wallet's failed outcome is held back; a success (the source answers) releases
the held ones as ordinary failures; a trip drops them, so those wallets stay pending, untouched,
and are fetched by the next run. One instance per worker process, shared by its threads.
"""

from __future__ import annotations

import threading
from typing import Any

from pipeline.sources.errors import SourceError

RUN_FAILURE_STREAK = 5  # consecutive run-level failures that stop a run


class RunHealth:
    def __init__(self, threshold: int = RUN_FAILURE_STREAK) -> None:
        self._threshold = threshold
        self._lock = threading.Lock()
        self._streak = 0
        self._held: list[Any] = []
        self._reason: str | None = None

    @property
    def stopped(self) -> str | None:
        """Why the run stopped (the last failure, which names its cause), or None."""
        return self._reason

    def succeeded(self) -> list[Any]:
        """A wallet fetched whole: the source works; returns the held outcomes to emit now."""
        with self._lock:
            self._streak = 0
            held, self._held = self._held, []
            return held

    def failed(self, error: SourceError, outcome: Any) -> list[Any]:
        """A wallet failed: returns what to emit now (its outcome, and any held ones, unless the
        failure is of the run-level kind, which is held until the run's fate is known)."""
        with self._lock:
            if self._reason is not None:
                return []
            if not error.run_level:  # the source answered: it is there
                self._streak = 0
                held, self._held = self._held, []
                return [*held, outcome]
            self._streak += 1
            self._held.append(outcome)
            if self._streak >= self._threshold:
                self._reason = (
                    f"{self._streak} wallets in a row failed as if the source were gone; "
                    f"the last: {error}"
                )
                self._held = []
            return []

    def release(self) -> list[Any]:
        """At the end of a bundle: held outcomes become ordinary failures unless the run stopped."""
        with self._lock:
            held, self._held = self._held, []
            return [] if self._reason is not None else held
