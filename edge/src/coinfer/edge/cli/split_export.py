"""``coinfer split export``: cut an ONNX model and write its device and edge halves.

    coinfer split export --model efficientnet-lite0.onnx --cut 43 --encoding int8 --out out/split
    coinfer split export --model detector.onnx --cut p2o.Add.43 --input-shape x=1,3,224,384 --out out/ocr
    coinfer split export --model efficientnet-lite0.onnx --cut 43 --head-format tflite-int8 \
        --calibration images.npy --out out/split-int8
    coinfer split export --model bottleneck.onnx --cut latent --encoding entropy --tables tables.npz \
        --out out/split-entropy

``--cut`` is a prefix cut's index (0 runs everything on the edge, the number of nodes
everything on the device), or a tensor name: the smallest cut whose head makes it.
``OUT/device`` goes to the device (``coinfer split run``), ``OUT/edge`` to the edge
(``coinfer split serve``). ``--head-format tflite-float32`` or ``tflite-int8`` writes the
device's head as ``head.tflite`` for LiteRT (needs ``coinfer-converters`` and TensorFlow);
int8 calibrates on ``--calibration``, a ``.npy`` of real graph inputs (preprocessed, batch
first; a few dozen), which also checks the head against the ONNX one. ``--encoding entropy``
sends a trained bottleneck's rounded latent range-coded with its tables (``--tables``, the
``EntropyTables.save`` file, required there and refused with the other encodings); cut the
bottleneck's graph after the latent (``--cut latent``), so that it alone crosses.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_input_shapes, add_output, check_output, input_shapes

#: coinfer.converters.split_heads.HEAD_FORMATS, spelt out: importing the converters here
#: would load them for every ``coinfer split`` action.
HEAD_FORMATS = ("onnx", "tflite-float32", "tflite-int8")
#: coinfer.sdk.split.tensors.ENCODINGS, spelt out for the same reason (a test checks they agree).
ENCODINGS = ("float32", "float16", "int8", "entropy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="FILE", help="the ONNX model to cut")
    parser.add_argument("--cut", required=True,
                        help="a prefix cut's index, or a tensor name (the smallest cut that makes it)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="float32",
                        help="how the tensors crossing the cut are sent (default float32); entropy: a "
                             "bottleneck's latent, range-coded with --tables")
    parser.add_argument("--tables", type=Path, metavar="FILE.npz",
                        help="the bottleneck's entropy tables (EntropyTables.save), for --encoding entropy")
    add_input_shapes(parser)
    parser.add_argument("--head-format", choices=HEAD_FORMATS, default="onnx",
                        help="the device's head as ONNX (default), or TFLite for LiteRT in float32 or int8 "
                             "(int8 needs --calibration)")
    parser.add_argument("--calibration", type=Path, metavar="FILE.npy",
                        help="real graph inputs (batch first) that calibrate a tflite-int8 head")
    add_output(parser, "the device and edge bundles")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.errors import InvalidArgumentError
    from coinfer.sdk.split.bundle import export_split
    from coinfer.sdk.split.graph import SplitGraph

    if args.head_format == "tflite-int8" and args.calibration is None:
        raise InvalidArgumentError("--head-format tflite-int8 calibrates on real inputs: pass --calibration "
                                   "FILE.npy (preprocessed graph inputs, batch first)")
    if args.calibration is not None and args.head_format != "tflite-int8":
        raise InvalidArgumentError(f"--calibration is for --head-format tflite-int8 only, not "
                                   f"{args.head_format}")
    if args.encoding == "entropy" and args.tables is None:
        raise InvalidArgumentError("--encoding entropy codes with the bottleneck's tables: pass --tables "
                                   "FILE.npz (EntropyTables.save)")
    if args.tables is not None and args.encoding != "entropy":
        raise InvalidArgumentError(f"--tables is for --encoding entropy only, not {args.encoding}")
    check_output(args)
    tables = _tables(args.tables) if args.tables is not None else None
    export_tflite = _tflite_exporter() if args.head_format != "onnx" else None
    calibration = _calibration(args.calibration) if args.calibration is not None else None
    graph = SplitGraph.load(args.model, input_shapes(args.input_shape))
    if args.cut.isdigit():
        cuts = graph.cuts()
        if int(args.cut) >= len(cuts):
            raise InvalidArgumentError(f"--cut {args.cut}: {args.model} has prefix cuts 0 to {len(cuts) - 1}")
        cut = cuts[int(args.cut)]
    else:
        cut = graph.cut_after(args.cut)
    head = None
    if export_tflite is None:
        device, edge = export_split(graph, cut, args.out, args.encoding, tables=tables,
                                    overwrite=args.overwrite)
    else:
        quantization = args.head_format.removeprefix("tflite-")
        device, edge, head = export_tflite(graph, cut, args.out, args.encoding, quantization, calibration,
                                           tables=tables, overwrite=args.overwrite)
    size = (f"at most {device.spec.codec.sample_bytes} bytes per sample entropy-coded; measure the real sizes"
            if tables is not None else f"{cut.nbytes(args.encoding)} bytes per sample as {args.encoding}")
    print(f"cut: {len(cut.head)} of {len(graph.nodes)} nodes on the device; {', '.join(cut.tensors)} cross "
          f"({size})")
    if head is not None:
        print(f"head: {args.head_format}, {head.model_bytes} bytes, at most {head.max_abs_err:.3g} off the "
              f"ONNX head on {head.samples} inputs (outputs up to {head.output_scale:.3g})")
    print(f"device bundle: {device.artifact.path}   (coinfer split run --bundle ...)")
    print(f"edge bundle:   {edge.artifact.path}   (coinfer split serve --bundle ...)")
    return 0


def _tflite_exporter() -> Callable[..., Any]:
    """``export_split_tflite`` of the optional coinfer-converters; one line when it is missing."""
    from coinfer.sdk.errors import CoinferError

    try:
        from coinfer.converters.split_heads import export_split_tflite
    except ImportError as error:
        raise CoinferError("--head-format tflite-* needs coinfer-converters: pip install "
                           "'coinfer-edge[export]'") from error
    return export_split_tflite


def _tables(path: Path) -> Any:
    """The entropy tables of ``--tables``; one line when the file is missing or not tables."""
    from coinfer.sdk.errors import InputNotFoundError
    from coinfer.sdk.split.entropy import EntropyTables

    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such entropy tables file")
    return EntropyTables.load(path)


def _calibration(path: Path) -> Any:
    import numpy as np

    from coinfer.sdk.errors import InputNotFoundError, InvalidArgumentError

    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such calibration file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(f"{path}: not a readable .npy array: {error}") from error
    if not isinstance(data, np.ndarray):
        data.close()
        raise InvalidArgumentError(f"{path}: not a .npy array (an .npz archive?): pass one array of graph "
                                   "inputs")
    return data
