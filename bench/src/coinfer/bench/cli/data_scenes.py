"""``coinfer data scenes``: multi-camera videos with real detector results and generative truth.

    coinfer data scenes --out data/campus --cameras 64 --seconds 12 --tasks faces,cats

Renders cameras watching real photographs with actors walking through them over a
(compressed) day, encodes them, decodes them and runs real detectors on every frame
(:mod:`coinfer.bench.data.scenes`).
"""

from __future__ import annotations

import argparse
import os
import time

from coinfer.bench.data.actors import BACKGROUNDS
from coinfer.bench.data.scenes import (
    CODECS,
    SENSORS,
    TASK_KINDS,
    SceneOptions,
    generate_scenes,
    parse_size,
    parse_tasks,
)
from coinfer.sdk.cli.flags import add_output, add_quiet, add_seed, check_output
from coinfer.sdk.errors import CoinferError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output(parser, "the scene set (a directory)")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0, help="clip length per camera")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--size", default="320x180", metavar="WxH", help="frame size (even numbers)")
    parser.add_argument("--codec", default="h264", metavar="CODEC", help=f"one of {', '.join(CODECS)}")
    parser.add_argument("--gop", type=int, help="frames per closed GOP (default: 2 * fps)")
    parser.add_argument("--bframes", type=int, default=0, help="B-frames between references (h264, hevc)")
    parser.add_argument("--bitrate", type=int, metavar="KBPS",
                        help="target bitrate (default: quality-based rate control)")
    parser.add_argument("--tasks", default="faces,cats",
                        help=f"comma-separated detectors to run, from {','.join(TASK_KINDS)}")
    add_seed(parser, "the generator")
    parser.add_argument("--day-start", default="00:00", metavar="HH:MM",
                        help="clock time at the first frame (default 00:00)")
    parser.add_argument("--day-end", default="24:00", metavar="HH:MM",
                        help="clock time at the end of the clip (default 24:00: the whole day)")
    parser.add_argument("--crowd", type=float, default=1.0,
                        help="scale the number of passers-by (default 1: about two in view at a peak)")
    parser.add_argument("--audio", action="store_true",
                        help="add an aligned 16 kHz audio track per camera: synthesised speech while "
                        "people are in view, ambient noise throughout (fps must divide 16000)")
    parser.add_argument("--silent-from", metavar="HH:MM",
                        help="with --audio: the people in view keep quiet from this clock time on "
                        "(a drift in how speech follows presence)")
    parser.add_argument("--backgrounds", metavar="NAMES",
                        help=f"comma-separated photographs the cameras watch, from {','.join(BACKGROUNDS)} "
                        "(default: the campus ones)")
    parser.add_argument("--sensor", choices=SENSORS, default="colour",
                        help="the day sensor: colour (default) or mono, a cheap grey camera with flat "
                        "contrast; at night every camera is in infrared")
    parser.add_argument("--workers", type=int,
                        help="processes (default: CPU count); the outputs do not depend on it")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from coinfer.sdk.cli.report import print_metrics

    width, height = parse_size(args.size)
    options = SceneOptions(
        cameras=args.cameras, seconds=args.seconds, fps=args.fps, width=width, height=height,
        codec=args.codec, gop=args.gop, bframes=args.bframes, bitrate=args.bitrate,
        tasks=parse_tasks(args.tasks), seed=args.seed, day_start=args.day_start, day_end=args.day_end,
        crowd=args.crowd, audio=args.audio, silent_from=args.silent_from,
        backgrounds=None if args.backgrounds is None else parse_tasks(args.backgrounds),
        sensor=args.sensor,
    )
    if args.workers is not None and args.workers < 1:
        raise CoinferError(f"--workers must be >= 1, got {args.workers}")
    check_output(args)
    start = time.perf_counter()
    scene_set = generate_scenes(args.out, options, workers=args.workers, progress=not args.quiet,
                                overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    cameras = scene_set.cameras
    metrics: dict[str, object] = {
        "directory": str(args.out),
        "cameras x frames": f"{len(cameras)} x {options.frames}",
        "seconds": round(seconds, 2),
        "video MB": round(sum(os.path.getsize(c.video_path) for c in cameras) / 1e6, 2),
        "night frames": round(float(np.mean([c.night.mean() for c in cameras])), 3),
        "actors": sum(int(c.entry["actors"]) for c in cameras),
    }
    for task in options.tasks:
        metrics[f"{task}: frames with detections"] = round(
            float(np.mean([np.mean(c.counts(task) > 0) for c in cameras])), 3)
    if options.audio:
        people = np.mean([c.people_present.mean() for c in cameras])
        speech = np.mean([c.speech.mean() for c in cameras])
        metrics["audio: frames with people"] = round(float(people), 3)
        metrics["audio: frames with speech"] = round(float(speech), 3)
    print_metrics("coinfer data scenes", metrics)
    return 0
