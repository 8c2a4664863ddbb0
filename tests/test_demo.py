"""The demo's progress line: rewritten in place on a terminal, a line a tick elsewhere, and never
glued to a log record printed meanwhile (the demo's first run warns of markets the source lacks)."""

from __future__ import annotations

import io
import logging

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
