"""Redundancy measurements: which model outputs are useless (skip) or interchangeable (reuse).

A measurement looks only at the model's output ``y = h(x)``, never at ground truth
(paper sec. 3.1: the filter learns ``f_h o h``). Built-ins (``MEASUREMENTS`` registry):

skip (one output -> redundant or not)

- ``empty``: nothing detected (an empty box array, a zero count, ``None``);
- ``class-subset``: the label is outside the labels the application acts on;
- ``confidence-below``: the classifier's top probability is below a threshold;
- ``bounded-regression``: a bounded score (e.g. recognised words) is below a threshold;

reuse (two outputs -> interchangeable or not)

- ``count``: the same number of detections;
- ``label``: the same class label.

Each carries the paper's filterability verdict (sec. 3.2): a filter for a class subset or
a bounded regression is a simpler function than the model, so it can be learned cheaply;
"confidence below a threshold" needs the model's whole decision surface, so a filter is at
least as complex as the model itself. ``coinfer infi analyze`` reports the verdict.

Example:

>>> import numpy as np
>>> from coinfer.sdk.infi import create_measurement
>>> topics = create_measurement("class-subset", keep=["sports", "finance"])
>>> topics.kind, topics.filterable
('skip', True)
>>> topics.redundant_many(["sports", "weather", "finance", "health"])
array([False,  True, False,  True])
>>> create_measurement("empty").redundant_many([np.zeros((0, 4)), np.ones((2, 4)), 0, None])
array([ True, False,  True,  True])
>>> create_measurement("confidence-below", threshold=0.9).filterable   # no cheaper filter exists
False
>>> count = create_measurement("count")                 # reuse: two outputs are interchangeable
>>> count.kind, count.same(np.ones((2, 4)), [7, 8]), count.key(np.ones((2, 4)))
('reuse', True, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.gate.redundancy import CountChanged, LabelChanged, RedundancyMeasure, result_count
from coinfer.sdk.named_factories import NamedFactories


class MeasurementError(CoinferError, ValueError):
    """A model output the measurement cannot interpret, or bad measurement options."""


class Measurement:
    """Base of all measurements: ``kind`` is ``"skip"`` or ``"reuse"``."""

    name = "base"
    kind = "skip"
    filterable = True
    #: Why the theory says so (sec. 3.2), printed by ``coinfer infi analyze``.
    reason = ""

    def options(self) -> dict[str, Any]:
        """The constructor arguments, so a filter artifact can rebuild its measurement."""
        return {}


class SkipMeasurement(Measurement):
    """Unary: ``redundant(y)`` says the output needs no action, so skipping ``x`` loses nothing."""

    def redundant(self, output: Any) -> bool:
        raise NotImplementedError

    def redundant_many(self, outputs: Sequence[Any]) -> np.ndarray:
        return np.array([self.redundant(output) for output in outputs], dtype=bool)


class Empty(SkipMeasurement):
    name = "empty"
    reason = ("'nothing detected' is one class of the detector's output (count = 0): a class-subset "
              "problem, learnable by a filter simpler than the detector")

    def redundant(self, output: Any) -> bool:
        if output is None:
            return True
        try:
            return result_count(output) == 0
        except (TypeError, ValueError) as error:
            raise MeasurementError(
                f"'empty' needs a count or a sequence of detections, got {output!r}") from error


class ClassSubset(SkipMeasurement):
    name = "class-subset"
    reason = ("the filter only separates the kept classes from the rest, a coarser partition than "
              "the model's: its hypothesis family is no more complex than the model's")

    def __init__(self, keep: Iterable[Hashable]) -> None:
        self.keep = frozenset(keep)
        if not self.keep:
            raise MeasurementError("class-subset needs at least one label to keep")

    def options(self) -> dict[str, Any]:
        return {"keep": sorted(self.keep, key=str)}

    def redundant(self, output: Any) -> bool:
        return _label(output) not in self.keep


class ConfidenceBelow(SkipMeasurement):
    name = "confidence-below"
    filterable = False
    reason = ("whether the top probability falls below a threshold depends on the model's whole "
              "decision surface near every class boundary: a filter must be at least as complex as "
              "the model, so it cannot pay off")

    def __init__(self, threshold: float = 0.9) -> None:
        if not 0.0 < threshold < 1.0:
            raise MeasurementError(f"confidence threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)

    def options(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def redundant(self, output: Any) -> bool:
        probabilities = _probabilities(output)
        return float(probabilities.max()) < self.threshold


class BoundedRegression(SkipMeasurement):
    name = "bounded-regression"
    reason = ("thresholding a bounded regression output is a binary problem whose hypothesis family "
              "is bounded by the regressor's: learnable by a simpler filter")

    def __init__(self, threshold: float, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        low, high = (float(b) for b in bounds)
        if not low <= threshold <= high:
            raise MeasurementError(f"threshold {threshold} lies outside the bounds [{low}, {high}]")
        self.threshold, self.bounds = float(threshold), (low, high)

    def options(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "bounds": list(self.bounds)}

    def redundant(self, output: Any) -> bool:
        value = _scalar(output)
        low, high = self.bounds
        if not low <= value <= high:
            raise MeasurementError(f"bounded-regression output {value} lies outside [{low}, {high}]")
        return value < self.threshold


class ReuseMeasurement(Measurement):
    """Pairwise: two outputs are interchangeable; ``key`` groups them for the cache's vote."""

    kind = "reuse"
    reason = ("two inputs share a result when their outputs fall in the same class: the pair filter "
              "learns a class-subset problem on pairs")

    def __init__(self, pairwise: RedundancyMeasure, key: Callable[[Any], Hashable]) -> None:
        self._pairwise, self._key = pairwise, key

    def same(self, first: Any, second: Any) -> bool:
        return not self._pairwise.necessary(first, second)

    def key(self, output: Any) -> Hashable:
        return self._key(output)

    def keys(self, outputs: Sequence[Any]) -> list[Hashable]:
        return [self._key(output) for output in outputs]


