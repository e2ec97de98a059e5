"""``coinfer gate train``: fit the contextual predictor on inference logs of recorded streams.

    coinfer data scenes --out data/train --cameras 32 --seconds 30
    coinfer gate train --scenes data/train --out models/gate-predictor --tflite models/gate-tflite

The logs come from replaying the temporal policy over the cameras' decode-all results at
a few budgets; each logged packet carries its two size views, the temporal estimate and,
per task, whether inferring it was necessary. The predictor artifact holds numpy weights
(for the edge); ``--tflite`` also writes a float32 TFLite export checked against Keras.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.edge.cli.exports import converter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=Path, required=True, help="a directory from `coinfer data scenes`")
    parser.add_argument("--out", type=Path, required=True, help="predictor artifact directory to write")
    parser.add_argument("--tflite", type=Path, help="also export a TFLite artifact here")
    parser.add_argument("--tasks", help="comma separated tasks (default: every task of the scenes)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--window", type=int, default=5, help="packets per size view")
    parser.add_argument("--no-temporal", action="store_true", help="train without the temporal view")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.gate.traces import cost_model_of, load_cameras
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.errors import CoinferError
    from coinfer.sdk.gate.evaluation import train_on_traces, training_rows
    from coinfer.sdk.gate.predictor import PredictorOptions
    from coinfer.sdk.gate.redundancy import CountChanged
    from coinfer.sdk.scenes import SceneSet

    export_predictor = converter("export_predictor") if args.tflite is not None else None
    scenes = SceneSet.load(args.scenes)
    tasks = tuple(args.tasks.split(",")) if args.tasks else tuple(scenes.tasks)
    unknown = sorted(set(tasks) - set(scenes.tasks))
    if unknown:
        raise CoinferError(f"{args.scenes} has no results for task(s) {', '.join(unknown)}; "
                           f"it has {', '.join(scenes.tasks)}")
    cameras = load_cameras(scenes.cameras, tasks)
    traces = [camera.trace for camera in cameras]
    costs = cost_model_of(cameras)
    measures = {task: CountChanged() for task in tasks}
    options = PredictorOptions(tasks=tasks, window=args.window, use_temporal=not args.no_temporal,
                               epochs=args.epochs, seed=args.seed)
    predictor = train_on_traces(traces, costs, measures, options)
    predictor.metrics["cost_model"] = costs.to_dict()
    path = predictor.save(args.out, overwrite=args.overwrite)
    summary = {"artifact": str(path), "rows": predictor.metrics.get("rows"),
               "val_binary_accuracy": predictor.metrics.get("val_binary_accuracy")}
    if export_predictor is not None:
        rows = training_rows(traces[:4], costs, measures)
        samples = [rows.i_view[:256], rows.p_view[:256], rows.temporal[:256].reshape(-1, 1)]
        result = export_predictor(predictor, args.tflite, samples, overwrite=args.overwrite)
        summary["tflite"] = str(args.tflite)
        summary["tflite_max_abs_err"] = result.parity.max_abs_err
    print_metrics("coinfer gate train", summary)
    return 0
