"""The one interface the graph fetches through, whichever API is behind it, and `open_source`.

A source turns a wallet into pages of trade rows, a batch of markets into market rows, a batch of
event slugs into event rows: rows already in the warehouse's columns (pipeline.schema), with the
derived trade id. Everything a source shares with another (session, retries, Retry-After, the
limiter, paging guards, key scrubbing) is in `http.py` and `limiter.py`; what differs lives in
`dome/` and `polymarket/`. Sources are plain Python: no Beam inside.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.sources.errors import SourceError
from pipeline.sources.http import HttpSettings, Telemetry
from pipeline.sources.limiter import Window

SOURCE_NAMES = ("polymarket", "dome")

# A market as a trade names it: (condition_id, market slug or None). The slug lets a source look
# a market up a second way when the first finds nothing.
MarketRef = tuple[str, str | None]


@dataclass
class Lookup:
    """What one batch lookup found: warehouse rows, the keys the source does not have, and (for
    markets) the event slugs the rows name."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    event_slugs: list[str] = field(default_factory=list)


class Source(abc.ABC):
    """One API, as the graph sees it. One instance per worker process, shared by its threads."""

    name: str
    markets_per_batch: int
    events_per_batch: int

    @abc.abstractmethod
    def trade_pages(self, wallet: str, start_time: int | None) -> Iterator[list[dict[str, Any]]]:
        """The wallet's trades from `start_time` (None: the whole history), one page of rows at a
        time, so memory does not grow with the history. Raises SourceError naming the wallet."""

    @abc.abstractmethod
    def markets(self, refs: Sequence[MarketRef]) -> Lookup:
        """Rows for up to `markets_per_batch` markets; raises SourceError if the batch failed."""

    @abc.abstractmethod
    def events(self, slugs: Sequence[str]) -> Lookup:
        """Rows for up to `events_per_batch` events; raises SourceError if the batch failed."""

    @abc.abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """Everything needed to build a source in a worker, picklable and free of secrets.

    `windows` are one process's share of the job's rate limits. `trades_end` (Polymarket) is the
    fixed upper bound of every wallet's walk in this run, set once at launch.
    """

    name: str
    run_id: str
    windows: tuple[Window, ...]
    http: HttpSettings
    page_limit: int = 1000
    max_pages: int = 10_000
    dome_base_url: str = ""
    data_api_url: str = ""
    gamma_api_url: str = ""
    api_key_secret: str | None = None
    trades_end: int | None = None
    split_walks: bool = True  # Polymarket: split deep walks into windows when the rate has room


def prepare_run(spec: SourceSpec) -> SourceSpec:
    """Fixes, once at launch, what every worker must agree on (Polymarket: the walks' `end`).

    Raises SourceError when the source cannot be reached: a failure of the run, not of wallets.
    """
    if spec.name != "polymarket" or spec.trades_end is not None:
        return spec
    source = open_source(spec)
    try:
        end = source.trades_end()  # type: ignore[attr-defined]
    finally:
        source.close()
    return replace(spec, trades_end=end)


def source_class(name: str) -> type[Source]:
    """The Source implementation for a name (its batch sizes shape the graph)."""
    if name == "dome":
        from pipeline.sources.dome.source import DomeSource

        return DomeSource
    if name == "polymarket":
        from pipeline.sources.polymarket.source import PolymarketSource

        return PolymarketSource
    raise ValueError(f"unknown source {name!r}: use one of {', '.join(SOURCE_NAMES)}")


def open_source(spec: SourceSpec, telemetry: Telemetry | None = None) -> Source:
    """Builds the named source with its limiter (call it in DoFn.setup, once per process)."""
    from pipeline.sources.limiter import RateLimiter

    cls = source_class(spec.name)
    limiter = RateLimiter(spec.windows)
    if spec.name == "dome":
        from pipeline.api_key import load_api_key

        return cls(spec, load_api_key(spec.api_key_secret), limiter, telemetry)
    return cls(spec, limiter, telemetry)


__all__ = [
    "SOURCE_NAMES",
    "Lookup",
    "MarketRef",
    "Source",
    "SourceError",
    "SourceSpec",
    "open_source",
    "prepare_run",
    "source_class",
]
