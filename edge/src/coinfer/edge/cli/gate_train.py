"""``coinfer gate train``: fit the contextual predictor on inference logs of recorded streams.

On your own videos (any folder of .mp4, .mkv, .avi, .webm, .h264 or .hevc files)::

    coinfer gate train --videos cameras/ --detector faces --out models/gate-predictor
    coinfer gate train --logs models/gate-predictor-logs --out models/gate-predictor-2 --epochs 60

The first command decodes every video once, runs the real detectors (``--detector faces``,
or several: ``faces,cats``) on every decoded frame and records the logs
(:mod:`coinfer.edge.recorder`) in ``--logs`` (default: ``OUT-logs`` next to ``--out``);
the second trains again on them without decoding, after checking that the videos are
unchanged. ``--videos`` with an existing ``--logs`` folder of the same videos reuses it too.
On a generated scene set::

    coinfer data scenes --out data/train --cameras 32 --seconds 30
    coinfer gate train --scenes data/train --out models/gate-predictor --tflite models/gate-tflite

The training rows come from replaying the temporal policy over the cameras' decode-all
results at a few budgets; each logged packet carries its two size views, the temporal
estimate and, per task, whether inferring it was necessary (the count changed). The
predictor artifact holds numpy weights (for the edge); ``--tflite`` also writes a float32
TFLite export checked against Keras.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from coinfer.edge.cli.exports import converter
from coinfer.sdk.cli.flags import add_output, add_quiet, add_seed, check_output, positive
from coinfer.sdk.errors import CoinferError

if TYPE_CHECKING:
    from coinfer.sdk.scenes import SceneSet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Examples: `coinfer gate train --videos cameras/ --detector faces --out models/gate` "
                     "(records the logs in models/gate-logs); again without decoding: `coinfer gate train "
                     "--logs models/gate-logs --out models/gate-2`; on a generated set: `coinfer gate train "
                     "--scenes data/train --out models/gate --tflite models/gate-tflite`.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--videos", type=Path, metavar="DIR",
                        help="train on your videos: decode every video file of DIR, run --detector on "
                             "every frame and record the logs in --logs")
    source.add_argument("--scenes", type=Path, metavar="DIR",
                        help="train on a scene set from `coinfer data scenes`")
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="alone: train on logs recorded by an earlier --videos run, without decoding; "
                             "with --videos: where to record them (default: OUT-logs next to --out), "
                             "reused if they already hold these videos")
    parser.add_argument("--detector", metavar="NAMES",
                        help="with --videos: the detectors to run, comma separated (faces, cats, people, "
                             "text)")
    add_output(parser, "the predictor artifact")
    parser.add_argument("--tflite", type=Path, metavar="DIR", help="also export a TFLite artifact here")
    parser.add_argument("--tasks", help="with --scenes or --logs: comma separated tasks (default: every task "
                                        "recorded)")
    parser.add_argument("--epochs", type=positive(int), default=30, help="training epochs (default 30)")
    parser.add_argument("--window", type=positive(int), default=5, help="packets per size view (default 5)")
    parser.add_argument("--no-temporal", action="store_true", help="train without the temporal view")
    add_seed(parser, "the predictor's weights")
    add_quiet(parser)


def _names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _reusing(logs: Path) -> None:
    print(f"coinfer gate train: reusing the detections recorded in {logs} (the videos are unchanged): "
          "nothing to decode", file=sys.stderr)


def training_set(args: argparse.Namespace) -> tuple[SceneSet, tuple[str, ...]]:
    """The recorded streams to train on and their tasks, from exactly one of ``--videos``
    (recorded now or reused), ``--scenes`` or ``--logs``; bad combinations fail before any work."""
    from coinfer.edge.recorder import check_tasks, record_videos, reuse_logs
    from coinfer.sdk.scenes import SceneSet

    if args.videos is None and args.scenes is None and args.logs is None:
        raise CoinferError("give the videos to train on: --videos DIR --detector faces (or --scenes DIR, "
                           "or --logs DIR recorded before)")
    if args.scenes is not None and args.logs is not None:
        raise CoinferError("--scenes and --logs both name what to train on; give one")
    if args.videos is None:
        if args.detector is not None:
            raise CoinferError("--detector goes with --videos; choose among recorded tasks with --tasks")
        scenes = SceneSet.load(args.scenes if args.scenes is not None else args.logs)
        tasks = _names(args.tasks) if args.tasks else scenes.tasks
        unknown = sorted(set(tasks) - set(scenes.tasks))
        if unknown:
            raise CoinferError(f"{scenes.root} has no results for task(s) {', '.join(unknown)}; "
                               f"it has {', '.join(scenes.tasks)}")
        if scenes.recorded:
            _reusing(scenes.root)
        return scenes, tasks
    if args.detector is None:
        raise CoinferError("--videos needs --detector: the detectors to run on every frame "
                           "(e.g. --detector faces)")
    if args.tasks is not None:
        raise CoinferError("with --videos, --detector names the tasks; --tasks chooses among recorded ones")
    tasks = check_tasks(_names(args.detector))
    logs = args.logs if args.logs is not None else args.out.with_name(f"{args.out.name}-logs")
    if logs.exists():
        scenes = reuse_logs(logs, args.videos, tasks)
        _reusing(logs)
        return scenes, tasks
    return record_videos(args.videos, tasks, logs, progress=not args.quiet), tasks


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.gate.traces import cost_model_of, load_cameras
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.gate.evaluation import train_on_traces, training_rows
    from coinfer.sdk.gate.predictor import PredictorOptions
    from coinfer.sdk.gate.redundancy import CountChanged

    export_predictor = converter("export_predictor") if args.tflite is not None else None
    check_output(args)
    check_output(args, flag="--tflite")
    scenes, tasks = training_set(args)
    cameras = load_cameras(scenes.cameras, tasks, progress=not args.quiet)
    traces = [camera.trace for camera in cameras]
    costs = cost_model_of(cameras)
    measures = {task: CountChanged() for task in tasks}
    options = PredictorOptions(tasks=tasks, window=args.window, use_temporal=not args.no_temporal,
                               epochs=args.epochs, seed=args.seed)
    predictor = train_on_traces(traces, costs, measures, options)
    predictor.metrics["cost_model"] = costs.to_dict()
    path = predictor.save(args.out, overwrite=args.overwrite)
    summary = {"artifact": str(path), "logs" if scenes.recorded else "scenes": str(scenes.root),
               "cameras": len(cameras), "frames": sum(camera.frame_count for camera in scenes.cameras),
               "rows": predictor.metrics.get("rows"),
               "val_binary_accuracy": predictor.metrics.get("val_binary_accuracy")}
    if export_predictor is not None:
        rows = training_rows(traces[:4], costs, measures)
        samples = [rows.i_view[:256], rows.p_view[:256], rows.temporal[:256].reshape(-1, 1)]
        result = export_predictor(predictor, args.tflite, samples, overwrite=args.overwrite)
        summary["tflite"] = str(args.tflite)
        summary["tflite_max_abs_err"] = result.parity.max_abs_err
    print_metrics("coinfer gate train", summary)
    return 0
