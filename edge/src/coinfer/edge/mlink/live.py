"""Serving the zoo's real models live, on a scene set as it is decoded.

:class:`ZooRunner` is the :class:`~coinfer.sdk.mlink.serving.ModelRunner` of a running
edge node: when serving asks for a model's outputs on some steps, it runs that model on
those steps' frames and audio, so a model the plan leaves out never runs. Steps are
decoded once, in order, and only the most recent ``window`` are kept (serving asks for
the rows of the current period). A model whose camera changes since its last call is
``reset()``; one that skipped steps of the same camera carries on from where it stopped,
as a model switched off for a while would (the VAD's state then spans the gap).

Planning charges each model its recorded cost per step (``costs``); the wall time every
call really took is kept in ``seconds`` next to it. Models run with OpenCV on one thread,
as when the workload was recorded, so that the boxes and the times compare.

Example::

    runner = ZooRunner("work/scenes", create_zoo("work/crowd"), costs_of(table, "ms"))
    result = serve(graph, runner, len(table), ServingOptions(budget=30.0), profile=seed_table)
    print(runner.seconds, result.accuracy(table))
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from coinfer.edge.mlink.recording import iterate_steps
from coinfer.edge.mlink.zoo import Step, ZooModel
from coinfer.edge.models.detectors import single_threaded
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.scenes import SceneSet


class ZooRunner:
    """Runs the zoo's models on the steps of a scene set that serving asks for."""

    def __init__(self, scenes: str | os.PathLike | SceneSet, zoo: Mapping[str, ZooModel],
                 costs: Mapping[str, float], window: int = 1000) -> None:
        missing = sorted(set(costs) - set(zoo))
        if missing:
            raise CoinferError(f"costs name model(s) {missing} that the zoo given does not hold")
        if window < 1:
            raise CoinferError(f"window must be at least 1 step, got {window}")
        self.zoo = dict(zoo)
        self.costs = dict(costs)
        self.window = window
        self.seconds = dict.fromkeys(self.zoo, 0.0)
        self.calls = dict.fromkeys(self.zoo, 0)
        self._decoded: Iterator[Step] = iterate_steps(scenes)
        self._kept: dict[int, Step] = {}
        self._next = 0
        self._camera: dict[str, int] = {}

    def step(self, row: int) -> Step:
        """Stream step ``row``, decoding up to it; rows before the kept window are gone."""
        row = int(row)
        while self._next <= row:
            try:
                self._kept[self._next] = next(self._decoded)
            except StopIteration:
                raise CoinferError(f"the scene set has {self._next} steps; serving asked for step "
                                   f"{row}") from None
            self._kept.pop(self._next - self.window, None)
            self._next += 1
        if row not in self._kept:
            raise CoinferError(f"step {row} is no longer kept: only the last {self.window} decoded steps are "
                               f"(up to {self._next - 1}); raise the window")
        return self._kept[row]

    def restart(self) -> None:
        """Reset every model before its next step, as if its stream started again."""
        self._camera.clear()

    def __call__(self, name: str, rows: np.ndarray) -> Any:
        model = self.zoo[name]
        outputs = []
        with single_threaded():
            for row in np.asarray(rows, np.int64):
                step = self.step(row)
                if self._camera.get(name) != step.camera:
                    model.reset()
                    self._camera[name] = step.camera
                start = time.perf_counter()
                outputs.append(model(step))
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1
        return model.spec.check(outputs, name) if outputs else model.spec.check(
            [] if model.spec.is_sequence else np.zeros((0, model.spec.size), np.float32), name)
