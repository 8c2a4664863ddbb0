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

import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

# The server's own delay in counting an arrival it has received, beyond what the queue step
# below allows for. The simulator counted one late by more than 10 ms in a 3,000-wallet Dome run
# (one 429) while it encoded each big page in one call (the GIL held ~10 ms); since it encodes in
# chunks, timed per request against the send (session 10): at most 5.2 ms in a 3,000-wallet Dome
# run, 1.9 ms in a 300-wallet Polymarket one. 15 ms keeps 10 ms over that; it costs 1.5% of a
# 1 s window (20 ms cost 2%: Dome's steady rate 0.977).
ARRIVAL_FLOOR_S = 0.015


# A request sent within this long before ours may still wait to be counted when ours arrives...
QUEUED_S = 0.02
# ...and the server counts ours after it: one GIL switch interval of a Python server. The
# simulator in the tests' own process (whose GIL the client's threads share) counted requests
# sent in a burst of 4-6 up to 24 ms late on a loaded machine (one 429 in CI); alone, 13-19 ms.
QUEUE_STEP_S = 0.005


def arrival_bound(handshake_s: float, queued: int = 0) -> float:
    """How long after its send a request may reach the server and be counted, from the time its
    connection's TCP handshake took (one round trip, so twice the one-way delay): twice that
    again for the delay's jitter, plus the server's own counting delay, longer behind `queued`
    requests sent just before (within `QUEUED_S`) and not yet answered. Over loopback this is
    ~15 ms, where the fixed margins (40-250 ms) would cost 2.5-4% of every window; over a network
    it grows with the round trip, and the window's margin caps it."""
    return ARRIVAL_FLOOR_S + QUEUE_STEP_S * max(0, queued) + 2.0 * max(0.0, handshake_s)


@dataclass(frozen=True)
class Window:
    """At most `limit` requests in any `seconds` (the whole job's, or one process's share).

    `margin_s` lengthens the window as the client sees it: the server counts arrivals, which trail
    the client's stamp by a variable delay. It is the bound used when nothing better is known: a
    request seen sent (`RateLimiter.sent`) over a connection whose handshake was timed counts its
    arrival within `arrival_bound` of the send, until a refusal shows that bound wrong. `backoff`:
    whether a refusal shrinks this window's capacity (by `backoff_factor`) until successes win it
    back. `held_to_answer`: a request whose send was not seen frees its slot one window after its
    answer, never sooner: its arrival is only known to come before the answer, and a send stalled
    past the margin (a busy machine) would otherwise let the next window's first request in while
    the server still counts it (a 429). A request seen sent frees one window and its bound after
    the send, or one window after the answer if that is sooner: a slow answer (the latency's long
    tail) then no longer pushes every later window back. `spacing_s`: the least time between two
    requests this window lets go, so that the slots a burst took (the first window's) spread out
    and stay spread: every slot frees one window after its own send, so without spacing the
    requests would go in bursts at every window's edge for the whole run. It delays, never
    denies: `RateLimiter.room` does not count it.
    """

    bucket: str
    limit: float
    seconds: float
    margin_s: float = 0.25
    backoff: bool = True
    backoff_factor: float = 0.5
    held_to_answer: bool = False
    spacing_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.limit > 0 and math.isfinite(self.limit)):
            raise ValueError(f"bucket {self.bucket}: the limit must be a positive number")
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"bucket {self.bucket}: the window must be a positive number")
        if not (0 <= self.spacing_s < self.seconds / self.limit):
            raise ValueError(
                f"bucket {self.bucket}: the spacing must be under a window's share per request "
                f"({self.seconds / self.limit:g} s), or it would cap the rate below the limit"
            )

    @property
    def sustained(self) -> float:
        """Requests per second this window allows over a long run."""
        return self.limit / self.seconds


def max_shares(windows: Iterable[Window]) -> int:
    """The most processes that can share these limits without any of them rounding up.

    A process's share is floored to whole requests per window (`_WindowState`), so `parts`
    shares of `limit` together allow `parts * floor(limit / parts) <= limit`; below one request
    per window a share would round up to one, and processes that cannot see each other cannot
    space their requests apart, so such a split is refused rather than stretched.
    """
    return min((math.floor(w.limit) for w in windows), default=1_000_000)


