"""``coinfer infi``: benchmark InFi filters and analyse whether a task is worth filtering.

    coinfer infi analyze --measurement confidence-below --option threshold=0.9 --filter-ms 1.2 --model-ms 8
    coinfer infi bench --quick --json infi.json
"""

from __future__ import annotations

import argparse

from coinfer.sdk.cli.actions import add_action_parsers, run_action

#: action -> (summary, module providing add_arguments(parser) and run(args) -> int)
ACTIONS = {
    "analyze": ("the filterability verdict of a redundancy measurement and whether a filter pays off",
                "coinfer.edge.infi.analyze_command"),
    "bench": ("InFi filters against the optimum and the baselines on real models",
              "coinfer.edge.infi.bench"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_action_parsers(parser, ACTIONS)


def run(args: argparse.Namespace) -> int:
    return run_action(args, ACTIONS)
