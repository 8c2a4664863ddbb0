"""`traders add FILE`: append wallet addresses to the `traders` table (one per line, or a CSV column).

FILE holds one address per line, or is a CSV with a header row (`--column`, default
`wallet_address`): CSV when its name ends in `.csv`, its first line has a comma, or its first line
is the column's name. `-` reads standard input. Addresses are normalised by the pipeline's own
rule (lowercase `0x` + 40 hex); the valid ones `traders` does not hold yet are appended (the table
is created if missing), and one line says how many were new, duplicate and invalid.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline.options import duckdb_path_problems
from pipeline.warehouse import TableNames, open_warehouse, parse_warehouse_spec

DEFAULT_WAREHOUSE = "duckdb:backfill.duckdb"  # as `run`'s --warehouse
DEFAULT_COLUMN = "wallet_address"
INVALID_SHOWN = 5
VALUE_SHOWN = 64  # characters of one invalid value the summary echoes: it stays one readable line


class InputError(ValueError):
    """The file cannot be read as asked (missing, no such column): exit 2, one line."""


@dataclass
class ParsedAddresses:
    """The valid, normalised addresses of a file in order (repeats kept) and its invalid values."""

    valid: list[str] = dataclasses.field(default_factory=list)
    invalid: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (line, raw value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="traders_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="append the addresses of FILE that traders does not hold")
    add.add_argument("file", metavar="FILE", help="one address per line, a CSV, or - for stdin")
    add.add_argument(
        "--column",
        default=None,
        help=f"the CSV column holding the addresses (default {DEFAULT_COLUMN})",
    )
    add.add_argument(
        "--warehouse",
        default=DEFAULT_WAREHOUSE,
        help="duckdb:PATH (local, the default) or bigquery:PROJECT.DATASET",
    )
    add.add_argument("--traders_table", default=TableNames().traders, help="the traders table")


def _rows(handle: TextIO, name: str, column: str | None) -> Iterator[tuple[int, str]]:
    """(line number, raw value) of each non-blank entry.

    A byte order mark (what Windows editors write first) is dropped from a text file as from a
    CSV: left on, it would make the first address invalid. A CSV that `csv` cannot read (a field
    over its limit) is InputError naming the line, not a traceback.
    """
    first = handle.readline().removeprefix("\ufeff")
    wanted = column or DEFAULT_COLUMN
    header = first.strip()
    is_csv = name.lower().endswith(".csv") or "," in first or header == wanted
    if not is_csv:
        if column is not None:
            raise InputError(
                f"--column {column}: {name} is not a CSV (no header with a comma, no .csv name)"
            )
        for number, line in enumerate([first, *handle], start=1):
            if line.strip():
                yield number, line.strip()
        return
    try:
        fields = [field.strip() for field in next(csv.reader(io.StringIO(first)), [])]
    except csv.Error as exc:
        raise InputError(f"{name} line 1 is not readable as CSV: {exc}") from None
    if wanted not in fields:
        shown = ", ".join(fields) or "none"
        raise InputError(f"--column {wanted}: {name} has no such column (columns: {shown})")
    index = fields.index(wanted)
    rows = csv.reader(handle)
    try:
        for row in rows:
            if not row or not any(cell.strip() for cell in row):
                continue
            value = row[index] if index < len(row) else ""
            yield rows.line_num + 1, value  # + 1: the header line was read before this reader
    except csv.Error as exc:
        raise InputError(f"{name} line {rows.line_num + 1} is not readable as CSV: {exc}") from None


def read_addresses(handle: TextIO, name: str, column: str | None = None) -> ParsedAddresses:
    """Split a file's entries into normalised addresses and invalid values (with line numbers)."""
    from transforms.read_wallets import normalize_wallet  # the pipeline's one address rule

    parsed = ParsedAddresses()
    for number, raw in _rows(handle, name, column):
        wallet, _ = normalize_wallet(raw)
        if wallet is None:
            parsed.invalid.append((number, raw))
        else:
            parsed.valid.append(wallet)
    return parsed


def shown_value(raw: str) -> str:
    """An invalid value as the summary echoes it: quoted, and cut with `...` when long (a 10 MB
    line must not become a 10 MB summary)."""
    if len(raw) <= VALUE_SHOWN:
        return repr(raw)
    return f"{raw[:VALUE_SHOWN]!r}..."


def summary(parsed: ParsedAddresses, added: int) -> str:
    duplicate = len(parsed.valid) - added
    line = (
        f"traders add: {added} new, {duplicate} duplicate (already in traders or repeated "
        f"in the file), {len(parsed.invalid)} invalid"
    )
    if parsed.invalid:
        shown = "; ".join(
            f"line {n}: {shown_value(raw)}" for n, raw in parsed.invalid[:INVALID_SHOWN]
        )
        more = ", ..." if len(parsed.invalid) > INVALID_SHOWN else ""
        line += f" ({shown}{more})"
    return line


def main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        kind, target = parse_warehouse_spec(args.warehouse)
        tables = TableNames(traders=args.traders_table)
    except ValueError as exc:
        print(f"traders add: {exc}")
        return 2
    problems = duckdb_path_problems(target, must_exist=False) if kind == "duckdb" else []
    if problems:
        print(f"traders add: --warehouse: {problems[0]}")
        return 2
    try:
        if args.file == "-":
            parsed = read_addresses(sys.stdin, "stdin", args.column)
        else:
            path = Path(args.file)
            if not path.is_file():
                raise InputError(f"no such file: {args.file}")
            with path.open(encoding="utf-8", newline="") as handle:
                parsed = read_addresses(handle, path.name, args.column)
    except (InputError, UnicodeDecodeError, OSError) as exc:
        print(f"traders add: {exc}")
        return 2
    with open_warehouse(args.warehouse, tables) as warehouse:
        added = warehouse.add_traders(parsed.valid)
    print(summary(parsed, added))
    return 0
