"""``coinfer mlink train``: train every link and ensemble on a recorded output table.

    coinfer mlink train --table outputs.npz --epochs 60 --out links/

The first ``--train-fraction`` of each camera's steps trains the links; the rest scores
them (each link's performance against the real target model, in [0, 1]). The result is a
link-graph artifact for ``coinfer mlink plan | run`` and ``coinfer mlink serve``.
"""

from __future__ import annotations

import argparse

import numpy as np

from coinfer.sdk.cli.flags import (
    add_json,
    add_output,
    add_records,
    add_renamed,
    add_seed,
    check_output,
    positive,
)
from coinfer.sdk.cli.report import report
from coinfer.sdk.splits import time_split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_records(parser, "aligned model outputs (coinfer mlink record)")
    add_renamed(parser, "--records", "--table")
    parser.add_argument("--epochs", type=positive(int), default=100,
                        help="training epochs (default 100, as the paper)")
    parser.add_argument("--train-fraction", type=float, default=0.7,
                        help="leading fraction of each camera's steps to train on (default 0.7)")
    add_seed(parser, "the split and the weights")
    add_json(parser, "the report")
    add_output(parser, "the link graph (an artifact directory)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from coinfer.sdk.mlink import LinkGraph, LinkOptions
    from coinfer.sdk.mlink.table import OutputTable

    check_output(args)
    options = LinkOptions(epochs=args.epochs, seed=args.seed)  # checked before the progress bar shows
    table = OutputTable.load(args.records)
    train = time_split(table.context.get("camera", np.zeros(len(table), int)), args.train_fraction)
    pairs = len(table.models) * (len(table.models) - 1) + len(table.models)
    with tqdm(total=pairs, desc="links", unit="link") as bar:
        graph = LinkGraph.train(table.take(train).outputs, table.specs, options,
                                progress=lambda _: bar.update())
    graph.save(args.out, overwrite=args.overwrite)
    held_out = table.take(~train).outputs
    scores = graph.link_performance(held_out)
    metrics: dict[str, object] = {"models": len(table.models), "train steps": int(train.sum()),
                                  "held-out steps": int((~train).sum())}
    metrics.update({f"{source}->{target}": round(value, 4)
                    for (source, target), value in sorted(scores.items())})
    metrics["mean link performance"] = round(float(np.mean(list(scores.values()))), 4)
    metrics["links"] = str(args.out)
    report("coinfer mlink train", metrics, args.json)
    return 0