class CountUnchanged(ReuseMeasurement):
    name = "count"

    def __init__(self) -> None:
        super().__init__(CountChanged(), result_count)


class LabelUnchanged(ReuseMeasurement):
    name = "label"

    def __init__(self) -> None:
        super().__init__(LabelChanged(), _label)


def _label(output: Any) -> Hashable:
    """A classification output as its label: the label itself, or the argmax of probabilities."""
    if isinstance(output, str | int | np.integer):
        return output.item() if isinstance(output, np.integer) else output
    if isinstance(output, dict) and "label" in output:
        return output["label"]
    array = np.asarray(output)
    if array.ndim == 1 and array.size > 1 and array.dtype.kind == "f":
        return int(np.argmax(array))
    raise MeasurementError(f"cannot read a class label from {output!r}")


def _probabilities(output: Any) -> np.ndarray:
    if isinstance(output, dict) and "probabilities" in output:
        output = output["probabilities"]
    array = _floats(output)
    if array is None or array.ndim != 1 or array.size < 2 or not np.all(np.isfinite(array)):
        raise MeasurementError(f"confidence-below needs a probability vector, got {output!r}")
    return array


def _scalar(output: Any) -> float:
    if isinstance(output, dict) and "value" in output:
        output = output["value"]
    array = _floats(output)
    if array is None or array.size != 1 or not np.isfinite(array).all():
        raise MeasurementError(f"bounded-regression needs one finite number, got {output!r}")
    return float(array.reshape(()))


def _floats(output: Any) -> np.ndarray | None:
    try:
        return np.asarray(output, dtype=np.float64)
    except (TypeError, ValueError):
        return None


MEASUREMENTS: NamedFactories[Measurement] = NamedFactories(
    "measurement", MeasurementError,
    Empty, ClassSubset, ConfidenceBelow, BoundedRegression, CountUnchanged, LabelUnchanged)


def create_measurement(name: str, **options: Any) -> Measurement:
    """A built-in measurement by name, e.g. ``create_measurement("confidence-below", threshold=0.8)``."""
    return MEASUREMENTS.create(name, **options)


def describe_measurements(measurements: Mapping[str, Measurement]) -> dict[str, dict[str, Any]]:
    """Per task, a measurement as JSON (its name and options), for an artifact's manifest."""
    return {task: {"name": m.name, "options": m.options()} for task, m in measurements.items()}


def measurements_from_description(data: Any) -> dict[str, Measurement]:
    """The measurements :func:`describe_measurements` wrote, rebuilt (a manifest is untrusted)."""
    try:
        return {str(task): create_measurement(str(m["name"]), **m["options"]) for task, m in data.items()}
    except (KeyError, TypeError, AttributeError) as error:
        raise MeasurementError(f"bad measurement description {data!r}: {error}") from error
