"""When was running the downstream model on a frame necessary, and when do two results agree?

PacketGame learns from this feedback: an inference is *necessary* when its result
differs (in the task's sense) from the result the system last reported for the stream;
otherwise carrying the old result over would have been just as good. The same notion
scores accuracy: a reported result is correct when it agrees with the decode-all result.

Built-in measures (``REDUNDANCY`` registry):

- ``count``: the number of detections changed (counting tasks);
- ``iou``: some detection has no match with IoU >= threshold in the other result;
- ``label``: the class label changed;
- ``class-subset``: the label is outside the subset of labels nobody needs to see.

Example::

    measure = create_measure("iou", threshold=0.5)
    measure.necessary(previous_boxes, current_boxes)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from coinfer.sdk.boxes import box_iou
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.named_factories import NamedFactories


class RedundancyMeasure:
    """Base: subclasses define :meth:`necessary`; agreement is its negation unless overridden."""

    name = "base"
    #: Whether two results agree exactly when reporting one instead of the other is unnecessary.
    agreement_is_negation = True

    def necessary(self, reported: Any, current: Any) -> bool:
        raise NotImplementedError

    def agrees(self, reported: Any, truth: Any) -> bool:
        return not self.necessary(reported, truth)

    def necessary_many(self, reported: Sequence[Any], current: Sequence[Any]) -> np.ndarray:
        return np.array([self.necessary(a, b) for a, b in zip(reported, current, strict=True)], dtype=bool)

    def agrees_many(self, reported: Sequence[Any], truth: Sequence[Any]) -> np.ndarray:
        return np.array([self.agrees(a, b) for a, b in zip(reported, truth, strict=True)], dtype=bool)


def result_count(result: Any) -> int:
    """A counting result as a number: a count already, or the length of a box array."""
    return int(result) if np.ndim(result) == 0 else len(result)


class CountChanged(RedundancyMeasure):
    """Counting: results are box arrays or plain counts."""

    name = "count"

    def necessary(self, reported: Any, current: Any) -> bool:
        return result_count(reported) != result_count(current)

    def necessary_many(self, reported: Sequence[Any], current: Sequence[Any]) -> np.ndarray:
        return _counts(reported) != _counts(current)


def _counts(results: Sequence[Any]) -> np.ndarray:
    if isinstance(results, np.ndarray) and results.ndim == 1:
        return results
    return np.array([result_count(result) for result in results])


class BoxesMoved(RedundancyMeasure):
    """Detection: necessary unless every box pairs one-to-one with a box of IoU >= threshold."""

    name = "iou"

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise InvalidArgumentError(f"IoU threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def necessary(self, reported: Any, current: Any) -> bool:
        a = np.asarray(reported, dtype=np.float64).reshape(-1, 4)
        b = np.asarray(current, dtype=np.float64).reshape(-1, 4)
        if len(a) != len(b):
            return True
        if len(a) == 0:
            return False
        overlap = box_iou(a[:, None], b[None])
        used = np.zeros(len(b), dtype=bool)
        for row in np.argsort(-overlap.max(axis=1)):
            candidates = np.where(used, -1.0, overlap[row])
            best = int(np.argmax(candidates))
            if candidates[best] < self.threshold:
                return True
            used[best] = True
        return False


class LabelChanged(RedundancyMeasure):
    """Classification: necessary when the label differs from the reported one."""

    name = "label"

    def necessary(self, reported: Any, current: Any) -> bool:
        return reported != current


class ClassSubset(RedundancyMeasure):
    """Classification where some labels (e.g. "no fire") need no action: those are redundant."""

    name = "class-subset"
    agreement_is_negation = False

    def __init__(self, redundant: Iterable[Any] = (0,)) -> None:
        self.redundant = frozenset(redundant)
        if not self.redundant:
            raise InvalidArgumentError("class-subset needs at least one redundant label, got none")

    def necessary(self, reported: Any, current: Any) -> bool:
        return current not in self.redundant

    def agrees(self, reported: Any, truth: Any) -> bool:
        return reported == truth or (reported in self.redundant and truth in self.redundant)


REDUNDANCY: NamedFactories[RedundancyMeasure] = NamedFactories(
    "redundancy measure", InvalidArgumentError, CountChanged, BoxesMoved, LabelChanged, ClassSubset)


def create_measure(name: str, **options: Any) -> RedundancyMeasure:
    """A built-in measure by name, e.g. ``create_measure("iou", threshold=0.7)``."""
    return REDUNDANCY.create(name, **options)
