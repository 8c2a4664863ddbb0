"""The simulator's settings: SimConfig, the rate-limit tiers and buckets, FaultRule and the fault spec parser.

Fault spec grammar (``--faults`` on the CLI, :func:`parse_fault_spec` in Python)::

    spec   := "" | rule (";" rule)*          blank rules are ignored, whitespace is stripped
    rule   := kind [":" param ("," param)*]
    param  := key "=" value
    kind   := http_5xx | storm_429 | slow | reset | malformed_json | truncated
            | empty_has_more | empty_page | repeat_key | missing_field | wrong_type
            | http_4xx | absurd_value
    key    := rate      float in [0, 1]: fire with this probability (seeded RNG)
            | times     int >= 0: fire for the first N matching requests only
            | wallets   address ("|" address)*: only requests for these wallets (orders)
            | endpoint  orders | markets | events                  Dome (default orders)
                      | trades | status | resolutions            Polymarket Data API v2
                      | gamma_markets | gamma_markets_slug       Gamma: /markets/keyset, and
                      | gamma_events | gamma_events_slug        /markets|events/slug/{s} or /{id}
            | page      int >= 0: only that page of a listing (0 = the first, from the offset;
                        Polymarket: the n-th page of a cursor walk)
            | status    int: the HTTP status of http_5xx (500-599, default 503)
                        or http_4xx (400-499, default 403)
            | delay_s   float >= 0: how long `slow` sleeps (default 10)
            | field     name: the field `missing_field` drops / `wrong_type` turns into a string
                        / `absurd_value` sets to what no sane source sends (a number: 2**70; a
                        field named *time*: the year 33658; a string: a lone surrogate)

``rate`` and ``times`` are exclusive; with neither the rule fires on every matching request.
``wallets`` matches orders and trades requests (the ``user`` parameter). On the Polymarket
endpoints errors take that API's shape (Data: ``{error, code, retryable, trace_id}``; Gamma:
``{type, error}``); ``repeat_key`` repeats ``next_cursor``; ``empty_has_more`` answers a page
with no rows that says more and skips its rows (a gap), ``empty_page`` one that skips nothing
(what a filter that emptied the page does: the next page serves its rows); these three
only apply to listings (orders, markets, events, trades, gamma_markets,
gamma_events). Default fields: missing_field drops condition_id (trades, resolutions),
conditionId (gamma_markets*), slug (gamma_events*), lag_seconds (status); wrong_type turns size,
volumeNum, id, resolved or lag_seconds into a string.
Example: ``http_5xx:rate=0.05;reset:times=2,wallets=0xabc...|0xdef...;missing_field:field=price``.
Anything else raises ``ValueError`` naming the offending rule.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

FAULT_KINDS: tuple[str, ...] = (
    "http_5xx",
    "storm_429",
    "slow",
    "reset",
    "malformed_json",
    "truncated",
    "empty_has_more",
    "empty_page",
    "repeat_key",
    "missing_field",
    "wrong_type",
    "absurd_value",
    "http_4xx",
)
DOME_ENDPOINTS: tuple[str, ...] = ("orders", "markets", "events")
PM_ENDPOINTS: tuple[str, ...] = (
    "trades",
    "status",
    "resolutions",
    "gamma_markets",
    "gamma_markets_slug",
    "gamma_events",
    "gamma_events_slug",
)
ENDPOINTS: tuple[str, ...] = DOME_ENDPOINTS + PM_ENDPOINTS
LISTINGS: frozenset[str] = frozenset(
    ("orders", "markets", "events", "trades", "gamma_markets", "gamma_events")
)
LISTING_ONLY_KINDS: frozenset[str] = frozenset(("empty_has_more", "empty_page", "repeat_key"))

# Polymarket's per-IP buckets (polymarket-api.md), requests per window (10 s); None = unlimited.
# A request counts against every bucket that covers it: `all` every Data and Gamma route, `data`
# every /v2/ route, `trades` /v2/trades, `gamma` every Gamma route, `markets` /markets/keyset and
# the market lookups, `events` /events/keyset and the event lookups, `listing` both keysets.
PM_BUCKETS: dict[str, int | None] = {
    "all": 15_000,
    "data": 1_000,
    "trades": 200,
    "gamma": 4_000,
    "markets": 300,
    "events": 500,
    "listing": 900,
}
# How a Polymarket excess shows: 429 + Retry-After seconds, 429 + Retry-After as an HTTP date,
# 503 request_timeout + Retry-After seconds, or held until it fits (no error).
PM_THROTTLES: tuple[str, ...] = ("429", "429_date", "503", "delay")

# Published tiers (dome-api.md): (queries per 1 s, queries per 10 s); None = no limit.
TIERS: dict[str, tuple[int | None, int | None]] = {
    "free": (10, 100),
    "dev": (100, 500),
    "pro": (300, 3000),
    "unlimited": (None, None),
    "custom": (None, None),
}

ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclasses.dataclass(frozen=True)
class FaultRule:
    """One fault to inject: what goes wrong, for which requests, and how often."""

    kind: str
    rate: float | None = None
    times: int | None = None
    wallets: frozenset[str] | None = None
    endpoint: str = "orders"
    page: int | None = None
    status: int | None = None
    delay_s: float = 10.0
    field: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.rate is not None and self.times is not None:
            raise ValueError(f"fault {self.kind}: give either rate or times, not both")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault {self.kind}: rate must be within [0, 1], got {self.rate}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"fault {self.kind}: times must be >= 0, got {self.times}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"fault {self.kind}: endpoint must be one of {', '.join(ENDPOINTS)}")
        if self.kind in LISTING_ONLY_KINDS and self.endpoint not in LISTINGS:
            raise ValueError(f"fault {self.kind}: endpoint {self.endpoint} is not a listing")
        if self.page is not None and self.page < 0:
            raise ValueError(f"fault {self.kind}: page must be >= 0, got {self.page}")
        if self.delay_s < 0:
            raise ValueError(f"fault {self.kind}: delay_s must be >= 0, got {self.delay_s}")
        if self.status is not None:
            low, high = (400, 499) if self.kind == "http_4xx" else (500, 599)
            if self.kind not in ("http_4xx", "http_5xx") or not low <= self.status <= high:
                raise ValueError(
                    f"fault {self.kind}: status only applies to http_4xx (400-499) "
                    f"and http_5xx (500-599), got {self.status}"
                )
        if self.wallets is not None:
            wallets = frozenset(w.lower() for w in self.wallets)
            bad = sorted(w for w in wallets if not ADDRESS_RE.match(w))
            if bad:
                raise ValueError(f"fault {self.kind}: not a wallet address: {bad[0]!r}")
            object.__setattr__(self, "wallets", wallets)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from JSON (POST /_sim/faults): unknown keys are errors, not ignored."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault rule must be an object, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault rule key(s): {', '.join(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault rule needs a kind")
        values = dict(data)
        if values.get("wallets") is not None:
            wallets = values["wallets"]
            if isinstance(wallets, str) or not isinstance(wallets, Iterable):
                raise ValueError("fault rule wallets must be a list of addresses")
            values["wallets"] = frozenset(str(w) for w in wallets)
        try:
            return cls(**values)
        except TypeError as exc:  # e.g. a string where a number belongs
            raise ValueError(f"bad fault rule {dict(data)!r}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON form (wallets as a sorted list) for GET /_sim/faults."""
        out = dataclasses.asdict(self)
        out["wallets"] = None if self.wallets is None else sorted(self.wallets)
        return out