def share(windows: Iterable[Window], parts: int) -> tuple[Window, ...]:
    """One of `parts` equal shares, so that the shares together never exceed the whole."""
    windows = tuple(windows)
    if parts < 1:
        raise ValueError(f"cannot split a rate limit into {parts} parts")
    for w in windows:
        if w.limit / parts < 1:
            raise ValueError(
                f"bucket {w.bucket}: {parts} processes cannot share {w.limit:g} requests per "
                f"{w.seconds:g} s (each would get under one); run at most {max_shares(windows)}"
            )
    return tuple(replace(w, limit=w.limit / parts) for w in windows)


class _WindowState:
    def __init__(self, window: Window) -> None:
        self.window = window
        # Fractional shares are floored: a share must never round up past the whole.
        self.capacity = max(1, math.floor(window.limit))
        self.length = window.seconds + window.margin_s
        # One entry per request in the window, in the order taken: [when its slot frees, whether
        # its send was seen (RateLimiter.sent)].
        self.slots: deque[list[float]] = deque()
        self.factor = 1.0
        self.refused = False  # once refused, the measured arrival bound is no longer trusted
        self.last_take = -math.inf

    def allowed(self) -> int:
        return max(1, math.floor(self.capacity * self.factor))

    def _held(self, at: float) -> list[float]:
        """When each slot still held at `at` (now or later) frees. Slots free in any order (one
        answered sooner frees sooner than an older one still out), so what counts is how many,
        not which."""
        return [slot[0] for slot in self.slots if slot[0] > at]

    def wait(self, now: float) -> float:
        """Seconds until one more request fits (0: now): a slow request at the head never holds
        up the ones behind it."""
        slots = self.slots
        while slots and slots[0][0] <= now:
            slots.popleft()
        if len(slots) > 2 * self.capacity:  # freed ones piled up behind a slow head
            self.slots = deque(slot for slot in slots if slot[0] > now)
        spaced = max(0.0, self.last_take + self.window.spacing_s - now)
        held = self._held(now)
        excess = len(held) - self.allowed() + 1
        if excess <= 0:
            return spaced
        return max(spaced, heapq.nsmallest(excess, held)[-1] - now)

    def free(self, at: float) -> int:
        """Slots free at `at` (now or later), if no one takes any before."""
        return max(0, self.allowed() - len(self._held(at)))

    def take(self, now: float) -> list[float]:
        self.last_take = now
        slot = [now + self.length, 0.0]
        self.slots.append(slot)
        return slot


Slot = tuple[_WindowState, list[float]]  # a window and one request's entry in it


