"""RunHealth: tells a source that is gone from wallets that are bad, so a dead source or a refused key
stops the run instead of marking every wallet failed, one by one.

One failure that could mean "the source is gone" (refused, unreachable, 401/403/410, retries run
out) is still the wallet's; `threshold` of them in a row, with no success between, is the run's.
Until then such a wallet's failed outcome is held back; a success (the source answers) releases
the held ones as ordinary failures; a trip drops them, so those wallets stay pending, untouched,
and are fetched by the next run. One instance per worker process, shared by its threads.
"""

from __future__ import annotations

import base64
import json
import re
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
        self._announced = False

    @property
    def stopped(self) -> str | None:
        """Why the run stopped (the last failure, which names its cause), or None."""
        return self._reason

    def announce(self) -> str | None:
        """The stop reason to report, to exactly one caller: several threads may see the trip,
        but the run's failure output must carry it once per instance."""
        with self._lock:
            if self._reason is None or self._announced:
                return None
            self._announced = True
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


class RunStopped(RuntimeError):
    """Raised by the commit, after it landed what was complete, so that the job fails.

    The runner wraps an exception raised in a DoFn (in-process it is re-raised with more text; with
    multi_processing only its traceback survives, as text inside a RuntimeError), so the message
    carries its facts once more as an opaque token, which `find` reads back from any wrapping
    (base64: no quoting or escaping of a traceback can alter it).
    """

    _TOKEN = re.compile(r"\[run-stopped:([A-Za-z0-9_=-]+)\]")

    def __init__(self, run_id: str, reason: str, wallets_done: int) -> None:
        self.run_id, self.reason, self.wallets_done = run_id, reason, wallets_done
        facts = json.dumps({"run_id": run_id, "reason": reason, "wallets_done": wallets_done})
        token = base64.urlsafe_b64encode(facts.encode()).decode()
        super().__init__(f"{self.line()} [run-stopped:{token}]")

    def __reduce__(self) -> tuple:  # pickled across processes with its facts, not its message
        return (type(self), (self.run_id, self.reason, self.wallets_done))

    def line(self) -> str:
        """The one line a person reads: what stopped the run, and what it left."""
        return (
            f"run {self.run_id} stopped: the source looks gone: {self.reason}; committed what was "
            f"complete ({self.wallets_done} wallets done); the wallets it stopped on stay pending, "
            "none marked failed"
        )

    @classmethod
    def find(cls, error: BaseException | None) -> RunStopped | None:
        """The RunStopped inside `error` (itself, a cause, or its text), or None."""
        seen: set[int] = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, RunStopped):
                return error
            match = cls._TOKEN.search(str(error))
            if match:
                facts = json.loads(base64.urlsafe_b64decode(match.group(1)))
                return cls(facts["run_id"], facts["reason"], int(facts["wallets_done"]))
            error = error.__cause__ or error.__context__
        return None
