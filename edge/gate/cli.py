"""``coinfer gate``: run PacketGame over live streams, train its predictor, benchmark it.

    coinfer gate run cam0.mp4 rtsp://10.0.0.5/stream --budget-fraction 0.4 --predictor out/predictor
    coinfer gate train --out out/predictor [--scenes DIR]
    coinfer gate bench --quick --json gate.json
"""

from __future__ import annotations

import argparse

from coinfer.sdk.cli.actions import add_action_parsers, run_action

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
    add_action_parsers(parser, ACTIONS)


def run(args: argparse.Namespace) -> int:
    return run_action(args, ACTIONS)
