"""Predict how long a training (evolution) task takes from what it trains on.

The scheduler ranks tasks by predicted training time (shortest first), so the edge needs the
time before running the task. NestEvo fits a three-layer MLP on 200 measured runs; an edge
host here sees tens of runs, too few for a network but enough for a power law. Training time is
close to a product of its causes -- proportional to samples and epochs, roughly to the work per
sample, with a batch size that buys some efficiency -- so its logarithm is close to linear in
the logarithms of the features:

    ``log t = log(units * k) + sum_j b_j (log x_j - mean_j) / scale_j``,
    ``units = samples * epochs * work``

with ``work`` the given work per sample (e.g. multiply-accumulates) or, when the tasks do not
give one, the trainable parameter count. :class:`TrainingTimeModel` fits ``k`` and the ``b_j``
by ridge regression (numpy ``lstsq`` on an augmented system), which shrinks towards the plain
proportional model ``t = k * units`` when the runs do not support more, and leaves out any
feature that did not vary among the runs.

Before enough runs exist it falls back to the proportional model: ``k`` is a guess
(``seconds_per_unit``) with no run, and the geometric mean of ``seconds / units`` over the runs
afterwards. Even the guess orders tasks correctly under that model, which is what a
shortest-first scheduler needs first.

The fitted model is plain numbers: :meth:`TrainingTimeModel.to_dict` gives a JSON-able dict and
:meth:`TrainingTimeModel.from_dict` checks and restores it.

Example: ten measured runs of a host that takes 1 microsecond per unit of work.

>>> runs = [MeasuredRun(TaskFeatures(trainable_params=p, samples=s, epochs=e, batch_size=32),
...                     1e-6 * p * s * e)
...         for p, s, e in [(1e5, 200, 1), (2e5, 400, 2), (5e4, 800, 3), (3e5, 100, 5), (1e6, 300, 1),
...                         (8e5, 600, 2), (2e4, 1000, 4), (4e5, 250, 3), (6e5, 700, 1), (1e5, 900, 2)]]
>>> model = TrainingTimeModel().fit(runs)
>>> model.fitted
'regression'
>>> round(model.predict(TaskFeatures(trainable_params=500_000, samples=500, epochs=2, batch_size=32)), 2)
500.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError

FORMAT = "coinfer.evolve.training-time/1"

Fitted = Literal["none", "proportional", "regression"]


def _positive(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{owner}: {name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class TaskFeatures:
    """What determines an evolution task's training time: the trainable parameters, the training
    samples, the epochs, the batch size and, optionally, the work per sample (e.g. the forward
    pass's multiply-accumulates; any unit, used consistently)."""

    trainable_params: float
    samples: float
    epochs: float
    batch_size: float
    work_per_sample: float | None = None

    def __post_init__(self) -> None:
        for name in ("trainable_params", "samples", "epochs", "batch_size"):
            _positive("TaskFeatures", name, getattr(self, name))
        if self.work_per_sample is not None:
            _positive("TaskFeatures", "work_per_sample", self.work_per_sample)


@dataclass(frozen=True)
class MeasuredRun:
    """One task as run, and the seconds its training took."""

    task: TaskFeatures
    seconds: float

    def __post_init__(self) -> None:
        _positive("MeasuredRun", "seconds", self.seconds)


FEATURES = ("trainable_params", "samples", "epochs", "batch_size", "work_per_sample")


def _log_features(task: TaskFeatures, uses_work: bool) -> np.ndarray:
    names = FEATURES if uses_work else FEATURES[:-1]
    return np.log(np.array([float(getattr(task, name)) for name in names]))


class TrainingTimeModel:
    """Seconds of training predicted from :class:`TaskFeatures`, fitted on :class:`MeasuredRun`.

    ``ridge`` is the penalty on the standardised log-feature slopes (relative to the number of
    runs), ``min_runs`` the runs needed before slopes are fitted at all, and ``seconds_per_unit``
    the guess used before any run.
    """

    def __init__(self, *, ridge: float = 1e-3, min_runs: int = 8, seconds_per_unit: float = 1e-9) -> None:
        if not (math.isfinite(ridge) and ridge >= 0):
            raise InvalidArgumentError(f"ridge must be a finite number >= 0, got {ridge}")
        if isinstance(min_runs, bool) or not isinstance(min_runs, int) or min_runs < 2:
            raise InvalidArgumentError(f"min_runs must be an integer >= 2, got {min_runs!r}")
        _positive("TrainingTimeModel", "seconds_per_unit", seconds_per_unit)
        self.ridge = float(ridge)
        self.min_runs = min_runs
        self.seconds_per_unit = float(seconds_per_unit)
        self.fitted: Fitted = "none"
        self.runs = 0
        self.uses_work: bool | None = None
        self.mean = np.zeros(0)
        self.scale = np.zeros(0)
        self.slopes = np.zeros(0)

    @staticmethod
    def _units(task: TaskFeatures, uses_work: bool) -> float:
        if uses_work and task.work_per_sample is None:
            raise InvalidArgumentError("this model was fitted on runs with work_per_sample; give it for the "
                                       "task too")
        work = task.trainable_params
        if uses_work and task.work_per_sample is not None:
            work = task.work_per_sample
        return float(task.samples) * float(task.epochs) * float(work)

    def fit(self, runs: Sequence[MeasuredRun]) -> TrainingTimeModel:
        """Fit on measured runs (replacing any earlier fit) and return the model. The work per
        sample is used when every run gives it."""
        if not runs:
            raise InvalidArgumentError("no measured runs to fit the training-time model on")
        for index, run in enumerate(runs):
            if not isinstance(run, MeasuredRun):
                raise InvalidArgumentError(f"run {index} must be a MeasuredRun, got {type(run).__name__}")
        uses_work = all(run.task.work_per_sample is not None for run in runs)
        log_ratio = np.array([math.log(run.seconds / self._units(run.task, uses_work)) for run in runs])
        self.uses_work, self.runs = uses_work, len(runs)
        if len(runs) < self.min_runs:
            self.seconds_per_unit = float(np.exp(log_ratio.mean()))
            self.fitted = "proportional"
            self.mean = self.scale = self.slopes = np.zeros(0)
            return self
        features = np.stack([_log_features(run.task, uses_work) for run in runs])
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        varied = scale > 1e-9
        scale = np.where(varied, scale, 1.0)
        standard = ((features - mean) / scale)[:, varied]
        # Ridge with an unpenalised intercept: append sqrt(lambda * n) * I rows for the slopes.
        design = np.column_stack([np.ones(len(runs)), standard])
        penalty = math.sqrt(self.ridge * len(runs)) * np.eye(design.shape[1])[1:]
        solution, *_ = np.linalg.lstsq(np.vstack([design, penalty]),
                                       np.concatenate([log_ratio, np.zeros(len(penalty))]), rcond=None)
        slopes = np.zeros(features.shape[1])
        slopes[varied] = solution[1:]
        self.seconds_per_unit = float(math.exp(solution[0]))
        self.mean, self.scale, self.slopes = mean, scale, slopes
        self.fitted = "regression"
        return self

    def predict(self, task: TaskFeatures) -> float:
        """Predicted training seconds of ``task``."""
        if not isinstance(task, TaskFeatures):
            raise InvalidArgumentError(f"task must be TaskFeatures, got {type(task).__name__}")
        uses_work = task.work_per_sample is not None if self.uses_work is None else self.uses_work
        log_seconds = math.log(self.seconds_per_unit * self._units(task, uses_work))
        if self.fitted == "regression":
            log_seconds += float(self.slopes @ ((_log_features(task, uses_work) - self.mean) / self.scale))
        return math.exp(log_seconds)

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-able numbers (no pickle)."""
        return {"format": FORMAT, "fitted": self.fitted, "runs": self.runs, "uses_work": self.uses_work,
                "ridge": self.ridge, "min_runs": self.min_runs, "seconds_per_unit": self.seconds_per_unit,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "slopes": self.slopes.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingTimeModel:
        """Restore a model written by :meth:`to_dict`, checking every field."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise InvalidArgumentError(f"not a training-time model: format {found!r}, expected {FORMAT!r}")
        try:
            model = cls(ridge=data["ridge"], min_runs=data["min_runs"],
                        seconds_per_unit=data["seconds_per_unit"])
            fitted, runs, uses_work = data["fitted"], data["runs"], data["uses_work"]
            vectors = [np.asarray(data[name], dtype=np.float64) for name in ("mean", "scale", "slopes")]
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(f"training-time model is missing or has a bad field: "
                                       f"{error}") from None
        if fitted not in ("none", "proportional", "regression"):
            raise InvalidArgumentError(f"training-time model: unknown fitted state {fitted!r}")
        bad_runs = isinstance(runs, bool) or not isinstance(runs, int) or runs < 0
        if bad_runs or uses_work not in (None, True, False):
            raise InvalidArgumentError(f"training-time model: bad runs {runs!r} or uses_work {uses_work!r}")
        width = (len(FEATURES) if uses_work else len(FEATURES) - 1) if fitted == "regression" else 0
        if any(vector.shape != (width,) or not np.isfinite(vector).all() for vector in vectors) \
                or (width and not (vectors[1] > 0).all()):
            raise InvalidArgumentError(f"training-time model: mean, scale and slopes must be {width} finite "
                                       "numbers each (scales > 0)")
        model.fitted, model.runs, model.uses_work = fitted, runs, uses_work
        model.mean, model.scale, model.slopes = vectors
        return model
