"""What ``coinfer export keras`` and ``coinfer export torch`` share: the artifact and parity
flags, reading arrays and printing the parity report."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.export import ExportOptions, ExportResult, ParityLimits
from coinfer.sdk.cli.flags import add_output, check_output
from coinfer.sdk.errors import CoinferError, InputNotFoundError


def add_common(parser: argparse.ArgumentParser) -> None:
    add_output(parser, "the artifact (a directory)")
    parser.add_argument("--samples", type=Path, metavar="NPY",
                        help="inputs for the parity check (.npy or .npz); default: calibration or random")
    parser.add_argument("--capability", default="generic", help="manifest capability field")
    parser.add_argument("--kind", help="manifest kind field")
    parser.add_argument("--max-abs-err", type=float, help="fail (and write nothing) above this error")
    parser.add_argument("--min-top1", type=float, help="fail (and write nothing) below this agreement")


def export_options(args: argparse.Namespace, metadata: dict[str, Any]) -> ExportOptions:
    limits = ParityLimits(max_abs_err=args.max_abs_err, min_top1=args.min_top1)
    return ExportOptions(capability=args.capability, kind=args.kind, metadata=metadata, limits=limits,
                         overwrite=args.overwrite)


def load_arrays(path: Path) -> list[np.ndarray]:
    """Arrays from .npy (one input) or .npz (one array per input, in file order); no pickle."""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise CoinferError(f"{path}: not a readable .npy/.npz file: {error}") from error
    if isinstance(loaded, np.ndarray):
        return [loaded]
    with loaded:
        return [loaded[name] for name in loaded.files]


def run_export(args: argparse.Namespace, what: str,
               export: Callable[[argparse.Namespace], ExportResult]) -> int:
    """Refuse an existing ``--out`` first, export with a spinner, print the parity report."""
    from rich.console import Console

    from coinfer.sdk.cli.report import print_metrics

    check_output(args)
    with Console(stderr=True).status(f"exporting the {what} model and checking parity..."):
        result = export(args)
    print_metrics(f"exported {result.artifact.path}", result.parity.to_dict())
    return 0
