"""Splitting a wallet's walk into time windows (pipeline/sources/polymarket/walk.py): the pure rules
directly, and the Walk that runs the windows at once, with plain callables for windows."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.sources.polymarket.walk import (
    MIN_ORDERED_ROWS,
    NEWEST_FIRST,
    OLDEST_FIRST,
    PAGES_PER_WINDOW,
    UNKNOWN,
    Gaps,
    ServedOrder,
    Span,
    Walk,
    cut,
    order_of,
)


def test_only_a_sorted_page_of_two_seconds_or_more_shows_an_order():
    assert order_of([9, 9, 7, 3]) == NEWEST_FIRST
    assert order_of([3, 7, 7, 9]) == OLDEST_FIRST
    assert order_of([5, 5, 5]) == UNKNOWN  # one second: either way
    assert order_of([5]) == UNKNOWN
    assert order_of([]) == UNKNOWN
    assert order_of([9, 3, 7]) == UNKNOWN  # unsorted: the walk must go on by cursor
    assert order_of([3, 9, 7]) == UNKNOWN


def test_a_window_shows_an_order_only_when_all_it_served_agrees():
    newest = ServedOrder()
    assert newest.add([30, 29, 29]) == UNKNOWN  # sorted, but too few rows to prove anything
    assert newest.add(list(range(28, 28 - MIN_ORDERED_ROWS, -1))) == NEWEST_FIRST
    assert newest.add([5, 5]) == NEWEST_FIRST  # a tie goes either way
    assert newest.add([4, 6, 3]) == UNKNOWN  # one row against the order: never again
    assert newest.add([2, 1]) == UNKNOWN
    oldest = ServedOrder()
    assert oldest.add(list(range(1, MIN_ORDERED_ROWS + 1))) == OLDEST_FIRST
    across = ServedOrder()  # each page sorted, the two pages against each other
    assert across.add(list(range(40, 40 - MIN_ORDERED_ROWS, -1))) == NEWEST_FIRST
    assert across.add([45, 44]) == UNKNOWN
    one_second = ServedOrder()
    assert one_second.add([7] * (MIN_ORDERED_ROWS * 2)) == UNKNOWN
    assert one_second.add([]) == UNKNOWN


def test_an_empty_page_that_says_more_is_asked_again_from_the_second_before_to_the_one_after():
    window = Span(1, 100)
    gaps = Gaps()
    gaps.add([90, 80, 80], False)
    assert not gaps.seen and gaps.ranges(window, NEWEST_FIRST) == []
    gaps.add([], True)
    gaps.add([], True)  # two in a row: one gap
    gaps.add([60, 50], False)
    gaps.add([40], False)
    assert gaps.seen
    assert gaps.ranges(window, NEWEST_FIRST) == [(Span(60, 80), 3)]  # 80, 80 and 60 served there
    assert gaps.ranges(window, UNKNOWN) == [(Span(60, 80), 3)]  # both sides known: no order needed


@pytest.mark.parametrize(
    ("order", "first", "last"),
    [
        (NEWEST_FIRST, Span(50, 100), Span(1, 40)),
        (OLDEST_FIRST, Span(1, 50), Span(40, 100)),
        (UNKNOWN, Span(1, 100), Span(1, 100)),  # no side known: the whole window
    ],
)
def test_a_gap_at_either_end_runs_to_the_windows_edge_the_walk_came_from(order, first, last):
    window = Span(1, 100)
    opening = Gaps()
    opening.add([], True)
    opening.add([50, 40], False)
    ((span, _),) = opening.ranges(window, order)
    assert span == first
    closing = Gaps()
    closing.add([50, 40], False)
    closing.add([], True)  # and the walk ended
    ((span, _),) = closing.ranges(window, order)
    assert span == last


def _covered(windows: tuple[Span, ...]) -> list[int]:
    return [t for w in windows for t in range(w.start, w.end + 1)]


@pytest.mark.parametrize("seed", range(200))
def test_the_windows_partition_exactly_what_the_walk_has_not_served(seed):
    rng = random.Random(seed)
    start = rng.randint(1, 1_000)
    end = start + rng.randint(1, 3_000)
    timestamps = sorted(rng.randint(start, end) for _ in range(rng.randint(2, 30)))
    newest_first = rng.random() < 0.5
    if newest_first:
        timestamps.reverse()
    parts = rng.randint(2, 6)
    result = cut(Span(start, end), timestamps, parts)
    boundary = timestamps[-1]
    step = (abs(timestamps[0] - boundary) + 1) * PAGES_PER_WINDOW  # a near window's seconds
    within_one = boundary - step < start if newest_first else boundary + step > end
    if timestamps[0] == timestamps[-1] or within_one:
        assert result is None  # no order shown, or the rest fits in one near window
        return
    assert result is not None
    # Kept: every row served before the boundary second; its rows are all walked again.
    assert all(ts != boundary for ts in timestamps[: result.keep])
    assert all(ts == boundary for ts in timestamps[result.keep :])
    rest = range(start, boundary + 1) if newest_first else range(boundary, end + 1)
    covered = _covered(result.windows)
    assert sorted(covered) == list(rest)  # no second twice, none missed
    assert 2 <= len(result.windows) <= parts
    assert all(w.start <= w.end for w in result.windows)


def test_no_cut_when_the_page_strays_outside_the_window_or_one_part_is_asked():
    assert cut(Span(10, 20), [25, 15], 4) is None
    assert cut(Span(10, 20), [15, 5], 4) is None
    assert cut(Span(10, 20), [18, 12], 1) is None


def test_no_cut_when_the_rest_fits_in_one_near_window():
    # 11 s a page: a near window is 44 s. A rest shorter than that would be one window, walked
    # again from the boundary second: a partial page more and nothing at once.
    assert cut(Span(8_950, 10_000), [9_000, 8_990], 3) is None  # 41 s left: one window's worth
    assert cut(Span(8_946, 10_000), [9_000, 8_990], 3) is not None  # 45 s: a near one and more
    assert cut(Span(1, 150), [100, 110], 3) is None  # oldest first: 41 s left
    assert cut(Span(1, 154), [100, 110], 3) is not None


def test_near_windows_hold_about_four_pages_at_the_pages_density():
    result = cut(Span(1, 10_000), [9_000, 8_990], 3)  # 11 s a page
    assert result is not None
    assert result.windows == (Span(8_947, 8_990), Span(8_903, 8_946), Span(1, 8_902))
    result = cut(Span(1, 10_000), [100, 110], 3)
    assert result is not None
    assert result.windows == (Span(110, 153), Span(154, 197), Span(198, 10_000))


def _fake_walk(pages_of: dict[Span, list[list[int]]], splits: dict[Span, tuple[Span, ...]]):
    """Windows as plain data: each yields its pages, and may hand the rest to `splits[span]`."""

    def walk_window(span: Span, depth: int, whole: Walk):
        for number, page in enumerate(pages_of.get(span, [])):
            if span in splits and number == 0 and whole.parts() >= 2:
                whole.split(splits[span], depth + 1)
                yield [{"ts": ts} for ts in page]
                return
            yield [{"ts": ts} for ts in page]

    return walk_window


def test_a_walk_yields_every_window_page_and_splits_again_inside_windows():
    top, a, b, a1, a2 = Span(1, 100), Span(51, 100), Span(1, 50), Span(76, 100), Span(51, 75)
    pages_of = {
        top: [[1000]],
        a: [[80]],
        a1: [[90, 91], [92]],
        a2: [[60]],
        b: [[10], [20], [30]],
    }
    splits = {top: (a, b), a: (a1, a2)}
    with ThreadPoolExecutor(4) as pool:
        walk = Walk(_fake_walk(pages_of, splits), pool, room=lambda: 4)
        rows = [row["ts"] for page in walk.pages(top) for row in page]
    assert sorted(rows) == [10, 20, 30, 60, 80, 90, 91, 92, 1000]


def test_no_split_without_room_and_none_past_the_cap():
    top, a, b = Span(1, 100), Span(51, 100), Span(1, 50)
    pages_of = {top: [[1], [2]], a: [[3]], b: [[4]]}
    with ThreadPoolExecutor(2) as pool:
        no_room = Walk(_fake_walk(pages_of, {top: (a, b)}), pool, room=lambda: 0)
        assert sorted(r["ts"] for p in no_room.pages(top) for r in p) == [1, 2]
        capped = Walk(_fake_walk(pages_of, {top: (a, b)}), pool, room=lambda: 4, max_windows=1)
        assert sorted(r["ts"] for p in capped.pages(top) for r in p) == [1, 2]


def test_a_failing_window_fails_the_walk_and_the_others_stop():
    top, good, bad = Span(1, 100), Span(51, 100), Span(1, 50)
    released = threading.Event()
    asked_after_failure = []

    def walk_window(span: Span, depth: int, whole: Walk):
        if span == top:
            whole.split((good, bad), 1)
            yield [{"ts": 0}]
            return
        if span == bad:
            raise RuntimeError("window 1-50 failed")
        for n in range(1_000):  # a long window: it must stop once the walk has failed
            if n == 5:
                released.wait(5)
            if n > 5:
                asked_after_failure.append(n)
            yield [{"ts": n}]

    with ThreadPoolExecutor(2) as pool:
        walk = Walk(walk_window, pool, room=lambda: 4)
        with pytest.raises(RuntimeError, match="window 1-50 failed"):
            for _ in walk.pages(top):
                pass
        released.set()
    assert len(asked_after_failure) <= 1  # at most the page in hand when it heard