def _parse_param(kind: str, key: str, value: str) -> tuple[str, Any]:
    """Convert one `key=value` of the spec to the FaultRule field it sets."""
    try:
        if key == "rate":
            return key, float(value)
        if key in ("times", "page", "status"):
            if not re.fullmatch(r"\d+", value):
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
            return key, int(value)
        if key == "delay_s":
            return key, float(value)
        if key == "wallets":
            wallets = [w.strip() for w in value.split("|") if w.strip()]
            if not wallets:
                raise ValueError("wallets is empty")
            return key, frozenset(wallets)
        if key in ("endpoint", "field"):
            if not value:
                raise ValueError(f"{key} is empty")
            return key, value
    except ValueError as exc:
        raise ValueError(f"fault spec {kind!r}: {exc}") from exc
    raise ValueError(f"fault spec {kind!r}: unknown parameter {key!r}")


def parse_fault_spec(spec: str) -> list[FaultRule]:
    """Parse the compact CLI spec (grammar in the module docstring) into FaultRules."""
    rules: list[FaultRule] = []
    for raw in spec.split(";"):
        text = raw.strip()
        if not text:
            continue
        kind, _, params = text.partition(":")
        kind = kind.strip()
        values: dict[str, Any] = {}
        for item in params.split(",") if params.strip() else []:
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ValueError(f"fault spec {text!r}: expected key=value, got {item.strip()!r}")
            if key in values:
                raise ValueError(f"fault spec {text!r}: {key} given twice")
            name, parsed = _parse_param(kind, key, value.strip())
            values[name] = parsed
        try:
            rules.append(FaultRule(kind=kind, **values))
        except ValueError as exc:
            raise ValueError(f"fault spec {text!r}: {exc}") from exc
    return rules


