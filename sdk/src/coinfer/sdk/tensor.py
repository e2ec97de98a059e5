"""Descriptions of model inputs and outputs shared by artifacts, runtimes and converters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class QuantParams:
    """Affine quantisation of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
        """Map real values to the integer ``dtype``, rounding and saturating."""
        info = np.iinfo(dtype)
        q = np.round(np.asarray(values, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Map integer values back to float32."""
        shifted = np.asarray(values).astype(np.float32) - np.float32(self.zero_point)
        return shifted * np.float32(self.scale)


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dynamic dimension), dtype and quantisation of a tensor."""

    name: str
    shape: Shape
    dtype: str
    quantization: QuantParams | None = None

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"'{self.name}' {self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.quantization is not None:
            data["quantization"] = {
                "scale": self.quantization.scale,
                "zero_point": self.quantization.zero_point,
            }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        try:
            quant = data.get("quantization")
            shape = tuple(None if d is None else int(d) for d in data["shape"])
            return cls(
                name=str(data["name"]),
                shape=shape,
                dtype=str(np.dtype(data["dtype"])),
                quantization=None
                if quant is None
                else QuantParams(float(quant["scale"]), int(quant["zero_point"])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CoinferError(f"invalid tensor description {data!r}: {error}") from error
