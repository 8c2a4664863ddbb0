"""Markets and events looked up inside the trades stage, while the trades are still being fetched.

Why here and not in stages of their own: a Beam batch runner starts a stage after a barrier (a
GroupByKey, a CoGroupByKey, a stateful DoFn's shuffle) only once everything before the barrier is
done, so a run-wide dedup in front of the lookups made them wait for the last trade page, and then
ran their request chains (Gamma's closed pass, open pass, slug fallbacks, resolutions; events after
markets) one after another at the end of every run. Markets and events draw from other rate buckets
than trades, so asking for them while the trades are fetched costs no trade throughput.

So the trades DoFn hands the keys its pages name to `Lookups`, which, in the same process:
- drops the keys production holds final or fresh, or that enough runs found missing at the source
  (`KeyPlan`, read once per process as the stage starts, in a thread of its own: the first trade
  requests do not wait for it, the keys their pages name do; from the warehouse in a run of one
  process, from the copy start-up staged in a run of several, `ReadLookupPlan`);
- drops the keys this process already claimed (`Claims`, one per process and run, shared by every
  DoFn instance through Beam's `Shared`): each key is looked up once per process, so once per run
  on the default DirectRunner; with several processes a key named in two of them is looked up by
  each (the commit's MERGE keeps one row per key, the missing table counts distinct runs);
- adds the keys production wants whoever names them (`KeyPlan.always`: unlanded, stale open
  ones) when the run's one start element (LOOKUPS_START, flattened with the wallets) arrives:
  once per run, in whichever process gets it, also in a run that fetches no wallet;
- sends a batch as soon as it is full; once the bundle stops starting wallets (its end), a
  partial batch goes at once (one partial at a time per kind, so the tail costs few extra
  requests); the bundle ends only when every lookup it started has ended.
Markets found name their events (Dome's trades do not): those slugs join the events as they come.
A failed batch is counted and logged, emits no `missing` row (its keys stay pending, asked again
by later runs), and is tallied (`Attempts`) for the run-level verdict.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from apache_beam.utils.shared import Shared

from pipeline.schema import format_timestamp
from pipeline.sources import Source
from pipeline.sources.errors import SourceError
from pipeline.staging import RunStaging
from pipeline.warehouse import Warehouse, WarehouseRef
from transforms.metrics import ThreadCounters
from transforms.run_health import Attempts
from transforms.select_wallets import RefreshPolicy
from transforms.skip_known import KeyPlan

log = logging.getLogger(__name__)

MARKETS, EVENTS = "markets", "events"
KINDS = (MARKETS, EVENTS)
MISSING = "missing"  # rows of the staged kind "missing" (pipeline.schema.MISSING_COLUMNS)
ATTEMPTS = "attempts"  # {kind: Attempts} per batch (run_health.SourceVerdict)
EVENT_SLUGS = "event_slugs"  # the event slugs markets name
GONE_TEMPLATE = (
    "{kind}: all {{gone}} lookup batches failed as if the source were gone ({kind} not fetched "
    "stay pending: the next run asks again); the last: {{last}}"
)


class LookupPlan:
    """Both kinds' KeyPlans: what each process of the trades stage reads once, as it starts."""

    def __init__(self, markets: KeyPlan, events: KeyPlan) -> None:
        self.markets, self.events = markets, events

    def of_kind(self, kind: str) -> KeyPlan:
        return self.markets if kind == MARKETS else self.events


PLAN_PARTS = ("known", "unlanded", "missing")
PlanRows = dict[str, dict[str, list[list[Any]]]]  # kind -> part -> rows (JSON as it stands)


def read_plan_rows(warehouse: Warehouse) -> PlanRows:
    """What production holds, lacks and found missing, per kind: the rows a LookupPlan is made
    of, in one warehouse session. Two of its queries read the whole trades table."""
    return {
        kind: {
            part: [list(row) for row in getattr(warehouse, f"read_{part}_{kind}")()]
            for part in PLAN_PARTS
        }
        for kind in KINDS
    }


def plan_of(rows: PlanRows, policy: RefreshPolicy) -> LookupPlan:
    plans = [KeyPlan.of(*(rows[kind][part] for part in PLAN_PARTS), policy) for kind in KINDS]
    return LookupPlan(*plans)


class ReadLookupPlan:
    """Reads the run's LookupPlan (picklable: it travels in the LookupSpec and runs in each worker
    process). From the run's staging when start-up staged it there (`staged`: a run of several
    processes, whose every process asked the warehouse before: on Dataflow, workers × vCPUs
    reads of the whole trades table a run), else from the warehouse."""

    def __init__(
        self, warehouse: WarehouseRef, policy: RefreshPolicy, staged: RunStaging | None = None
    ) -> None:
        self._warehouse, self._policy, self._staged = warehouse, policy, staged

    def __call__(self) -> LookupPlan:
        if self._staged is not None:
            return plan_of(self._staged.read_lookup_plan(), self._policy)
        with self._warehouse.open() as warehouse:
            return plan_of(read_plan_rows(warehouse), self._policy)


