"""PyTorch -> ONNX with a parity check on ONNX Runtime."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
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

DEFAULT_OPSET = 17


def torch_to_onnx(
    model: Any,
    example_inputs: Samples,
    out: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    samples: Samples | None = None,
    options: ExportOptions = DEFAULT_OPTIONS,
) -> ExportResult:
    """Export ``model`` (an ``nn.Module``) traced on ``example_inputs``; compare on ``samples``.

    With ``dynamic_batch`` every input and output gets a dynamic first axis unless
    ``dynamic_axes`` says otherwise. Example::

        result = torch_to_onnx(net, [np.zeros((1, 3, 32, 32), np.float32)], "out/net")
        print(result.parity.max_abs_err)
    """
    torch = import_torch()
    examples = as_sample_list(example_inputs)
    input_names = list(input_names or [f"input_{i}" for i in range(len(examples))])
    if len(input_names) != len(examples):
        raise ExportError(f"{len(input_names)} input name(s) for {len(examples)} example input(s)")
    model = model.eval()
    reference = torch_reference(model)
    try:
        n_outputs = len(reference(examples))
    except Exception as error:  # any failure of user code on the example inputs
        raise ExportError(f"the model fails on the example inputs: {error}") from error
    output_names = list(output_names or [f"output_{i}" for i in range(n_outputs)])
    if dynamic_axes is None and dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}

    with tempfile.TemporaryDirectory(prefix="coinfer-export-") as scratch:
        model_file = Path(scratch) / "model.onnx"
        try:
            torch.onnx.export(
                model,
                tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in examples),
                str(model_file),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dict(dynamic_axes) if dynamic_axes else None,
                opset_version=opset,
                dynamo=False,
            )
        except Exception as error:  # torch raises many unrelated types while tracing
            raise ExportError(f"ONNX export failed: {error}") from error
        return write_export(
            model_file, out, reference=reference,
            samples=examples if samples is None else samples,
            options=options, default_kind="onnx", metadata={"source": "pytorch", "opset": opset},
            input_names=input_names,
        )
