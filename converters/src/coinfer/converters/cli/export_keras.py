"""``coinfer export keras``: a Keras (.keras) model to TFLite, checked against Keras.

    coinfer export keras model.keras --out out/m-int8 --quantization int8 --calibration x.npy

The model is loaded in Keras safe mode; ``--calibration`` holds representative inputs for
int8 (``.npy``, or ``.npz`` with one array per input). ``--quantize`` is the old spelling of
``--quantization``, accepted for one release.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from coinfer.converters.cli.common import add_common, export_options, load_arrays, run_export
from coinfer.converters.export import ExportResult
from coinfer.sdk.cli.flags import add_renamed
from coinfer.sdk.errors import CoinferError, InputNotFoundError, one_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a .keras file (loaded in Keras safe mode)")
    parser.add_argument("--quantization", choices=("float32", "float16", "int8"), default="float32")
    add_renamed(parser, "--quantization", "--quantize")
    parser.add_argument("--calibration", type=Path, metavar="NPY",
                        help="representative inputs for int8 (.npy or .npz, batch first)")
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    return run_export(args, "Keras", export_keras)


def export_keras(args: argparse.Namespace) -> ExportResult:
    """Check the inputs, then load TensorFlow (seconds) and export; bad input fails before TensorFlow."""
    representative_data = load_arrays(args.calibration) if args.calibration else None
    samples = load_arrays(args.samples) if args.samples else None
    if not args.model.is_file():
        raise InputNotFoundError(f"{args.model}: no such Keras model file")
    if args.model.suffix == ".keras" and not zipfile.is_zipfile(args.model):
        raise CoinferError(f"{args.model}: not a Keras model file (a .keras file is a zip archive)")

    from coinfer.converters.keras_tflite import keras_to_tflite
    from coinfer.sdk.frameworks import import_tensorflow

    import_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(args.model, safe_mode=True)
    except Exception as error:  # Keras raises many types for unreadable files
        raise CoinferError(f"{args.model}: cannot load the Keras model: {one_line(error)}") from error
    return keras_to_tflite(
        model, args.out, quantization=args.quantization, representative_data=representative_data,
        samples=samples, options=export_options(args, {"source_file": args.model.name}),
    )
