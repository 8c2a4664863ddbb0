"""The backfill's pipeline options, and their validation before anything starts.

Beam's own options (`--runner`, `--direct_running_mode`, `--direct_num_workers`, `--max_num_workers`,
...) pass straight through; ours are declared here once, so the README, the Flex Template metadata
and `--help` all describe the same set.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from pipeline.api_key import SECRET_VERSION, load_api_key
from pipeline.lease import holder_name
from pipeline.sources import SOURCE_NAMES, SourceSpec
from pipeline.sources.dome.client import DEFAULT_BASE_URL, TIERS, RateLimit
from pipeline.sources.errors import ConfigError
from pipeline.sources.http import HttpSettings
from pipeline.sources.limiter import Window, max_shares, share
from pipeline.sources.polymarket.source import DATA_API_URL, GAMMA_API_URL, LIMITS_PER_10S
from pipeline.sources.polymarket.source import windows as polymarket_windows
from pipeline.staging import RunStaging
from pipeline.warehouse import TableNames, WarehouseRef, parse_warehouse_spec, validate_run_id

log = logging.getLogger(__name__)


def flag(text: str) -> bool:
    """`--verify`, `--verify=true` or `--verify=false`: templates pass every option a value."""
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return value == "true"


class BackfillOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add = parser.add_argument
        add(
            "--warehouse",
            default="duckdb:backfill.duckdb",
            help="duckdb:PATH (local, the default) or bigquery:PROJECT.DATASET",
        )
        add(
            "--staging_root",
            default="./staging",
            help="folder or gs:// prefix; each run stages under <staging_root>/<run_id>/",
        )
        add(
            "--run_id",
            default=None,
            help="names this run's staging; default: UTC time plus a random suffix",
        )
        add(
            "--source",
            default="polymarket",
            choices=SOURCE_NAMES,
            help="polymarket: Polymarket's public Data API v2 and Gamma (no key, the default); "
            "dome: a Dome-shaped API (--api_base_url, DOME_API_KEY)",
        )
        add(
            "--api_base_url",
            default=DEFAULT_BASE_URL,
            help="--source=dome: the Dome API, or the simulator",
        )
        add(
            "--data_api_url",
            default=DATA_API_URL,
            help="--source=polymarket: the Data API (trades, status, resolutions)",
        )
        add(
            "--gamma_api_url",
            default=GAMMA_API_URL,
            help="--source=polymarket: the Gamma API (markets, events)",
        )
        add(
            "--bucket_limits",
            default=None,
            help="--source=polymarket: lower per-10 s limits for the whole job, e.g. "
            "trades=100,markets=150 (buckets: " + ", ".join(LIMITS_PER_10S) + ")",
        )
        add(
            "--egress",
            default="shared",
            choices=("shared", "per_worker"),
            help="--source=polymarket on Dataflow: shared (all workers leave through one IP, "
            "e.g. Cloud NAT: the limits are split among every process of the job) or per_worker "
            "(each worker has its own external IP: split among one worker's processes)",
        )
        add(
            "--api_key_secret",
            default=None,
            help="Secret Manager version holding the API key (projects/P/secrets/S/versions/V); "
            "without it the key comes from the DOME_API_KEY environment variable",
        )
        add(
            "--tier",
            default="free",
            choices=sorted(TIERS),
            help="--source=dome: the API key's rate-limit tier (dome-api.md)",
        )
        add(
            "--rate_per_second",
            type=float,
            default=None,
            help="overrides the tier's queries per second, for the whole job",
        )
        add(
            "--rate_per_10s",
            type=float,
            default=None,
            help="overrides the tier's queries per 10 seconds, for the whole job",
        )
        add(
            "--rate_shares",
            type=int,
            default=None,
            help="processes that share the limit; default: derived from the runner's options",
        )
        add(
            "--max_wallets",
            type=int,
            default=None,
            help="fetch at most N pending wallets this run (the same N for the same state)",
        )
        add(
            "--max_run_minutes",
            type=float,
            default=None,
            help="stop starting wallets this many minutes after the run started (wallets in "
            "flight finish, the rest stay pending); with --max_wallets, whichever comes first",
        )
        add(
            "--lease_minutes",
            type=float,
            default=None,
            help="how long the warehouse's lease outlives a run that never gives it back (a crash, "
            "a cancelled job); more than --max_run_minutes. Default: --max_run_minutes + 30 "
            "(a day without a budget). launch_dataflow.sh sets the schedule's period less a "
            "minute, so that the launch after a failed job is not refused",
        )
        add(
            "--staging_retention_days",
            type=float,
            default=None,
            help="at start-up, delete the staging of runs committed more than this many days "
            "ago (at most 50 runs per start-up); default: keep everything",
        )
        add(
            "--fetch_threads",
            type=int,
            default=None,
            help="requests in flight per fetching step in each worker process; default: enough "
            "to keep the process's share of the rate limit busy at ~250 ms per request (8-64)",
        )
        add("--page_limit", type=int, default=1000, help="orders per page (the API allows 1-1000)")
        add(
            "--max_pages",
            type=int,
            default=10_000,
            help="a wallet with more pages than this fails instead of looping",
        )
        add(
            "--refresh_after",
            default=None,
            help="re-fetch done wallets (and open markets/events) last fetched longer ago than "
            "this, e.g. 30m, 6h, 1d; off by default (backfill only)",
        )
        add(
            "--refresh_overlap",
            default="1h",
            help="a refresh starts this long before the wallet's newest landed trade",
        )
        add(
            "--verify",
            type=flag,
            nargs="?",
            const=True,
            default=False,
            help="before the run, reset done wallets whose trades production does not hold",
        )
        add("--max_attempts", type=int, default=5, help="attempts per request before giving up")
        add("--connect_timeout", type=float, default=5.0, help="seconds")
        add("--read_timeout", type=float, default=30.0, help="seconds")
        for field in dataclasses.fields(TableNames):
            name, default = field.name, field.default
            add(f"--{name}_table", default=default, help=f"the {name} table's name")


@dataclass(frozen=True)
class BackfillConfig:
    """The validated, resolved form of the options that the graph's steps carry (picklable)."""

    warehouse: str
    tables: TableNames
    staging_root: str
    run_id: str
    source: SourceSpec  # what each worker builds its source from (one process's rate share)
    job_windows: tuple[Window, ...]  # the whole job's rate limits
    rate_shares: int
    max_wallets: int | None
    fetch_threads: int
    refresh_after_s: float | None = None  # None: no refresh (backfill only)
    refresh_overlap_s: float = 3600.0
    verify: bool = False
    started_at: float = 0.0  # unix seconds, fixed at launch: every worker judges staleness alike
    max_run_minutes: float | None = None  # from started_at; None: no time budget
    lease_minutes: float | None = None  # None: pipeline.lease.ttl_seconds's default
    staging_retention_days: float | None = None  # None: keep every run's staging
    # Who holds the warehouse's lease for this run (pipeline.lease): the commit step gives it back.
    lease_holder: str = ""
    # Start-up reads what production holds for the lookups once and stages it, for a run of
    # several processes (Dataflow: workers x vCPUs), which would otherwise each read it.
    stage_lookup_plan: bool = False

    @property
    def staging(self) -> RunStaging:
        """This run's staging: every path under <staging_root>/<run_id>/."""
        return RunStaging(self.staging_root, self.run_id)

    @property
    def warehouse_ref(self) -> WarehouseRef:
        return WarehouseRef(self.warehouse, self.tables)


