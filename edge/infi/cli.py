"""``coinfer infi``: train, export and run InFi filters; analyse tasks; benchmark the filters.

    coinfer infi train --records faces.npz --measurement empty --epochs 10 --out filters/faces
    coinfer infi export --filter filters/faces --quantization int8 --calibration faces.npz \
        --out filters/faces-int8
    coinfer infi run --filter filters/faces-int8 --records faces-test.npz --json run.json
    coinfer infi analyze --measurement confidence-below --option threshold=0.9 --filter-ms 1.2 --model-ms 8
    coinfer infi bench --quick --json infi.json
"""

from __future__ import annotations

import argparse

from coinfer.sdk.cli.actions import add_action_parsers, run_action

#: action -> (summary, module providing add_arguments(parser) and run(args) -> int)
ACTIONS = {
    "train": ("train a skip or reuse filter on (input, model output) records",
              "coinfer.edge.infi.train_command"),
    "export": ("export a trained filter to TFLite (float32, float16, int8) for devices",
               "coinfer.edge.infi.export_command"),
    "run": ("run an exported filter over records with LiteRT and score its decisions",
            "coinfer.edge.infi.run_command"),
    "analyze": ("the filterability verdict of a redundancy measurement and whether a filter pays off",
                "coinfer.edge.infi.analyze_command"),
    "bench": ("InFi filters against the optimum and the baselines on real models",
              "coinfer.edge.infi.bench"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_action_parsers(parser, ACTIONS)


def run(args: argparse.Namespace) -> int:
    return run_action(args, ACTIONS)
