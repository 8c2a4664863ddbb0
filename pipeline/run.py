"""`run`: one backfill run. Prepares the warehouse, builds the graph and runs it.

Locally it waits for the job and prints what it did; on Dataflow (a Flex Template launcher must not
wait) it returns once the job is submitted: the commit is the graph's own last step either way.
A run stopped because the source looked gone (RunStopped, raised by the commit after it landed what
was complete), its wallets' or its lookups', is reported in one line and exits 1: it must never read
as a success. Lookups that failed in a run that was not stopped are named in its summary.
A run whose own commit failed or was refused (CommitError, raised by the commit step inside the
graph) is reported the same way, in one line naming the run and why, and exits 1; a DuckDB file
another process keeps open (WarehouseLocked) is a busy warehouse wherever it is met: one line,
exit 3. The runner's tracebacks of both are kept out of the log (`_HideReportedTraces`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import TypeVar

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from pipeline import lifecycle
from pipeline.graph import build_pipeline
from pipeline.lease import WarehouseBusy
from pipeline.options import (
    BackfillConfig,
    BackfillOptions,
    OptionsError,
    is_dataflow,
    resolve,
)
from pipeline.sources import prepare_run
from pipeline.sources.errors import SourceError
from pipeline.staging import CommitOutcome, RunStaging
from pipeline.warehouse import CommitError, WarehouseUnreadable
from transforms.metrics import NAMESPACE, UNKNOWN_FIELD
from transforms.run_health import RunStopped
from transforms.stage import LEASE_GIVEN_BACK

log = logging.getLogger(__name__)

# Seconds after the graph starts to run when the commit's preparation is done: by then the run's
# first requests have left, and its CPU takes nothing from start-up.
PREPARE_COMMIT_AFTER_S = 5.0
BEAM_TYPE_HINT_LOGGER = "apache_beam.typehints.native_type_compatibility"


@dataclass
class RunReport:
    """What one `run` did: its state, the job's counters, and the earlier runs it recovered."""

    run_id: str
    state: str
    counters: dict[str, int] = field(default_factory=dict)
    recovered: list[CommitOutcome] = field(default_factory=list)
    stopped: RunStopped | None = None  # state STOPPED: why, and what was committed
    not_committed: str | None = None  # state NOT COMMITTED: the one line saying why

    def render(self) -> str:
        if self.stopped is not None:
            return self.stopped.line()
        if self.not_committed is not None:
            return self.not_committed
        c = self.counters
        not_started = c.get("wallets_not_started", 0)
        budget = (
            f", {not_started} not started (--max_run_minutes spent; they stay pending)"
            if not_started
            else ""
        )
        lines = [
            f"run {self.run_id}: {self.state}",
            f"  wallets: {c.get('wallets_fetched', 0)} fetched{_empty(c)}, "
            f"{c.get('wallets_failed', 0)} failed, {c.get('wallets_rejected', 0)} rejected{budget}",
            f"  trades: {c.get('trades', 0)} fetched, {c.get('committed_trades_inserted', 0)} new"
            f" in production; markets: {_looked_up(c, 'markets')}; events: "
            f"{_looked_up(c, 'events')}",
            f"  requests: {c.get('requests', 0)} ({_by_endpoint(c)}); retries: "
            f"{c.get('retries', 0)}; HTTP 429: {c.get('http_429', 0)}",
        ]
        unknown = sorted(
            (
                (value, name.removeprefix(UNKNOWN_FIELD))
                for name, value in c.items()
                if name.startswith(UNKNOWN_FIELD) and value
            ),
            key=lambda pair: (-pair[0], pair[1]),
        )
        if unknown:
            shown = ", ".join(f"{field.replace(':', '.', 1)} {n}" for n, field in unknown[:8])
            more = f", and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            lines.append(f"  fields the parser does not know (rows): {shown}{more}")
        done = [r.run_id for r in self.recovered if not r.failed]
        failed = [r.run_id for r in self.recovered if r.failed]
        if done:
            lines.append(f"  recovered earlier runs: {done}")
        if failed:
            lines.append(f"  earlier runs that still fail to commit (see the log): {failed}")
        return "\n".join(lines)


def _looked_up(counters: dict[str, int], kind: str) -> str:
    """`kind` fetched, and those whose lookup failed: a partial failure does not fail the run
    (they stay pending and the next run asks again), but the summary must not hide it."""
    failed = counters.get(f"{kind}_failed", 0)
    fetched = counters.get(kind, 0)
    return f"{fetched} ({failed} failed: the next run asks again)" if failed else str(fetched)


