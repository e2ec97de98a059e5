"""``coinfer export``: convert a model file, check parity, write an artifact; verify artifacts.

Examples::

    coinfer export keras model.keras --out out/m-int8 --quantize int8 --calibration x.npy
    coinfer export torch --model mypkg.nets:build --weights w.safetensors \\
        --input-shape 1,3,32,32 --to onnx --out out/net
    coinfer export verify out/m-int8 out/net
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.export import ExportOptions, ExportResult, ParityLimits
from coinfer.sdk.errors import CoinferError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    keras_parser = sub.add_parser("keras", help="Keras (.keras) -> TFLite")
    keras_parser.add_argument("model", type=Path, help="a .keras file (loaded in Keras safe mode)")
    keras_parser.add_argument("--quantize", choices=("float32", "float16", "int8"), default="float32")
    keras_parser.add_argument("--calibration", type=Path, metavar="NPY",
                              help="representative inputs for int8 (.npy or .npz, batch first)")
    _add_common(keras_parser)

    torch_parser = sub.add_parser("torch", help="PyTorch nn.Module -> ONNX or TFLite")
    torch_parser.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                              help="callable returning the nn.Module: 'pkg.module:build' or 'file.py:build'")
    torch_parser.add_argument("--weights", type=Path, help="state dict as .safetensors (never pickle)")
    torch_parser.add_argument("--input-shape", action="append", required=True, metavar="D0,D1,...",
                              help="example input shape, batch first; repeat for several inputs")
    torch_parser.add_argument("--input-dtype", default="float32")
    torch_parser.add_argument("--input-names", help="comma-separated input names")
    torch_parser.add_argument("--output-names", help="comma-separated output names")
    torch_parser.add_argument("--to", choices=("onnx", "tflite"), default="onnx")
    torch_parser.add_argument("--opset", type=int, default=17)
    torch_parser.add_argument("--static-batch", action="store_true",
                              help="ONNX: keep the batch size of --input-shape fixed")
    _add_common(torch_parser)

    verify_parser = sub.add_parser("verify", help="verify artifacts' manifests and file hashes")
    verify_parser.add_argument("artifacts", type=Path, nargs="+")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    parser.add_argument("--samples", type=Path, metavar="NPY",
                        help="inputs for the parity check (.npy or .npz); default: calibration or random")
    parser.add_argument("--capability", default="generic", help="manifest capability field")
    parser.add_argument("--kind", help="manifest kind field")
    parser.add_argument("--max-abs-err", type=float, help="fail (and write nothing) above this error")
    parser.add_argument("--min-top1", type=float, help="fail (and write nothing) below this agreement")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artifact")


def run(args: argparse.Namespace) -> int:
    if args.source == "verify":
        return _verify(args.artifacts)
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"exporting {args.source} model and checking parity..."):
        result = _export_keras(args) if args.source == "keras" else _export_torch(args)
    _print_result(result)
    return 0


def _export_keras(args: argparse.Namespace) -> ExportResult:
    from coinfer.converters.frameworks import import_tensorflow
    from coinfer.converters.keras_tflite import keras_to_tflite

    import_tensorflow()
    import keras

    if not args.model.is_file():
        raise CoinferError(f"{args.model}: no such Keras model file")
    try:
        model = keras.saving.load_model(args.model, safe_mode=True)
    except Exception as error:  # Keras raises many types for unreadable files
        raise CoinferError(f"{args.model}: cannot load the Keras model: {error}") from error
    return keras_to_tflite(
        model, args.out, quantization=args.quantize,
        representative_data=_load_arrays(args.calibration) if args.calibration else None,
        samples=_load_arrays(args.samples) if args.samples else None,
        options=_options(args, {"source_file": args.model.name}),
    )


def _export_torch(args: argparse.Namespace) -> ExportResult:
    model = _load_factory(args.model)()
    if args.weights:
        from safetensors.torch import load_file

        try:
            model.load_state_dict(load_file(str(args.weights)), strict=True)
        except Exception as error:  # missing/unexpected keys, shape mismatches, bad file
            raise CoinferError(f"{args.weights}: cannot load weights into the model: {error}") from error
    rng = np.random.default_rng(0)
    examples = [
        rng.standard_normal(_parse_shape(text)).astype(args.input_dtype) for text in args.input_shape
    ]
    samples = _load_arrays(args.samples) if args.samples else None
    options = _options(args, {"factory": args.model})
    if args.to == "tflite":
        from coinfer.converters.torch_tflite import torch_to_tflite

        return torch_to_tflite(
            model, examples, args.out, samples=samples, options=options,
        )
    from coinfer.converters.torch_onnx import torch_to_onnx

    return torch_to_onnx(
        model, examples, args.out, samples=samples, options=options,
        input_names=args.input_names.split(",") if args.input_names else None,
        output_names=args.output_names.split(",") if args.output_names else None,
        dynamic_batch=not args.static_batch, opset=args.opset,
    )


def _options(args: argparse.Namespace, metadata: dict[str, Any]) -> ExportOptions:
    limits = ParityLimits(max_abs_err=args.max_abs_err, min_top1=args.min_top1)
    return ExportOptions(capability=args.capability, kind=args.kind, metadata=metadata, limits=limits,
                         overwrite=args.overwrite)


def _load_factory(reference: str) -> Callable[[], Any]:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise CoinferError(
            f"--model must look like 'pkg.module:factory' or 'file.py:factory', got {reference!r}"
        )
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise CoinferError(f"{path}: no such Python file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise CoinferError(f"cannot import {module_name}: {error}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CoinferError(f"{module_name} has no callable '{attribute}'")
    return factory


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError as error:
        raise CoinferError(f"bad --input-shape {text!r}: expected comma-separated integers") from error
    if not shape or any(dim < 1 for dim in shape):
        raise CoinferError(f"bad --input-shape {text!r}: dimensions must be positive")
    return shape


def _load_arrays(path: Path) -> list[np.ndarray]:
    """Arrays from .npy (one input) or .npz (one array per input, in file order); no pickle."""
    if not path.is_file():
        raise CoinferError(f"{path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise CoinferError(f"{path}: not a readable .npy/.npz file: {error}") from error
    if isinstance(loaded, np.ndarray):
        return [loaded]
    with loaded:
        return [loaded[name] for name in loaded.files]


def _print_result(result: ExportResult) -> None:
    from coinfer.sdk.cli.report import print_metrics

    print_metrics(f"exported {result.artifact.path}", result.parity.to_dict())


def _verify(paths: list[Path]) -> int:
    from coinfer.sdk.artifact import ArtifactError, load_artifact

    failures = 0
    for path in paths:
        try:
            artifact = load_artifact(path)
        except ArtifactError as error:
            failures += 1
            print(f"FAIL {error}")
            continue
        manifest = artifact.manifest
        summary = {"capability": manifest.capability, "kind": manifest.kind, "files": len(manifest.files)}
        print(f"ok   {path} {json.dumps(summary)}")
    return 1 if failures else 0
