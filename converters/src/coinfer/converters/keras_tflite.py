"""Keras -> TFLite (float32, float16, or full-integer int8 post-training quantisation)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.export import (
    DEFAULT_OPTIONS,
    ExportError,
    ExportOptions,
    ExportResult,
    Samples,
    as_sample_list,
    write_export,
)
from coinfer.sdk.frameworks import import_tensorflow

QUANTIZATIONS = ("float32", "float16", "int8")
#: Calibration batches fed to the int8 quantiser; more adds time, rarely accuracy.
MAX_CALIBRATION_SAMPLES = 256


def keras_to_tflite(
    model: Any,
    out: str | os.PathLike,
    *,
    quantization: str = "float32",
    representative_data: Samples | None = None,
    samples: Samples | None = None,
    options: ExportOptions = DEFAULT_OPTIONS,
    integer_io: bool = True,
) -> ExportResult:
    """Convert a Keras model, check it against Keras on ``samples``, write an artifact.

    ``int8`` quantises weights, activations and the model's inputs and outputs to int8
    using ``representative_data`` for calibration; the device runtime quantises float
    inputs and dequantises outputs with the scales recorded in the model. With
    ``integer_io=False`` an int8 model keeps float32 inputs and outputs (it quantises and
    dequantises inside), for callers that feed it with other runtimes than coinfer's. A model
    with a dict of outputs is compared output by output in sorted key order, the order of the
    TFLite signature. Example::

        result = keras_to_tflite(model, "out/digits-int8", quantization="int8",
                                 representative_data=x_train[:200], samples=x_test)
        print(result.parity.top1_agreement)
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization '{quantization}'; choose one of {', '.join(QUANTIZATIONS)}")
    if quantization == "int8" and representative_data is None:
        raise ExportError("int8 quantization needs representative_data (calibration inputs)")
    tf = import_tensorflow()
    input_names = [tensor.name.split(":")[0] for tensor in model.inputs]
    if samples is None:
        samples = representative_data if representative_data is not None else _random_samples(model)
    sample_list = as_sample_list(samples)
    if len(sample_list) != len(input_names):
        raise ExportError(f"model has inputs {input_names}; got {len(sample_list)} sample array(s)")

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        assert representative_data is not None  # int8 without it was rejected above
        calibration = as_sample_list(representative_data)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _calibration_batches(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if integer_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            flatbuffer = converter.convert()
    except Exception as error:  # the converter raises many unrelated types
        raise ExportError(f"TFLite conversion failed: {error}") from error

    def reference(batches: list[np.ndarray]) -> list[np.ndarray]:
        outputs = model(batches[0] if len(batches) == 1 else batches, training=False)
        if isinstance(outputs, dict):
            outputs = [outputs[name] for name in sorted(outputs)]
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return [np.asarray(output) for output in outputs]

    with tempfile.TemporaryDirectory(prefix="coinfer-export-") as scratch:
        model_file = Path(scratch) / "model.tflite"
        model_file.write_bytes(flatbuffer)
        return write_export(
            model_file, out, reference=reference, samples=sample_list,
            options=options, default_kind=f"tflite-{quantization}",
            metadata={"source": "keras", "quantization": quantization},
            input_names=input_names if len(input_names) > 1 else None,
        )


def _calibration_batches(calibration: list[np.ndarray]):
    count = min(MAX_CALIBRATION_SAMPLES, calibration[0].shape[0])
    for row in range(count):
        yield [array[row:row + 1].astype(np.float32) for array in calibration]


def _random_samples(model: Any, batch: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for tensor in model.inputs:
        dims = tuple(tensor.shape)[1:]
        if any(dim is None for dim in dims):
            raise ExportError(f"input '{tensor.name}' has dynamic dimensions {tensor.shape}; pass samples")
        arrays.append(rng.standard_normal((batch, *dims)).astype(np.float32))
    return arrays
