"""PyTorch -> TFLite through ``litert-torch`` (the ``coinfer-converters[torch-tflite]`` extra).

litert-torch brings JAX (~0.9 GB) and pins older pydantic / typing_extensions / anyio, so
it is kept out of ``coinfer[all]``; install it where you convert, not on devices.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.export import (
    DEFAULT_OPTIONS,
    ExportError,
    ExportOptions,
    ExportResult,
    Samples,
    as_sample_list,
    write_export,
)
from coinfer.converters.frameworks import torch_reference
from coinfer.sdk.frameworks import import_torch


def torch_to_tflite(
    model: Any,
    example_inputs: Samples,
    out: str | os.PathLike,
    *,
    samples: Samples | None = None,
    options: ExportOptions = DEFAULT_OPTIONS,
) -> ExportResult:
    """Convert ``model`` with shapes fixed by ``example_inputs`` (batch included).

    The device runtime splits or pads other batch sizes to the exported one. Example::

        result = torch_to_tflite(net, [np.zeros((1, 3, 32, 32), np.float32)], "out/net-tflite")
    """
    torch = import_torch()
    try:
        import litert_torch
    except ImportError as error:
        raise ExportError(
            "PyTorch -> TFLite needs litert-torch: pip install 'coinfer-converters[torch-tflite]'"
        ) from error
    examples = as_sample_list(example_inputs)
    model = model.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in examples)
    try:
        converted = litert_torch.convert(model, args)
    except Exception as error:  # the converter raises many unrelated types
        raise ExportError(f"litert-torch conversion failed: {error}") from error

    with tempfile.TemporaryDirectory(prefix="coinfer-export-") as scratch:
        model_file = Path(scratch) / "model.tflite"
        converted.export(str(model_file))
        return write_export(
            model_file, out, reference=torch_reference(model),
            samples=examples if samples is None else samples,
            options=options, default_kind="tflite-float32",
            metadata={"source": "pytorch", "converter": "litert-torch"},
        )
