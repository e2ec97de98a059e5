"""Read a network's training costs off the network itself: the inputs of the task profiler.

:mod:`~coinfer.sdk.evolve.memory` predicts a task's peak memory from a list of
:class:`~coinfer.sdk.evolve.memory.LayerCost` and :mod:`~coinfer.sdk.evolve.timing` predicts
its time from :class:`~coinfer.sdk.evolve.timing.TaskFeatures`; this module fills both in for
any network of :mod:`coinfer.sdk.evolve.networks` (or any torch module with ``from_prefix``).
Writing the lists by hand would go stale with every pruning ratio, so they are measured: one
forward pass of the trainable part (``from_prefix``) on a zero batch of prefix features, in
eval mode and without gradients (same shapes as training, no batch-statistics side effects),
with forward hooks on every *leaf* module, a module that owns parameters directly or has no
children. Per hooked call it records:

- ``params``: the parameters the module owns that require gradients (frozen ones are not
  trained, so they get no gradient and no optimizer state);
- ``activation_elements``: the elements of the module's output per sample, which the next
  layer keeps for backward (a convolution keeps its input, batch norm and ReLU6 theirs). An
  output sharing storage with the input or with an output already counted (``Identity``,
  ``Flatten``, an in-place activation) allocates nothing and counts 0;
- forward multiply-accumulates of convolutions (``output elements x in_channels / groups x
  kernel area``) and linear layers (``output elements x in_features``), the work per sample
  :class:`~coinfer.sdk.evolve.timing.TaskFeatures` takes. Batch norm, activations and pooling
  are left out: they are a small, roughly proportional share of the work.

The network's input is not counted: the task's features are in memory whatever it trains.
Torch is imported inside the functions only.

>>> from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, parameter_count
>>> model = build_network(ArchitectureSpec("tiny", input_size=64))
>>> costs = layer_costs(model, (112, 4, 4))
>>> [(cost.name, cost.params, cost.activation_elements) for cost in costs[:3]]
[('body.0', 10752, 1536), ('body.1', 192, 1536), ('body.2', 0, 1536)]
>>> sum(cost.params for cost in costs) == parameter_count(model, trainable_only=True)
True
>>> features = task_features(model, samples=200, epochs=2, batch_size=32)
>>> features.trainable_params, features.work_per_sample
(48804, 257920)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.memory import LayerCost
from coinfer.sdk.evolve.networks import PREFIX_CHANNELS
from coinfer.sdk.evolve.timing import TaskFeatures

#: The prefix's stride: an input of side S gives prefix features of side S / PREFIX_STRIDE.
PREFIX_STRIDE = 16


@dataclass(frozen=True)
class _Trace:
    layers: list[LayerCost]
    macs: int


def prefix_shape(input_size: int) -> tuple[int, int, int]:
    """The per-sample shape (C, h, w) of the prefix features of ``input_size`` square images.

    >>> prefix_shape(128)
    (112, 8, 8)
    """
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < PREFIX_STRIDE \
            or input_size % PREFIX_STRIDE:
        raise InvalidArgumentError(f"input_size must be a positive multiple of {PREFIX_STRIDE}, "
                                   f"got {input_size!r}")
    side = input_size // PREFIX_STRIDE
    return (PREFIX_CHANNELS, side, side)


def _check_shape(feature_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(feature_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise InvalidArgumentError(f"feature_shape must be three positive integers (C, h, w) per sample, "
                                   f"got {feature_shape!r}")
    return shape


def _is_leaf(module: Any) -> bool:
    return not any(True for _ in module.children()) or any(True for _ in module.parameters(recurse=False))


def _macs(module: Any, output: Any) -> int:
    import torch

    per_sample = output.numel() // output.shape[0]
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        kernel = 1
        for side in module.kernel_size:
            kernel *= int(side)
        return per_sample * (module.in_channels // module.groups) * kernel
    if isinstance(module, torch.nn.Linear):
        return per_sample * module.in_features
    return 0


def _trace(model: Any, feature_shape: Sequence[int]) -> _Trace:
    """One eval-mode forward of ``model.from_prefix`` on a zero sample, hooked as the module
    docstring says."""
    import torch

    shape = _check_shape(feature_shape)
    if not callable(getattr(model, "from_prefix", None)):
        raise InvalidArgumentError(f"the model must have from_prefix (a network of coinfer.sdk.evolve."
                                   f"networks), got {type(model).__name__}")
    layers: list[LayerCost] = []
    macs = [0]
    seen: set[int] = set()
    # Every output stays referenced until the trace ends, so no storage address is reused.
    kept: list[Any] = []

    def record(name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise InvalidArgumentError(f"layer {name!r} returns {type(output).__name__}, not one tensor; "
                                           "its activations cannot be counted")
            storage = output.untyped_storage().data_ptr()
            elements = 0 if storage in seen else output.numel() // output.shape[0]
            seen.add(storage)
            kept.append(output)
            params = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
            layers.append(LayerCost(name, int(params), int(elements)))
            macs[0] += _macs(module, output)
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if name and _is_leaf(module)]
    was_training = model.training
    model.eval()
    try:
        zeros = torch.zeros((1, *shape))
        kept.append(zeros)
        seen.add(zeros.untyped_storage().data_ptr())
        with torch.no_grad():
            model.from_prefix(zeros)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not layers:
        raise InvalidArgumentError("the model ran no layer on the prefix features")
    return _Trace(layers, macs[0])


def layer_costs(model: Any, feature_shape: Sequence[int]) -> list[LayerCost]:
    """The trainable part's layers in execution order: parameters that train and activation
    elements kept per sample, for prefix features of ``feature_shape`` (C, h, w) per sample."""
    return _trace(model, feature_shape).layers


def forward_macs(model: Any, feature_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one sample's forward pass through the trainable part
    (convolutions and linear layers)."""
    return _trace(model, feature_shape).macs


def task_features(model: Any, samples: int, epochs: int, batch_size: int, *,
                  feature_shape: Sequence[int] | None = None) -> TaskFeatures:
    """What the training-time model reads about a task training ``model`` on ``samples``
    frames for ``epochs`` in batches of ``batch_size``. The work per sample is
    :func:`forward_macs` on ``feature_shape``, by default the prefix shape of the model's
    ``spec.input_size``; a model with neither gets ``work_per_sample=None``."""
    spec = getattr(model, "spec", None)
    if feature_shape is None and spec is not None:
        feature_shape = prefix_shape(spec.input_size)
    work = None if feature_shape is None else forward_macs(model, feature_shape)
    trainable = model.trainable_parameters() if callable(getattr(model, "trainable_parameters", None)) \
        else [p for p in model.parameters() if p.requires_grad]
    params = int(sum(p.numel() for p in trainable))
    return TaskFeatures(trainable_params=params, samples=samples, epochs=epochs, batch_size=batch_size,
                        work_per_sample=work or None)
