"""The process-wide limiter on its own: every window holds under threads; a refusal slows, then recovers."""

import itertools
import threading
import time
from bisect import bisect_left

import pytest

from pipeline.sources.dome.client import RateLimit
from pipeline.sources.limiter import (
    ARRIVAL_FLOOR_S,
    RateLimiter,
    Window,
    arrival_bound,
    max_shares,
    share,
)
from pipeline.sources.polymarket.source import windows as polymarket_windows


def peak(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    return max(i - bisect_left(stamps, t - window + 1e-9) + 1 for i, t in enumerate(stamps))


def _run_together(target, count: int) -> None:
    """`count` threads running `target` at once; returns when all are done."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_both_windows_hold_across_threads():
    # Dome's shape (a short window inside a long one) at a tenth of its time scale: 8 per 0.2 s
    # and 20 per 2 s. 28 requests overrun the long window's 20, so the long window must hold
    # the last 8 back until 2 s after the first: without it they would all be done in ~0.6 s.
    short, long = 0.2, 2.0
    limiter = RateLimiter(
        [Window("key", 8, short, margin_s=0.0), Window("key", 20, long, margin_s=0.0)]
    )
    stamps: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(7):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    _run_together(worker, 4)
    assert len(stamps) == 28
    # Stamps are taken just after `acquire` returns: a few ms of slack for the recording.
    slack = 0.01
    assert peak(stamps, short - slack) <= 8
    assert peak(stamps, long - slack) <= 20
    assert max(stamps) - min(stamps) >= long - slack


def test_shares_never_add_up_past_the_whole():
    whole = RateLimit.for_tier("dev")
    limiter = RateLimiter(share(whole.windows(), 3))
    capacities = [capacity for _, capacity, _ in limiter.capacities()]
    assert capacities == [33, 166]
    assert 3 * capacities[0] <= whole.per_second and 3 * capacities[1] <= whole.per_10s
    assert whole.sustained == 50 and RateLimit.for_tier("free").sustained == 10


PUBLISHED_LIMITS = {
    **{f"dome {tier}": RateLimit.for_tier(tier).windows() for tier in ("free", "dev", "pro")},
    "polymarket": polymarket_windows(),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_LIMITS))
def test_no_split_from_1_to_200_processes_rounds_past_any_window(name):
    windows = PUBLISHED_LIMITS[name]
    for parts in range(1, 201):
        if parts > max_shares(windows):
            with pytest.raises(ValueError, match="cannot share"):
                share(windows, parts)
            continue
        capacities = RateLimiter(share(windows, parts)).capacities()
        for window, (_, capacity, _) in zip(windows, capacities, strict=True):
            assert capacity >= 1
            assert parts * capacity <= window.limit, (parts, window)


def test_a_split_finer_than_one_request_per_window_is_refused_with_the_ceiling():
    free = RateLimit.for_tier("free").windows()  # 10 per second: eleven processes cannot share
    assert max_shares(free) == 10
    with pytest.raises(ValueError, match="run at most 10"):
        share(free, 11)


def test_throttle_pauses_everyone_then_capacity_recovers():
    limiter = RateLimiter(RateLimit(per_second=100, per_10s=1000).windows())
    limiter.throttled(None, 0.3)
    assert limiter.factor("key") == 0.5
    waited = limiter.acquire()
    assert waited >= 0.25
    for _ in range(30):
        limiter.succeeded()
    assert limiter.factor("key") == 1.0


@pytest.mark.parametrize("tier", ["gold", ""])
def test_unknown_tier_is_refused_with_the_choices(tier):
    with pytest.raises(ValueError, match="free, dev, pro"):
        RateLimit.for_tier(tier)


def test_margins_cost_least_where_a_window_sets_the_sustained_rate():
    free = RateLimiter(RateLimit.for_tier("free").windows())
    dev = RateLimiter(RateLimit.for_tier("dev").windows())
    assert [length for _, _, length in free.capacities()] == [1.04, 10.25]
    assert [length for _, _, length in dev.capacities()] == [1.25, 10.25]


def _wait_for(predicate, what: str) -> None:
    for _ in range(4000):
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


class _Clock:
    """A clock the test moves by hand: the limiter sees time pass only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_deeper_pages_go_first_among_callers_of_the_same_buckets():
    # One trades request per window, already taken; five callers queue with mixed priorities
    # (a walk's page number). Each time the window frees a slot the deepest waiting page gets
    # it, equal ones in their order of arrival; a caller of another bucket is not held behind.
    clock = _Clock()
    limiter = RateLimiter(
        [Window("trades", 1, 0.01, margin_s=0.0), Window("markets", 1, 0.01, margin_s=0.0)],
        clock=clock,
    )
    limiter.acquire(["trades"])
    order: list[tuple[int, str]] = []
    lock = threading.Lock()

    def caller(priority: int, name: str) -> None:
        limiter.acquire(["trades"], priority)
        with lock:
            order.append((priority, name))

    threads = []
    for priority, name in ((0, "a"), (3, "b"), (1, "c"), (3, "d"), (7, "e")):
        threads.append(threading.Thread(target=caller, args=(priority, name)))
        threads[-1].start()
        queued = len(threads)
        _wait_for(lambda queued=queued: limiter.waiting() == queued, f"caller {name} queued")
    limiter.acquire(["markets"])  # another bucket: served at once, the trades queue aside
    assert order == []
    for granted in range(1, 6):
        clock.now += 1.0  # the window frees one slot
        _wait_for(lambda n=granted: len(order) == n, f"grant {granted}")
    for thread in threads:
        thread.join()
    assert order == [(7, "e"), (3, "b"), (3, "d"), (1, "c"), (0, "a")]
    assert limiter.waiting() == 0


def test_an_answered_request_frees_its_slot_a_window_after_the_answer_not_after_the_margin():
    # The margin covers an arrival trailing the client's stamp; once the answer is in, the
    # request has certainly arrived, so its slot frees one window after the answer.
    clock = _Clock()
    limiter = RateLimiter([Window("trades", 1, 10.0, margin_s=0.25)], clock=clock)
    slots: list = []
    limiter.acquire(taken=slots)
    clock.now = 0.1
    limiter.answered(slots)  # the answer came 0.1 s after the stamp
    clock.now = 10.1
    assert limiter.acquire() == 0.0  # free at 10.1, not at 10.25

    # Unanswered (no answer yet, or none came): the margin holds it to stamp + 10.25.
    done = threading.Event()
    thread = threading.Thread(target=lambda: (limiter.acquire(), done.set()))
    thread.start()
    _wait_for(lambda: limiter.waiting() == 1, "the caller queued")
    clock.now = 20.2
    assert not done.wait(0.05)
    clock.now = 20.35
    thread.join()
    assert done.is_set()


def test_room_counts_the_slots_free_over_a_span_and_none_while_paused():
    """What a walk splits on (walk.py): room now, room a second on, none during a pause."""
    clock = _Clock()
    limiter = RateLimiter(
        [Window("trades", 5, 10.0, margin_s=0.0), Window("data", 50, 10.0, margin_s=0.0)],
        clock=clock,
    )
    assert limiter.room(["trades", "data"]) == 5
    for moment in (0.0, 0.5, 3.0):
        clock.now = moment
        limiter.acquire(["trades", "data"])
    assert limiter.room(["trades", "data"]) == 2  # the narrowest bucket decides
    assert limiter.room(["data"]) == 47
    assert limiter.room(["trades"], within_s=7.0) == 3  # the first slot frees at 10.0
    assert limiter.room(["trades"], within_s=7.6) == 4
    limiter.throttled(["trades"], pause_s=2.0)
    assert limiter.room(["trades"]) == 0
    # The refusal also halved the capacity (2 of 5): room only once slots free past the pause.
    assert limiter.room(["trades"], within_s=2.5) == 0
    assert limiter.room(["trades"], within_s=8.0) == 1


def test_a_window_held_to_the_answer_frees_a_slow_requests_slot_only_a_window_after_it():
    """A send stalled past the margin (a busy machine) must not let the next window in early."""
    clock = _Clock()
    held = Window("trades", 1, 10.0, margin_s=0.25, held_to_answer=True)
    limiter = RateLimiter([held], clock=clock)
    slots: list = []
    limiter.acquire(taken=slots)
    clock.now = 0.6  # answered 0.6 s after the stamp: the arrival may be as late as that
    limiter.answered(slots)
    clock.now = 10.3
    assert limiter.room(["trades"]) == 0  # the margin alone would have freed it at 10.25
    clock.now = 10.6
    assert limiter.room(["trades"]) == 1
    slots = []
    limiter.acquire(taken=slots)
    clock.now = 10.7  # a quick answer still frees the slot sooner than the margin
    limiter.answered(slots)
    clock.now = 20.7
    assert limiter.room(["trades"]) == 1


def test_a_slow_request_does_not_hold_up_the_slots_freed_after_it():
    """Slots free in answer order: the next window starts with the first slot that frees."""
    clock = _Clock()
    limiter = RateLimiter(
        [Window("trades", 2, 10.0, margin_s=0.25, held_to_answer=True)], clock=clock
    )
    slow, quick = [], []
    limiter.acquire(taken=slow)  # stamped at 0.0, answered late
    limiter.acquire(taken=quick)  # stamped at 0.0, answered at once
    clock.now = 0.05
    limiter.answered(quick)
    clock.now = 3.0
    limiter.answered(slow)
    clock.now = 10.1  # the quick one's slot is free; the slow one's until 13.0
    assert limiter.room(["trades"]) == 1
    went = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(["trades"]), went.set()), daemon=True).start()
    assert went.wait(2.0)  # (waiting for the slow one's slot would wait for good: the clock stands)
    assert limiter.room(["trades"]) == 0


