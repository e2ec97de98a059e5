"""``coinfer mlink record``: run the model zoo on every step of a scene set with audio.

    coinfer data scenes --audio --tasks "" --out scenes/
    coinfer mlink record --scenes scenes/ --crowd crowd/ --out outputs.npz

Each step is a decoded frame and its audio window; the seven zoo models (see
:mod:`coinfer.edge.mlink.zoo`) run on it and their outputs are kept aligned in one output
table, with each model's median milliseconds per step and peak memory. ``--crowd`` is the
crowd CNN artifact; ``coinfer mlink bench`` trains one (in its work directory, ``crowd/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.sdk.cli.flags import add_output, add_quiet, check_output
from coinfer.sdk.cli.report import report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=Path, required=True, metavar="DIR",
                        help="a scene set generated with --audio")
    parser.add_argument("--crowd", type=Path, required=True, metavar="DIR", help="crowd CNN artifact")
    add_output(parser, "the output table", metavar="NPZ")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.mlink.recording import nonempty_fraction, record_outputs
    from coinfer.edge.mlink.zoo import create_zoo

    check_output(args)
    table = record_outputs(args.scenes, create_zoo(args.crowd), progress=not args.quiet,
                           memory_cache=args.out.with_name(args.out.stem + ".memory.json"))
    table.save(args.out)
    found = nonempty_fraction(table)
    metrics: dict[str, object] = {"steps": len(table)}
    for name in table.models:
        metrics[name] = (f"{table.costs[name]['ms']:.2f} ms, {table.costs[name]['mib']:.0f} MiB, "
                         f"finds something on {found[name]:.0%}")
    metrics["table"] = str(args.out)
    report("coinfer mlink record", metrics)
    return 0
