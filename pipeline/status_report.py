"""The backfill's status as data (`StatusReport`) and as a compact human-readable table."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class FailedWallet:
    """A wallet tried and failed (`completed AND NOT upload_successful`): retried next run."""

    wallet_address: str
    trade_count: int | None
    processed_at: dt.datetime | None
    error: str | None


@dataclass(frozen=True)
class RunSummary:
    """One row of the runs table: a committed run and what it staged."""

    run_id: str
    committed_at: dt.datetime
    wallets_done: int | None
    wallets_failed: int | None
    trades_staged: int | None
    markets_staged: int | None
    events_staged: int | None


@dataclass(frozen=True)
class StatusReport:
    """The users' three monitoring numbers plus production totals and the latest runs.

    `progress_percent` is done * 100 / distinct non-null traders, rounded to 2 places (None
    when `traders` is empty); `remaining_wallets` counts raw trader values, as the users'
    existing query does, so malformed addresses, case variants and repeats stay in it forever.
    Beside it, the true work left: `valid_wallets` distinct addresses of `traders` after the
    pipeline's normalisation (lowercase 0x + 40 hex), `wallets_to_do` of them not done.
    """

    done_wallets: int | None
    failed_wallets: int | None
    total_wallets: int | None
    progress_percent: float | None
    remaining_wallets: int | None
    failed: tuple[FailedWallet, ...] = ()
    valid_wallets: int | None = None
    wallets_to_do: int | None = None
    trades_rows: int | None = 0
    markets_rows: int | None = 0
    events_rows: int | None = 0
    last_runs: tuple[RunSummary, ...] = ()
    # Markets / events production names (trades; events also markets) but does not hold, and that
    # are not missing at the source: the next run asks for them again. None when the tables needed
    # to count them are missing.
    markets_pending: int | None = None
    events_pending: int | None = None
    # Of those named and not held, the ones enough runs found missing at the source (the source
    # answered without them): no run asks for them until a week after they were last found
    # missing (pipeline.warehouse.base.MISSING_RECHECK_S). None when the missing
    # table is not there yet (a warehouse from before it: every unlanded key counts as pending).
    markets_missing: int | None = None
    events_missing: int | None = None
    # (source, production trade rows), rows landed before sources counted as "dome".
    trades_by_source: tuple[tuple[str, int], ...] = ()
    # Who holds the backfill's lease (a run running now, or one that died and whose lease has
    # not expired yet), and until when; None when it is free.
    lease_holder: str | None = None
    lease_expires_at: dt.datetime | None = None
    # The holder is a run of this machine whose process has ended: the next run takes over.
    lease_holder_gone: bool = False
    # Done wallets whose last refresh failed (kept done, their error recorded: retried next
    # run, their trades possibly stale), and the oldest successful fetch of a done wallet.
    refresh_failing: int | None = None
    oldest_fetch_at: dt.datetime | None = None
    # Tables status needed and did not find (status only reads: it creates nothing), and
    # numbers it could not compute for another reason (a table not migrated yet).
    missing_tables: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ts(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _clip(text: str | None, width: int) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _currency(report: StatusReport) -> list[str]:
    """A line on how current the done wallets are, when there is something to say."""
    if report.oldest_fetch_at is None and not report.refresh_failing:
        return []
    failing = (
        f"; {_n(report.refresh_failing)} done wallets whose last refresh failed (retried next "
        "run; not in the failed wallets above)"
        if report.refresh_failing
        else ""
    )
    return [
        f"current since    {_ts(report.oldest_fetch_at)} UTC (a done wallet's oldest fetch){failing}"
    ]


def render_status(report: StatusReport) -> str:
    """Render the report as a few aligned lines for a terminal (times in UTC)."""
    percent = "-" if report.progress_percent is None else f"{report.progress_percent:.2f} %"
    lines = [
        f"done wallets     {_n(report.done_wallets)} of {_n(report.total_wallets)} "
        f"({percent}), remaining {_n(report.remaining_wallets)}"
        + (
            " (the monitoring's count: the checkpoint holds done wallets traders no longer lists)"
            if (report.remaining_wallets or 0) < 0
            else ""
        ),
        f"to do            {_n(report.wallets_to_do)} of {_n(report.valid_wallets)} valid distinct "
        "addresses in traders (lowercase 0x + 40 hex) not done yet",
        f"failed wallets   {_n(report.failed_wallets)}",
        *_currency(report),
        f"production rows  trades {_n(report.trades_rows)}, markets {_n(report.markets_rows)}, "
        f"events {_n(report.events_rows)}",
    ]
    if report.markets_pending is not None or report.events_pending is not None:
        lines.append(
            f"pending          markets {_n(report.markets_pending)}, events "
            f"{_n(report.events_pending)} (named by production, not landed; the next run asks again)"
        )
    if report.markets_missing is not None or report.events_missing is not None:
        lines.append(
            f"missing          markets {_n(report.markets_missing)}, events "
            f"{_n(report.events_missing)} (named by production, missing at the source; "
            "asked again a week after they were last found missing)"
        )
    if report.trades_by_source:
        counts = ", ".join(f"{source} {_n(rows)}" for source, rows in report.trades_by_source)
        lines.append(f"trades by source {counts}")
    if report.lease_holder is not None and report.lease_holder_gone:
        lines.append(
            f"backfill lease   held by {report.lease_holder} until "
            f"{_ts(report.lease_expires_at)} UTC, but that process has ended: the next run "
            "takes the lease over"
        )
    elif report.lease_holder is not None:
        lines.append(
            f"backfill lease   held by {report.lease_holder} until "
            f"{_ts(report.lease_expires_at)} UTC (no other backfill starts before then)"
        )
    if report.missing_tables:
        lines.append(
            f"missing tables   {', '.join(report.missing_tables)} (status creates nothing; "
            "the next run creates them)"
        )
    lines.extend(f"note             {note}" for note in report.notes)
    if report.failed:
        lines.append("")
        lines.append(
            f"failed wallets, newest first ({len(report.failed)} of {report.failed_wallets}):"
        )
        rows = [
            (w.wallet_address, _n(w.trade_count), _ts(w.processed_at), _clip(w.error, 60))
            for w in report.failed
        ]
        header = ("wallet_address", "trades", "processed_at (UTC)", "error")
        lines.extend(_table(header, rows, right={1}))
    lines.append("")
    if report.last_runs:
        # The runs table counts what each run staged: a refresh that fetched 8,520 trades and
        # landed 5 shows 8,520 (production's rows are counted above).
        lines.append("last runs, newest first (trades, markets, events: rows fetched and staged):")
        rows = [
            (
                r.run_id,
                _ts(r.committed_at),
                _n(r.wallets_done),
                _n(r.wallets_failed),
                _n(r.trades_staged),
                _n(r.markets_staged),
                _n(r.events_staged),
            )
            for r in report.last_runs
        ]
        header = ("run_id", "committed_at (UTC)", "done", "failed", "trades", "markets", "events")
        lines.extend(_table(header, rows, right={2, 3, 4, 5, 6}))
    else:
        lines.append("no committed runs yet")
    return "\n".join(lines)