def test_a_request_seen_sent_frees_a_window_and_the_margin_after_its_send_despite_a_slow_answer():
    """The latency's long tail: an answer 3 s after the send no longer holds the slot to 13 s,
    since the request arrived within the margin of its send; a quick answer still frees it
    sooner. A window not held to the answer counts from the send too: a send that stalled after
    the stamp (a busy machine) pushes its slot later, never sooner."""
    clock = _Clock()
    held = Window("trades", 1, 10.0, margin_s=0.25, held_to_answer=True)
    limiter = RateLimiter([held], clock=clock)
    slots: list = []
    limiter.acquire(taken=slots)
    clock.now = 0.4  # stamped at 0, written to the socket at 0.4
    limiter.sent(slots)
    clock.now = 3.0
    limiter.answered(slots)  # the slow answer: as if unsent, 13.0
    clock.now = 10.6
    assert limiter.room(["trades"]) == 0  # 0.4 + 10.25 = 10.65
    clock.now = 10.7
    assert limiter.room(["trades"]) == 1

    slots = []
    limiter.acquire(taken=slots)  # at 10.7
    limiter.sent(slots)
    clock.now = 10.8
    limiter.answered(slots)  # quick: 10.8 + 10 beats 10.7 + 10.25
    clock.now = 20.8
    assert limiter.room(["trades"]) == 1

    plain = RateLimiter([Window("dome", 1, 1.0, margin_s=0.04)], clock=clock)
    slots = []
    clock.now = 30.0
    plain.acquire(taken=slots)
    clock.now = 30.5  # the send stalled half a second after the stamp
    plain.sent(slots)
    clock.now = 31.1
    assert plain.room(["dome"]) == 0  # the stamp's 31.04 would have let the next one in
    clock.now = 31.6
    assert plain.room(["dome"]) == 1


