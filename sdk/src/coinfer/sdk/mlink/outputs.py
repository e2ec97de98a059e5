"""What a black-box model outputs, as far as a link is concerned: its format, task and metric.

MLink only ever sees models' outputs, in one of two formats: fixed-length **vectors**
(class probabilities, a presence score, a count, a box) and variable-length **sequences**
of token ids (recognised words, a transcript). The task fixes a link's output activation
and loss; the metric turns agreement with the real model's output into a performance
in [0, 1], the quantity the budgeted planner maximises.

Example::

    faces = OutputSpec.classes(4)                 # face count 0, 1, 2, 3+ as probabilities
    speech = OutputSpec.presence()                # the VAD's speech probability
    people = OutputSpec.boxes()                   # the largest person box, scored by IoU
    words = OutputSpec.sequence(max_length=12)    # recognised words as token ids
    batch = speech.check([[0.1], [0.9]], "speech")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError

#: task -> the metrics that can score it (the first is the default)
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "softmax": ("accuracy",),
    "sigmoid": ("accuracy", "map"),
    "linear": ("mae", "iou"),
    "sequence": ("wer",),
}
#: The longest sequence and the widest vector a spec may declare: bounds on allocation.
MAX_SEQUENCE_LENGTH = 512
MAX_VECTOR_SIZE = 4096


class OutputError(CoinferError, ValueError):
    """Model outputs that do not match their declared format."""


@dataclass(frozen=True)
class OutputSpec:
    """A model output's format. ``size`` is the vector width (unused for sequences);
    ``scale`` is the mean absolute error that scores 0 (``mae`` only); ``max_length`` bounds
    sequences."""

    task: str
    size: int = 1
    metric: str = ""
    max_length: int = 32
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASK_METRICS:
            raise OutputError(f"unknown task {self.task!r}; choose from {', '.join(TASK_METRICS)}")
        metric = self.metric or TASK_METRICS[self.task][0]
        if metric not in TASK_METRICS[self.task]:
            raise OutputError(f"metric {metric!r} does not score a {self.task} output; "
                              f"choose from {', '.join(TASK_METRICS[self.task])}")
        object.__setattr__(self, "metric", metric)
        if not isinstance(self.size, int) or not 1 <= self.size <= MAX_VECTOR_SIZE:
            raise OutputError(f"size must be an integer in [1, {MAX_VECTOR_SIZE}], got {self.size!r}")
        if self.task == "softmax" and self.size < 2:
            raise OutputError("a softmax output needs at least 2 classes")
        if metric == "iou" and self.size != 4:
            raise OutputError(f"an iou-scored output is a box [x, y, w, h] of size 4, got size {self.size}")
        if not isinstance(self.max_length, int) or not 1 <= self.max_length <= MAX_SEQUENCE_LENGTH:
            raise OutputError(f"max_length must be in [1, {MAX_SEQUENCE_LENGTH}], got {self.max_length!r}")
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise OutputError(f"scale must be a positive number, got {self.scale!r}")

    @staticmethod
    def classes(count: int) -> OutputSpec:
        """Single-label classification: a probability row over ``count`` classes."""
        return OutputSpec("softmax", count)

    @staticmethod
    def presence(labels: int = 1) -> OutputSpec:
        """Independent yes/no scores in [0, 1] (one or several labels), scored by accuracy."""
        return OutputSpec("sigmoid", labels)

    @staticmethod
    def labels(count: int) -> OutputSpec:
        """Multi-label classification scored by mean average precision."""
        return OutputSpec("sigmoid", count, metric="map")

    @staticmethod
    def regression(size: int = 1, scale: float = 1.0) -> OutputSpec:
        """Real values scored by mean absolute error; an error of ``scale`` scores 0."""
        return OutputSpec("linear", size, scale=scale)

    @staticmethod
    def boxes() -> OutputSpec:
        """One box ``[x, y, w, h]`` in frame fractions (all zero: nothing found), scored by IoU."""
        return OutputSpec("linear", 4, metric="iou")

    @staticmethod
    def sequence(max_length: int = 32) -> OutputSpec:
        """Variable-length token ids (non-negative ints), scored by 1 - word error rate."""
        return OutputSpec("sequence", max_length=max_length)

    @property
    def is_sequence(self) -> bool:
        return self.task == "sequence"

    def check(self, outputs: Any, name: str = "output") -> Any:
        """Validated outputs: float32 ``[N, size]`` for vectors, a list of int tuples for
        sequences. Errors name ``name`` and the first offending row."""
        if self.is_sequence:
            return check_sequences(outputs, self.max_length, name)
        try:
            array = np.asarray(outputs, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise OutputError(f"{name}: outputs are not numeric vectors ({error})") from None
        if array.ndim == 1 and self.size == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != self.size:
            raise OutputError(f"{name}: expected vectors of shape [N, {self.size}], got {array.shape}")
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            raise OutputError(f"{name}: row {int(np.flatnonzero(bad)[0])} holds NaN or infinity")
        if self.task in ("softmax", "sigmoid") and ((array < 0) | (array > 1)).any():
            row = int(np.flatnonzero(((array < 0) | (array > 1)).any(axis=1))[0])
            raise OutputError(f"{name}: {self.task} outputs are probabilities in [0, 1]; row {row} is not")
        return array

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "size": self.size, "metric": self.metric,
                "max_length": self.max_length, "scale": self.scale}

    @staticmethod
    def from_description(description: Any) -> OutputSpec:
        if not isinstance(description, dict):
            raise OutputError(f"an output description is a mapping, got {type(description).__name__}")
        unknown = set(description) - {"task", "size", "metric", "max_length", "scale"}
        if unknown or "task" not in description:
            raise OutputError(f"bad output description keys: {sorted(description)}")
        return OutputSpec(**description)


def check_sequences(outputs: Any, max_length: int, name: str = "output") -> list[tuple[int, ...]]:
    """Token-id sequences as int tuples; refuses negative ids and sequences over ``max_length``."""
    if isinstance(outputs, np.ndarray) and outputs.dtype != object:
        raise OutputError(f"{name}: sequences are a list of token-id lists, got a {outputs.dtype} array")
    if not isinstance(outputs, Sequence | np.ndarray):
        raise OutputError(f"{name}: sequences are a list of token-id lists, got {type(outputs).__name__}")
    checked = []
    for row, sequence in enumerate(outputs):
        try:
            ids = tuple(int(token) for token in sequence)
        except (TypeError, ValueError):
            raise OutputError(f"{name}: row {row} is not a sequence of integer token ids") from None
        if any(token < 0 for token in ids):
            raise OutputError(f"{name}: row {row} holds a negative token id")
        if len(ids) > max_length:
            raise OutputError(f"{name}: row {row} has {len(ids)} tokens, more than max_length {max_length}")
        checked.append(ids)
    return checked


#: Ids the links reserve in their own compact vocabularies.
PAD, BOS, EOS, UNKNOWN = 0, 1, 2, 3
RESERVED = 4


@dataclass(frozen=True)
class Vocabulary:
    """The token ids a link has seen in training, mapped to compact ids after the reserved
    ones, so an output layer is as wide as the tokens that occur, not the model's whole
    dictionary (6,625 characters for PP-OCRv4). Unseen ids map to UNKNOWN."""

    tokens: tuple[int, ...]

    @staticmethod
    def build(sequences: Sequence[Sequence[int]]) -> Vocabulary:
        return Vocabulary(tuple(sorted({token for sequence in sequences for token in sequence})))

    @property
    def size(self) -> int:
        return RESERVED + len(self.tokens)

    def encode(self, sequences: Sequence[Sequence[int]], length: int, *, end: bool = True) -> np.ndarray:
        """``[N, length]`` int64 compact ids, EOS-terminated when ``end``, PAD after."""
        index = {token: RESERVED + i for i, token in enumerate(self.tokens)}
        out = np.full((len(sequences), length), PAD, np.int64)
        for row, sequence in enumerate(sequences):
            ids = [index.get(token, UNKNOWN) for token in sequence] + ([EOS] if end else [])
            out[row, :len(ids)] = ids[:length]
        return out

    def decode(self, ids: Sequence[int]) -> tuple[int, ...]:
        """Compact ids up to the first EOS back to the model's token ids (UNKNOWN dropped)."""
        out = []
        for compact in ids:
            compact = int(compact)
            if compact in (EOS, PAD):
                break
            if compact >= RESERVED:
                out.append(self.tokens[compact - RESERVED])
        return tuple(out)
