"""One wallet's walk through /v2/trades, split into time windows walked at once when the rate
limit has room that would otherwise go unused.

Why: a wallet's pages come one after another (each needs the previous page's cursor), so a wallet
of 40 pages takes 40 round trips whatever the limit allows. At the end of a run a few deep wallets
page alone while the trades bucket idles (issue 14's tail). /v2/trades takes `start` and `end`
(inclusive, block time, honoured with `user`): a window can be walked by its own cursor, at the
same time as the others, and the windows of a partition together serve exactly the whole range.

Where a walk splits: after a page that says more (`has_more` and a cursor), when the caller says
there is room. The rows show which way the walk goes: newest first (timestamps fall) or oldest
first (they rise); the API does not document its order, so a walk splits only once every row its
window has served so far, at least MIN_ORDERED_ROWS of them over two seconds or more, came in one
order (`ServedOrder`); otherwise (one second only, unsorted, or a page that contradicts an
earlier one) it goes on by cursor. One page that happened to look sorted was proof enough
before: a server serving in no time order then lost most of a wallet's rows (pages of 3 rows
are sorted one time in three), the wallet marked done. Newest first, the keyset order
(the cursor anchors on block time) means every row newer than the page's last second `b` has been
served, and some of `b`'s; the page's rows at `b` are dropped and [start, b] is walked again as
windows: near ones of about PAGES_PER_WINDOW pages at this page's density, the far rest in one,
whose first page jumps straight to its newest rows (and may split again). Oldest first, the same
mirrored. Identical rows share a second, so no group of identical rows is ever cut: each window
numbers its groups exactly as the whole walk would (ids.Ordinals), and the trade ids agree.

Cost: at most one partial page per window, and a window can come back empty when the density
changes. Walks split only when the bucket has room the walks in flight leave unused, so the extra
requests spend allowance that would otherwise be lost.
"""

from __future__ import annotations

import itertools
import queue
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

NEWEST_FIRST, UNKNOWN, OLDEST_FIRST = -1, 0, 1
# Rows a window must have served in one order before it may split: 20 rows over two seconds or
# more come sorted by chance about twice in 20! (or, all in two seconds, 10 and 10, 2 in 184,756).
MIN_ORDERED_ROWS = 20
PAGES_PER_WINDOW = 4  # a near window's size, in pages at the density of the page that split
MAX_WINDOWS = 256  # per wallet: a source that serves nonsense cannot multiply the walks forever


@dataclass(frozen=True)
class Span:
    """Block times from `start` to `end`, both inclusive (as /v2/trades takes them)."""

    start: int
    end: int


@dataclass(frozen=True)
class Cut:
    """Where a walk stops: keep the page's first `keep` rows, walk `windows` instead of the rest."""

    keep: int
    windows: tuple[Span, ...]


def order_of(timestamps: Sequence[int]) -> int:
    """NEWEST_FIRST or OLDEST_FIRST if the page proves it (two seconds or more, sorted), else
    UNKNOWN."""
    if len(timestamps) < 2 or timestamps[0] == timestamps[-1]:
        return UNKNOWN
    pairs = list(itertools.pairwise(timestamps))
    if timestamps[0] > timestamps[-1]:
        return NEWEST_FIRST if all(a >= b for a, b in pairs) else UNKNOWN
    return OLDEST_FIRST if all(a <= b for a, b in pairs) else UNKNOWN


class ServedOrder:
    """The time order of every row one window has served so far, page after page: the order of
    a walk is what its whole served sequence shows, not one page."""

    def __init__(self) -> None:
        self._order, self._last, self._rows, self._broken = UNKNOWN, None, 0, False

    def add(self, timestamps: Sequence[int]) -> int:
        """Takes a page's timestamps (in the order served); the order the whole window proves
        now: NEWEST_FIRST or OLDEST_FIRST, or UNKNOWN (too few rows, one second only, or two
        rows against the order the others showed, after which it stays UNKNOWN)."""
        for ts in timestamps:
            if self._last is not None and ts != self._last:
                step = NEWEST_FIRST if ts < self._last else OLDEST_FIRST
                if self._order == UNKNOWN:
                    self._order = step
                elif step != self._order:
                    self._broken = True
            self._last = ts
        self._rows += len(timestamps)
        if self._broken or self._rows < MIN_ORDERED_ROWS:
            return UNKNOWN
        return self._order


