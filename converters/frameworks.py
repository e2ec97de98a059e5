"""Lazy, quiet imports of the training frameworks with install hints when they are missing."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError


def import_tensorflow() -> ModuleType:
    """Import TensorFlow with its C++ start-up chatter turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow
    except ImportError as error:
        raise CoinferError("TensorFlow is not installed; pip install 'coinfer[convert]'") from error
    return tensorflow


def import_torch() -> ModuleType:
    try:
        import torch
    except ImportError as error:
        raise CoinferError("PyTorch is not installed; pip install 'coinfer[convert]'") from error
    return torch


def torch_reference(model: Any) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Wrap an ``nn.Module`` as a numpy-in, numpy-out reference for parity checks."""
    torch = import_torch()

    def reference(batches: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = model(*[torch.from_numpy(np.ascontiguousarray(x)) for x in batches])
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return [output.detach().cpu().numpy() for output in outputs]

    return reference
