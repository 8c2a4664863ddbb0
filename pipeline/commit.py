"""`commit --run_id R`: commits one fully staged run by hand (recovery); safe to repeat."""

from __future__ import annotations

import argparse
import json

from pipeline.lifecycle import commit_staged_run
from pipeline.options import BackfillOptions, OptionsError, resolve_command_argv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    BackfillOptions._add_argparse_args(parser)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    if not args.run_id:
        print("commit: give --run_id (a folder under --staging_root that has _STAGED.json)")
        return 2
    try:
        config = resolve_command_argv(argv)
    except OptionsError as exc:
        print(exc)
        return 2
    report = commit_staged_run(config.warehouse, config.tables, config.staging_root, args.run_id)
    print(json.dumps(report, indent=1, default=str))
    return 0
