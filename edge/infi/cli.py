"""``coinfer infi``: benchmark InFi filters and analyse whether a task is worth filtering.

    coinfer infi analyze --measurement confidence-below --option threshold=0.9 --filter-ms 1.2 --model-ms 8
    coinfer infi bench --quick --json infi.json
"""

from __future__ import annotations

import argparse
import importlib

#: action -> (summary, module providing add_arguments(parser) and run(args) -> int)
ACTIONS = {
    "analyze": ("the filterability verdict of a redundancy measurement and whether a filter pays off",
                "coinfer.edge.infi.analyze_command"),
    "bench": ("InFi filters against the optimum and the baselines on real models",
              "coinfer.edge.infi.bench"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, (summary, module) in ACTIONS.items():
        child = sub.add_parser(action, help=summary, description=summary)
        importlib.import_module(module).add_arguments(child)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(ACTIONS[args.action][1]).run(args))
