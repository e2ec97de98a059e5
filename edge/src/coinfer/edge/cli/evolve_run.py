"""``coinfer evolve run``: one NestEvo round, offline, on frames of every device you give.

    coinfer evolve run --config evolve.json --frames cam1=cam1.mp4 --frames cam2=cam2.npz
                       [--mode auto|device-only|co-evolution] [--gamma 30] [--epsilon 2]
                       [--rounds 3] [--validation 0.25] [--max-frames 512] [--json round.json]

Why a command next to ``coinfer evolve serve``: the service evolves one device at a time,
device-only, when the device asks; this runs the round NestEvo runs for the fleet. It reads the
service's configuration and root, labels each device's frames with the annotators, measures its
drift from the configuration's ``source`` statistics and lets the drift policy choose (``auto``:
co-evolution of every given device with the global model when at least ``--epsilon`` devices
drifted above ``--gamma``, else device-only evolution of the drifted ones), or runs the
``--mode`` asked for. The new device models are converted to TFLite and published in the
store the service serves from; co-evolution also writes the new global model, which the
service starts from when it next starts (see :mod:`coinfer.edge.evolve.offline`). The root is
locked: the command is refused while a service runs on it.

``--frames DEVICE=PATH``: an ``.npz`` holding ``frames``, uint8 ``(N, S, S, 3)`` at the models'
input size (never unpickled), or a video, decoded with PyAV and scaled to ``S`` x ``S``; at
most ``--max-frames`` of each, from the start. Everything is checked before the work (known
and distinct devices, readable files of the right shape); progress lines go to stdout, the
report to ``--json``. Converting needs ``coinfer-converters`` and TensorFlow on the edge.

>>> device_frames("cam1=recordings/cam1.mp4")
('cam1', PosixPath('recordings/cam1.mp4'))
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coinfer.sdk.cli.flags import add_json, count, fraction

if TYPE_CHECKING:
    import numpy as np

#: The round's modes (:data:`coinfer.edge.evolve.offline.MODES`; kept here so --help imports nothing).
MODES = ("auto", "device-only", "co-evolution")


def device_frames(text: str) -> tuple[str, Path]:
    """An argparse ``type`` for ``DEVICE=PATH``."""
    device, _, path = text.partition("=")
    if not device or not path:
        raise argparse.ArgumentTypeError(f"expected DEVICE=PATH (e.g. cam1=cam1.mp4), got {text!r}")
    return device, Path(path)


def _gamma(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _epsilon(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                        help="the evolution service's JSON configuration (its root, models and devices)")
    parser.add_argument("--frames", type=device_frames, action="append", required=True, metavar="DEVICE=PATH",
                        help="a device's frames: an .npz with 'frames' uint8 (N, S, S, 3), or a video; "
                             "repeat for every device of the round")
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="auto: the drift policy chooses (needs the configuration's 'source'); "
                             "device-only or co-evolution: forced for every given device (default auto)")
    parser.add_argument("--gamma", type=_gamma, default=30.0, metavar="DRIFT",
                        help="a device drifted when its drift is above this (default 30)")
    parser.add_argument("--epsilon", type=_epsilon, default=2, metavar="N",
                        help="co-evolve when at least this many devices drifted (default 2)")
    parser.add_argument("--rounds", type=count(1000), default=3, metavar="N",
                        help="federated rounds of co-evolution (default 3)")
    parser.add_argument("--validation", type=fraction, default=0.25, metavar="SHARE",
                        help="share of each device's frames co-evolution holds out to choose between the "
                             "co-evolved, the distilled and the old model (default 0.25; 0: no check)")
    parser.add_argument("--max-frames", type=count(100_000), default=512, metavar="N",
                        help="frames of each device used at most, from the start (default 512)")
    add_json(parser, "the round's report")


def read_frames(path: Path, side: int, most: int) -> np.ndarray:
    """At most ``most`` frames of ``path`` (an ``.npz`` of ``frames``, else a video) as uint8
    (n, side, side, 3), with the device command's readers; one line for what cannot be read."""
    import numpy as np

    from coinfer.device.cli.evolve_device import frames_from_npz, frames_from_video
    from coinfer.sdk.errors import InvalidArgumentError

    reader = frames_from_npz if path.suffix.lower() == ".npz" else frames_from_video
    frames = reader(path, side)
    chosen = list(itertools.islice(frames, most))
    close = getattr(frames, "close", None)
    if close is not None:
        close()
    if not chosen:
        raise InvalidArgumentError(f"{path}: holds no frame")
    return np.stack(chosen)


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.evolve.offline import check_plan, evolve_offline
    from coinfer.edge.evolve.service import EvolutionConfig
    from coinfer.sdk.errors import CoinferError, InputNotFoundError
    from coinfer.sdk.fsutil import atomic_write_json

    config = EvolutionConfig.load(args.config)
    check_plan(config, [device for device, _ in args.frames], args.mode)
    for _, path in args.frames:
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such frames file")
    frames = {}
    for device, path in args.frames:
        frames[device] = read_frames(path, config.input_size, args.max_frames)
        _say(f"{device}: {len(frames[device])} frames from {path}")
    try:
        from coinfer.converters.evolve_models import export_device_model
    except ImportError as error:
        raise CoinferError("evolving device models needs coinfer-converters: "
                           "pip install 'coinfer-edge[export]'") from error
    report = evolve_offline(config, frames, export_device_model, mode=args.mode, gamma=args.gamma,
                            epsilon=args.epsilon, rounds=args.rounds,
                            validation=args.validation, say=_say)
    if args.json is not None:
        atomic_write_json(args.json, report)
    _summarize(report)
    return 0


def _say(line: str) -> None:
    """A progress line, on stdout at once."""
    print(line, flush=True)


def _summarize(report: dict[str, Any]) -> None:
    """The round in a few lines: the mode and why, each device, the global model."""
    _say(f"evolve run: {report['mode']} ({report['reason']}) in {report['seconds']:.1f} s")
    for device, entry in report["devices"].items():
        drift = "not measured" if entry["drift"] is None else f"{entry['drift']:.3f}" + (
            " (drifted)" if entry["drifted"] else "")
        outcome = ("left as it is" if entry["version"] is None
                   else f"published version {entry['version']} ({entry['seconds']:.1f} s)")
        _say(f"  {device}: {entry['frames']} frames, drift {drift}, {outcome}")
    if report["global_version"] is not None:
        _say(f"  global model: version {report['global_version']} (from {report['global_from_version']})")
