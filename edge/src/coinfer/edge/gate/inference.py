"""The downstream models the gate decodes for, as a plug-in the decoder workers run.

A plug-in turns one decoded RGB frame into ``{task: result}`` (boxes, a count, a label);
the runtime compares each result with the stream's last reported one, task by task, to
tell the gate whether decoding was necessary. A plug-in object is pickled into every
decoder worker, so it must stay small until :meth:`InferencePlugin.prepare` loads its
models inside the worker (models are neither picklable nor worth copying).

Example::

    plugin = DetectorPlugin(("faces", "cats"))
    plugin.prepare()                          # in the worker: loads the Haar cascades
    plugin.infer(rgb)                         # {"faces": float32 [K, 4] boxes, "cats": ...}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError


class InferencePlugin(ABC):
    """Frame in, one result per task out; ``tasks`` names the results it returns."""

    tasks: tuple[str, ...] = ()

    def prepare(self) -> None:  # noqa: B027 - an optional hook: plug-ins without models load nothing
        """Load models; called once in each worker before the first frame."""

    @abstractmethod
    def infer(self, frame: np.ndarray) -> dict[str, Any]:
        """Results of every task on an RGB uint8 frame of shape (H, W, 3)."""


class DetectorPlugin(InferencePlugin):
    """The real detectors of :data:`coinfer.edge.models.detectors.DETECTORS`, one per task.

    Each result is the detector's float32 ``[K, 4]`` boxes (x, y, w, h). OpenCV runs on
    one thread inside the worker: the pool already runs one worker per core, and the boxes
    then do not depend on thread scheduling.
    """

    def __init__(self, tasks: Sequence[str] = ("faces", "cats")) -> None:
        from coinfer.edge.models.detectors import DETECTORS

        self.tasks = tuple(tasks)
        if not self.tasks:
            raise CoinferError("DetectorPlugin needs at least one task")
        unknown = [task for task in self.tasks if task not in DETECTORS]
        if unknown:
            raise CoinferError(f"unknown detection task(s) {', '.join(unknown)}; choose from "
                               f"{', '.join(DETECTORS)}")
        self._detectors: dict[str, Any] | None = None

    def prepare(self) -> None:
        self._loaded()

    def infer(self, frame: np.ndarray) -> dict[str, Any]:
        from coinfer.edge.models.detectors import single_threaded

        detectors = self._loaded()
        with single_threaded():
            return {task: detector(frame) for task, detector in detectors.items()}

    def _loaded(self) -> dict[str, Any]:
        from coinfer.edge.models.detectors import create_detector

        if self._detectors is None:
            self._detectors = {task: create_detector(task) for task in self.tasks}
        return self._detectors

    def __getstate__(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "_detectors": None}

    def __repr__(self) -> str:
        return f"DetectorPlugin(tasks={self.tasks!r})"
