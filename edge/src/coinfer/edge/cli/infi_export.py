"""``coinfer infi export``: a trained filter as a TFLite artifact that devices run with LiteRT.

    coinfer infi export --filter filters/faces --out filters/faces-f32
    coinfer infi export --filter filters/faces --quantization int8 --calibration faces.npz \\
        --out filters/faces-int8

int8 quantises the network and its inputs, so it calibrates on real inputs: the first
``CALIBRATION_ROWS`` of ``--calibration`` (a records file; its outputs are not needed).
The export is checked against the Keras filter on those inputs (random ones without them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.edge.cli.exports import converter
from coinfer.sdk.cli.flags import add_output, check_output
from coinfer.sdk.cli.report import report
from coinfer.sdk.errors import CoinferError

#: coinfer.converters.QUANTIZATIONS, spelt out: importing the converters here would load them
#: for every ``coinfer infi`` action.
QUANTIZATIONS = ("float32", "float16", "int8")
CALIBRATION_ROWS = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", type=Path, required=True, metavar="DIR",
                        help="a trained filter (coinfer infi train --out)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="float32",
                        help="float32 (default), float16 or int8 (needs --calibration)")
    parser.add_argument("--calibration", type=Path, metavar="NPZ",
                        help=f"records whose first {CALIBRATION_ROWS} inputs calibrate int8 and check parity")
    add_output(parser, "the exported filter (an artifact directory)")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.infi import Records, TrainedFilter

    if args.quantization == "int8" and args.calibration is None:
        raise CoinferError("--quantization int8 calibrates on real inputs: pass --calibration RECORDS.npz "
                           "(the training records will do)")
    check_output(args)
    export_filter = converter("export_filter")
    calibration = None
    if args.calibration is not None:
        calibration = Records.load(args.calibration, require_outputs=False).inputs[:CALIBRATION_ROWS]
    trained = TrainedFilter.load(args.filter)
    result = export_filter(trained, args.out, quantization=args.quantization, calibration=calibration,
                           overwrite=args.overwrite)
    parity = result.parity
    report("coinfer infi export", {"filter": trained.kind, "quantization": args.quantization,
                                   "model_bytes": parity.model_bytes, "parity_samples": parity.samples,
                                   "max_abs_err": parity.max_abs_err, "mean_abs_err": parity.mean_abs_err,
                                   "out": str(result.artifact.path)})
    return 0