def _by_endpoint(counters: dict[str, int]) -> str:
    parts = [
        f"{name.removeprefix('requests_')} {value}"
        for name, value in sorted(counters.items())
        if name.startswith("requests_")
    ]
    return ", ".join(parts) or "none"


def counters_of(result: PipelineResult) -> dict[str, int]:
    """The job's `backfill` counters by name (committed values, summed over steps)."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query()["counters"]:
        if counter.key.metric.namespace == NAMESPACE:
            name = counter.key.metric.name
            totals[name] = totals.get(name, 0) + (counter.committed or 0)
    return totals


def run_backfill(argv: list[str], *, wait: bool | None = None) -> RunReport:
    options = PipelineOptions(argv)
    config: BackfillConfig = resolve(options, argv)  # every option checked before anything starts
    config, pipeline, recovered = _start(options, config)  # takes the warehouse's lease
    handed_over = False  # a submitted Dataflow job gives the lease back from its commit step
    given_back = False  # the commit step gave the lease back (its counter says so)
    try:
        try:
            if not is_dataflow(options):
                _prepare_commit_later(config)
            result = pipeline.run()
            if is_dataflow(options):
                handed_over = True
            if wait is False or (wait is None and is_dataflow(options)):
                return RunReport(config.run_id, "submitted", recovered=recovered)
            state = result.wait_until_finish()
        except Exception as exc:  # the runner wraps what a step raised: find a stopped run
            stopped = RunStopped.find(exc)
            if stopped is not None:
                return RunReport(config.run_id, "STOPPED", recovered=recovered, stopped=stopped)
            busy = _find(exc, WarehouseBusy)
            if busy is not None:  # a DuckDB file held open met inside the graph: one line, 3
                raise busy from None
            why = find_commit_error(exc)
            if why is None:
                raise
            line = _not_committed_line(config.staging, why)
            return RunReport(
                config.run_id, "NOT COMMITTED", recovered=recovered, not_committed=line
            )
        counters = counters_of(result)
        given_back = counters.get(LEASE_GIVEN_BACK, 0) > 0
        return RunReport(config.run_id, str(state), counters, recovered)
    finally:
        if not handed_over:  # locally the commit step gave it back already, unless it never ran
            lifecycle.release(config, lease=not given_back)


def _empty(counters: dict[str, int]) -> str:
    """How many fetched wallets the source served no trade at all (a whole walk): wallets that
    never traded, or, if that is most of them, a source matching addresses otherwise than sent."""
    empty = counters.get("wallets_empty", 0)
    return f" ({empty} with no trades at all)" if empty else ""


# The text a CommitError leaves in an error that crossed a process (multi_processing's workers
# send the step's traceback as text), and the runner's suffix naming the step.
_COMMIT_ERROR_TEXT = re.compile(r"\bCommitError: (?P<why>[^\n]+)")
_STEP_SUFFIX = re.compile(r"\s*\[while running '[^']*'\]\s*$")
_E = TypeVar("_E", bound=BaseException)


def _find(error: BaseException | None, kind: type[_E]) -> _E | None:
    """The exception of `kind` in `error`'s chain (itself, a cause or a context), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, kind):
            return error
        error = error.__cause__ or error.__context__
    return None


def find_commit_error(error: BaseException | None) -> str | None:
    """Why the run's own commit failed, in one line, if a CommitError is what ended the graph:
    the runner wraps what the commit step raised (keeping its type in one process, only its text
    across processes), so both are looked for, as `RunStopped.find` does. None otherwise."""
    found = _find(error, CommitError)
    if found is not None:
        text = str(found)
    else:
        matches = _COMMIT_ERROR_TEXT.findall(str(error)) if error is not None else []
        if not matches:
            return None
        text = matches[-1]
    while _STEP_SUFFIX.search(text):  # one suffix per step the runner passed it through
        text = _STEP_SUFFIX.sub("", text)
    return " ".join(text.split()) or "the commit failed (no reason given)"


def _not_committed_line(staging: RunStaging, why: str) -> str:
    """One line for a run whose own commit did not land: whether it was refused (parked: its
    wallets are fetched again) or stays staged (the next start-up commits it), read from its
    staging; a staging that cannot be read says only what is sure."""
    try:
        refused = staging.refused_reason() is not None
        staged = not refused and bool(staging.staged_entries())
    except Exception:  # the line must come out whatever the staging root does
        refused = staged = False
    if refused:
        return (
            f"run {staging.run_id} was refused at its commit and parked (nothing landed; its "
            f"wallets stay pending and the next run fetches them again): {why}"
        )
    if staged:
        return (
            f"run {staging.run_id} is staged but not committed (nothing landed; the next run's "
            f"start-up commits it): {why}"
        )
    return (
        f"run {staging.run_id} was not committed (nothing landed; its wallets stay pending and "
        f"the next run fetches them again): {why}"
    )


