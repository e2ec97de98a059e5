"""The PyTorch side of a parity check: a model as a numpy-in, numpy-out reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from coinfer.sdk.frameworks import import_torch


def torch_reference(model: Any) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Wrap an ``nn.Module`` as a numpy-in, numpy-out reference for parity checks."""
    torch = import_torch()

    def reference(batches: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = model(*[torch.from_numpy(np.ascontiguousarray(x)) for x in batches])
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return [output.detach().cpu().numpy() for output in outputs]

    return reference
