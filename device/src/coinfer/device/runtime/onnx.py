"""ONNX models through ONNX Runtime (edge boxes and phones that ship it)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from coinfer.device.runtime.base import Runner, RunnerError, RunnerOptions, check_model_file
from coinfer.sdk.errors import one_line
from coinfer.sdk.tensor import TensorSpec

_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class ONNXRunner(Runner):
    """Runs an ``.onnx`` model on ONNX Runtime's CPU execution provider."""

    suffix = ".onnx"

    def __init__(self, session: Any, options: RunnerOptions) -> None:
        self._session = session
        inputs = [_spec(arg) for arg in session.get_inputs()]
        outputs = [_spec(arg) for arg in session.get_outputs()]
        super().__init__(inputs, outputs, options)

    @classmethod
    def create_from_file(cls, path: str | os.PathLike, options: RunnerOptions | None = None) -> ONNXRunner:
        path = check_model_file(path, cls.suffix)
        options = options or RunnerOptions()
        try:
            import onnxruntime
        except ImportError as error:
            raise RunnerError("ONNX Runtime is not installed; pip install onnxruntime") from error
        session_options = onnxruntime.SessionOptions()
        if options.num_threads is not None:
            session_options.intra_op_num_threads = options.num_threads
            session_options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(
                str(path), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises its own exception types for bad models
            raise RunnerError(f"{path}: not a loadable ONNX model: {error}") from error
        return cls(session, options)

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

        names = [spec.name for spec in self._outputs]
        try:
            return dict(zip(names, self._session.run(names, feeds), strict=True))
        except (Fail, InvalidArgument, RuntimeException) as error:  # values the model cannot take
            raise RunnerError(f"the model cannot run on these inputs: {one_line(error)}") from error


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _ONNX_TYPES:
        raise RunnerError(f"tensor '{arg.name}' has unsupported type {arg.type}")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ONNX_TYPES[arg.type])
