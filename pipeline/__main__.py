"""The one entry point: `python -m pipeline <command>` (run, status, commit, verify, demo, simulate)."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
import threading
from typing import NoReturn

# command -> module with `add_arguments(parser)` and `main(args, argv) -> int`, where `argv` is every
# argument after the command's name (what `run` hands to Beam's PipelineOptions).
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipeline.run", "run the backfill pipeline once"),
    "status": ("pipeline.status", "show progress from the checkpoint table"),
    "commit": ("pipeline.commit", "commit one run's staging into the warehouse (recovery)"),
    "verify": ("pipeline.verify", "reset done wallets whose trades production does not hold"),
    "traders": ("pipeline.traders", "traders add FILE: append wallet addresses to traders"),
    "demo": ("pipeline.demo", "start the simulator, seed wallets, run the pipeline, show status"),
    "simulate": ("simulator.cli", "serve the Dome API simulator on 127.0.0.1"),
}


def exit_now(code: int) -> None:
    """Ends a finished `run` without the interpreter's teardown: freeing every module and
    object of Beam, pyarrow, grpc and the run's data took ~0.5 s after the run was over, and
    frees nothing the operating system does not. Everything else Python's exit does still
    happens, in its order: other threads are waited for (the thread pools' exit hooks stop
    theirs), the standard streams are flushed, the `atexit` handlers run (the logging's flush
    among them). Without `threading._shutdown` (CPython's exit step that does the waiting; a
    private name) this returns and the caller exits the usual way."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None or threading.current_thread() is not threading.main_thread():
        return
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class _OneLineParser(argparse.ArgumentParser):
    """An option argparse refuses (a type, a choice) is one line, not its usage's forty."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _OneLineParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name == chosen:  # import only the command that runs: Beam's import is slow
            module = importlib.import_module(module_name)
            command_parser.description = module.__doc__
            module.add_arguments(command_parser)
    # Options this parser does not know are Beam's (`--runner`, ...): only `run` accepts them.
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "run":
        parser.error(f"{args.command}: unrecognized arguments: {' '.join(rest)}")
    assert module is not None
    from pipeline.warehouse import WarehouseUnreadable  # light: no Beam

    try:
        return int(module.main(args, argv[1:]) or 0)
    except WarehouseUnreadable as exc:  # every command that opens the warehouse ends so
        print(f"{args.command}: {exc}")
        return 2


if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`status | head -1`): not a failure to report with a traceback.
        # Python's documented recipe: point stdout at devnull so the exit's flush cannot raise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    if sys.argv[1:2] == ["run"]:
        exit_now(code)
    sys.exit(code)
