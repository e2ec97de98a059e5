"""Predict how much accelerator memory a training (evolution) task needs before starting it.

The scheduler packs tasks into the edge's free memory, so it needs each task's peak before the
task runs; asking users is unreliable, and measuring means running. NestEvo's task profiler
(section 6.1.1) adds five parts, each computed from the layer list:

- **params**: every layer's parameter count times the bytes of one value;
- **activations**: the outputs each layer keeps for the backward pass, per sample, times the
  batch size;
- **gradients**: the paper sets them equal to the activations (each stored output gets a
  gradient of its own size); the parameters' gradients, one per parameter, are counted here too;
- **optimizer**: the state the update rule keeps per parameter;
- **workspace**: what the framework and its kernel libraries hold (cuDNN workspaces, allocator
  slack, the CUDA context), a constant per host and runtime (the paper measured 850 MB with
  CUDA 11.1 and cuDNN 8.0.5). :func:`calibrate_workspace` fits it from a few measured runs.

On the optimizer the paper writes ``m_opt = 2 m_p`` with first-order momentum and ``m_opt = m_p``
without; since its ``m_g = m_f`` holds only the activations' gradients, the parameters' gradients
appear nowhere else, so its ``m_opt`` is read here as "parameter gradients plus update state".
This module separates the two: the parameter gradients sit in ``gradients`` and ``optimizer``
holds only the state, 0x params for plain SGD, 1x for momentum (the velocity), 2x for Adam (two
moments). ``gradients + optimizer`` equals the paper's ``m_g + m_opt`` for SGD and momentum.

Example: a two-layer network, batch 8, float32, momentum.

>>> layers = [LayerCost("conv", params=1_000, activation_elements=4_096),
...           LayerCost("fc", params=10_000, activation_elements=10)]
>>> estimate = predict_training_memory(layers, 8, MemoryModel(optimizer="momentum", workspace_bytes=1_000))
>>> estimate.params, estimate.activations, estimate.gradients, estimate.optimizer
(44000, 131392, 175392, 44000)
>>> estimate.total
395784
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError

Optimizer = Literal["sgd", "momentum", "adam"]

OPTIMIZER_STATE_COPIES: dict[str, int] = {"sgd": 0, "momentum": 1, "adam": 2}
"""Copies of the parameters each optimizer keeps between steps."""


def _count(owner: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise InvalidArgumentError(f"{owner}: {name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class LayerCost:
    """One layer: its trainable parameter count and the elements of the output it keeps for
    backpropagation, per sample (e.g. ``C_out * H_out * W_out`` for a convolution)."""

    name: str
    params: int
    activation_elements: int

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidArgumentError("a layer needs a non-empty name")
        _count(f"layer {self.name!r}", "params", self.params)
        _count(f"layer {self.name!r}", "activation_elements", self.activation_elements)


@dataclass(frozen=True)
class MemoryModel:
    """How the runtime stores training state: ``bytes_per_value`` (4 for float32, 2 for half
    precision), the ``optimizer`` and the host's ``workspace_bytes`` (0 until calibrated)."""

    bytes_per_value: int = 4
    optimizer: Optimizer = "sgd"
    workspace_bytes: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.bytes_per_value, bool) or not isinstance(self.bytes_per_value, int) \
                or self.bytes_per_value < 1:
            raise InvalidArgumentError(f"bytes_per_value must be an integer >= 1, got "
                                       f"{self.bytes_per_value!r}")
        if self.optimizer not in OPTIMIZER_STATE_COPIES:
            raise InvalidArgumentError(f"optimizer must be one of {sorted(OPTIMIZER_STATE_COPIES)}, got "
                                       f"{self.optimizer!r}")
        _count("MemoryModel", "workspace_bytes", self.workspace_bytes)


@dataclass(frozen=True)
class MemoryEstimate:
    """The five parts of a task's predicted peak, in bytes."""

    params: int
    activations: int
    gradients: int
    optimizer: int
    workspace: int

    @property
    def total(self) -> int:
        return self.params + self.activations + self.gradients + self.optimizer + self.workspace

    @property
    def without_workspace(self) -> int:
        """What the layers themselves need: the part that changes from task to task."""
        return self.total - self.workspace


def predict_training_memory(layers: Sequence[LayerCost], batch_size: int,
                            model: MemoryModel = MemoryModel()) -> MemoryEstimate:
    """The predicted peak memory of training ``layers`` with ``batch_size`` samples per step."""
    if not layers:
        raise InvalidArgumentError("no layers to predict the training memory of")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    width = model.bytes_per_value
    params = sum(int(layer.params) for layer in layers) * width
    activations = sum(int(layer.activation_elements) for layer in layers) * int(batch_size) * width
    return MemoryEstimate(params=params, activations=activations, gradients=activations + params,
                          optimizer=OPTIMIZER_STATE_COPIES[model.optimizer] * params,
                          workspace=model.workspace_bytes)


def calibrate_workspace(measured_peaks: Sequence[int],
                        estimates_without_workspace: Sequence[int | MemoryEstimate]) -> int:
    """The workspace constant that best explains measured peaks: the median of ``measured -
    estimate`` over the runs (robust to one run that hit allocator fragmentation).

    An estimate may be a byte count or a :class:`MemoryEstimate` (its workspace is ignored). A
    negative median means the layer model overestimates on this host; the workspace cannot be
    negative, so 0 is returned then.
    """
    if len(measured_peaks) != len(estimates_without_workspace) or not measured_peaks:
        raise InvalidArgumentError(f"need one estimate per measured peak and at least one run, got "
                                   f"{len(measured_peaks)} peaks and {len(estimates_without_workspace)} "
                                   "estimates")
    residuals = []
    for index, (peak, estimate) in enumerate(zip(measured_peaks, estimates_without_workspace, strict=True)):
        layers_bytes = estimate.without_workspace if isinstance(estimate, MemoryEstimate) else estimate
        for name, value in (("measured peak", peak), ("estimate", layers_bytes)):
            if isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"run {index}: {name} must be a finite number >= 0, got {value!r}")
        residuals.append(float(peak) - float(layers_bytes))
    return max(0, round(float(np.median(residuals))))