class OptionsError(ValueError):
    """Every problem with the options at once, each saying what to fix."""


# A gs:// staging root names a bucket (Cloud Storage's naming rules, loosely); other schemes are
# not supported: Beam would pick a filesystem that this pipeline never tested.
GCS_PREFIX = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/\S*)?$")
MAX_RUN_MINUTES = 24 * 60

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '6h', '1d' or plain seconds -> seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 30m, 6h or 1d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def new_run_id(now: dt.datetime | None = None) -> str:
    moment = now or dt.datetime.now(dt.UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def default_fetch_threads(process_windows: tuple[Window, ...], latency_s: float = 0.25) -> int:
    """Requests in flight that keep a process's fastest bucket busy (Little's law: rate x
    latency), doubled for the latency's long tail; at least 8, at most 64 per step."""
    by_bucket: dict[str, float] = {}
    for window in process_windows:
        rate = window.sustained
        by_bucket[window.bucket] = min(by_bucket.get(window.bucket, rate), rate)
    # The narrowest bucket a step draws from bounds it; the widest ("all") is shared by every
    # step, so the busiest single step runs at most at the second-largest bucket's rate.
    rates = sorted(by_bucket.values())
    rate = rates[-2] if len(rates) > 1 else rates[0]
    return max(8, min(64, math.ceil(2 * rate * latency_s)))


def parse_bucket_limits(text: str | None) -> dict[str, float]:
    """'trades=100,markets=150' -> {'trades': 100.0, 'markets': 150.0}, checked."""
    limits: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in LIMITS_PER_10S:
            raise ValueError(f"unknown bucket {name!r}: use {', '.join(LIMITS_PER_10S)}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r}: give a number of requests per 10 s") from None
        if not (math.isfinite(number) and 0 < number <= LIMITS_PER_10S[name]):
            raise ValueError(
                f"{name}={value}: give a number above 0 and at most the published "
                f"{LIMITS_PER_10S[name]}"
            )
        limits[name] = number
    return limits


def duckdb_path_problems(path: str, must_exist: bool = True) -> list[str]:
    """What is wrong with a DuckDB file path before anything opens it.

    A run, `status`, `commit` and `verify` need the file to exist: the warehouse starts with the
    wallets you add (`traders add` creates it), so a missing file is a typo, and creating it would
    report a successful run over zero wallets. `must_exist=False` is for `traders add`."""
    target = Path(path).expanduser()
    if target.is_dir():
        return [f"{path} is a folder: name a DuckDB file, e.g. {target / 'backfill.duckdb'}"]
    if not target.parent.is_dir():
        return [f"the folder {target.parent} does not exist: create it, or fix the path"]
    if must_exist and not target.exists():
        return [
            f"{path} does not exist: add wallets first (python -m pipeline traders add FILE "
            f"--warehouse=duckdb:{path} creates it), or fix the path"
        ]
    if target.exists():
        try:
            with target.open("rb") as handle:
                header = handle.read(16)
        except OSError as exc:
            return [f"{path} cannot be read ({exc.strerror})"]
        if not header:
            return [f"{path} is empty, not a DuckDB database: delete it, or fix the path"]
        if header[8:12] != b"DUCK":
            return [f"{path} is not a DuckDB database file"]
    elif not os.access(target.parent, os.W_OK):
        return [f"the folder {target.parent} is not writable"]
    return []


def folder_problems(path: str) -> list[str]:
    """A local staging root: it may not exist yet, but the nearest existing folder must be one
    this process can write to."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        return [f"{path} is a file, not a folder"]
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{existing} is not writable"]
    return []


def is_dataflow(options: PipelineOptions) -> bool:
    """The one test of where the job runs: Dataflow (a launcher that must not wait) or locally."""
    return "dataflow" in (options.view_as(StandardOptions).runner or "").lower()


def derive_rate_shares(options: PipelineOptions, per_worker_egress: bool = False) -> int:
    """How many processes draw on one limit, from the runner's own options.

    DirectRunner: one process, or `direct_num_workers` with multi_processing (one machine, one
    IP). Dataflow: `max_num_workers` × the SDK processes per worker (one per vCPU unless
    `--experiments=no_use_multiple_sdk_containers`), which the autoscaler never exceeds; with
    `per_worker_egress` (a per-IP limit, each worker its own IP) one worker's processes only.
    """
    if is_dataflow(options):
        workers = options.view_as(WorkerOptions)
        max_workers = workers.max_num_workers or workers.num_workers or 1
        vcpus = _machine_vcpus(workers.machine_type)
        experiments = options.view_as(PipelineOptions).get_all_options().get("experiments") or []
        per_worker = 1 if "no_use_multiple_sdk_containers" in experiments else vcpus
        return max(1, per_worker if per_worker_egress else max_workers * per_worker)
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        return max(1, direct.direct_num_workers or 1)
    return 1


def _machine_vcpus(machine_type: str | None) -> int:
    # n1-standard-1 is Dataflow's default; custom types end in -<vcpus>-<memory>.
    if not machine_type:
        return 1
    match = re.search(r"-(\d+)(?:-\d+)?$", machine_type)
    return int(match.group(1)) if match else 1


def unknown_options(argv: Sequence[str]) -> list[str]:
    """What in `argv` neither this pipeline nor Beam takes, each with the option it is closest
    to. Beam only warns of them and goes on: `--max-wallets=1` (for --max_wallets) fetched
    every wallet. The parser is Beam's own, handed over by `get_all_options`."""
    parsers: list[argparse.ArgumentParser] = []
    PipelineOptions(list(argv)).get_all_options(add_extra_args_fn=parsers.append)
    (parser,) = parsers
    _, unknown = parser.parse_known_args(list(argv))
    known = [flag for action in parser._actions for flag in action.option_strings]
    out = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name.replace("-", "_"), known, n=1)
        out.append(f"{arg!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    return out


# The runners a run may name: the DirectRunner (locally, also by Beam's other names for it) and
# Dataflow (any runner named so: is_dataflow); another failed after start-up with a traceback.
RUNNERS = ("DirectRunner", "DataflowRunner")
DIRECT_RUNNER_ALIASES = ("direct", "SwitchingDirectRunner")


def resolve(
    options: PipelineOptions, argv: Sequence[str] | None = None, *, needs_key: bool = True
) -> BackfillConfig:
    """Checks every option and returns the config, or raises OptionsError listing all problems.
    `argv`: the command line the options came from, whose every argument must be an option.
    `needs_key`: False for the commands that never ask the source (status, commit, verify)."""
    opts = options.view_as(BackfillOptions)
    problems: list[str] = []
    for arg in [] if argv is None else unknown_options(argv):
        if is_dataflow(options):  # Dataflow refuses undeclared template parameters itself; what
            # else the Flex Template launcher passes is its own, and must not stop the run
            log.warning("an option neither the pipeline nor Beam knows: %s", arg)
        else:
            problems.append(f"unknown option {arg}")
    runner = options.view_as(StandardOptions).runner
    local = runner is None or runner in (RUNNERS[0], *DIRECT_RUNNER_ALIASES)
    if not local and not is_dataflow(options):
        problems.append(f"--runner={runner}: use {' or '.join(RUNNERS)}")
    direct = options.view_as(DirectOptions)
    if direct.direct_num_workers is not None and direct.direct_num_workers < 0:
        problems.append("--direct_num_workers must be 0 (one per core) or more")

    try:
        kind, target = parse_warehouse_spec(opts.warehouse)
    except ValueError as exc:
        problems.append(f"--warehouse: {exc}")
    else:
        if kind == "duckdb":
            problems.extend(f"--warehouse: {p}" for p in duckdb_path_problems(target))
    if opts.staging_root and "://" not in opts.staging_root:
        problems.extend(f"--staging_root: {p}" for p in folder_problems(opts.staging_root))
    elif opts.staging_root and not GCS_PREFIX.match(opts.staging_root):
        problems.append(
            f"--staging_root {opts.staging_root!r}: give a local folder or gs://BUCKET[/PREFIX]"
        )
    try:
        names = [field.name for field in dataclasses.fields(TableNames)]
        tables = TableNames(**{name: getattr(opts, f"{name}_table") for name in names})
    except ValueError as exc:
        problems.append(f"table names: {exc}")
        tables = TableNames()

    if opts.run_id is not None and not opts.run_id.strip():  # it was replaced without a word
        problems.append("--run_id is empty: give one, or leave the option out for a new id")
    run_id = opts.run_id or new_run_id()
    try:
        validate_run_id(run_id)
    except ValueError:
        problems.append(f"--run_id {run_id!r}: use 1-64 letters, digits, '_' or '-'")
    if not opts.staging_root:
        problems.append("--staging_root: give a folder or a gs:// prefix")
    url_options = {"dome": ("api_base_url",), "polymarket": ("data_api_url", "gamma_api_url")}
    for name in url_options.get(opts.source, ()):
        url = getattr(opts, name) or ""
        if not re.match(r"^https?://[^\s/]+", url):
            problems.append(f"--{name} {url!r}: give an http(s) URL")

    if opts.api_key_secret and not SECRET_VERSION.match(opts.api_key_secret):
        problems.append(
            f"--api_key_secret {opts.api_key_secret!r}: use projects/P/secrets/S/versions/V"
        )
    if is_dataflow(options) and opts.source == "dome" and not opts.api_key_secret:
        problems.append("--api_key_secret is required on Dataflow (workers do not see your env)")
    elif opts.source == "dome" and not opts.api_key_secret and needs_key:
        try:
            load_api_key(None)  # checked now, not in every worker's setup
        except ConfigError as exc:
            problems.append(f"--source=dome: {exc}")
    elif opts.source == "dome" and SECRET_VERSION.match(opts.api_key_secret or ""):
        # A local run reads it now: a failure ended the run inside its first step.
        try:
            if needs_key and not is_dataflow(options):
                load_api_key(opts.api_key_secret)
        except ConfigError as exc:
            problems.append(str(exc))

    job_windows: tuple[Window, ...] = ()
    dome_rates = {"rate_per_second": opts.rate_per_second, "rate_per_10s": opts.rate_per_10s}
    for name, value in dome_rates.items():
        if value is not None and opts.source != "dome":
            problems.append(
                f"--{name} applies to --source=dome only (Polymarket's limits: --bucket_limits)"
            )
    if opts.source == "dome":
        rate_limit = RateLimit.for_tier(opts.tier)
        per_second = (
            opts.rate_per_second if opts.rate_per_second is not None else rate_limit.per_second
        )
        per_10s = opts.rate_per_10s if opts.rate_per_10s is not None else rate_limit.per_10s
        if not all(math.isfinite(r) and r > 0 for r in (per_second, per_10s)):
            problems.append("--rate_per_second and --rate_per_10s must be finite and positive")
        else:
            job_windows = RateLimit(per_second, per_10s).windows()
    else:
        try:
            job_windows = polymarket_windows(parse_bucket_limits(opts.bucket_limits))
        except ValueError as exc:
            problems.append(f"--bucket_limits: {exc}")
    if opts.source == "dome" and opts.egress == "per_worker":
        problems.append(
            "--egress=per_worker applies to --source=polymarket only (Dome's limit belongs to the "
            "key, whatever IP a worker has)"
        )
    shares = (
        opts.rate_shares
        if opts.rate_shares is not None
        else derive_rate_shares(options, opts.egress == "per_worker")
    )
    if shares < 1:
        problems.append("--rate_shares must be at least 1")
    elif job_windows and shares > max_shares(job_windows):
        problems.append(
            f"--rate_shares {shares}: more processes than the rate limit can be split between "
            f"(a share would round up past the limit); run at most {max_shares(job_windows)} "
            "processes (--num_workers times SDK processes per worker)"
        )

    refresh_after_s = None
    if opts.refresh_after:
        try:
            refresh_after_s = parse_duration(opts.refresh_after)
        except ValueError as exc:
            problems.append(f"--refresh_after: {exc}")
    try:
        refresh_overlap_s = parse_duration(opts.refresh_overlap)
    except ValueError as exc:
        problems.append(f"--refresh_overlap: {exc}")
        refresh_overlap_s = 0.0

    checks = [
        (opts.max_wallets is None or opts.max_wallets >= 1, "--max_wallets must be at least 1"),
        (
            opts.max_run_minutes is None or 0 < opts.max_run_minutes <= MAX_RUN_MINUTES,
            f"--max_run_minutes must be minutes above 0, at most {MAX_RUN_MINUTES} (a day: "
            "the warehouse's lease outlives a crashed run by that much)",
        ),
        (
            opts.lease_minutes is None
            or (
                0 < opts.lease_minutes <= MAX_RUN_MINUTES
                and (opts.max_run_minutes is None or opts.lease_minutes > opts.max_run_minutes)
            ),
            f"--lease_minutes must be minutes above 0, at most {MAX_RUN_MINUTES}, and more than "
            "--max_run_minutes (the lease must outlast the run's fetching)",
        ),
        (
            opts.staging_retention_days is None
            or (math.isfinite(opts.staging_retention_days) and opts.staging_retention_days > 0),
            "--staging_retention_days must be a finite number of days above 0",
        ),
        (
            opts.fetch_threads is None or opts.fetch_threads >= 1,
            "--fetch_threads must be at least 1",
        ),
        (1 <= opts.page_limit <= 1000, "--page_limit must be 1-1000 (the API's range)"),
        (opts.max_pages >= 1, "--max_pages must be at least 1"),
        (1 <= opts.max_attempts <= 20, "--max_attempts must be 1-20"),
        (
            all(
                math.isfinite(t) and 0 < t <= 3600
                for t in (opts.connect_timeout, opts.read_timeout)
            ),
            "--connect_timeout and --read_timeout must be seconds above 0, at most 3600",
        ),
    ]
    problems.extend(message for ok, message in checks if not ok)
    if problems:
        raise OptionsError("invalid options:\n  " + "\n  ".join(problems))

    process_windows = share(job_windows, shares)
    fetch_threads = opts.fetch_threads or default_fetch_threads(process_windows)
    http = HttpSettings(
        connect_timeout_s=opts.connect_timeout,
        read_timeout_s=opts.read_timeout,
        max_attempts=opts.max_attempts,
        pool_size=3 * fetch_threads,
    )
    source = SourceSpec(
        name=opts.source,
        run_id=run_id,
        windows=process_windows,
        http=http,
        page_limit=opts.page_limit,
        max_pages=opts.max_pages,
        dome_base_url=opts.api_base_url,
        data_api_url=opts.data_api_url,
        gamma_api_url=opts.gamma_api_url,
        api_key_secret=opts.api_key_secret,
    )
    return BackfillConfig(
        warehouse=opts.warehouse,
        tables=tables,
        staging_root=_anchored(opts.staging_root),
        run_id=run_id,
        source=source,
        job_windows=job_windows,
        rate_shares=shares,
        max_wallets=opts.max_wallets,
        fetch_threads=fetch_threads,
        refresh_after_s=refresh_after_s,
        refresh_overlap_s=refresh_overlap_s,
        verify=bool(opts.verify),
        started_at=time.time(),
        max_run_minutes=opts.max_run_minutes,
        lease_minutes=opts.lease_minutes,
        staging_retention_days=opts.staging_retention_days,
        lease_holder=holder_name(run_id, local=not is_dataflow(options)),
        stage_lookup_plan=derive_rate_shares(options) > 1,
    )


def _anchored(staging_root: str) -> str:
    """A local root as an absolute path: the manifest lists its files by their paths, so a
    relative root made them relative to the folder the run started in, and a start-up (or
    `commit`) from any other folder found none of them and refused the whole run for good."""
    if "://" in staging_root:
        return staging_root
    return os.path.abspath(staging_root)


def resolve_command(args: argparse.Namespace) -> BackfillConfig:
    """The config for a command (`status`, `commit`, `verify`) from its parsed arguments.

    The command's parser already holds BackfillOptions' arguments (`add_arguments`), so the
    command line is parsed once; their values become the options as they are, and the command's
    own arguments (e.g. `--last_runs`), which BackfillOptions does not know, stay out.
    """
    known = {action.dest for action in _backfill_parser()._actions}
    values = {name: value for name, value in vars(args).items() if name in known}
    return resolve(PipelineOptions([], **values), needs_key=False)


def _backfill_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    BackfillOptions._add_argparse_args(parser)
    return parser
