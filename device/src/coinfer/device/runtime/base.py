"""The runner interface shared by every on-device model runtime.

A runner validates what it is given before the interpreter sees it (names, ranks, fixed
dimensions, dtypes), quantises float inputs of integer-quantised models, splits or pads
batches for models with a fixed batch size, and dequantises integer outputs.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from coinfer.sdk.artifact import Artifact, load_artifact
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.tensor import TensorSpec

Inputs = np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]


class RunnerError(CoinferError, ValueError):
    """Inputs do not match the model, or the model cannot be loaded."""


@dataclass(frozen=True)
class RunnerOptions:
    """How a runner executes its model.

    Attributes:
        num_threads: interpreter threads; ``None`` lets the runtime decide.
        batch_size: largest batch handed to the interpreter at once for models with a
            dynamic batch dimension (bounds memory); fixed-batch models use their own.
        dequantize_outputs: return float32 for integer-quantised outputs.
    """

    num_threads: int | None = None
    batch_size: int | None = None
    dequantize_outputs: bool = True

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise RunnerError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.batch_size is not None and self.batch_size < 1:
            raise RunnerError(f"batch_size must be >= 1, got {self.batch_size}")


class Runner(ABC):
    """Runs one model file. Example::

        runner = TFLiteRunner.create_from_file("digits_int8.tflite")
        probabilities = runner.run(images)["output_0"]   # float32 even for int8 models
    """

    #: File suffix of the models this runner executes.
    suffix: str = ""

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 options: RunnerOptions) -> None:
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self.options = options

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @classmethod
    @abstractmethod
    def create_from_file(cls, path: str | os.PathLike, options: RunnerOptions | None = None) -> Runner:
        """Load a model file."""

    @classmethod
    def create_from_artifact(cls, artifact: Artifact | str | os.PathLike,
                             options: RunnerOptions | None = None) -> Runner:
        """Load the model of a verified artifact; manifest quantisation fills in what the file lacks."""
        if not isinstance(artifact, Artifact):
            artifact = load_artifact(artifact)
        runner = cls.create_from_file(artifact.single_model_file((cls.suffix,)), options)
        declared = {spec.name: spec for spec in artifact.manifest.inputs}
        runner._inputs = tuple(
            replace(spec, quantization=declared[spec.name].quantization)
            if spec.quantization is None and spec.name in declared
            else spec
            for spec in runner._inputs
        )
        return runner

    def __call__(self, inputs: Inputs) -> dict[str, np.ndarray]:
        return self.run(inputs)

    def run(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Run the model on a batch; returns outputs by name, batched along axis 0."""
        feeds = self._prepare(inputs)
        batch = _batch_size(feeds)
        if batch == 0:
            raise RunnerError("empty batch: inputs have 0 rows")
        fixed = self._fixed_batch
        limit = fixed or self.options.batch_size
        if batch is None or limit is None or batch == limit or (fixed is None and batch < limit):
            outputs = self._invoke(feeds)
        else:
            outputs = self._run_in_chunks(feeds, batch, limit)
        return self._finish(outputs)

    @abstractmethod
    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the interpreter once on inputs already validated and cast."""

    @property
    def _fixed_batch(self) -> int | None:
        """The batch size the model was built for, if every input fixes the same one."""
        dims = {spec.shape[0] for spec in self._inputs if spec.shape}
        if len(dims) == 1 and None not in dims:
            return dims.pop()
        return None

    def _run_in_chunks(self, feeds: dict[str, np.ndarray], batch: int, chunk: int) -> dict[str, np.ndarray]:
        pieces: dict[str, list[np.ndarray]] = {}
        pad_to = self._fixed_batch
        for start in range(0, batch, chunk):
            part = {name: value[start:start + chunk] for name, value in feeds.items()}
            rows = min(chunk, batch - start)
            if pad_to is not None and rows < pad_to:
                part = {name: _pad_rows(value, pad_to) for name, value in part.items()}
            for name, value in self._invoke(part).items():
                pieces.setdefault(name, []).append(value[:rows])
        return {name: np.concatenate(parts, axis=0) for name, parts in pieces.items()}

    def _prepare(self, inputs: Inputs) -> dict[str, np.ndarray]:
        named = self._name_inputs(inputs)
        return {spec.name: self._check_and_cast(spec, named[spec.name]) for spec in self._inputs}

    def _name_inputs(self, inputs: Inputs) -> dict[str, np.ndarray]:
        expected = [spec.name for spec in self._inputs]
        if isinstance(inputs, Mapping):
            missing = [name for name in expected if name not in inputs]
            unknown = [name for name in inputs if name not in expected]
            if missing or unknown:
                raise RunnerError(
                    f"model inputs are {expected}; missing {missing}, unknown {unknown}"
                )
            return {name: np.asarray(inputs[name]) for name in expected}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) != len(expected):
            raise RunnerError(f"model takes {len(expected)} input(s) {expected}, got {len(inputs)}")
        return {name: np.asarray(value) for name, value in zip(expected, inputs, strict=True)}

    def _check_and_cast(self, spec: TensorSpec, value: np.ndarray) -> np.ndarray:
        if value.ndim != len(spec.shape):
            raise RunnerError(
                f"input {spec.describe()} expects rank {len(spec.shape)}, got shape {value.shape}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape, strict=True)):
            if axis == 0 and self._fixed_batch is not None:
                continue  # any batch size: split or padded to the model's
            if want is not None and want != got:
                raise RunnerError(f"input {spec.describe()} got shape {value.shape} (axis {axis})")
        target = spec.numpy_dtype
        if spec.quantization is not None and value.dtype.kind == "f" and target.kind in "iu":
            return spec.quantization.quantize(value, target)
        if value.dtype == target:
            return np.ascontiguousarray(value)
        if value.dtype.kind not in "biuf" or not np.can_cast(value.dtype, target, casting="same_kind"):
            raise RunnerError(f"input {spec.describe()} cannot take dtype {value.dtype}")
        return np.ascontiguousarray(value, dtype=target)

    def _finish(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.options.dequantize_outputs:
            return outputs
        quantization = {spec.name: spec.quantization for spec in self._outputs}
        return {
            name: value if (params := quantization[name]) is None else params.dequantize(value)
            for name, value in outputs.items()
        }


def _batch_size(feeds: dict[str, np.ndarray]) -> int | None:
    sizes = {value.shape[0] for value in feeds.values() if value.ndim > 0}
    if len(sizes) > 1:
        raise RunnerError(f"inputs disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _pad_rows(value: np.ndarray, rows: int) -> np.ndarray:
    missing = rows - value.shape[0]
    return np.concatenate([value, np.repeat(value[-1:], missing, axis=0)], axis=0)


def check_model_file(path: str | os.PathLike, suffix: str) -> Path:
    """Resolve ``path`` and fail clearly if it is missing or not a ``suffix`` model."""
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"model file {path} does not exist")
    if path.suffix != suffix:
        raise RunnerError(f"{path} is not a {suffix} model")
    return path