class _PlanReading:
    """The plan being read in a thread of its own, once per process and run (via `Shared`):
    the trades start meanwhile, and the keys their first pages name wait for it (`Lookups`)."""

    def __init__(self, read: Callable[[], LookupPlan]) -> None:
        pool = ThreadPoolExecutor(1, thread_name_prefix="LookupPlan")
        self.future: Future[LookupPlan] = pool.submit(read)  # its error fails who waits for it
        pool.shutdown(wait=False)  # the one read goes on; the thread ends with it


class Claims:
    """The keys this process has claimed for lookup this run, per kind; thread-safe. Not capped:
    it holds the keys the run looks up, each of which becomes a row anyway."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self._planned = False

    def new(self, kind: str, keys: list[str]) -> list[str]:
        """Those of `keys` not claimed before, now claimed (in order, each once)."""
        out = []
        with self._lock:
            seen = self._keys[kind]
            for key in keys:
                if key not in seen:
                    seen.add(key)
                    out.append(key)
        return out

    def take_plan(self) -> bool:
        """True the first time only (a retried start element queues nothing twice)."""
        with self._lock:
            first, self._planned = not self._planned, True
            return first


class LookupSettings:
    """What a graph's lookups need: where production's known keys are, the refresh policy that
    says which are fresh, and the source's batch sizes."""

    def __init__(
        self,
        warehouse: WarehouseRef,
        policy: RefreshPolicy,
        markets_per_batch: int,
        events_per_batch: int,
        staged_plan: RunStaging | None = None,
    ) -> None:
        self.warehouse, self.policy = warehouse, policy
        self.markets_per_batch, self.events_per_batch = markets_per_batch, events_per_batch
        self.staged_plan = staged_plan  # the run's staging, when start-up staged the plan there


class LookupSpec:
    """What the trades stage needs to look markets and events up (picklable). `tag` names the
    run's Claims and plan in each process: a fresh one per graph, so two runs in one process
    (tests) share neither. `read_plan` reads the run's LookupPlan (ReadLookupPlan)."""

    def __init__(
        self,
        markets_per_batch: int,
        events_per_batch: int,
        threads: int,
        tag: str,
        read_plan: Callable[[], LookupPlan],
    ):
        self.sizes = {MARKETS: markets_per_batch, EVENTS: events_per_batch}
        self.threads, self.tag, self.read_plan = threads, tag, read_plan
        # One Shared per object: a Shared holds one object, and another tag replaces it.
        self._claims, self._plan = Shared(), Shared()

    def claims(self) -> Claims:
        return self._claims.acquire(Claims, tag=self.tag)

    def plan(self) -> _PlanReading:
        """This process's plan for the run, read once (started by the first caller; `Shared`
        keeps it while a caller holds it)."""
        return self._plan.acquire(lambda: _PlanReading(self.read_plan), tag=self.tag)


def look_up(
    source: Source,
    kind: str,
    batch: list[Any],
    counters: ThreadCounters,
    emit: Callable[[str, Any], None],
) -> None:
    """Looks one batch up and emits (tag, value): rows under `kind`, a `missing` row per key the
    source answered without, the event slugs markets name (EVENT_SLUGS) and one {kind: Attempts}
    under ATTEMPTS. A failed batch is counted and logged and emits no `missing` row: a failure
    says nothing about whether the source has the key, so its keys stay pending."""
    keys = [item[0] if isinstance(item, tuple) else item for item in batch]
    try:
        found = source.markets(batch) if kind == MARKETS else source.events(batch)
    except SourceError as exc:
        counters.add(f"{kind}_failed", len(keys))
        log.warning("%s %s.. (%d keys) failed: %s", kind, keys[0], len(keys), exc)
        emit(ATTEMPTS, {kind: Attempts.of(exc)})
        return
    emit(ATTEMPTS, {kind: Attempts.of(None)})
    if found.missing:
        counters.add(f"{kind}_missing", len(found.missing))
        seen_at = format_timestamp(time.time())
        for key in found.missing:
            emit(MISSING, {"kind": kind, "key": key, "seen_at": seen_at})
        log.warning(
            "the source has no %s for %d key(s), e.g. %s",
            kind,
            len(found.missing),
            found.missing[0],
        )
    counters.add(kind, len(found.rows))
    for row in found.rows:
        emit(kind, row)
    for slug in found.event_slugs:
        emit(EVENT_SLUGS, slug)


