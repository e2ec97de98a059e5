"""Skip filter at run time: score inputs, run the model only where a result is needed.

The scorer is anything that maps a batch to P(redundant) per task: the Keras network on
the edge (:meth:`SkipFilter.create_from_trained`), or the exported TFLite model on a
device (:func:`coinfer.device.infi.load_skip_filter`). An input is skipped when every task
says its result would be redundant; its reported result is then ``default`` (what the
model says on an empty input). The scorer can be swapped while serving (active update).

Example::

    skip = SkipFilter.create_from_trained(trained)
    outputs = skip.run(frames, model=face_detector, default=np.zeros((0, 4)))
    print(skip.stats.filter_rate)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk.infi.modalities import ModalitySpec
from coinfer.sdk.infi.training import FilterError, Inputs, TrainedFilter, check_inputs

Scorer = Callable[[list[np.ndarray]], np.ndarray]


@dataclass
class FilterStats:
    """Running counts of a filter (thread-safe updates happen under the filter's lock)."""

    seen: int = 0
    filtered: int = 0

    @property
    def filter_rate(self) -> float:
        return self.filtered / self.seen if self.seen else 0.0


class SkipFilter:
    """Threshold per task on a scorer's P(redundant); thread-safe, scorer swappable."""

    def __init__(self, scorer: Scorer, inputs: Mapping[str, ModalitySpec],
                 thresholds: Sequence[float] | np.ndarray,
                 tasks: Sequence[str] = ("redundant",)) -> None:
        self.inputs, self.tasks = dict(inputs), tuple(tasks)
        self.thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if self.thresholds.size != len(self.tasks):
            raise FilterError(f"{self.thresholds.size} thresholds for {len(self.tasks)} tasks {self.tasks}")
        self._scorer = scorer
        self._lock = threading.Lock()
        self.stats = FilterStats()

    @classmethod
    def create_from_trained(cls, trained: TrainedFilter,
                            thresholds: Sequence[float] | np.ndarray | None = None) -> SkipFilter:
        """The edge-side filter: the trained Keras network as the scorer."""
        if trained.kind != "skip":
            raise FilterError(f"a SkipFilter needs a skip filter, got a {trained.kind} filter")
        chosen = trained.thresholds if thresholds is None else thresholds
        return cls(trained_scorer(trained), trained.inputs, chosen, trained.tasks)

    def scores(self, inputs: Inputs) -> np.ndarray:
        """P(redundant), (n, tasks)."""
        arrays = check_inputs(inputs, self.inputs)
        with self._lock:
            scorer = self._scorer
        scores = np.asarray(scorer(arrays), dtype=np.float64).reshape(arrays[0].shape[0], -1)
        if scores.shape[1] != len(self.tasks):
            raise FilterError(f"the scorer returned {scores.shape[1]} scores per input for "
                              f"{len(self.tasks)} tasks")
        return scores

    def skip(self, inputs: Inputs) -> np.ndarray:
        """True where the model need not run (every task redundant)."""
        arrays = check_inputs(inputs, self.inputs)
        with self._lock:
            scorer, thresholds = self._scorer, self.thresholds
        scores = np.asarray(scorer(arrays), dtype=np.float64).reshape(arrays[0].shape[0], -1)
        skipped = np.all(scores >= thresholds, axis=1)
        with self._lock:
            self.stats.seen += skipped.size
            self.stats.filtered += int(skipped.sum())
        return skipped

    def run(self, inputs: Inputs, model: Callable[[Any], Any], default: Any = None) -> list[Any]:
        """The model's output on the inputs it must see, ``default`` on the skipped ones."""
        arrays = check_inputs(inputs, self.inputs)
        skipped = self.skip(dict(zip(self.inputs, arrays, strict=True)))
        outputs: list[Any] = []
        for row, skip in enumerate(skipped):
            if skip:
                outputs.append(default)
            elif len(arrays) == 1:
                outputs.append(model(arrays[0][row]))
            else:
                outputs.append(model({name: arrays[k][row] for k, name in enumerate(self.inputs)}))
        return outputs

    def swap(self, scorer: Scorer, thresholds: Sequence[float] | np.ndarray | None = None) -> None:
        """Replace the scorer (and the thresholds) atomically: calls in flight finish with the old one."""
        with self._lock:
            self._scorer = scorer
            if thresholds is not None:
                self.thresholds = np.asarray(thresholds, dtype=np.float64).reshape(len(self.tasks))


def trained_scorer(trained: TrainedFilter) -> Scorer:
    """A scorer running a trained filter's Keras network (e.g. to :meth:`SkipFilter.swap` in)."""
    names = list(trained.inputs)
    return lambda arrays: trained.scores(dict(zip(names, arrays, strict=True)))
