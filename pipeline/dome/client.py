"""The Dome API client the pipeline's DoFns use: pooled HTTP, shared rate limit, retries, paging.

Roles are kept apart so that each can be tested and changed alone: the limiter (limiter.py) decides
when a request may go, `_get_json` makes one request and classifies its failure, tenacity repeats
what is transient, the paginator walks `pagination_key`, and parse.py validates what comes back.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from pipeline.dome.errors import (
    ConfigError,
    DomeError,
    HTTPStatusError,
    PaginationError,
    TransientError,
)
from pipeline.dome.limiter import RateLimiter
from pipeline.dome.parse import EVENT_FIELDS, MARKET_FIELDS, ORDER_FIELDS, Page, parse_page

log = logging.getLogger(__name__)

API_KEY_ENV = "DOME_API_KEY"
DEFAULT_BASE_URL = "https://api.domeapi.io/v1"
MARKETS_PER_REQUEST = 100  # the documented maximum of repeated condition_id values


@dataclass(frozen=True)
class ClientSettings:
    """Everything about talking to the API except the key, so it can travel in pipeline options."""

    base_url: str = DEFAULT_BASE_URL
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 5
    page_limit: int = 1000
    max_pages: int = 10_000
    pool_size: int = 16
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0


class ClientEvents:
    """Hooks the caller implements to count what happens (Beam Metrics in the pipeline); no-ops here."""

    def request(self, endpoint: str) -> None:
        pass

    def retry(self, endpoint: str, reason: str) -> None:
        pass

    def throttled(self, endpoint: str) -> None:
        pass

    def unknown_fields(self, kind: str, counts: Counter[str]) -> None:
        pass


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class DomeClient:
    """One per worker process, shared by its threads (the session and the limiter are thread-safe)."""

    def __init__(
        self,
        settings: ClientSettings,
        api_key: str,
        limiter: RateLimiter,
        events: ClientEvents | None = None,
    ) -> None:
        if not api_key:
            raise ConfigError(f"an API key is required (set {API_KEY_ENV})")
        self.settings = settings
        self._limiter = limiter
        self._events = events or ClientEvents()
        self._secret = api_key
        self._base = settings.base_url.rstrip("/")
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=settings.pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._session.headers["Accept"] = "application/json"

    def __repr__(self) -> str:
        return f"DomeClient(base_url={self._base!r})"

    def __getstate__(self) -> None:
        raise TypeError("DomeClient holds the API key and is never pickled: build it in setup()")

    def close(self) -> None:
        self._session.close()

    # ---- one request, classified -------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _brief(self, response: requests.Response) -> str:
        text = " ".join(response.text[:200].split())
        return self._scrub(text)

    def _attempt(self, endpoint: str, params: list[tuple[str, Any]], where: str) -> Any:
        self._limiter.acquire()
        self._events.request(endpoint)
        url = f"{self._base}/polymarket/{endpoint}"
        timeout = (self.settings.connect_timeout_s, self.settings.read_timeout_s)
        try:
            response = self._session.get(url, params=params, timeout=timeout)
        except requests.Timeout:
            raise TransientError(f"{where}: no answer within {timeout[1]:g} s") from None
        except requests.RequestException as exc:
            # Covers resets, refused connections and bodies cut short; the text has no headers.
            raise TransientError(f"{where}: {type(exc).__name__}") from None
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                retry_after = min(retry_after, self.settings.retry_after_max_s)
            # Every thread of the process holds off now, not only the one that was refused.
            self._limiter.throttled(retry_after if retry_after is not None else 1.0)
            self._events.throttled(endpoint)
            raise TransientError(f"{where}: HTTP 429", retry_after=retry_after, throttled=True)
        if status >= 500:
            raise TransientError(f"{where}: HTTP {status} {self._brief(response)}")
        if status == 400 and "limit" in response.text.lower():
            raise ConfigError(
                f"{where}: the API refused the page size (HTTP 400 {self._brief(response)}); "
                "lower --page_limit"
            )
        if status >= 400:
            raise HTTPStatusError(f"{where}: HTTP {status} {self._brief(response)}", status)
        try:
            body = response.json()
        except ValueError:
            raise TransientError(
                f"{where}: the body is not valid JSON ({len(response.content)} bytes)"
            ) from None
        self._limiter.succeeded()
        return body

    def _backoff(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TransientError) and error.retry_after is not None:
            return error.retry_after + random.uniform(0, 0.25)
        ceiling = self.settings.backoff_initial_s * 2 ** (state.attempt_number - 1)
        return random.uniform(0, min(self.settings.backoff_max_s, ceiling))  # full jitter

    def _get_json(self, endpoint: str, params: list[tuple[str, Any]], where: str) -> Any:
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            self._events.retry(endpoint, type(error).__name__)
            log.info("retrying in %.2f s (attempt %d): %s", wait, state.attempt_number, error)

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._backoff,
            retry=retry_if_exception_type(TransientError),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, endpoint, params, where)
        except TransientError as exc:
            attempts = self.settings.max_attempts
            raise DomeError(f"gave up after {attempts} attempts: {exc}") from None

    # ---- pagination --------------------------------------------------------------------------

    def _pages(
        self,
        endpoint: str,
        params: list[tuple[str, Any]],
        fields: Any,
        where: str,
    ) -> Iterator[Page]:
        """Walks `pagination_key` until has_more is false, refusing any loop the server could cause."""
        seen: set[str] = set()
        key: str | None = None
        for page_no in range(self.settings.max_pages):
            page_where = f"{where} page {page_no}"
            page_params = [*params, ("pagination_key", key)] if key else params
            body = self._get_json(endpoint, page_params, page_where)
            page = parse_page(body, endpoint, fields, page_where)
            if page.unknown_fields:
                self._events.unknown_fields(endpoint, page.unknown_fields)
            yield page
            if not page.has_more:
                return
            if not page.items:
                raise PaginationError(f"{page_where}: empty page that says has_more")
            if page.next_key is None:
                raise PaginationError(f"{page_where}: has_more without a pagination_key")
            if page.next_key in seen:
                raise PaginationError(
                    f"{page_where}: pagination_key repeated, the server would loop"
                )
            seen.add(page.next_key)
            key = page.next_key
        raise PaginationError(f"{where}: more than {self.settings.max_pages} pages (--max_pages)")

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
