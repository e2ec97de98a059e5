"""What the ``coinfer infi`` actions share: the measurement arguments.

    --measurement class-subset --option keep=sports,finance    # -> create_measurement(...)
"""

from __future__ import annotations

import argparse
from typing import Any

from coinfer.sdk.errors import CoinferError


def add_measurement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--measurement NAME`` and repeatable ``--option KEY=VALUE``."""
    from coinfer.sdk.infi.measurements import MEASUREMENTS

    parser.add_argument("--measurement", required=True, choices=sorted(MEASUREMENTS),
                        help="how the model's output is judged redundant")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a measurement option, e.g. threshold=0.9 or keep=sports,finance (repeatable)")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs: numbers become floats, comma lists become lists of strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CoinferError(f"--option must look like KEY=VALUE, got {pair!r}")
        if key == "keep":
            options[key] = [item for item in value.split(",") if item]
            continue
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return options


def measurement_from_args(args: argparse.Namespace) -> Any:
    """The measurement ``--measurement`` and ``--option`` name."""
    from coinfer.sdk.infi.measurements import create_measurement

    return create_measurement(args.measurement, **parse_options(args.option))
