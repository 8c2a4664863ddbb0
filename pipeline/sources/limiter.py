"""A process-wide rate limiter over named buckets of sliding windows, that slows down when told to.

A source describes its limits as windows, each belonging to a bucket (Dome: one key with a 1 s and a
10 s window; Polymarket: per-endpoint buckets of 10 s windows, plus the per-API and global ones). A
request names the buckets that cover it and waits until every one of them has room, then takes a
slot in each, atomically, so concurrent threads never overshoot a bucket they share.

Why not pyrate-limiter (looked at 4.5.1): its in-memory buckets do sliding windows well, but a 429
must slow every thread of the process (pause, then recover), which it has no notion of, and each
bucket brings a background leak thread that does not survive pickling. Our needs fit in one deque
per window under one condition variable, which the simulator's window counters check directly.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Window:
    """At most `limit` requests in any `seconds` (the whole job's, or one process's share).

    `margin_s` lengthens the window as the client sees it: the server counts arrivals, which trail
    the client's stamp by a variable delay. `backoff`: whether a refusal shrinks this window's
    capacity (by `backoff_factor`) until successes win it back.
    """

    bucket: str
    limit: float
    seconds: float
    margin_s: float = 0.25
    backoff: bool = True
    backoff_factor: float = 0.5

    def __post_init__(self) -> None:
        if not (self.limit > 0 and math.isfinite(self.limit)):
            raise ValueError(f"bucket {self.bucket}: the limit must be a positive number")
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"bucket {self.bucket}: the window must be a positive number")

    @property
    def sustained(self) -> float:
        """Requests per second this window allows over a long run."""
        return self.limit / self.seconds


def share(windows: Iterable[Window], parts: int) -> tuple[Window, ...]:
    """One of `parts` equal shares, so that the shares together never exceed the whole."""
    if parts < 1:
        raise ValueError(f"cannot split a rate limit into {parts} parts")
    return tuple(replace(w, limit=w.limit / parts) for w in windows)


class _WindowState:
    def __init__(self, window: Window) -> None:
        self.window = window
        # Fractional shares are floored: a share must never round up past the whole.
        self.capacity = max(1, math.floor(window.limit))
        self.length = window.seconds + window.margin_s
        self.stamps: deque[float] = deque(maxlen=self.capacity)
        self.factor = 1.0

    def allowed(self) -> int:
        return max(1, math.floor(self.capacity * self.factor))

    def wait(self, now: float) -> float:
        allowed = self.allowed()
        if len(self.stamps) >= allowed:
            return self.stamps[-allowed] + self.length - now
        return 0.0


class RateLimiter:
    """Blocks each caller until its request fits in every window of its buckets; one per process.

    After a refusal (429, or a 503 that says to come back later) every caller of the refused
    buckets waits out the pause, and those buckets' backoff windows shrink; each success wins back
    a little, so the process recovers within seconds. A request that came back much slower than
    usual (`slowed`) shrinks them a little without a pause: a server that queues instead of
    refusing shows its limit only as latency.
    """

    def __init__(
        self, windows: Sequence[Window], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not windows:
            raise ValueError("a rate limiter needs at least one window")
        self.windows = tuple(windows)
        self._states = [_WindowState(w) for w in self.windows]
        self._by_bucket: dict[str, list[_WindowState]] = {}
        for state in self._states:
            self._by_bucket.setdefault(state.window.bucket, []).append(state)
        self._clock = clock
        self._cond = threading.Condition()
        self._paused_until: dict[str, float] = {}

    @property
    def buckets(self) -> tuple[str, ...]:
        return tuple(self._by_bucket)

    def _states_of(self, buckets: Iterable[str]) -> list[_WindowState]:
        try:
            return [s for b in buckets for s in self._by_bucket[b]]
        except KeyError as exc:
            raise ValueError(f"unknown rate bucket {exc.args[0]!r}") from None

    def acquire(self, buckets: Sequence[str] | None = None) -> float:
        """Waits for a slot in every window of `buckets` (default: all) and takes them; returns
        the seconds waited."""
        names = self.buckets if buckets is None else tuple(buckets)
        states = self._states_of(names)
        start = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                wait = max(self._paused_until.get(b, 0.0) for b in names) - now
                for state in states:
                    wait = max(wait, state.wait(now))
                if wait <= 0:
                    for state in states:
                        state.stamps.append(now)
                    return now - start
                self._cond.wait(wait)

    def throttled(self, buckets: Sequence[str] | None, pause_s: float) -> None:
        """The server refused: pause every caller of these buckets and shrink their capacity."""
        names = self.buckets if buckets is None else tuple(buckets)
        with self._cond:
            until = self._clock() + pause_s
            for name in names:
                self._paused_until[name] = max(self._paused_until.get(name, 0.0), until)
            for state in self._states_of(names):
                if state.window.backoff:
                    state.factor = max(0.25, state.factor * state.window.backoff_factor)
            self._cond.notify_all()

    def slowed(self, buckets: Sequence[str]) -> None:
        """An answer came back far slower than usual: ease off a little, without a pause."""
        with self._cond:
            for state in self._states_of(buckets):
                if state.window.backoff:
                    state.factor = max(0.25, state.factor * 0.9)

    def succeeded(self, buckets: Sequence[str] | None = None) -> None:
        """A request went through: regain capacity step by step after a refusal."""
        states = self._states if buckets is None else self._states_of(buckets)
        if any(state.factor < 1.0 for state in states):
            with self._cond:
                for state in states:
                    state.factor = min(1.0, state.factor + 0.02)
                self._cond.notify_all()

    def factor(self, bucket: str) -> float:
        """The smallest capacity factor among the bucket's windows (1.0 = full speed)."""
        return min(state.factor for state in self._by_bucket[bucket])

    def capacities(self) -> list[tuple[str, int, float]]:
        """(bucket, whole requests per window, window length as the client counts it)."""
        return [(s.window.bucket, s.capacity, s.length) for s in self._states]
