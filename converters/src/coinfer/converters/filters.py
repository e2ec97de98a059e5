"""InFi filters and PacketGame predictors as TFLite artifacts for devices.

The sdk trains them and says what a device needs (:meth:`TrainedFilter.device_network`,
:meth:`ContextualPredictor.keras_model`); this module writes that as TFLite, checked
against Keras on sample inputs.

Example::

    from coinfer.converters.filters import export_filter
    export_filter(trained, "out/face-skip-int8", quantization="int8", calibration=frames[:200])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from coinfer.converters.export import ExportError, ExportOptions, ExportResult
from coinfer.converters.keras_tflite import keras_to_tflite
from coinfer.sdk.gate.predictor import ContextualPredictor
from coinfer.sdk.infi.training import Inputs, TrainedFilter, check_inputs


def export_filter(trained: TrainedFilter, out: str | os.PathLike, *, quantization: str = "float32",
                  calibration: Inputs | None = None, samples: Inputs | None = None,
                  overwrite: bool = False) -> ExportResult:
    """Write the device-side filter (the frozen skip model, or the reuse embedding network)
    with what the device needs besides it in the manifest; int8 calibrates on ``calibration``."""
    if quantization == "int8" and any(spec.kind == "text" for spec in trained.inputs.values()):
        raise ExportError("int8 export quantises the inputs, but token ids cannot be int8: "
                          "export text filters as float32 or float16")
    calibration_arrays = None if calibration is None else check_inputs(calibration, trained.inputs)
    sample_arrays = check_inputs(samples, trained.inputs) if samples is not None else calibration_arrays
    model, metadata = trained.device_network()
    options = ExportOptions(capability="infi", kind=f"infi-{trained.kind}-tflite", metadata=metadata,
                            overwrite=overwrite)
    return keras_to_tflite(model, out, quantization=quantization, representative_data=calibration_arrays,
                           samples=sample_arrays, options=options)


def export_predictor(predictor: ContextualPredictor, out: str | os.PathLike, samples: list[np.ndarray], *,
                     overwrite: bool = False) -> Any:
    """Write a PacketGame predictor as a float32 TFLite artifact checked against Keras on ``samples``."""
    options = ExportOptions(capability="gate", kind="contextual-predictor-tflite",
                            metadata={"tasks": list(predictor.tasks), "window": predictor.options.window},
                            overwrite=overwrite)
    return keras_to_tflite(predictor.keras_model(), out, samples=samples, options=options)
