"""What the ``coinfer mlink`` actions share: the budget arguments and the train/test split."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

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


def time_split(cameras: np.ndarray, train_fraction: float) -> np.ndarray:
    """True for the first ``train_fraction`` of each camera's steps (rows are in time order
    within a camera): links are trained on the past and tested on what follows."""
    if not 0 < train_fraction < 1:
        raise CoinferError(f"the train fraction must be in (0, 1), got {train_fraction}")
    train = np.zeros(len(cameras), bool)
    for camera in np.unique(cameras):
        rows = np.flatnonzero(cameras == camera)
        train[rows[: max(1, round(train_fraction * rows.size))]] = True
    return train


def load_table(path: Path, models: list[str]) -> Any:
    """The recorded output table at ``path``, checked to hold every model the links know."""
    from coinfer.sdk.mlink.table import OutputTable

    table = OutputTable.load(path)
    missing = [name for name in models if name not in table.specs]
    if missing:
        raise CoinferError(f"{path}: no outputs for model(s) {missing} the links were trained on")
    return table
