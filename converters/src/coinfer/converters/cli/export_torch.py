"""``coinfer export torch``: a PyTorch ``nn.Module`` to ONNX or TFLite, checked against PyTorch.

    coinfer export torch --model mypkg.nets:build --weights w.safetensors \\
        --input-shape 1,3,32,32 --to onnx --out out/net

Weights are read from safetensors only (never pickle).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.cli.common import add_common, export_options, load_arrays, run_export
from coinfer.converters.export import ExportResult
from coinfer.sdk.errors import CoinferError, InputNotFoundError, one_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                        help="callable returning the nn.Module: 'pkg.module:build' or 'file.py:build'")
    parser.add_argument("--weights", type=Path, help="state dict as .safetensors (never pickle)")
    parser.add_argument("--input-shape", action="append", required=True, metavar="D0,D1,...",
                        help="example input shape, batch first; repeat for several inputs")
    parser.add_argument("--input-dtype", default="float32")
    parser.add_argument("--input-names", help="comma-separated input names")
    parser.add_argument("--output-names", help="comma-separated output names")
    parser.add_argument("--to", choices=("onnx", "tflite"), default="onnx")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--static-batch", action="store_true",
                        help="ONNX: keep the batch size of --input-shape fixed")
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    return run_export(args, "PyTorch", export_torch)


def export_torch(args: argparse.Namespace) -> ExportResult:
    """Check the inputs, then build the model (importing PyTorch) and export it."""
    shapes = [_parse_shape(text) for text in args.input_shape]
    dtype = _parse_dtype(args.input_dtype)
    samples = load_arrays(args.samples) if args.samples else None
    if args.weights and not args.weights.is_file():
        raise InputNotFoundError(f"{args.weights}: no such weights file")
    model = _build_model(args.model)
    if args.weights:
        from safetensors.torch import load_file

        try:
            model.load_state_dict(load_file(str(args.weights)), strict=True)
        except Exception as error:  # missing/unexpected keys, shape mismatches, bad file
            raise CoinferError(f"{args.weights}: cannot load weights into the model: "
                               f"{one_line(error)}") from error
    rng = np.random.default_rng(0)
    examples = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    options = export_options(args, {"factory": args.model})
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


def _build_model(reference: str) -> Any:
    """The ``torch.nn.Module`` the factory ``reference`` returns when called without arguments."""
    factory = _load_factory(reference)
    try:
        model = factory()
    except TypeError as error:  # a factory that needs arguments
        raise CoinferError(f"--model {reference}: the factory must be callable without arguments: "
                           f"{one_line(error)}") from error
    import torch

    if not isinstance(model, torch.nn.Module):
        raise CoinferError(f"--model {reference} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_factory(reference: str) -> Callable[[], Any]:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise CoinferError(
            f"--model must look like 'pkg.module:factory' or 'file.py:factory', got {reference!r}"
        )
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such Python file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None  # a .py file always gets a source loader
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (SyntaxError, ImportError) as error:
            raise CoinferError(f"{path}: cannot load it: {one_line(error)}") from error
    else:
        try:
            module = importlib.import_module(module_name)
        except (ImportError, TypeError) as error:  # TypeError: a relative name such as '.nets'
            raise CoinferError(f"cannot import {module_name}: {one_line(error)}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CoinferError(f"{module_name} has no callable '{attribute}'")
    return factory


def _parse_dtype(text: str) -> np.dtype:
    try:
        return np.dtype(text)
    except TypeError as error:
        raise CoinferError(f"bad --input-dtype {text!r}: not a numpy dtype (e.g. float32, int64)") from error


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError as error:
        raise CoinferError(f"bad --input-shape {text!r}: expected comma-separated integers") from error
    if not shape or any(dim < 1 for dim in shape):
        raise CoinferError(f"bad --input-shape {text!r}: dimensions must be positive")
    return shape
