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
    limiter = RateLimiter(
        [Window("key", 8, 1.0, margin_s=0.0), Window("key", 20, 10.0, margin_s=0.0)]
    )
    stamps: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(5):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stamps) == 20
    assert peak(stamps, 1.0) <= 8
    # 20 requests at 8/s need at least two full one-second windows.
    assert max(stamps) - min(stamps) >= 2.0


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
