"""What the ``coinfer mlink`` actions share: the budget arguments and loading a recorded table."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_budget
from coinfer.sdk.errors import CoinferError


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--budget X`` (ms per step or MiB, per ``--cost``) or ``--budget-fraction F`` (of running
    every model)."""
    add_budget(parser, costs=("ms", "mib"), required=True)


def budget_from_args(args: argparse.Namespace, costs: Mapping[str, float]) -> float:
    if args.budget is not None:
        if not args.budget >= 0:
            raise CoinferError(f"--budget must be >= 0, got {args.budget}")
        return float(args.budget)
    if not 0 <= args.budget_fraction <= 1:
        raise CoinferError(f"--budget-fraction must be in [0, 1], got {args.budget_fraction}")
    return float(args.budget_fraction * sum(costs.values()))


def load_table(path: Path, models: list[str]) -> Any:
    """The recorded output table at ``path``, checked to hold every model the links know."""
    from coinfer.sdk.mlink.table import OutputTable

    table = OutputTable.load(path)
    check_models(table, models, path)
    return table


def check_models(table: Any, models: list[str], path: Path) -> None:
    """Refuse a table (read from ``path``) without outputs of every model the links know."""
    missing = [name for name in models if name not in table.specs]
    if missing:
        raise CoinferError(f"{path}: no outputs for model(s) {missing} the links were trained on")
