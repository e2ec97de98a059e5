"""``coinfer data drift``: the drifting multi-camera workload evolve trains and scores on.

    coinfer data drift --out data/drift --quick

Builds named domains of labelled frames (daytime campus at three frame rates, rural, night
in infrared, real footage) beside the source domain device models are fine-tuned on
(:mod:`coinfer.bench.data.drift`), and prints per domain the frames, the share labelled
positive per task and the annotators' agreement with the generator's truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from coinfer.sdk.cli.flags import add_output, add_quiet, add_seed, check_output
from coinfer.sdk.errors import InvalidArgumentError

#: A generated domain whose people or faces are labelled on fewer (or more) frames than this
#: share is worth a warning: a model trained on it learns little about the task.
USABLE_SHARE = (0.05, 0.95)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output(parser, "the drift set (a directory)")
    parser.add_argument("--size", type=int, default=128, help="side of the square frames (default 128)")
    add_seed(parser, "the generator")
    parser.add_argument("--quick", action="store_true",
                        help="a small set (about 400 frames of 64x64; under a minute on 2 cores)")
    parser.add_argument("--workers", type=int,
                        help="processes (default: CPU count); the outputs do not depend on it")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    from coinfer.bench.data.drift import PRESETS, generate_drift
    from coinfer.sdk.cli.report import print_metrics

    options = dataclasses.replace(PRESETS["quick" if args.quick else "full"], size=args.size, seed=args.seed)
    if args.workers is not None and args.workers < 1:
        raise InvalidArgumentError(f"--workers must be >= 1, got {args.workers}")
    check_output(args)
    start = time.perf_counter()
    drift = generate_drift(args.out, options, workers=args.workers, progress=not args.quiet,
                           overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    metrics: dict[str, object] = {"directory": str(args.out), "seconds": round(seconds, 2)}
    for entry in drift.index["domains"]:
        positives = " ".join(f"{task} {entry['positives'][task]:.2f}" for task in drift.tasks)
        name = entry["id"]
        metrics[f"{name}: frames (train/test)"] = f"{entry['frames']} ({entry['train']}/{entry['test']})"
        metrics[f"{name}: positives"] = positives
        if entry["agreement"] is not None:
            metrics[f"{entry['id']}: label accuracy"] = " ".join(
                f"{task} {entry['agreement'][task]['accuracy']:.2f}" for task in drift.tasks)
    print_metrics("coinfer data drift", metrics)
    low, high = USABLE_SHARE
    for entry in drift.index["domains"]:
        for task in ("people", "faces"):
            share = entry["positives"][task]
            if entry["kind"] == "generated" and not low <= share <= high:
                print(f"coinfer data drift: note: domain {entry['id']} has {task} on {share:.1%} of its "
                      "frames; the full preset (without --quick) gives a steadier share", file=sys.stderr)
    return 0