def _prepare_commit_later(config: BackfillConfig) -> None:
    """Once the run is fetching (its main thread mostly waits then), makes what its commit
    would otherwise make first (`Warehouse.prepare_commit`), in a daemon thread: the commit is
    the last thing before the run exits. A run that ends sooner commits without it."""

    def prepare() -> None:
        try:
            config.warehouse_ref.open().prepare_commit()
        except Exception as exc:  # only time is at stake: the commit makes it itself
            log.debug("could not prepare the commit ahead: %s", exc)

    timer = threading.Timer(PREPARE_COMMIT_AFTER_S, prepare)
    timer.daemon = True
    timer.start()


def _start(
    options: PipelineOptions, config: BackfillConfig
) -> tuple[BackfillConfig, beam.Pipeline, list[CommitOutcome]]:
    """Start-up's two halves at once: the warehouse's (lease, tables, claim, recovery of earlier
    runs: `lifecycle.prepare`) in a thread, while this one asks the source what the run fixes
    (Polymarket: /v2/status) and builds the graph. Neither changes anything the other reads,
    and the graph runs only once both are done: the lease is held, and earlier runs are
    recovered, before the run's first step. The warehouse's error comes first, as when the two
    ran one after the other (a busy warehouse is reported as busy even if the source is down);
    a run whose warehouse is ready but whose source or graph fails gives its lease and run id
    back (`lifecycle.release`)."""
    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as pool:
        preparing = pool.submit(lifecycle.prepare, config)
        try:
            config = dataclasses.replace(config, source=prepare_run(config.source))
            pipeline = build_pipeline(options, config)
        except BaseException:
            wait_for([preparing])
            if preparing.exception() is None:
                lifecycle.release(config)
            else:  # prepare gave back what it had taken already
                raise preparing.exception() from None
            raise
        try:
            return config, pipeline, preparing.result()
        except BaseException:  # a busy warehouse: the graph never runs
            # Beam makes a temporary folder per graph and only its run() removes it.
            shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
            raise


class _HideReportedTraces(logging.Filter):
    """The runner logs a step's exception with its traceback (and, with multi_processing, each
    worker's log of it): a stopped run, a run whose own commit failed (CommitError) and a busy
    warehouse are each reported in one line instead, so those records go. The commit logged
    why in one line of its own already."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "[run-stopped:" in message:
            return False
        if "Traceback" in message and (
            _COMMIT_ERROR_TEXT.search(message) or "WarehouseLocked" in message
        ):
            return False
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        return (
            RunStopped.find(error) is None
            and find_commit_error(error) is None
            and _find(error, WarehouseBusy) is None
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Beam's own options (--runner, --direct_running_mode, ...) are accepted too."
    BackfillOptions._add_argparse_args(parser)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_and_report(argv)[0]


def configure_logging(line_format: str) -> None:
    """INFO in `line_format`, the traces of what is reported in one line left out."""
    logging.basicConfig(level=logging.INFO, format=line_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_HideReportedTraces())
    # ~160 lines a run, one per annotation Beam reads as a string (our modules postpone their
    # annotations): "Converting string literal type hint to Any". Its warnings still show.
    logging.getLogger(BEAM_TYPE_HINT_LOGGER).setLevel(logging.WARNING)


def run_and_report(argv: list[str], *, wait: bool | None = None) -> tuple[int, RunReport | None]:
    """Runs, prints what the run did or the one line why it did not start, and gives the exit
    code with the report (None when it did not start): 2 an option, 1 the source (or a run
    stopped, or its own commit did not land), 3 a busy warehouse (or a DuckDB file another
    process holds open), 0 a run that ended DONE (or, on Dataflow, was submitted).
    `run`, the Flex Template's main.py and the demo all end this way, so none reads as a
    success when it was not."""
    try:
        summary = run_backfill(argv, wait=wait)
    except OptionsError as exc:
        print(exc)
        return 2, None
    except SourceError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the source's error holds
        print(f"the run could not start: {exc.heading}: {message}")
        return 1, None
    except WarehouseBusy as exc:
        print(exc)
        return 3, None
    except WarehouseUnreadable as exc:
        print(exc)
        return 2, None
    print(summary.render())
    ended_well = summary.stopped is None and summary.state in ("DONE", "submitted")
    return (0 if ended_well else 1), summary
