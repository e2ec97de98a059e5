"""Split heads as TFLite (float32 or int8): what a phone or a Raspberry Pi runs of a split.

Why: :func:`~coinfer.sdk.split.bundle.export_split` writes the device's head as ONNX, but the
devices coinfer targets run LiteRT (``ai_edge_litert``) and nothing heavier. Here the ONNX
head is rebuilt in Keras (:mod:`coinfer.converters.onnx_keras`), converted by
:func:`~coinfer.converters.keras_tflite.keras_to_tflite` (float32, or full-integer int8
weights and activations calibrated on real inputs), checked against the ONNX head on ONNX
Runtime, and written as a device side whose head is ``head.tflite``
(:func:`~coinfer.sdk.split.bundle.save_head`): the same ``split.json``, so the edge side of
the ONNX export serves it unchanged, and :class:`~coinfer.device.split.SplitClient` runs it
on LiteRT.

The TFLite head keeps the ONNX head's interface: float32 in and out (an int8 head quantises
its input and dequantises its outputs inside, so any LiteRT caller can feed it images),
NCHW, the batch axis free. The check is the largest absolute difference from the ONNX
head's outputs on ``samples`` (the calibration inputs when none are given), refused above
``tolerance * max(1, largest |output|)``: by default 1e-4 for float32 and 0.5 for int8,
whose error is reported rather than tight (one element of EfficientNet-Lite0's block outputs,
up to ~40, may be 5-13 off; ``relative_rms``, the RMS of the error over that of the outputs,
says more about an int8 head: about 0.1 there, 1 or more for a broken conversion). Example::

    from coinfer.converters.split_heads import export_tflite_head
    from coinfer.sdk.split import SplitGraph, export_split

    graph = SplitGraph.load("efficientnet-lite0.onnx")
    device, edge = export_split(graph, graph.cuts()[43], "out/split", "int8")
    head = export_tflite_head(device, "out/split-int8-device", "int8", calibration=images)
    print(head.max_abs_err, head.model_bytes)   # deploy out/split-int8-device with out/split/edge
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.export import ExportError
from coinfer.sdk.errors import CoinferError, one_line
from coinfer.sdk.fsutil import atomic_directory
from coinfer.sdk.split.bundle import (
    DEVICE_DIR,
    EDGE_DIR,
    HEAD_KIND,
    HEAD_TENSORS_KEY,
    HEAD_TFLITE_FILE,
    SplitSide,
    export_split,
    load_side,
    load_split,
    save_head,
)
from coinfer.sdk.split.entropy import EntropyTables
from coinfer.sdk.split.graph import Cut, SplitGraph

#: What ``coinfer split export --head-format`` offers.
HEAD_FORMATS = ("onnx", "tflite-float32", "tflite-int8")
TFLITE_QUANTIZATIONS = ("float32", "int8")
#: Default parity tolerance, relative to ``max(1, largest |output|)`` of the ONNX head.
TOLERANCES = {"float32": 1e-4, "int8": 0.5}
#: Random inputs a float32 head is checked on when neither samples nor calibration are given.
_RANDOM_SAMPLES = 4

Inputs = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TFLiteHead:
    """A device side with a TFLite head and how close it came to the ONNX head.

    ``max_abs_err`` over every output on ``samples`` inputs, ``output_scale`` the largest
    ``|output|`` of the ONNX head there, ``limit`` what the error was allowed to be,
    ``relative_rms`` the RMS of the error over the RMS of the outputs.
    """

    side: SplitSide
    quantization: str
    samples: int
    max_abs_err: float
    output_scale: float
    limit: float
    relative_rms: float
    model_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "side"}


def export_tflite_head(device: SplitSide | str | os.PathLike, out_dir: str | os.PathLike,
                       quantization: str = "float32", calibration: Inputs | None = None, *,
                       samples: Inputs | None = None, tolerance: float | None = None,
                       overwrite: bool = False) -> TFLiteHead:
    """Write ``out_dir``: the device side ``device`` (an ``OUT/device`` of ``export_split``)
    with its ONNX head converted to ``head.tflite`` in ``quantization`` (``float32`` or
    ``int8``, which needs ``calibration``: graph inputs, an array for a one-input graph or
    arrays by name, a few hundred at most are used). Nothing is written unless the TFLite head
    matches the ONNX head within ``tolerance`` (see the module docstring).
    """
    head = device if isinstance(device, SplitSide) else load_side(device, HEAD_KIND)
    if head.kind != HEAD_KIND:
        raise ExportError(f"{head.artifact.path}: a TFLite head is made from a device side, not a "
                          f"{head.kind}")
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ExportError(f"unknown head quantization {quantization!r}; choose one of "
                          f"{', '.join(TFLITE_QUANTIZATIONS)}")
    if quantization == "int8" and calibration is None:
        raise ExportError("an int8 head needs calibration inputs (a few dozen real graph inputs)")
    model = head.model
    if model is None:
        raise ExportError(f"{head.artifact.path}: the cut leaves the device no node to run: there is no head "
                          "to convert (deploy the device side as it is)")
    if model.suffix != ".onnx":
        raise ExportError(f"{head.artifact.path}: the head is {model.name} already; convert the ONNX export")
    calibration_inputs = None if calibration is None else _graph_inputs(head, calibration, "calibration")
    if samples is not None:
        sample_inputs = _graph_inputs(head, samples, "samples")
    elif calibration_inputs is not None:
        sample_inputs = calibration_inputs
    else:
        rng = np.random.default_rng(0)
        sample_inputs = {spec.name: rng.standard_normal((_RANDOM_SAMPLES, *_fixed(spec.shape[1:])))
                         .astype(np.float32) for spec in head.spec.inputs}

    from coinfer.converters.keras_tflite import keras_to_tflite
    from coinfer.converters.onnx_keras import onnx_to_keras
    from coinfer.device.runtime.tflite import TFLiteRunner

    converted = onnx_to_keras(model, name="split_head")
    order = list(converted.inputs)
    representative = None if calibration_inputs is None else [calibration_inputs[name] for name in order]
    with tempfile.TemporaryDirectory(prefix="coinfer-head-") as scratch:
        result = keras_to_tflite(converted.model, Path(scratch) / "tflite", quantization=quantization,
                                 representative_data=representative,
                                 samples=[sample_inputs[name] for name in order], integer_io=False)
        flatbuffer = result.artifact.file("model.tflite").read_bytes()
        tflite_file = Path(scratch) / HEAD_TFLITE_FILE
        tflite_file.write_bytes(flatbuffer)
        runner = TFLiteRunner.create_from_file(tflite_file)
        feeds = {converted.input_names[name]: name for name in order}
        made = {spec.name: spec.name for spec in runner.output_specs}
        if sorted(made) != sorted(converted.outputs):
            raise ExportError(f"the TFLite head's outputs {sorted(made)[:4]} are not the ONNX head's "
                              f"{sorted(converted.outputs)[:4]}")
        got = runner.run({tflite_name: sample_inputs[name] for tflite_name, name in feeds.items()})
        want = _onnx_outputs(model, {name: sample_inputs[name] for name in order})
        differences = np.concatenate([(want[name] - got[name].astype(np.float32)).ravel() for name in want])
        reference = np.concatenate([value.ravel() for value in want.values()])
        error, scale = float(np.max(np.abs(differences))), float(np.max(np.abs(reference)))
        relative_rms = float(np.sqrt(np.mean(differences ** 2) / max(np.mean(reference ** 2), 1e-30)))
        limit = (TOLERANCES[quantization] if tolerance is None else tolerance) * max(1.0, scale)
        if not error <= limit:
            raise ExportError(f"the {quantization} TFLite head is {error:.3g} off the ONNX head at most "
                              f"(limit {limit:.3g}, outputs up to {scale:.3g}); nothing written")
        samples_used = int(next(iter(sample_inputs.values())).shape[0])
        parity = {"samples": samples_used, "max_abs_err": error, "output_scale": scale, "limit": limit,
                  "relative_rms": relative_rms}
        metadata = {"head_format": f"tflite-{quantization}", "head_parity": parity,
                    HEAD_TENSORS_KEY: {"inputs": feeds, "outputs": made}}
        side = save_head(head, out_dir, HEAD_TFLITE_FILE, flatbuffer, metadata=metadata, overwrite=overwrite)
    return TFLiteHead(side, quantization, samples_used, error, scale, limit, relative_rms, len(flatbuffer))


def export_split_tflite(graph: SplitGraph, cut: Cut, out_dir: str | os.PathLike, encoding: str,
                        quantization: str = "float32", calibration: Inputs | None = None, *,
                        tables: EntropyTables | None = None,
                        overwrite: bool = False) -> tuple[SplitSide, SplitSide, TFLiteHead]:
    """:func:`~coinfer.sdk.split.bundle.export_split` with the device's head as TFLite:
    ``OUT/device`` (``head.tflite``) and ``OUT/edge``, written whole or not at all; returns
    the two sides loaded and the head's parity. ``tables``: the ``entropy`` encoding's."""
    out = Path(out_dir)
    with atomic_directory(out, overwrite=overwrite) as staging:
        device, _ = export_split(graph, cut, staging / "onnx", encoding, tables=tables)
        head = export_tflite_head(device, staging / DEVICE_DIR, quantization, calibration)
        os.replace(staging / "onnx" / EDGE_DIR, staging / EDGE_DIR)
        shutil.rmtree(staging / "onnx")
    device_side, edge_side = load_split(out / DEVICE_DIR, out / EDGE_DIR)
    return device_side, edge_side, replace(head, side=device_side)


def _graph_inputs(head: SplitSide, data: Inputs, what: str) -> dict[str, np.ndarray]:
    """``data`` as float32 arrays by graph input name, each (n >= 1, *the input's shape)."""
    specs = head.spec.inputs
    if isinstance(data, Mapping):
        named = dict(data)
    elif len(specs) == 1:
        named = {specs[0].name: data}
    else:
        raise ExportError(f"the graph takes {len(specs)} inputs; pass the {what} by name")
    if sorted(named) != sorted(spec.name for spec in specs):
        raise ExportError(f"the {what} name {sorted(named)[:4]}; the graph's inputs are "
                          f"{[spec.name for spec in specs][:4]}")
    arrays, counts = {}, set()
    for spec in specs:
        value = np.asarray(named[spec.name])
        if value.dtype.kind not in "fiu" or value.ndim != len(spec.shape) or value.shape[0] < 1 \
                or tuple(value.shape[1:]) != tuple(spec.shape[1:]):
            expected = ", ".join(["n", *map(str, spec.shape[1:])])
            raise ExportError(f"the {what} for {spec.name!r} must be numbers of shape ({expected}), got "
                              f"{value.dtype.name} {value.shape}")
        arrays[spec.name] = np.ascontiguousarray(value, dtype=np.float32)
        counts.add(value.shape[0])
    if len(counts) != 1:
        raise ExportError(f"the {what} arrays disagree on the number of samples: {sorted(counts)}")
    return arrays


def _fixed(dims: tuple[int | None, ...]) -> tuple[int, ...]:
    """Dimensions past the batch axis, which a split spec fixes."""
    assert all(dim is not None for dim in dims)  # SplitSpec.of refuses symbolic ones
    return tuple(int(dim) for dim in dims if dim is not None)


def _onnx_outputs(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from coinfer.sdk.frameworks import import_onnxruntime

    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as error:  # ORT raises its own exception types
        raise CoinferError(f"{model}: the ONNX head does not run on the samples: "
                           f"{one_line(error)}") from error


__all__ = ["HEAD_FORMATS", "TFLITE_QUANTIZATIONS", "TOLERANCES", "TFLiteHead", "export_split_tflite",
           "export_tflite_head"]
