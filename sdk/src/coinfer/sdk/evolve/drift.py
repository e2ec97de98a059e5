"""How far a device's live data has drifted from what its model was trained on, and what to do.

The edge labels the frames a device uploads with the global model, embeds them with a feature
extractor, and compares them class by class with the features of the device model's training
data (NestEvo eq. 11): for every class ``c``

    ``|| (mean(train_c) - mean(live_c)) / sigma_c ||_2``

where ``sigma_c`` is the per-dimension standard deviation of the union of both sides' class-``c``
features. Dividing by the spread of the class makes the distance a number of standard
deviations, so it does not depend on the units of any feature dimension; summing over classes
gives the device's drift ``delta``. :func:`class_drift` computes it.

Labels are multi-label (a frame showing a car and a person counts towards both classes). Frames
with no positive label form a *background* pseudo-class, appended after the real ones: a camera
whose empty street turned from day to night has drifted even if no object ever appears, and
without it such frames would be invisible to the measure. Pass ``background=False`` to score
object classes only. A class that has no frame on one side (or on both) has no mean to compare:
it contributes 0 and is reported as ``None`` in :attr:`DriftReport.per_class`, so a caller can
tell "no drift" from "not measurable" (a class the device never saw before is usually a reason
to collect more frames, not a number).

:class:`DriftPolicy` turns the devices' deltas into a decision (eqs. 12-13): the devices whose
delta exceeds ``gamma`` have drifted; if their count reaches ``epsilon`` the global model's
supervision is no longer trusted and the fleet co-evolves, otherwise the edge only distils the
current global model into the drifted devices.

Example: one class, the live frames shifted by one training standard deviation in both
dimensions, and a policy that co-evolves once two devices drift.

>>> import numpy as np
>>> train = np.array([[-1.0, 1.0], [1.0, -1.0]] * 4)
>>> labels = np.ones((8, 1), dtype=bool)
>>> report = class_drift(train, labels, train + 1.0, labels, background=False)
>>> round(report.delta, 4), report.per_class == (report.delta,)
(1.2649, True)
>>> decision = DriftPolicy(gamma=1.0, epsilon=2).decide({"cam-a": report.delta, "cam-b": 0.2})
>>> decision.drifted, decision.delta_global, decision.mode
(('cam-a',), 1, 'device-only')
>>> DriftPolicy(gamma=1.0, epsilon=2).decide({"cam-a": 1.3, "cam-b": 1.1}).mode
'co-evolution'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError

Mode = Literal["device-only", "co-evolution"]


@dataclass(frozen=True)
class DriftReport:
    """A device's drift ``delta`` (the sum of the measurable classes' distances) and the distance
    of each class in label order, the background pseudo-class last when it was scored; ``None``
    marks a class with no frame on at least one side."""

    delta: float
    per_class: tuple[float | None, ...]

    @property
    def unmeasured(self) -> tuple[int, ...]:
        """Indices (into :attr:`per_class`) of the classes that could not be compared."""
        return tuple(index for index, value in enumerate(self.per_class) if value is None)

    def __float__(self) -> float:
        return self.delta


def _features(name: str, features: np.ndarray) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidArgumentError(f"{name} must be a 2-D array [frames, dims], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidArgumentError(f"{name} contains NaN or infinite values")
    return array


def _labels(name: str, labels: np.ndarray, frames: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2 or array.shape[0] != frames:
        raise InvalidArgumentError(f"{name} must be a 2-D array [frames={frames}, classes], got shape "
                                   f"{array.shape}")
    if array.dtype != np.bool_:
        if not np.issubdtype(array.dtype, np.integer) or not np.isin(array, (0, 1)).all():
            raise InvalidArgumentError(f"{name} must be boolean (or 0/1 integers), got dtype {array.dtype}")
        array = array.astype(bool)
    return array


def class_drift(train_features: np.ndarray, train_labels: np.ndarray, live_features: np.ndarray,
                live_labels: np.ndarray, *, background: bool = True,
                sigma_floor: float = 1e-6) -> DriftReport:
    """The drift between a model's training frames and a device's live frames (eq. 11).

    ``*_features`` are ``[frames, dims]`` embeddings, ``*_labels`` ``[frames, classes]`` booleans
    (several may be true). ``sigma_floor`` (in feature units) bounds the standard deviation from
    below, so a dimension that is constant on both sides contributes 0 and one that is nearly
    constant does not turn rounding noise into drift.
    """
    train = _features("train_features", train_features)
    live = _features("live_features", live_features)
    if train.shape[1] != live.shape[1]:
        raise InvalidArgumentError(f"train and live features have different dims: {train.shape[1]} and "
                                   f"{live.shape[1]}")
    train_classes = _labels("train_labels", train_labels, train.shape[0])
    live_classes = _labels("live_labels", live_labels, live.shape[0])
    if train_classes.shape[1] != live_classes.shape[1]:
        raise InvalidArgumentError(f"train and live labels have different class counts: "
                                   f"{train_classes.shape[1]} and {live_classes.shape[1]}")
    if not (math.isfinite(sigma_floor) and sigma_floor > 0):
        raise InvalidArgumentError(f"sigma_floor must be a finite number > 0, got {sigma_floor}")
    if background:
        train_classes = np.column_stack([train_classes, ~train_classes.any(axis=1)])
        live_classes = np.column_stack([live_classes, ~live_classes.any(axis=1)])
    per_class: list[float | None] = []
    for column in range(train_classes.shape[1]):
        train_c = train[train_classes[:, column]]
        live_c = live[live_classes[:, column]]
        if len(train_c) == 0 or len(live_c) == 0:
            per_class.append(None)
            continue
        sigma = np.maximum(np.concatenate([train_c, live_c]).std(axis=0), sigma_floor)
        shift = (train_c.mean(axis=0) - live_c.mean(axis=0)) / sigma
        per_class.append(float(np.linalg.norm(shift)))
    delta = float(sum(value for value in per_class if value is not None))
    return DriftReport(delta, tuple(per_class))


@dataclass(frozen=True)
class Decision:
    """Which devices drifted (sorted ids), how many (``delta_global``, eq. 13) and the evolution
    mode this calls for."""

    drifted: tuple[str, ...]
    delta_global: int
    mode: Mode


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds of eqs. 12-13: a device drifted when its delta is above ``gamma``; the fleet
    co-evolves when at least ``epsilon`` devices drifted.

    The paper says below ``epsilon`` device-only, above it co-evolution, and leaves equality open
    in the prose; its Algorithm 2 branches on ``delta_global < epsilon`` and co-evolves otherwise,
    and this follows the algorithm: ``delta_global >= epsilon`` co-evolves. It also reads
    naturally as "``epsilon`` drifted devices are enough". ``epsilon=0`` always co-evolves (an
    ablation switch); a delta exactly equal to ``gamma`` is not drift (eq. 12 is strict).
    """

    gamma: float
    epsilon: int

    def __post_init__(self) -> None:
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)):
            raise InvalidArgumentError(f"gamma must be a number, got {str(self.gamma)[:40]!r}")
        try:
            gamma = float(self.gamma)
        except OverflowError:
            raise InvalidArgumentError("gamma must be a finite number >= 0, got an integer too large for "
                                       "a float") from None
        if not (math.isfinite(gamma) and gamma >= 0):
            raise InvalidArgumentError(f"gamma must be a finite number >= 0, got {gamma!r}")
        object.__setattr__(self, "gamma", gamma)
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, int) or self.epsilon < 0:
            raise InvalidArgumentError(f"epsilon must be an integer >= 0, got {self.epsilon!r}")

    def decide(self, deltas: Mapping[str, float | DriftReport]) -> Decision:
        """The decision for one round, from each device's delta (a float or a :class:`DriftReport`)."""
        drifted = []
        for device, delta in deltas.items():
            value = float(delta)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidArgumentError(f"delta of device {device!r} must be a finite number >= 0, "
                                           f"got {delta!r}")
            if value > self.gamma:
                drifted.append(device)
        count = len(drifted)
        mode: Mode = "co-evolution" if count >= self.epsilon else "device-only"
        return Decision(tuple(sorted(drifted)), count, mode)
