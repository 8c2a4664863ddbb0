"""The README's first command, `python -m pipeline demo`, end to end (smaller); its options checked
before anything starts; and its progress line: rewritten in place on a terminal, a line a tick
elsewhere, and never glued to a log record printed meanwhile (the demo's first run warns of
markets the source lacks)."""

from __future__ import annotations

import io
import logging

import pytest

from pipeline.demo import ProgressLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_rewritten_and_a_log_record_starts_on_its_own_line():
    screen = Terminal()
    line = ProgressLine(screen)
    line.show("1 s")
    line.show("2 s")
    assert screen.getvalue() == "\r1 s\r2 s"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "lacks 2 markets", None, None)
    assert line.filter(record) is True  # the record is printed, after the line is ended
    assert screen.getvalue() == "\r1 s\r2 s\n"
    line.filter(record)  # nothing open: nothing more
    line.show("3 s")
    line.end()
    line.end()
    assert screen.getvalue() == "\r1 s\r2 s\n\r3 s\n"


def test_elsewhere_each_tick_is_a_line_of_its_own():
    log = io.StringIO()
    line = ProgressLine(log)
    line.show("1 s")
    line.filter(logging.LogRecord("x", logging.WARNING, __file__, 1, "m", None, None))
    line.show("2 s")
    line.end()
    assert log.getvalue() == "1 s\n2 s\n"


def test_a_log_record_of_the_run_is_not_glued_to_the_progress():
    """Through a real logging handler: the warning lands after the ended line."""
    screen = Terminal()
    line = ProgressLine(screen)
    handler = logging.StreamHandler(screen)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(line)
    logger = logging.getLogger("tests.demo")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        line.show("  1 s  wallets 86")
        logger.warning("the source has no markets for 2 key(s)")
        line.show("  2 s  wallets 182")
    finally:
        logger.removeHandler(handler)
    assert screen.getvalue() == (
        "\r  1 s  wallets 86\n"
        "WARNING tests.demo: the source has no markets for 2 key(s)\n"
        "\r  2 s  wallets 182"
    )


def test_the_readme_demo_lands_every_trade_once_and_a_second_run_fetches_nothing(tmp_path):
    """`python -m pipeline demo` as the README's first command runs it (20 wallets here): the
    simulator, the seeded traders with their duplicates and bad rows, one run, then status.
    Run again on the same folder, it finds every wallet done and lands nothing twice."""
    import re
    import subprocess
    import sys

    import duckdb

    workdir = tmp_path / "demo"
    command = [sys.executable, "-m", "pipeline", "demo", "--wallets", "20", f"--workdir={workdir}"]

    def demo() -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first = demo()
    assert "seeded traders: 20 wallets, 5 duplicates, 6 bad rows" in first
    shown = re.search(
        r"DONE\n  wallets: 20 fetched \((\d+) with no trades at all\), 0 failed, 6 "
        r"rejected\n",
        first,
    )
    assert shown, first
    fetched, landed = map(int, re.search(r"trades: (\d+) fetched, (\d+) new", first).groups())
    assert fetched == landed > 0
    with duckdb.connect(str(workdir / "backfill.duckdb"), read_only=True) as db:
        rows, ids = db.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM trades").fetchone()
        empty_sql = "SELECT COUNT(*) FROM backfill_checkpoint WHERE trade_count = 0"
        (empty,) = db.execute(empty_sql).fetchone()
    assert rows == ids == landed
    assert empty == int(shown[1]) > 0  # landed done with nothing: said so
    assert "failed wallets   0" in first and "to do            0 of 20" in first

    second = demo()
    assert "seeded traders" not in second  # the traders table is kept as it is
    assert "wallets: 0 fetched, 0 failed, 6 rejected" in second
    assert "trades: 0 fetched, 0 new in production" in second
    with duckdb.connect(str(workdir / "backfill.duckdb"), read_only=True) as db:
        assert db.execute("SELECT COUNT(*) FROM trades").fetchone() == (landed,)


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (
            "--tier=bogus",
            "argument --tier: invalid choice: 'bogus' (choose from 'dev', 'free', 'pro')",
        ),
        ("--wallets=x", "argument --wallets: invalid int value: 'x'"),
        ("--wallets=-1", "demo: wallets must be >= 0"),
        ("--latency_ms=-1", "demo: latency_ms and latency_sigma must be >= 0"),
        ("--latency_ms=nan", "demo: latency_ms and latency_sigma must be >= 0"),
        ("--wallets=100000000", "demo: --wallets at most 100,000, --latency_ms at most 10,000"),
        ("--latency_ms=1e9", "demo: --wallets at most 100,000, --latency_ms at most 10,000"),
    ],
)
def test_a_bad_demo_option_is_one_line_before_anything_starts(tmp_path, capsys, option, said):
    """Before, the simulator refused it after start-up and the demo ended in a traceback. The
    values are the simulator's own checks (SimConfig), asked first; the tier is one the run takes."""
    from pipeline.__main__ import main as cli

    workdir = tmp_path / "demo"
    try:
        code = cli(["demo", f"--workdir={workdir}", option])
    except SystemExit as exited:  # argparse's own refusal
        code = exited.code
    assert code == 2
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    argparse_said = f"python -m pipeline demo: error: {said} (--help lists the options)"
    assert lines == [said] or lines == [argparse_said]  # one line, the usage not repeated
    assert "Traceback" not in out + err and not workdir.exists()


def test_a_demo_whose_run_does_not_start_says_why_and_exits_as_run_does(tmp_path, capsys):
    """Another backfill holds the demo folder's warehouse: the demo's run is refused in one line
    naming the holder, and the demo exits 3 as `run` does. It used to end in a traceback (and a
    run that ended other than DONE exited 0), so a script could not tell."""
    from pipeline.__main__ import main as cli
    from tests.test_lease import another_backfill_holds_the_lease

    workdir = tmp_path / "demo"
    workdir.mkdir()
    another_backfill_holds_the_lease(workdir / "backfill.duckdb", "run-a")
    assert cli(["demo", "--wallets=3", f"--workdir={workdir}"]) == 3
    out, err = capsys.readouterr()
    assert "run-a local pid" in out and "Traceback" not in out + err
    assert "DONE" not in out
