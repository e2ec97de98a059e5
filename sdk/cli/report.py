"""Terminal output shared by sub-commands: one metrics table format for every report, and
the ``--out``/``--overwrite`` arguments of commands that write an artifact."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coinfer.sdk.errors import CoinferError


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def print_metrics(title: str, metrics: Mapping[str, Any]) -> None:
    """Print ``metrics`` as a two-column table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, format_value(value))
    Console().print(table)


def add_output_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--out DIR`` (required) and ``--overwrite``."""
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help=f"where to write {what}")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def check_output(args: argparse.Namespace) -> None:
    """Fail before the work, not after it, when ``--out`` exists and may not be replaced."""
    if args.out.exists() and not args.overwrite:
        raise CoinferError(f"{args.out} already exists (pass --overwrite to replace it)")


def report(title: str, metrics: Mapping[str, Any], json_path: Path | None = None) -> None:
    """Print ``metrics`` as a table and, with ``json_path``, write them there atomically."""
    from coinfer.sdk.fsutil import atomic_write_json

    print_metrics(title, metrics)
    if json_path is not None:
        atomic_write_json(json_path, dict(metrics))
