"""The Dome API client: the orders, markets and events endpoints over the shared HTTP layer.

The key is the Dome API's (the environment or Secret Manager); it goes in one header, is scrubbed
from every error that leaves a walk (`_pages`), and an answer that echoes it is refused. Both
windows of the key's tier are one bucket, "key", that every request draws from.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.sources.dome.parse import EVENT_FIELDS, MARKET_FIELDS, ORDER_FIELDS, parse_page
from pipeline.sources.errors import ConfigError
from pipeline.sources.http import (
    HttpClient,
    HttpSettings,
    Page,
    Params,
    Telemetry,
    follow_cursor,
)
from pipeline.sources.limiter import RateLimiter, Window

log = logging.getLogger(__name__)

API_KEY_ENV = "DOME_API_KEY"
DEFAULT_BASE_URL = "https://api.domeapi.io/v1"
MARKETS_PER_REQUEST = 100  # the documented maximum of repeated condition_id values
BUCKET = "key"  # the rate limit belongs to the API key: every request draws from it

# Named tiers of dome-api.md: (queries per second, queries per 10 seconds).
TIERS: dict[str, tuple[int, int]] = {"free": (10, 100), "dev": (100, 500), "pro": (300, 3000)}


@dataclass(frozen=True)
class RateLimit:
    """Both windows of a Dome tier, for the whole job."""

    per_second: float
    per_10s: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.per_10s > 0):
            raise ValueError(f"rate limits must be positive, got {self.per_second}/{self.per_10s}")

    @classmethod
    def for_tier(cls, tier: str) -> RateLimit:
        try:
            per_second, per_10s = TIERS[tier.lower()]
        except KeyError:
            raise ValueError(f"unknown tier {tier!r}: use one of {', '.join(TIERS)}") from None
        return cls(per_second, per_10s)

    @property
    def sustained(self) -> float:
        """Requests per second that both windows allow over a long run."""
        return min(self.per_second, self.per_10s / 10)

    def windows(self) -> tuple[Window, ...]:
        """The limiter's windows, with margins by which window sets the sustained rate.

        The server counts arrivals, and a request reaches it a variable time after it was stamped
        here. Where the 1 s window sets the sustained rate (Free: 10/s and 100/10 s are the same
        rate) its margin is 40 ms, 4% of the rate; where it only caps bursts (Dev, Pro) it costs
        nothing sustained, so it gets 250 ms. The 10 s window gets 250 ms (2.5%). A 429 halves the
        1 s window only: halving the 10 s one while the last ten seconds' requests still count
        would stall the process for several seconds after a single 429. These margins are the
        fallback: a request seen sent over a connection whose handshake was timed counts its
        arrival within the handshake's bound (limiter.arrival_bound, ~15 ms over loopback).

        Where the 1 s window sets the rate, its requests are also spaced 40% of their share of
        the second apart (Free: 40 ms), so they do not leave in a burst of ten at every second's
        edge: the last of a burst find 8 requests in flight and keep the margin
        (`http.BUSY_IN_FLIGHT`: a server counts part of a burst late), and a burst is what made
        the simulator count late at all. It costs a run ~0.36 s once (the first second's ten
        spread out). 3,000-wallet runs: 0 429s in both spaced runs (steady 0.977 in the one
        measured), one 429 in three unspaced ones (steady 0.973-0.975; bench/README.md section 7).
        """
        bursts_only = self.per_second > self.per_10s / 10
        spacing = 0.0 if bursts_only else 0.4 / self.per_second
        return (
            Window(
                BUCKET,
                self.per_second,
                1.0,
                margin_s=0.25 if bursts_only else 0.04,
                spacing_s=spacing,
            ),
            Window(BUCKET, self.per_10s, 10.0, margin_s=0.25, backoff=False, held_to_answer=True),
        )


@dataclass(frozen=True)
class DomeSettings:
    base_url: str = DEFAULT_BASE_URL
    page_limit: int = 1000
    max_pages: int = 10_000


class DomeClient:
    """One per worker process, shared by its threads."""

    def __init__(
        self,
        settings: DomeSettings,
        api_key: str,
        http: HttpClient,
    ) -> None:
        if not api_key:
            raise ConfigError(f"an API key is required (set {API_KEY_ENV})")
        self.settings = settings
        self._http = http
        self._base = settings.base_url.rstrip("/")

    @classmethod
    def build(
        cls,
        settings: DomeSettings,
        api_key: str,
        limiter: RateLimiter,
        telemetry: Telemetry | None = None,
        http_settings: HttpSettings | None = None,
    ) -> DomeClient:
        http = HttpClient(
            http_settings or HttpSettings(),
            limiter,
            telemetry,
            headers={"Authorization": f"Bearer {api_key}"},
            secret=api_key,
        )
        return cls(settings, api_key, http)

    def __repr__(self) -> str:
        return f"DomeClient(base_url={self._base!r})"

    def __getstate__(self) -> None:
        raise TypeError("DomeClient holds the API key and is never pickled: build it in setup()")

    def close(self) -> None:
        self._http.close()

    def _pages(self, endpoint: str, params: Params, fields: Any, where: str) -> Iterator[Page]:
        """Walks `pagination_key` until has_more is false, refusing any loop the server could cause."""

        pages = itertools.count()  # deeper pages first: a long walk is not starved by new ones

        def get_page(key: str | None, page_where: str) -> Page:
            page_params = [*params, ("pagination_key", key)] if key else params
            body = self._http.get_json(
                f"{self._base}/polymarket/{endpoint}",
                page_params,
                endpoint=endpoint,
                buckets=(BUCKET,),
                where=page_where,
                priority=next(pages),
            )
            page = parse_page(body, endpoint, fields, page_where)
            if page.unknown_fields:
                self._http.telemetry.unknown_fields(endpoint, page.unknown_fields)
            return page

        # Every call of this client walks here: the one place its errors are rid of the key.
        with self._http.keeping_secret():
            yield from follow_cursor(
                get_page,
                max_pages=self.settings.max_pages,
                where=where,
                empty_pages_end=True,
                strict=False,
            )

    def order_pages(
        self, wallet: str, *, start_time: int | None = None, end_time: int | None = None
    ) -> Iterator[Page]:
        """A wallet's fills, one validated page at a time: memory does not grow with its history."""
        params: list[tuple[str, Any]] = [("user", wallet), ("limit", self.settings.page_limit)]
        if start_time is not None:
            params.append(("start_time", int(start_time)))
        if end_time is not None:
            params.append(("end_time", int(end_time)))
        yield from self._pages("orders", params, ORDER_FIELDS, f"wallet {wallet} orders")

    def markets(self, condition_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The markets of up to any number of condition ids, 100 per request."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(condition_ids), MARKETS_PER_REQUEST):
            chunk = condition_ids[start : start + MARKETS_PER_REQUEST]
            params: list[tuple[str, Any]] = [("condition_id", cid) for cid in chunk]
            params.append(("limit", MARKETS_PER_REQUEST))
            where = f"markets of {len(chunk)} condition_ids from {chunk[0]}"
            for page in self._pages("markets", params, MARKET_FIELDS, where):
                found.extend(page.items)
        return found

    def event(self, event_slug: str) -> dict[str, Any] | None:
        """One event by slug (the API documents no way to ask for many in one request)."""
        params: list[tuple[str, Any]] = [("event_slug", event_slug), ("limit", 10)]
        for page in self._pages("events", params, EVENT_FIELDS, f"event {event_slug}"):
            for item in page.items:
                if item["event_slug"] == event_slug:
                    return item
        return None
