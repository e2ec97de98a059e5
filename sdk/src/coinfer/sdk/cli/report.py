"""Terminal output shared by commands: one metrics table format for every report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


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


def report(title: str, metrics: Mapping[str, Any], json_path: Path | None = None) -> None:
    """Print ``metrics`` as a table and, with ``json_path``, write them there atomically."""
    from coinfer.sdk.fsutil import atomic_write_json

    print_metrics(title, metrics)
    if json_path is not None:
        atomic_write_json(json_path, dict(metrics))
