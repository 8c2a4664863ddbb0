"""RunHealth: tells a source that is gone from wallets that are bad, so a dead source or a refused key
stops the run instead of marking every wallet failed, one by one.

One failure that could mean "the source is gone" (refused, unreachable, 401/403/410, retries run
out) is still the wallet's; `threshold` of them in a row, with no success between, is the run's.
Until then such a wallet's failed outcome is held back; a success (the source answers) releases
the held ones as ordinary failures; a trip drops them, so those wallets stay pending, untouched,
and are fetched by the next run. One instance per worker process, shared by its threads.

A streak cannot trip where fewer wallets are tried than its length (--max_wallets=3, the last few
pending wallets, a refresh run). So what each worker saw is also tallied (`Attempts`) and summed
over the whole run (`SourceVerdict`): when not one attempt anywhere in the run got an answer from
the source, and some failed as if it were gone, the source is gone; the wallets held at the end of
their bundles are then dropped (they stay pending) instead of becoming failures. The Gamma lookups
(markets, events) are judged by the same tally and the same classification (`is_run_level`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from pipeline.sources.errors import SourceError

RUN_FAILURE_STREAK = 5  # consecutive run-level failures that stop a run


def is_run_level(error: SourceError) -> bool:
    """The one classification of a failure as "the source (or the key) may be gone" (refused,
    unreachable, 401/403/407/410, retries run out) rather than "this input is bad": the streak,
    the run-wide verdict on wallets and the verdict on lookups all ask here."""
    return bool(error.run_level)


@dataclass(frozen=True)
class Attempts:
    """What attempts at one step told about its source, summed over bundles and workers.

    `answered`: attempts the source answered (a success, or a failure of the input's own: a 400,
    a malformed page), which prove it is there; `gone`: attempts that failed as if it were gone;
    `last`: the text of one such failure (the greatest, so that the sum does not depend on order).
    """

    answered: int = 0
    gone: int = 0
    last: str = ""

    @classmethod
    def of(cls, error: SourceError | None) -> Attempts:
        """One attempt: a success (`error` None) or a failure, classified by `is_run_level`."""
        if error is None or not is_run_level(error):
            return cls(answered=1)
        return cls(gone=1, last=str(error))

    def __add__(self, other: Attempts) -> Attempts:
        return Attempts(
            self.answered + other.answered, self.gone + other.gone, max(self.last, other.last)
        )

    def __bool__(self) -> bool:
        return bool(self.answered or self.gone)

    @property
    def source_gone(self) -> bool:
        """Some attempt failed as if the source were gone and none got an answer: on a source
        that answers even once (a success or any wallet's own error) this is False."""
        return self.gone > 0 and self.answered == 0


class RunHealth:
    def __init__(self, threshold: int = RUN_FAILURE_STREAK) -> None:
        self._threshold = threshold
        self._lock = threading.Lock()
        self._streak = 0
        self._held: list[Any] = []
        self._reason: str | None = None
        self._announced = False
        self._attempts = Attempts()  # since the last `end_bundle`

    @property
    def stopped(self) -> str | None:
        """Why the run stopped (the last failure, which names its cause), or None."""
        return self._reason

    def announce(self) -> str | None:
        """The stop reason to report, to exactly one caller: several threads may see the trip,
        but the run's failure output must carry it once per instance."""
        with self._lock:
            if self._reason is None or self._announced:
                return None
            self._announced = True
            return self._reason

    def succeeded(self) -> list[Any]:
        """A wallet fetched whole: the source works; returns the held outcomes to emit now."""
        with self._lock:
            self._attempts += Attempts.of(None)
            self._streak = 0
            held, self._held = self._held, []
            return held

    def failed(self, error: SourceError, outcome: Any) -> list[Any]:
        """A wallet failed: returns what to emit now (its outcome, and any held ones, unless the
        failure is of the run-level kind, which is held until the run's fate is known)."""
        with self._lock:
            self._attempts += Attempts.of(error)
            if self._reason is not None:
                return []
            if not is_run_level(error):  # the source answered: it is there
                self._streak = 0
                held, self._held = self._held, []
                return [*held, outcome]
            self._streak += 1
            self._held.append(outcome)
            if self._streak >= self._threshold:
                self._reason = (
                    f"{self._streak} wallets in a row failed as if the source were gone; "
                    f"the last: {error}"
                )
                self._held = []
            return []

    def end_bundle(self) -> tuple[list[Any], Attempts]:
        """At the end of a bundle: the outcomes still held (none if the run stopped) and the
        attempts tallied since the last call. The held ones are not failures yet: only the whole
        run's tally (`SourceVerdict`) can tell a few bad wallets from a source that is gone."""
        with self._lock:
            held, self._held = self._held, []
            attempts, self._attempts = self._attempts, Attempts()
            return ([] if self._reason is not None else held), attempts


def total_by_kind(parts: Iterable[dict[str, Attempts]]) -> dict[str, Attempts]:
    """The sum of `parts`, kind by kind (a CombineGlobally function: it gets partial sums back,
    of the same shape)."""
    out: dict[str, Attempts] = {}
    for part in parts:
        for kind, attempts in part.items():
            out[kind] = out.get(kind, Attempts()) + attempts
    return out


def _reason_if_gone(total: dict[str, Attempts], kind: str, template: str) -> Iterator[str]:
    attempts = total.get(kind, Attempts())
    if attempts.source_gone:
        yield template.format(gone=attempts.gone, last=attempts.last)


class SourceVerdict(beam.PTransform):
    """{kind: Attempts} parts (from every bundle of every worker) -> `total` (their sum by kind,
    one element: read it `AsSingleton`, it is ready only once the whole step is over) and, under
    each kind of `templates`, one run failure (the kind's template formatted with `gone` and
    `last`) if the source answered none of that kind's attempts. Summing over the run is what
    lets it see a run too small for any streak, and what keeps one worker's few refused wallets
    from stopping a run that other workers fetch from. One sum for all kinds, not one per kind:
    each sum is a stage of its own between the fetch and the commit."""

    def __init__(self, templates: dict[str, str]) -> None:
        super().__init__()
        self._templates = dict(templates)

    def expand(self, parts):
        total = parts | "Total" >> beam.CombineGlobally(total_by_kind)
        out = {"total": total}
        for kind, template in self._templates.items():
            out[kind] = total | f"{kind.title()}IfGone" >> beam.FlatMap(
                _reason_if_gone, kind, template
            )
        return out


class RunStopped(RuntimeError):
    """Raised by the commit, after it landed what was complete, so that the job fails.

    The runner wraps an exception raised in a DoFn (in-process it is re-raised with more text; with
    multi_processing only its traceback survives, as text inside a RuntimeError), so the message
    carries its facts once more as an opaque token, which `find` reads back from any wrapping
    (base64: no quoting or escaping of a traceback can alter it).
    """

    _TOKEN = re.compile(r"\[run-stopped:([A-Za-z0-9_=-]+)\]")

    def __init__(self, run_id: str, reason: str, wallets_done: int) -> None:
        self.run_id, self.reason, self.wallets_done = run_id, reason, wallets_done
        facts = json.dumps({"run_id": run_id, "reason": reason, "wallets_done": wallets_done})
        token = base64.urlsafe_b64encode(facts.encode()).decode()
        super().__init__(f"{self.line()} [run-stopped:{token}]")

    def __reduce__(self) -> tuple:  # pickled across processes with its facts, not its message
        return (type(self), (self.run_id, self.reason, self.wallets_done))

    def line(self) -> str:
        """The one line a person reads: what stopped the run, and what it left."""
        return (
            f"run {self.run_id} stopped: the source looks gone: {self.reason}; committed what was "
            f"complete ({self.wallets_done} wallets done); the wallets and lookups it stopped on "
            "stay pending, none marked failed"
        )

    @classmethod
    def find(cls, error: BaseException | None) -> RunStopped | None:
        """The RunStopped inside `error` (itself, a cause, or its text), or None."""
        seen: set[int] = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, RunStopped):
                return error
            match = cls._TOKEN.search(str(error))
            if match:
                facts = json.loads(base64.urlsafe_b64decode(match.group(1)))
                return cls(facts["run_id"], facts["reason"], int(facts["wallets_done"]))
            error = error.__cause__ or error.__context__
        return None
