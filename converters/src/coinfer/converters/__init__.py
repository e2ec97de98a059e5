"""coinfer.converters: export Keras / PyTorch models to TFLite / ONNX, with parity checks.

Every export runs the converted model on sample inputs next to the original and writes a
model artifact (see :mod:`coinfer.sdk.artifact`) whose manifest carries the parity
numbers: max abs error, top-1 agreement for classifiers, size, latency of one inference.

Example::

    from coinfer.converters import keras_to_tflite
    result = keras_to_tflite(model, "out/digits-int8", quantization="int8",
                             representative_data=x_train[:200], samples=x_test)
    assert result.parity.top1_agreement >= 0.98

Split heads (ONNX subgraphs) become TFLite through Keras: :func:`onnx_to_keras`,
:func:`export_tflite_head` (see :mod:`coinfer.converters.split_heads`).

TensorFlow and PyTorch are imported inside the export functions, not here.
"""

from coinfer.converters.export import (
    ExportError,
    ExportOptions,
    ExportResult,
    ParityLimits,
    ParityReport,
)
from coinfer.converters.keras_tflite import QUANTIZATIONS, keras_to_tflite
from coinfer.converters.onnx_keras import onnx_to_keras
from coinfer.converters.split_heads import export_tflite_head
from coinfer.converters.torch_onnx import torch_to_onnx
from coinfer.converters.torch_tflite import torch_to_tflite

__all__ = [
    "QUANTIZATIONS",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ParityLimits",
    "ParityReport",
    "export_tflite_head",
    "keras_to_tflite",
    "onnx_to_keras",
    "torch_to_onnx",
    "torch_to_tflite",
]