@dataclass(order=True)
class _Waiter:
    rank: int  # -priority: the smallest goes first
    arrival: int
    cond: threading.Condition = field(compare=False)


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
        self._lock = threading.Lock()
        self._paused_until: dict[str, float] = {}
        # Callers waiting, one queue per set of buckets, best priority first (then first come).
        # Only the head of a queue waits for room; the others wait to become the head.
        self._queues: dict[tuple[str, ...], list[_Waiter]] = {}
        self._arrivals = itertools.count()

    @property
    def buckets(self) -> tuple[str, ...]:
        return tuple(self._by_bucket)

    def _states_of(self, buckets: Iterable[str]) -> list[_WindowState]:
        try:
            return [s for b in buckets for s in self._by_bucket[b]]
        except KeyError as exc:
            raise ValueError(f"unknown rate bucket {exc.args[0]!r}") from None

    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        with self._lock:
            return sum(len(queue) for queue in self._queues.values())

    def room(self, buckets: Sequence[str], within_s: float = 0.0) -> int:
        """Requests these buckets will take without waiting from now to `within_s` seconds on,
        less those already waiting for them: room the callers in flight leave unused unless
        someone asks for more. (Slots free at a window's edge, so room is counted over a span.)"""
        names = tuple(buckets)
        states = self._states_of(names)
        with self._lock:
            now = self._clock()
            if any(self._paused_until.get(b, 0.0) > now + within_s for b in names):
                return 0
            free = min(state.free(now + within_s) for state in states)
            return max(0, free - len(self._queues.get(names, ())))

    def acquire(
        self,
        buckets: Sequence[str] | None = None,
        priority: int = 0,
        taken: list[Slot] | None = None,
    ) -> float:
        """Waits for a slot in every window of `buckets` (default: all) and takes them; returns
        the seconds waited. Among callers waiting for the same buckets, the highest `priority`
        goes first (a wallet's later pages before other wallets' first ones, so the long
        histories that would end the run last are not starved by the short ones). `taken`
        receives the slots, for `answered`."""
        names = self.buckets if buckets is None else tuple(buckets)
        states = self._states_of(names)
        start = self._clock()
        with self._lock:
            queue = self._queues.setdefault(names, [])
            me = _Waiter(-priority, next(self._arrivals), threading.Condition(self._lock))
            heapq.heappush(queue, me)
            try:
                while True:
                    if queue[0] is not me:
                        me.cond.wait()  # until the head leaves
                        continue
                    now = self._clock()
                    wait = max(self._paused_until.get(b, 0.0) for b in names) - now
                    for state in states:
                        wait = max(wait, state.wait(now))
                    if wait <= 0:
                        slots = [(state, state.take(now)) for state in states]
                        if taken is not None:
                            taken.extend(slots)
                        return now - start
                    me.cond.wait(wait)
            finally:
                if queue[0] is me:
                    heapq.heappop(queue)
                else:  # rare: left from the middle (an exception while waiting)
                    queue.remove(me)
                    heapq.heapify(queue)
                if queue:
                    queue[0].cond.notify()

    def sent(self, taken: Sequence[Slot], arrival_s: float | None = None) -> None:
        """The request that took these slots is written to the connection now: it arrives within
        `arrival_s` of now (`arrival_bound`; the window's margin when that is unknown, larger, or
        proven wrong by a refusal) and not of its stamp, which a busy machine may have left well
        behind. Its slots free one window and that bound from now, unless its answer frees them
        sooner; a slot that frees sooner than its stamp's guess wakes the waiting callers."""
        with self._lock:
            now = self._clock()
            sooner = False
            for state, slot in taken:
                margin = state.window.margin_s
                if arrival_s is not None and not state.refused:
                    margin = min(margin, arrival_s)
                free_at = now + state.window.seconds + margin
                sooner = sooner or free_at < slot[0]
                slot[0] = free_at
                slot[1] = 1.0
            if sooner:
                self._wake_heads()

    def answered(self, taken: Sequence[Slot]) -> None:
        """The server has answered the request that took these slots, so it arrived by now: its
        slots free one window from now, if that is sooner than the margin allows (the margin
        covers an arrival trailing the stamp or the send; an answer bounds it), or in any case
        for windows `held_to_answer` whose send was not seen."""
        with self._lock:
            now = self._clock()
            freed = False
            for state, slot in taken:
                bound = now + state.window.seconds
                if bound < slot[0]:
                    slot[0] = bound
                    freed = True
                elif state.window.held_to_answer and not slot[1]:
                    slot[0] = bound
            if freed:
                self._wake_heads()

    def _wake_heads(self) -> None:
        """Every queue's head looks at the windows again (called with the lock held)."""
        for queue in self._queues.values():
            if queue:
                queue[0].cond.notify()

    def throttled(self, buckets: Sequence[str] | None, pause_s: float) -> None:
        """The server refused: pause every caller of these buckets and shrink their capacity."""
        names = self.buckets if buckets is None else tuple(buckets)
        with self._lock:
            until = self._clock() + pause_s
            for name in names:
                self._paused_until[name] = max(self._paused_until.get(name, 0.0), until)
            for state in self._states_of(names):
                state.refused = True
                if state.window.backoff:
                    state.factor = max(0.25, state.factor * state.window.backoff_factor)
            self._wake_heads()

    def slowed(self, buckets: Sequence[str]) -> None:
        """An answer came back far slower than usual: ease off a little, without a pause."""
        with self._lock:
            for state in self._states_of(buckets):
                if state.window.backoff:
                    state.factor = max(0.25, state.factor * 0.9)

    def succeeded(self, buckets: Sequence[str] | None = None) -> None:
        """A request went through: regain capacity step by step after a refusal."""
        states = self._states if buckets is None else self._states_of(buckets)
        if any(state.factor < 1.0 for state in states):
            with self._lock:
                for state in states:
                    state.factor = min(1.0, state.factor + 0.02)
                self._wake_heads()

    def factor(self, bucket: str) -> float:
        """The smallest capacity factor among the bucket's windows (1.0 = full speed)."""
        return min(state.factor for state in self._by_bucket[bucket])

    def capacities(self) -> list[tuple[str, int, float]]:
        """(bucket, whole requests per window, window length as the client counts it)."""
        return [(s.window.bucket, s.capacity, s.length) for s in self._states]