class Gaps:
    """Empty pages that said more was to come, in one window's walk. The API's docs say never to
    stop on one (its filters can empty a page), so the walk steps over it; but a server that
    skipped the page's rows would then lose them unseen, the wallet marked done. So each such
    page's range (from the last second served before it to the first after, or the window's
    edge on the side with none) is asked again once the window is walked, and the rows it holds
    are compared with those the walk served there (`ranges`)."""

    def __init__(self) -> None:
        self._stamps = array("q")  # every second the window served, 8 bytes a row
        self._before: list[int | None] = []  # per gap: the last second served before it
        self._after: list[int | None] = []  # per gap: the first second served after it
        self._open = False

    @property
    def seen(self) -> bool:
        return bool(self._before)

    def add(self, timestamps: Sequence[int], empty_with_more: bool) -> None:
        if empty_with_more:
            if not self._open:
                self._before.append(self._stamps[-1] if self._stamps else None)
                self._after.append(None)
                self._open = True
            return
        if timestamps and self._open:
            self._after[-1] = timestamps[0]
            self._open = False
        self._stamps.extend(timestamps)

    def ranges(self, window: Span, order: int) -> list[tuple[Span, int]]:
        """Each gap's range to ask again, with the rows the window served in it. A side with no
        row served is the window's edge the walk came from (or went to); with no order known,
        the whole window."""
        out = []
        for before, after in zip(self._before, self._after, strict=True):
            if before is not None and after is not None:
                low, high = min(before, after), max(before, after)
            elif order == NEWEST_FIRST:
                low = window.start if after is None else after
                high = window.end if before is None else before
            elif order == OLDEST_FIRST:
                low = window.start if before is None else before
                high = window.end if after is None else after
            else:
                low, high = window.start, window.end
            served = sum(1 for ts in self._stamps if low <= ts <= high)
            out.append((Span(low, high), served))
        return out


def cut(span: Span, timestamps: Sequence[int], parts: int) -> Cut | None:
    """How a walk of `span` whose latest page has these timestamps (in the order served) hands its
    rest to `parts` windows; None when it must go on by cursor instead, or when the rest fits in
    one near window (about PAGES_PER_WINDOW pages): one window would walk the same rest again
    from the page's last second, one partial page more and nothing at once (it was ~70% of a
    300-wallet run's cuts)."""
    order = order_of(timestamps)
    if order == UNKNOWN or parts < 2:
        return None
    if min(timestamps) < span.start or max(timestamps) > span.end:
        return None  # rows outside the asked window: the server's order cannot be trusted
    boundary = timestamps[-1]
    keep = next(i for i, ts in enumerate(timestamps) if ts == boundary)
    step = (abs(timestamps[0] - boundary) + 1) * PAGES_PER_WINDOW
    windows: list[Span] = []
    if order == NEWEST_FIRST:
        high = boundary
        while len(windows) < parts - 1 and high - step + 1 > span.start:
            windows.append(Span(high - step + 1, high))
            high -= step
        windows.append(Span(span.start, high))
    else:
        low = boundary
        while len(windows) < parts - 1 and low + step - 1 < span.end:
            windows.append(Span(low, low + step - 1))
            low += step
        windows.append(Span(low, span.end))
    if len(windows) < 2:  # the rest is within one near window: a cut would only walk it again
        return None
    return Cut(keep, tuple(windows))


Rows = list[dict[str, Any]]
# Walks one window: yields its pages' rows; may hand its rest to other windows through the Walk.
WindowWalk = Callable[[Span, int, "Walk"], Iterator[Rows]]


class _Done:
    pass


_DONE = _Done()


class Walk:
    """A wallet's windows: the first walked on the caller's thread, the ones split off on `pool`,
    their pages yielded by `pages()` as they come (bounded queue: memory stays flat)."""

    def __init__(
        self,
        walk_window: WindowWalk,
        pool: Executor,
        room: Callable[[], int],
        max_windows: int = MAX_WINDOWS,
    ) -> None:
        self._walk_window, self._pool, self._room = walk_window, pool, room
        self._results: queue.Queue = queue.Queue(maxsize=16)
        self._lock = threading.Lock()
        self._outstanding = 0
        self._windows_left = max_windows - 1
        self._stopped = threading.Event()

    def parts(self) -> int:
        """Into how many windows a walk may split now (below 2: it must not)."""
        if self._stopped.is_set():
            return 0
        with self._lock:
            left = self._windows_left
        return min(self._room(), left + 1)

    def split(self, windows: Sequence[Span], depth: int) -> None:
        """Walks these windows on the pool; `depth` ranks their pages against other walks'."""
        with self._lock:
            self._outstanding += len(windows)
            self._windows_left -= len(windows) - 1
        for window in windows:
            self._pool.submit(self._run, window, depth)

    def _put(self, item: Any) -> None:
        """Hands an item to `pages()`; once it has stopped listening, drops it (never blocks a
        pool thread for good on a queue no one reads)."""
        while not self._stopped.is_set():
            try:
                self._results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self, window: Span, depth: int) -> None:
        try:
            for rows in self._walk_window(window, depth, self):
                if self._stopped.is_set():
                    return
                self._put(rows)
        except BaseException as error:
            self._put(error)
        finally:
            self._put(_DONE)

    def _take(self, block: bool) -> Iterator[Rows]:
        while True:
            try:
                item = self._results.get(block=block)
            except queue.Empty:
                return
            if item is _DONE:
                with self._lock:
                    self._outstanding -= 1
                if block:
                    return
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def pages(self, span: Span) -> Iterator[Rows]:
        """Every row of `span`, page by page; the first failure of any window ends it (raised)."""
        try:
            for rows in self._walk_window(span, 0, self):
                yield rows
                yield from self._take(block=False)
            while True:
                with self._lock:
                    if self._outstanding == 0:
                        break
                yield from self._take(block=True)
        finally:
            self._stopped.set()  # windows still out stop at their next page
