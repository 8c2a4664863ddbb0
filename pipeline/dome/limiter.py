"""A process-wide rate limiter that honours both of a Dome tier's windows and slows down on 429.

Why not pyrate-limiter (looked at 4.5.1): its in-memory buckets do the two sliding windows well, but a
429 must slow every thread of the process (back off, then recover), which it has no notion of, and
each bucket brings a background leak thread that does not survive pickling. Our needs fit in a
sliding-window log of one deque under one condition variable, which the simulator's window counters
check directly (tests/test_client_rate.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# Named tiers of dome-api.md: (queries per second, queries per 10 seconds).
TIERS: dict[str, tuple[int, int]] = {"free": (10, 100), "dev": (100, 500), "pro": (300, 3000)}


@dataclass(frozen=True)
class RateLimit:
    """Both windows of a limit, as counts per window; a process's share may be fractional."""

    per_second: float
    per_10s: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.per_10s > 0):
            raise ValueError(f"rate limits must be positive, got {self.per_second}/{self.per_10s}")

    @classmethod
    def for_tier(cls, tier: str) -> RateLimit:
        try:
            per_second, per_10s = TIERS[tier.lower()]
        except KeyError:
            raise ValueError(f"unknown tier {tier!r}: use one of {', '.join(TIERS)}") from None
        return cls(per_second, per_10s)

    def share(self, parts: int) -> RateLimit:
        """One of `parts` equal shares, so that the shares together never exceed the whole."""
        if parts < 1:
            raise ValueError(f"cannot split a rate limit into {parts} parts")
        return RateLimit(self.per_second / parts, self.per_10s / parts)

    @property
    def sustained(self) -> float:
        """Requests per second that both windows allow over a long run."""
        return min(self.per_second, self.per_10s / 10)


class RateLimiter:
    """Blocks each caller until a request fits in both sliding windows; one instance per process.

    Capacities are floored to whole requests (a fractional share must not round up past the whole
    limit); each window is lengthened by a margin, because the server counts arrivals and a request
    reaches it a variable time after it was stamped here (thread scheduling under load, the
    network). Where the per-second window sets the sustained rate (Free: 10/s and 100/10 s are the
    same rate) its margin is 40 ms, 4% of the rate; where it only caps bursts (Dev, Pro) it costs
    nothing sustained, so it gets 250 ms. The ten-second window, which sets the sustained rate at
    Dev and Pro, gets 250 ms (2.5%).

    After a 429 every caller waits out the pause and the per-second capacity drops by half (not
    below a quarter); each success wins back a little, so the process recovers within seconds.
    The ten-second window keeps its capacity: halving it while the last ten seconds' requests
    still count would stall the process for several seconds after a single 429.
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        margin_s: tuple[float, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        if margin_s is None:
            bursts_only = limit.per_second > limit.per_10s / 10
            margin_s = (0.25 if bursts_only else 0.04, 0.25)
        self._windows = (
            (max(1, math.floor(limit.per_second)), 1.0 + margin_s[0]),
            (max(1, math.floor(limit.per_10s)), 10.0 + margin_s[1]),
        )
        self._clock = clock
        self._stamps: deque[float] = deque(maxlen=max(cap for cap, _ in self._windows))
        self._cond = threading.Condition()
        self._paused_until = 0.0
        self._factor = 1.0

    def acquire(self) -> float:
        """Waits for a slot and takes it; returns the seconds waited."""
        start = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                wait = max(self._paused_until - now, self._window_wait(now))
                if wait <= 0:
                    self._stamps.append(now)
                    return now - start
                self._cond.wait(wait)

    def _window_wait(self, now: float) -> float:
        wait = 0.0
        for index, (capacity, length) in enumerate(self._windows):
            factor = self._factor if index == 0 else 1.0
            allowed = max(1, math.floor(capacity * factor))
            if len(self._stamps) >= allowed:
                oldest_counted = self._stamps[-allowed]
                wait = max(wait, oldest_counted + length - now)
        return wait

    def throttled(self, pause_s: float) -> None:
        """The server said 429: pause every caller and halve the per-second capacity."""
        with self._cond:
            self._paused_until = max(self._paused_until, self._clock() + pause_s)
            self._factor = max(0.25, self._factor / 2)
            self._cond.notify_all()

    def succeeded(self) -> None:
        """A request went through: regain capacity step by step after a 429."""
        if self._factor < 1.0:
            with self._cond:
                self._factor = min(1.0, self._factor + 0.02)
                self._cond.notify_all()

    @property
    def factor(self) -> float:
        return self._factor
