"""TFLite models on devices through LiteRT (or its predecessors where LiteRT is missing)."""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from coinfer.device.runtime.base import Runner, RunnerError, RunnerOptions, check_model_file
from coinfer.sdk.tensor import QuantParams, TensorSpec

#: Interpreter modules in order of preference: LiteRT, the old standalone runtime
#: (works only with numpy<2, e.g. older Raspberry Pi images), full TensorFlow.
INTERPRETER_MODULES = (
    "ai_edge_litert.interpreter",
    "tflite_runtime.interpreter",
    "tensorflow.lite.python.interpreter",
)


def load_interpreter_class() -> tuple[type, str]:
    """The first importable TFLite ``Interpreter`` class and the module it came from."""
    failures = []
    for module_name in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
            return module.Interpreter, module_name
        except (ImportError, AttributeError) as error:
            failures.append(f"{module_name}: {error}")
    raise RunnerError(
        "no TFLite interpreter is installed; pip install ai-edge-litert "
        f"(tried {'; '.join(failures)})"
    )


class TFLiteRunner(Runner):
    """Runs a ``.tflite`` model; inputs and outputs carry the model's signature names."""

    suffix = ".tflite"

    def __init__(self, interpreter: Any, backend: str, options: RunnerOptions) -> None:
        self._interpreter = interpreter
        self.backend = backend
        inputs, outputs = _signature_tensors(interpreter)
        self._input_index = {spec.name: index for spec, index in inputs}
        self._output_index = {spec.name: index for spec, index in outputs}
        self._allocated_shapes = {
            spec.name: tuple(interpreter.get_tensor(index).shape) for spec, index in inputs
        }
        super().__init__([spec for spec, _ in inputs], [spec for spec, _ in outputs], options)

    @classmethod
    def create_from_file(cls, path: str | os.PathLike, options: RunnerOptions | None = None) -> TFLiteRunner:
        path = check_model_file(path, cls.suffix)
        options = options or RunnerOptions()
        interpreter_class, backend = load_interpreter_class()
        try:
            interpreter = interpreter_class(model_path=str(path), num_threads=options.num_threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise RunnerError(f"{path}: not a loadable TFLite model: {error}") from error
        return cls(interpreter, backend, options)

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._interpreter
        resized = False
        for name, value in feeds.items():
            if self._allocated_shapes[name] != value.shape:
                interpreter.resize_tensor_input(self._input_index[name], value.shape, strict=False)
                self._allocated_shapes[name] = value.shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, value in feeds.items():
            interpreter.set_tensor(self._input_index[name], value)
        interpreter.invoke()
        return {name: interpreter.get_tensor(index) for name, index in self._output_index.items()}


def _signature_tensors(interpreter: Any) -> tuple[list[tuple[TensorSpec, int]], list[tuple[TensorSpec, int]]]:
    """Tensor specs with their indices, named after the signature when the model has one."""
    signatures = interpreter.get_signature_list()
    if len(signatures) > 1:
        raise RunnerError(
            f"model has {len(signatures)} signatures {sorted(signatures)}; "
            "coinfer runs single-signature models"
        )
    if signatures:
        runner = interpreter.get_signature_runner()
        inputs = runner.get_input_details().items()
        outputs = runner.get_output_details().items()
    else:
        inputs = ((d["name"], d) for d in interpreter.get_input_details())
        outputs = ((d["name"], d) for d in interpreter.get_output_details())
    return (
        [(_spec(name, details), details["index"]) for name, details in inputs],
        [(_spec(name, details), details["index"]) for name, details in outputs],
    )


def _spec(name: str, details: dict[str, Any]) -> TensorSpec:
    signature = details.get("shape_signature", details["shape"])
    shape = tuple(None if int(dim) < 0 else int(dim) for dim in signature)
    scale, zero_point = details.get("quantization", (0.0, 0))
    quant = QuantParams(float(scale), int(zero_point)) if scale else None
    return TensorSpec(name=name, shape=shape, dtype=np.dtype(details["dtype"]).name, quantization=quant)