def test_a_measured_arrival_bound_replaces_the_margin_until_a_refusal_proves_it_wrong():
    """A send over a connection whose handshake was timed counts its arrival within that bound
    (`arrival_bound`), sooner than the stamp's margin; a bound larger than the margin is capped
    by it; after a 429 on the bucket the margin is back for good."""
    clock = _Clock()
    limiter = RateLimiter([Window("dome", 1, 1.0, margin_s=0.04)], clock=clock)
    slots: list = []
    limiter.acquire(taken=slots)  # stamped at 0
    bound = arrival_bound(0.0005)  # a loopback handshake
    assert ARRIVAL_FLOOR_S < bound < 0.04
    limiter.sent(slots, bound)
    clock.now = 1.0 + bound - 0.001
    assert limiter.room(["dome"]) == 0
    clock.now = 1.0 + bound + 0.001
    assert limiter.room(["dome"]) == 1

    slots = []
    limiter.acquire(taken=slots)
    start = clock.now
    limiter.sent(slots, arrival_bound(1.0))  # a slow network: capped by the 40 ms margin
    clock.now = start + 1.039
    assert limiter.room(["dome"]) == 0
    clock.now = start + 1.041
    assert limiter.room(["dome"]) == 1

    limiter.throttled(["dome"], 0.5)
    clock.now = 2.6
    slots = []
    limiter.acquire(taken=slots)  # at 2.6, after the pause
    limiter.sent(slots, arrival_bound(0.0005))  # the bound is no longer trusted
    clock.now = 3.63
    assert limiter.room(["dome"]) == 0
    clock.now = 3.641
    assert limiter.room(["dome"]) == 1


