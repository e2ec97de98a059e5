"""Lazy, quiet imports of the frameworks, with install hints when they are missing.

The sdk trains filters, predictors and links, but a device never does: TensorFlow and
PyTorch are imported by the functions that need them, through these, so a missing
framework is one clear line rather than an ImportError deep in a call; so is ONNX Runtime,
which split profiling measures on.
"""

from __future__ import annotations

import os
from types import ModuleType

from coinfer.sdk.errors import CoinferError


def import_tensorflow() -> ModuleType:
    """Import TensorFlow with its C++ start-up chatter turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow
    except ImportError as error:
        raise CoinferError("TensorFlow is not installed; pip install 'coinfer-edge[train]'") from error
    return tensorflow


def import_onnxruntime() -> ModuleType:
    """Import ONNX Runtime."""
    try:
        import onnxruntime
    except ImportError as error:
        raise CoinferError("ONNX Runtime is not installed; pip install onnxruntime "
                           "(or 'coinfer-sdk[split]')") from error
    return onnxruntime


def import_torch() -> ModuleType:
    """Import PyTorch."""
    try:
        import torch
    except ImportError as error:
        raise CoinferError("PyTorch is not installed; pip install 'coinfer-edge[train]'") from error
    return torch
