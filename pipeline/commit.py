"""`commit --run_id R`: commits one fully staged run by hand (recovery); safe to repeat."""

from __future__ import annotations

import argparse
import dataclasses
import json

from pipeline.options import BackfillOptions, OptionsError, resolve_command_argv
from pipeline.staging import commit_staged_run


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
    outcome = commit_staged_run(config.staging, config.warehouse_ref)  # --run_id's staging
    if outcome.report is None:
        print(f"run {args.run_id} was not committed (production is untouched): {outcome.error}")
        return 1
    print(json.dumps(dataclasses.asdict(outcome.report), indent=1, default=str))
    return 0