def test_a_slot_freed_sooner_by_its_send_wakes_a_caller_waiting_for_it():
    """A caller that found the window full waits for the stamp's guess (the margin); the send's
    tighter bound frees the slot sooner, and the caller must look again rather than oversleep."""
    limiter = RateLimiter([Window("w", 1, 0.5, margin_s=5.0)])
    slots: list = []
    limiter.acquire(taken=slots)
    went = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(["w"]), went.set()), daemon=True).start()
    _wait_for(lambda: limiter.waiting() == 1, "the second caller waits")
    limiter.sent(slots, arrival_bound(0.0))
    assert went.wait(3.0)  # 0.51 s after the send, not 5.5 s after the stamp


def test_spacing_spreads_a_burst_and_the_windows_after_it_stay_spread():
    """Ten callers at once on a 5-per-0.5 s window spaced 50 ms: each request leaves at least
    50 ms after the one before, and the sixth waits for the first's slot. The spacing delays and
    never denies: right after a take, room still counts the four slots left."""
    limiter = RateLimiter([Window("key", 5, 0.5, margin_s=0.0, spacing_s=0.05)])
    limiter.acquire()
    assert limiter.room(["key"]) == 4
    limiter = RateLimiter([Window("key", 5, 0.5, margin_s=0.0, spacing_s=0.05)])
    taken: list = []  # (window, slot): a slot holds its take time + the window, until answered
    lock = threading.Lock()
    start = threading.Barrier(10)

    def caller():
        start.wait()
        slots: list = []
        limiter.acquire(taken=slots)
        with lock:
            taken.extend(slots)

    _run_together(caller, 10)
    stamps = sorted(slot[0] - 0.5 for _, slot in taken)  # when each was let go, exactly
    assert len(stamps) == 10
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.05 - 1e-9, gaps
    assert all(stamps[k + 5] - stamps[k] >= 0.5 - 1e-9 for k in range(5))


def test_spacing_must_leave_the_window_its_whole_rate():
    with pytest.raises(ValueError, match="spacing must be under"):
        Window("key", 10, 1.0, spacing_s=0.1)
    with pytest.raises(ValueError, match="spacing must be under"):
        Window("key", 10, 1.0, spacing_s=-0.01)
    assert Window("key", 10, 1.0, spacing_s=0.099).spacing_s == 0.099


def test_dome_spaces_the_window_that_sets_its_rate_only():
    free_second, free_ten = RateLimit.for_tier("free").windows()
    assert (free_second.spacing_s, free_ten.spacing_s) == (0.04, 0.0)
    # Dev: 100/s caps bursts of a 50/s rate; Pro: 300/s is its 3,000 per 10 s.
    assert [w.spacing_s for w in RateLimit.for_tier("dev").windows()] == [0.0, 0.0]
    assert [w.spacing_s for w in RateLimit.for_tier("pro").windows()] == [0.4 / 300, 0.0]
    (shared, _) = share(RateLimit.for_tier("free").windows(), 2)
    assert shared.spacing_s == 0.04  # each process spaces its own: 5 per second, 40 ms apart
