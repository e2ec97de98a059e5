"""Records: the ``(input, model output)`` pairs a filter is trained and checked on, as one ``.npz``.

A records file holds two arrays with one row per record:

- ``inputs``: what the filter sees, ``(records, *sample shape)``, numeric (floats in
  [0, 1] for images, token ids for text);
- ``outputs``: what the model returned on each input, numeric or unicode strings. It may
  be left out where only the filter's decisions are wanted (``coinfer infi run``).

A numeric or string row reads, for each built-in measurement (:meth:`Records.outputs_for`):

- ``empty``, ``count``: one whole number per record, the number of results (0: empty);
- ``class-subset``, ``label``: a label per record: a string, a whole class id (read as its
  decimal string, so ``--option keep=3,5`` matches ids 3 and 5), or a row of class
  probabilities (its argmax, likewise as a string);
- ``confidence-below``: a row of class probabilities per record;
- ``bounded-regression``: one number per record.

Loading never unpickles (object arrays are refused) and checks each array's header
against the file and ``max_bytes`` before allocating it.

Example::

    Records(frames, face_counts).save("faces.npz")
    records = Records.load("faces.npz")
    outputs = records.outputs_for(create_measurement("empty"))    # [0, 2, 0, 1, ...]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.infi.measurements import Measurement, MeasurementError
from coinfer.sdk.infi.modalities import InputError, ModalitySpec
from coinfer.sdk.npz import NpzError, read_arrays, write_arrays

#: Largest total size of the decoded arrays :meth:`Records.load` accepts by default.
MAX_RECORDS_BYTES = 4 << 30
#: How a numeric or string ``outputs`` row reads for each built-in measurement.
OUTPUT_FORMS = {"empty": "count", "count": "count", "class-subset": "label", "label": "label",
                "confidence-below": "probabilities", "bounded-regression": "value"}
_CHANNELS = (1, 3, 4)


class RecordsError(CoinferError, ValueError):
    """A records file or array that cannot be used: missing, corrupt, too large, mis-shaped."""


@dataclass(frozen=True)
class Records:
    """``inputs`` and (optionally) the model's ``outputs``, one row per record."""

    inputs: np.ndarray
    outputs: np.ndarray | None = None

    def __post_init__(self) -> None:
        inputs = np.asarray(self.inputs)
        if inputs.dtype.kind not in "biuf":
            raise RecordsError(f"'inputs' must be numeric, got dtype {inputs.dtype}")
        if inputs.ndim < 2 or inputs.shape[0] == 0:
            raise RecordsError(f"'inputs' must be (records, ...) with at least one record and one axis "
                               f"per record, got shape {inputs.shape}")
        object.__setattr__(self, "inputs", inputs)
        if self.outputs is None:
            return
        outputs = np.asarray(self.outputs)
        if outputs.dtype.kind not in "biufU":
            raise RecordsError(f"'outputs' must be numbers or unicode strings, got dtype {outputs.dtype}")
        if outputs.ndim not in (1, 2):
            raise RecordsError(f"'outputs' must be (records,) or (records, values), "
                               f"got shape {outputs.shape}")
        if outputs.shape[0] != inputs.shape[0]:
            raise RecordsError(f"'inputs' has {inputs.shape[0]} rows but 'outputs' has {outputs.shape[0]}: "
                               "one output per input")
        object.__setattr__(self, "outputs", outputs)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @classmethod
    def load(cls, path: str | os.PathLike, *, require_outputs: bool = True,
             max_bytes: int = MAX_RECORDS_BYTES) -> Records:
        """Read and check a records ``.npz``; every problem raises :class:`RecordsError` naming it."""
        path = Path(path)
        try:
            arrays = read_arrays(path, required=("inputs", "outputs")[:2 if require_outputs else 1],
                                 max_bytes=max_bytes, what="records file")
        except NpzError as error:
            raise RecordsError(f"{error}; a records file holds 'inputs' and 'outputs'"
                               if "missing array" in str(error) else str(error)) from error
        try:
            return cls(arrays["inputs"], arrays.get("outputs"))
        except RecordsError as error:
            raise RecordsError(f"{path}: {error}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the records as ``.npz`` atomically (an interrupted save leaves no partial file)."""
        arrays = {"inputs": self.inputs} if self.outputs is None else {"inputs": self.inputs,
                                                                         "outputs": self.outputs}
        return write_arrays(path, arrays)

    def spec(self, modality: str | None = None, vocabulary: int | None = None) -> ModalitySpec:
        """The filter input the records fit; ``modality`` is inferred from the shape when unambiguous.

        Text needs a ``vocabulary`` (default: the largest token id + 1).
        """
        shape = self.inputs.shape[1:]
        integer = self.inputs.dtype.kind in "biu"
        if modality is None:
            modality = _infer_modality(shape, integer)
        if modality != "text":
            if vocabulary is not None:
                raise InputError(f"a vocabulary applies to text inputs, not {modality}")
            return ModalitySpec(modality, shape)
        if not integer:
            raise InputError(f"text inputs are token ids: integers, got dtype {self.inputs.dtype}")
        if vocabulary is None:
            vocabulary = max(int(self.inputs.max()) + 1, 2)
        return ModalitySpec(modality, shape, vocabulary)

    def outputs_for(self, measurement: Measurement) -> list[Any]:
        """The outputs as ``measurement`` reads them (see the module docstring), one per record."""
        outputs = self.outputs
        if outputs is None:
            raise RecordsError("these records have no 'outputs' (the model's results)")
        form = OUTPUT_FORMS.get(measurement.name)
        strings = outputs.dtype.kind == "U"
        if form is None:
            return list(outputs)
        if form == "label":
            if outputs.ndim == 2 and outputs.shape[1] > 1 and not strings:
                return [str(int(index)) for index in np.argmax(outputs, axis=1)]
            values = _column(outputs, measurement)
            return [str(v) for v in values] if strings else [str(int(v)) for v in _whole(values, measurement)]
        if strings:
            raise MeasurementError(f"{measurement.name!r} needs numeric outputs, got strings")
        if form == "probabilities":
            if outputs.ndim != 2 or outputs.shape[1] < 2:
                raise MeasurementError(f"{measurement.name!r} needs a row of class probabilities per record: "
                                       f"outputs of shape (records, classes), got {outputs.shape}")
            return list(outputs.astype(np.float64))
        values = _column(outputs, measurement)
        if form == "count":
            whole = _whole(values, measurement)
            if np.any(whole < 0):
                raise MeasurementError(f"{measurement.name!r} reads outputs as result counts; "
                                       "got a negative one")
            return [int(v) for v in whole]
        return [float(v) for v in values]


def _infer_modality(shape: tuple[int, ...], integer: bool) -> str:
    if len(shape) == 1 and not integer:
        return "vector"
    if len(shape) == 3 and shape[-1] in _CHANNELS:
        return "image"
    if len(shape) == 4 and shape[-1] in _CHANNELS:
        return "video"
    if len(shape) >= 5:
        return "vector"
    candidates = {1: "text or vector", 2: "audio or vector"}.get(len(shape), "image, video or vector")
    kind = "integer" if integer else "float"
    raise InputError(f"cannot tell the modality of {kind} inputs shaped {shape}: it could be {candidates}; "
                     "name the modality")


def _column(outputs: np.ndarray, measurement: Measurement) -> np.ndarray:
    """One value per record from (records,) or (records, 1) outputs."""
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.ndim != 1:
        raise MeasurementError(f"{measurement.name!r} needs one value per record: outputs of shape "
                               f"(records,), got {outputs.shape}")
    return outputs


def _whole(values: np.ndarray, measurement: Measurement) -> np.ndarray:
    if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise MeasurementError(f"{measurement.name!r} reads outputs as whole numbers (counts or class ids); "
                               "got fractions or non-finite values")
    return values.astype(np.int64)
