"""Aligned outputs of several models, one row per time step, kept as one ``.npz``.

Row ``n`` of every model comes from the same input (a frame and its audio window), so
any two columns train a link. Besides the outputs a table may carry per-row context
arrays (``camera``, ``night``, ground truth, ...) and per-model costs. Sequences are
stored ragged (``values`` + ``offsets``), specs and costs as JSON text in a uint8 array:
nothing is pickled, and loading goes through :func:`coinfer.sdk.npz.read_arrays`.

Example::

    table = OutputTable({"faces": OutputSpec.classes(4), "words": OutputSpec.sequence(8)},
                        {"faces": counts, "words": token_lists}, context={"camera": cams})
    table.save("out/outputs.npz")
    day = OutputTable.load("out/outputs.npz").take(~table.context["night"])
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink.outputs import OutputError, OutputSpec
from coinfer.sdk.npz import NpzError, read_arrays, write_arrays

#: Largest decoded size :meth:`OutputTable.load` accepts by default.
MAX_TABLE_BYTES = 1 << 30
META_KEY = "meta.json"


class TableError(CoinferError, ValueError):
    """A table whose columns do not fit their specs or each other, or a bad table file."""


def take_rows(outputs: Any, index: Any) -> Any:
    """Rows ``index`` (integer indices or a boolean mask) of vector or sequence outputs."""
    if isinstance(outputs, np.ndarray):
        return outputs[index]
    index = np.asarray(index)
    rows = np.flatnonzero(index) if index.dtype == bool else index.reshape(-1)
    return [outputs[int(row)] for row in rows]


def concat_rows(parts: Sequence[Any]) -> Any:
    """Outputs of consecutive row blocks joined (arrays stacked, sequence lists chained)."""
    if parts and isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [row for part in parts for row in part]


@dataclass
class OutputTable:
    """Models' output specs, their aligned outputs, per-row context and per-model costs."""

    specs: dict[str, OutputSpec]
    outputs: dict[str, Any]
    context: dict[str, np.ndarray] = field(default_factory=dict)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.specs) != set(self.outputs):
            raise TableError(f"specs name {sorted(self.specs)} but outputs name {sorted(self.outputs)}")
        try:
            self.outputs = {name: self.specs[name].check(self.outputs[name], name) for name in self.specs}
        except OutputError as error:
            raise TableError(str(error)) from None
        counts = {name: len(value) for name, value in self.outputs.items()}
        counts.update({f"context {name}": len(value) for name, value in self.context.items()})
        if len(set(counts.values())) > 1:
            raise TableError(f"columns must have one row per time step; row counts differ: {counts}")
        self.context = {name: np.asarray(value) for name, value in self.context.items()}

    def __len__(self) -> int:
        return len(next(iter(self.outputs.values()))) if self.outputs else 0

    @property
    def models(self) -> list[str]:
        return list(self.specs)

    def take(self, index: Any) -> OutputTable:
        """The rows ``index`` (indices or a boolean mask) of every column."""
        outputs = {name: take_rows(value, index) for name, value in self.outputs.items()}
        context = {name: value[index] for name, value in self.context.items()}
        return OutputTable(dict(self.specs), outputs, context, dict(self.costs))

    def save(self, path: str | os.PathLike) -> None:
        """Write the table atomically."""
        arrays: dict[str, np.ndarray] = {}
        for name, value in self.outputs.items():
            if self.specs[name].is_sequence:
                arrays[f"seq.{name}.offsets"] = np.cumsum([0] + [len(row) for row in value]).astype(np.int64)
                arrays[f"seq.{name}.values"] = np.asarray([token for row in value for token in row], np.int64)
            else:
                arrays[f"vec.{name}"] = value
        arrays.update({f"ctx.{name}": value for name, value in self.context.items()})
        meta = {"format": "coinfer-mlink-outputs", "version": 1,
                "specs": {name: spec.describe() for name, spec in self.specs.items()}, "costs": self.costs}
        arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)  # keeps the model order
        write_arrays(path, arrays)

    @staticmethod
    def load(path: str | os.PathLike, max_bytes: int = MAX_TABLE_BYTES) -> OutputTable:
        """Read and check a table; every problem raises :class:`TableError` naming the file."""
        try:
            arrays = read_arrays(path, required=(META_KEY,), max_bytes=max_bytes, what="output table")
        except NpzError as error:
            raise TableError(str(error)) from error
        try:
            meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
            if meta.get("format") != "coinfer-mlink-outputs" or meta.get("version") != 1:
                raise TableError("not a version-1 coinfer-mlink-outputs table")
            specs = {name: OutputSpec.from_description(value) for name, value in meta["specs"].items()}
            outputs: dict[str, Any] = {}
            for name, spec in specs.items():
                if spec.is_sequence:
                    outputs[name] = ragged(arrays[f"seq.{name}.offsets"], arrays[f"seq.{name}.values"], name)
                else:
                    outputs[name] = arrays[f"vec.{name}"]
            context = {key[4:]: value for key, value in arrays.items() if key.startswith("ctx.")}
            costs = {str(name): {str(k): float(v) for k, v in entry.items()}
                     for name, entry in meta.get("costs", {}).items()}
            return OutputTable(specs, outputs, context, costs)
        except (KeyError, ValueError, TypeError, AttributeError, TableError) as error:
            raise TableError(f"{path}: {error}") from None


def ragged(offsets: np.ndarray, values: np.ndarray, name: str) -> list[tuple[int, ...]]:
    """Sequences back from their flat storage; offsets must rise from 0 to len(values)."""
    if (offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0 or offsets[-1] != values.size
            or np.any(np.diff(offsets) < 0)):
        raise TableError(f"sequence offsets of {name!r} do not describe its {values.size} values")
    return [tuple(int(v) for v in values[start:end])
            for start, end in itertools.pairwise(offsets.tolist())]


def costs_of(table: OutputTable, kind: str) -> dict[str, float]:
    """Each model's ``kind`` cost (e.g. ``"ms"`` or ``"mib"``); all models must have one."""
    missing = [name for name in table.models if kind not in table.costs.get(name, {})]
    if missing:
        raise TableError(f"no {kind!r} cost for model(s) {missing}")
    return {name: table.costs[name][kind] for name in table.models}

