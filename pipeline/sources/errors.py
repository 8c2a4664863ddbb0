"""The sources' exceptions: each names the input it failed on and never carries an API key."""

from __future__ import annotations


class SourceError(Exception):
    """Any failure talking to a source API; `str()` is safe to log and to store in a table.

    `run_level`: the kind of failure that, repeated for wallet after wallet, means the source (or
    the key) is gone rather than the wallet being bad: the run stops instead of marking every
    wallet failed (transforms/run_health.py). One such failure alone is still the wallet's.
    """

    run_level = False
    # How `run` heads the one line of a run that could not start on this error.
    heading = "the source did not answer"


class ConfigError(SourceError):
    """A setting the API rejects (e.g. a page `limit` it does not accept): fix the option, not the data."""

    run_level = True


class SourceUnavailable(SourceError):
    """Retries ran out on transient failures (refused, reset, DNS, timeouts, 5xx, 429)."""

    run_level = True


class TransientError(SourceError):
    """Worth another attempt: 429, 5xx, a dropped connection, a timeout, an unreadable body."""

    def __init__(self, message: str, retry_after: float | None = None, throttled: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.throttled = throttled


class HTTPStatusError(SourceError):
    """A 4xx other than 429: the request itself is wrong for this input, so retrying cannot help."""

    # Unauthorized, Forbidden, Proxy auth, Gone: the key or the API, not this wallet, is refused.
    RUN_LEVEL_STATUSES = frozenset({401, 403, 407, 410})

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
        self.run_level = status in self.RUN_LEVEL_STATUSES


class PageError(SourceError):
    """A page that parsed as JSON but breaks the documented shape (missing field, wrong type)."""


class KeyEchoed(PageError):
    """An answer that holds the API key: refused whole, so the key lands in no table or file.

    No honest API serves the key back as data; one that does (a reflecting proxy, a hostile
    server) has made that page unfit to keep, and the wallet (or batch) fails with this instead.
    """


class PaginationError(SourceError):
    """The server's paging would loop or never end: a repeated cursor, has_more without a cursor."""
