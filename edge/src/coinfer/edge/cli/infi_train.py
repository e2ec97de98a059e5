"""``coinfer infi train``: train a skip or reuse filter on a records file and save it.

    coinfer infi train --records faces.npz --measurement empty --epochs 10 --out filters/faces
    coinfer infi train --records topics.npz --modality text --measurement class-subset \\
        --option keep=sports,finance --out filters/topics
    coinfer infi train --records people.npz --measurement count --out filters/people-reuse

The records (:mod:`coinfer.sdk.infi.records`) hold the filter's ``inputs`` and the model's
``outputs``; the filter kind defaults to the measurement's (``count`` and ``label`` train a
reuse filter). The result is a trained-filter artifact for ``coinfer infi export``.
"""

from __future__ import annotations

import argparse

from coinfer.edge.cli.infi_arguments import add_measurement_arguments, measurement_from_args
from coinfer.sdk.cli.flags import add_output, add_records, add_seed, check_output, positive
from coinfer.sdk.cli.report import report
from coinfer.sdk.errors import CoinferError

#: The task name a skip filter trained here answers for.
TASK = "redundant"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coinfer.sdk.infi.modalities import MODALITIES
    from coinfer.sdk.infi.training import KINDS

    add_records(parser, "the filter's 'inputs' and the model's 'outputs', one row per record")
    parser.add_argument("--kind", choices=KINDS,
                        help="skip or reuse filter (default: the measurement's kind)")
    parser.add_argument("--modality", choices=MODALITIES,
                        help="the inputs' modality (default: inferred from their shape where unambiguous)")
    parser.add_argument("--vocabulary", type=int,
                        help="text: how many token ids (default: the largest id + 1)")
    add_measurement_arguments(parser)
    parser.add_argument("--epochs", type=positive(int), default=20, help="training epochs (default 20)")
    add_seed(parser, "the split, pairs and weights")
    parser.add_argument("--target-accuracy", type=float, default=0.9,
                        help="skip: the accuracy the threshold keeps on held-out records (default 0.9)")
    add_output(parser, "the trained filter (an artifact directory)")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.infi import (
        MEASUREMENTS,
        FilterOptions,
        InputError,
        Records,
        redundancy_labels,
        train_reuse_filter,
        train_skip_filter,
    )

    measurement = measurement_from_args(args)
    kind = args.kind or measurement.kind
    if kind != measurement.kind:
        fitting = [name for name, factory in MEASUREMENTS.items() if getattr(factory, "kind", None) == kind]
        raise CoinferError(f"a {kind} filter needs a {kind} measurement ({', '.join(fitting)}); "
                           f"{measurement.name!r} is a {measurement.kind} measurement")
    check_output(args)
    options = FilterOptions(epochs=args.epochs, seed=args.seed, target_accuracy=args.target_accuracy,
                            progress=True)
    records = Records.load(args.records)
    try:
        spec = records.spec(args.modality, args.vocabulary)
    except InputError as error:
        raise InputError(f"{args.records}: {error} (see --modality and --vocabulary)") from error
    outputs = records.outputs_for(measurement)
    specs = {spec.kind: spec}
    if kind == "skip":
        labels = redundancy_labels({TASK: outputs}, {TASK: measurement})
        trained = train_skip_filter(records.inputs, labels, specs, (TASK,), {TASK: measurement}, options)
        metrics = {
            "redundant_fraction": trained.metrics["redundant_fraction"][0],
            "target_accuracy": args.target_accuracy,
            "validation_filter_rate": trained.metrics["validation_rate_at_target"][0],
            "threshold": float(trained.thresholds[0]),
        }
    else:
        trained = train_reuse_filter(records.inputs, outputs, specs, measurement, options)
        metrics = {"pairs": trained.metrics["pairs"],
                   "different_fraction": trained.metrics["different_fraction"],
                   "homogeneity": trained.homogeneity}
    path = trained.save(args.out, overwrite=args.overwrite)
    report("coinfer infi train", {"filter": kind, "measurement": measurement.name,
                                  "inputs": f"{spec.kind} {spec.shape}", "records": len(records), **metrics,
                                  "loss": trained.metrics["loss"], "out": str(path)})
    return 0
