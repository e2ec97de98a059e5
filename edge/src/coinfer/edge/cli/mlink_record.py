"""``coinfer mlink record``: run the model zoo on every step of your videos or a scene set.

On your own videos (any folder of .mp4, .mkv, .avi, .webm, .h264 or .hevc files), then
the links and a plan on what they recorded::

    coinfer mlink record --videos cameras/ --crowd crowd/ --out outputs.npz
    coinfer mlink train --records outputs.npz --out links/
    coinfer mlink plan --links links/ --records outputs.npz --budget-fraction 0.5

On a generated scene set with audio::

    coinfer data scenes --audio --tasks "" --out scenes/
    coinfer mlink record --scenes scenes/ --crowd crowd/ --out outputs.npz

Each step is a decoded frame and the audio heard during it (a video's audio track is
decoded and resampled to 16 kHz mono; a video without one gets silence, and a notice
says so); the seven zoo models (see :mod:`coinfer.edge.mlink.zoo`) run on it and their
outputs are kept aligned in one output table, with each model's median milliseconds per
step and peak memory. A table of your videos carries each step's camera (the video's
number, in name order) and frame index, and none of the generator's truth. ``--crowd`` is
the crowd CNN artifact; ``coinfer mlink bench`` trains one (in its work directory, ``crowd/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coinfer.sdk.cli.flags import add_output, add_quiet, check_output
from coinfer.sdk.cli.report import report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Examples: `coinfer mlink record --videos cameras/ --crowd crowd/ --out outputs.npz`, "
                     "then `coinfer mlink train --records outputs.npz --out links/`; on a generated set: "
                     "`coinfer mlink record --scenes scenes/ --crowd crowd/ --out outputs.npz`.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", type=Path, metavar="DIR",
                        help="a folder of your video files: every decoded frame, with its audio, is a step")
    source.add_argument("--scenes", type=Path, metavar="DIR", help="a scene set generated with --audio")
    parser.add_argument("--crowd", type=Path, required=True, metavar="DIR", help="crowd CNN artifact")
    add_output(parser, "the output table", metavar="NPZ")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.mlink.recording import VideoFolder, nonempty_fraction, record_outputs
    from coinfer.edge.mlink.zoo import create_zoo
    from coinfer.sdk.scenes import SceneSet

    check_output(args, file=True)
    source = args.scenes
    if args.scenes is not None:
        source = SceneSet.load(args.scenes)  # a bad scene set is refused before the zoo's models load
    if args.videos is not None:
        source = VideoFolder(args.videos)
        for path in source.silent:
            print(f"coinfer mlink record: notice: {path.name} has no audio track; its steps get silence",
                  file=sys.stderr)
    table = record_outputs(source, create_zoo(args.crowd), progress=not args.quiet,
                           memory_cache=args.out.with_name(args.out.stem + ".memory.json"))
    table.save(args.out)
    found = nonempty_fraction(table)
    metrics: dict[str, object] = {"steps": len(table)}
    if args.videos is not None:
        metrics["videos"] = len(source.videos)
    for name in table.models:
        metrics[name] = (f"{table.costs[name]['ms']:.2f} ms, {table.costs[name]['mib']:.0f} MiB, "
                         f"finds something on {found[name]:.0%}")
    metrics["table"] = str(args.out)
    report("coinfer mlink record", metrics)
    return 0
