"""The process-wide limiter on its own: every window holds under threads; a refusal slows, then recovers."""

import threading
import time
from bisect import bisect_left

import pytest

from pipeline.sources.dome.client import RateLimit
from pipeline.sources.limiter import RateLimiter, Window, share


def peak(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    return max(i - bisect_left(stamps, t - window + 1e-9) + 1 for i, t in enumerate(stamps))


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

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
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