class _Crashed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Lookups:
    """One DoFn instance's lookups (made in `setup`): batches, a thread pool, an output queue
    the bundle's thread drains (`take`, `wait`). The process's plan is read meanwhile: keys named
    before it is in wait for it, so no trade waits for the warehouse."""

    def __init__(self, spec: LookupSpec, source: Source, counters: ThreadCounters) -> None:
        self._spec, self._source, self._counters = spec, source, counters
        self._claims = spec.claims()
        self._pool = ThreadPoolExecutor(spec.threads, thread_name_prefix="Lookups")
        self._outputs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._buffers: dict[str, list[Any]] = {kind: [] for kind in KINDS}
        self._in_flight = 0
        self._partial = dict.fromkeys(KINDS, False)  # a partial batch of the kind is in flight
        self._eager = False
        self._plan: LookupPlan | None = None
        self._settled = False  # the plan is in (or failed) and what waited for it went on
        self._early: list[tuple[str, list[Any]]] = []  # named before the plan was in
        self._start_early = False  # the start element came before the plan
        self._reading = spec.plan()  # held: Shared keeps the reading while someone holds it
        self._reading.future.add_done_callback(self._plan_in)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def start_bundle(self) -> None:
        with self._lock:
            self._eager = False

    def _plan_in(self, future: Future[LookupPlan]) -> None:
        """The plan is read (in the reading thread): what waited for it goes on now."""
        try:
            plan = future.result()
        except BaseException as error:  # the warehouse could not say: the bundle fails with it
            with self._lock:
                self._settled = True
            self._outputs.put(_Crashed(error))
            return
        with self._lock:
            self._plan = plan
            early, self._early = self._early, []
            start, self._start_early = self._start_early, False
        if start:
            self._queue_always(plan)
        for kind, items in early:
            self._named(kind, items, plan)
        with self._lock:
            self._settled = True
        self._outputs.put(None)  # wakes `wait`

    def start(self) -> None:
        """The run's one start element, wherever it lands: queues the keys production wants
        whoever names them, once per run, even in a run that fetches no wallet."""
        with self._lock:
            plan = self._plan
            if plan is None:
                self._start_early = True
                return
        self._queue_always(plan)

    def _queue_always(self, plan: LookupPlan) -> None:
        if self._claims.take_plan():
            self._named(MARKETS, list(plan.markets.always), plan)  # (condition_id, slug) refs
            self._named(EVENTS, [slug for slug, _ in plan.events.always], plan)

    def named(self, kind: str, items: list[Any]) -> None:
        """Keys (markets: (condition_id, slug) refs; events: slugs) a page (or a market) names."""
        if not items:
            return
        with self._lock:
            plan = self._plan
            if plan is None:
                self._early.append((kind, list(items)))
                return
        self._named(kind, items, plan)

    def _named(self, kind: str, items: list[Any], plan: LookupPlan) -> None:
        skip = plan.of_kind(kind).skip
        by_key = {}
        for item in items:
            key = item[0] if isinstance(item, tuple) else item
            if key not in skip and key not in by_key:
                by_key[key] = item
        fresh = self._claims.new(kind, list(by_key))
        if not fresh:
            return
        with self._lock:
            buffer = self._buffers[kind]
            buffer.extend(by_key[key] for key in fresh)
            self._send_locked(kind)

    def drain(self) -> None:
        """No wallet starts any more in this bundle: partial batches go now, not when full."""
        with self._lock:
            self._eager = True
            for kind in KINDS:
                self._send_locked(kind)

    def _send_locked(self, kind: str) -> None:
        size, buffer = self._spec.sizes[kind], self._buffers[kind]
        while len(buffer) >= size:
            self._submit_locked(kind, buffer[:size], partial=False)
            del buffer[:size]
        if buffer and self._eager and not self._partial[kind]:
            self._submit_locked(kind, list(buffer), partial=True)
            buffer.clear()

    def _submit_locked(self, kind: str, batch: list[Any], partial: bool) -> None:
        self._in_flight += 1
        self._partial[kind] = self._partial[kind] or partial
        self._pool.submit(self._run, kind, batch, partial)

    def _run(self, kind: str, batch: list[Any], partial: bool) -> None:
        try:
            self._fetch(kind, batch)
        except BaseException as error:  # a bug of ours, not an API failure: fail the bundle
            self._outputs.put(_Crashed(error))
        finally:
            with self._lock:
                self._in_flight -= 1
                if partial:
                    self._partial[kind] = False
                self._send_locked(kind)
            self._outputs.put(None)  # wakes `wait`

    def _fetch(self, kind: str, batch: list[Any]) -> None:
        def emit(tag: str, value: Any) -> None:
            if tag == EVENT_SLUGS:
                self.named(EVENTS, [value])
            else:
                self._outputs.put((tag, value))

        look_up(self._source, kind, batch, self._counters, emit)

    def take(self) -> Iterator[tuple[str, Any]]:
        """(tag, value) outputs ready now; raises a lookup thread's crash."""
        while True:
            try:
                item = self._outputs.get_nowait()
            except queue.Empty:
                return
            yield from self._item(item)

    def wait(self) -> Iterator[tuple[str, Any]]:
        """Every output, until the plan is in and no lookup is in flight or buffered (call
        after `drain`)."""
        while True:
            with self._lock:
                if self._settled and self._in_flight == 0:
                    for kind in KINDS:  # nothing can be left here after `drain`; be sure
                        self._send_locked(kind)
                    if self._in_flight == 0:
                        break
            yield from self._item(self._outputs.get())
        yield from self.take()

    @staticmethod
    def _item(item: Any) -> Iterator[tuple[str, Any]]:
        if item is None:
            return
        if isinstance(item, _Crashed):
            raise item.error
        yield item
