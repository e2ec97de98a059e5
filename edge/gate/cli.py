"""``coinfer gate``: run PacketGame over live streams, train its predictor, benchmark it.

    coinfer gate run cam0.mp4 rtsp://10.0.0.5/stream --budget-fraction 0.4 --predictor out/predictor
    coinfer gate train --out out/predictor [--scenes DIR]
    coinfer gate bench --quick --json gate.json
"""

from __future__ import annotations

import argparse
import importlib

#: action -> module providing add_arguments(parser) and run(args) -> int
ACTIONS = {
    "run": ("gate many streams under a decode budget, decode in workers, run the detectors",
            "coinfer.edge.gate.run_command"),
    "train": ("train the contextual predictor on inference logs of generated scenes",
              "coinfer.edge.gate.train"),
    "bench": ("benchmark PacketGame against the baselines on generated scenes",
              "coinfer.edge.gate.bench"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, (summary, module) in ACTIONS.items():
        child = sub.add_parser(action, help=summary, description=summary)
        importlib.import_module(module).add_arguments(child)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(ACTIONS[args.action][1]).run(args))
