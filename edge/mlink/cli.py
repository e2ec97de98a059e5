"""``coinfer mlink``: train links between models, plan which to run under a budget, serve, benchmark.

    coinfer mlink record --scenes scenes/ --crowd crowd/ --out outputs.npz
    coinfer mlink train --table outputs.npz --epochs 60 --out links/
    coinfer mlink plan --links links/ --table outputs.npz --budget-fraction 0.5 --brute-force
    coinfer mlink run --links links/ --table stream.npz --budget 40 --json run.json
    coinfer mlink federate --server http://127.0.0.1:8100 --name edge-1 --table outputs.npz
    coinfer mlink bench --quick --json mlink.json
"""

from __future__ import annotations

import argparse

from coinfer.sdk.cli.actions import add_action_parsers, run_action

#: action -> (summary, module providing add_arguments(parser) and run(args) -> int)
ACTIONS = {
    "record": ("run the model zoo on every step of a scene set and keep the aligned outputs",
               "coinfer.edge.mlink.record_command"),
    "train": ("train a link between every pair of models, and the ensembles, on recorded outputs",
              "coinfer.edge.mlink.train_command"),
    "plan": ("the models to run under a budget and the mean output accuracy expected",
             "coinfer.edge.mlink.plan_command"),
    "run": ("serve recorded steps under a budget: run the planned models, predict the rest",
            "coinfer.edge.mlink.run_command"),
    "federate": ("train the links with other edges through the cloud aggregator (FedAvg)",
                 "coinfer.edge.mlink.federate_command"),
    "bench": ("MLink against standalone, random, Reducto-style and the optimum on real models",
              "coinfer.edge.mlink.bench"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_action_parsers(parser, ACTIONS)


def run(args: argparse.Namespace) -> int:
    return run_action(args, ACTIONS)