def coerce_rules(rules: str | Iterable[FaultRule | Mapping[str, Any]] | None) -> list[FaultRule]:
    """Accept a spec string, FaultRules or their dicts: tests and POST bodies use all three."""
    if rules is None:
        return []
    if isinstance(rules, str):
        return parse_fault_spec(rules)
    out: list[FaultRule] = []
    for rule in rules:
        out.append(rule if isinstance(rule, FaultRule) else FaultRule.from_dict(rule))
    return out


@dataclasses.dataclass
class SimConfig:
    """Everything that shapes the simulated API; the same config and seed give the same answers."""

    seed: int = 0
    wallets: int = 100
    max_trades: int = 30_000
    # {wallet index: exact trade count}, not capped by max_trades (a test's 200,000-trade wallet).
    trade_counts: dict[int, int] = dataclasses.field(default_factory=dict)
    markets: int | None = None  # pool size; None = max(20, wallets // 2)
    tier: str = "unlimited"
    per_second: int | None = None  # overrides the tier's 1 s window
    per_10s: int | None = None  # overrides the tier's 10 s window
    retry_after: bool = True
    latency_ms: float = 0.0  # median of the per-request lognormal latency
    latency_sigma: float = 0.6
    # FaultRules; a spec string or rule dicts are accepted too and parsed in __post_init__.
    faults: list[FaultRule] = dataclasses.field(default_factory=list)
    api_key: str | None = None  # None = a random key per start
    omit_log_index: bool = False
    extra_fields: bool = False
    # Share of markets that start open, each by a seeded coin; None = closed iff end_time < NOW
    # (2-7% open). See data.py's docstring; settle_markets closes them later.
    open_fraction: float | None = None
    # Polymarket (Data API v2 + Gamma, same port, same world). Bucket limits per pm_window_s
    # seconds, per client IP: PM_BUCKETS with these overrides (None = unlimited).
    pm_limits: dict[str, int | None] = dataclasses.field(default_factory=dict)
    pm_throttle: str = "429"  # one of PM_THROTTLES
    # /v2/trades order: undocumented, so a client must survive either (the docs' cursor anchors
    # on block time; /v2/activity serves newest first, the default here).
    pm_oldest_first: bool = False
    # /v2/trades in no time order at all (a seeded shuffle of each walk's rows): the order a client
    # must never take for granted from a page or two that happen to look sorted.
    pm_unsorted: bool = False
    # /v2/trades serving every row up to now whatever `start` and `end` say (a broken contract).
    pm_ignore_bounds: bool = False
    pm_window_s: float = 10.0  # the buckets' sliding window (tests shrink it)
    lag_seconds: int = 30  # /v2/status lag: fills newer than now - lag are not served yet

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"unknown tier {self.tier!r}; known: {', '.join(TIERS)}")
        if self.wallets < 0:
            raise ValueError("wallets must be >= 0")
        if self.max_trades < 0:
            raise ValueError("max_trades must be >= 0")
        if self.markets is not None and self.markets < 1:
            raise ValueError("markets must be >= 1")
        for index, count in self.trade_counts.items():
            if not 0 <= int(index) < self.wallets or int(count) < 0:
                raise ValueError(f"trade_counts: bad entry {index}: {count}")
        self.trade_counts = {int(k): int(v) for k, v in self.trade_counts.items()}
        for name in ("per_second", "per_10s"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.open_fraction is not None and not 0.0 <= self.open_fraction <= 1.0:
            raise ValueError("open_fraction must be within [0, 1]")
        if not (self.latency_ms >= 0 and self.latency_sigma >= 0):  # NaN too
            raise ValueError("latency_ms and latency_sigma must be >= 0")
        self.faults = coerce_rules(self.faults)
        unknown = sorted(set(self.pm_limits) - set(PM_BUCKETS))
        if unknown:
            raise ValueError(f"pm_limits: unknown bucket(s) {', '.join(unknown)}")
        for name, value in self.pm_limits.items():
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"pm_limits[{name}] must be >= 1 or None")
        self.pm_limits = {k: None if v is None else int(v) for k, v in self.pm_limits.items()}
        if self.pm_throttle not in PM_THROTTLES:
            raise ValueError(f"pm_throttle must be one of {', '.join(PM_THROTTLES)}")
        if self.pm_window_s <= 0:
            raise ValueError("pm_window_s must be > 0")
        if self.lag_seconds < 0:
            raise ValueError("lag_seconds must be >= 0")

    def rate_limits(self) -> tuple[int | None, int | None]:
        """The (1 s, 10 s) limits in force: the tier's, each replaced by its custom value if set."""
        per_second, per_10s = TIERS[self.tier]
        if self.per_second is not None:
            per_second = self.per_second
        if self.per_10s is not None:
            per_10s = self.per_10s
        return per_second, per_10s

    def bucket_limits(self) -> dict[str, int | None]:
        """Polymarket's bucket limits in force: PM_BUCKETS with pm_limits' overrides."""
        return {**PM_BUCKETS, **self.pm_limits}

    def market_pool_size(self) -> int:
        return self.markets if self.markets is not None else max(20, self.wallets // 2)


def bend_fields(
    items: Iterable[dict[str, Any]], name: str, bend: Callable[[str, Any], Any]
) -> None:
    """Put `bend(name, value)` in place of the field `name` of every item that has it: the
    `wrong_type` and `absurd_value` faults, alike on both sources' pages."""
    for item in items:
        if name in item:
            item[name] = bend(name, item[name])


def wrong_type(name: str, value: Any) -> str:
    """What the `wrong_type` fault sends in place of `value`: the same value, as a string."""
    return str(value)


def absurd(name: str, value: Any) -> Any:
    """What no sane source sends in place of `value` (the `absurd_value` fault): a time in the
    year 33658, an amount past 2**64, a string holding a lone surrogate."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and "time" in name.lower():
        return 1_000_000_000_000  # seconds: the year 33658
    if isinstance(value, int | float):
        return 2**70
    if isinstance(value, str) and value.replace(".", "", 1).isdigit():
        return str(2**70)  # an amount sent as a decimal string
    return "title \udc00 cut"
