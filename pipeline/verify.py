"""`verify`: done wallets whose trade count in production differs from the checkpoint's.

It finds them with one grouped query and resets them (unless `--report_only`), so the next run
fetches their whole history again and the commit lands only what production is missing. It creates
and alters no table: a missing checkpoint or trades table is reported, and there is nothing to check.
"""

from __future__ import annotations

import argparse

from pipeline.options import BackfillOptions, OptionsError, resolve_command_argv
from pipeline.warehouse import open_warehouse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    BackfillOptions._add_argparse_args(parser)
    parser.add_argument(
        "--report_only", action="store_true", help="list the mismatches, reset nothing"
    )


def main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = resolve_command_argv(argv, {"--report_only": False})
    except OptionsError as exc:
        print(exc)
        return 2
    with open_warehouse(config.warehouse, config.tables) as warehouse:
        report = warehouse.verify(reset=not args.report_only)
    print(report.render())
    return 0
