"""Frame-difference reuse: run a model only when its camera's picture changed enough.

The Reducto-style policy, as a baseline on its own and as an execution mode MLink's
planner may pick per model (:func:`coinfer.sdk.mlink.mode_plan`): a model gated at
threshold t runs on a step when the mean absolute difference between this step's small
grey thumbnail and the one at its last run on the same camera exceeds t (0-255), and
serves that last output otherwise. :func:`calibrate_reuse` measures, on recorded steps
where every model ran, how often each threshold runs and how accurate each model's reused
outputs are; :class:`ReuseGate` applies one threshold to a live stream, period by period.

Example::

    calibration = calibrate_reuse(train_table, train_thumbnails)
    modes = calibration.modes()                        # per model, for mode_plan
    gate = ReuseGate(threshold=3.0)
    outputs, ran = gate.serve(runner, "faces", steps, thumbnails[steps], cameras[steps])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.frame_change import pixel_change
from coinfer.sdk.mlink import ExecutionMode, performance
from coinfer.sdk.mlink.table import OutputTable, concat_rows, take_rows

#: Thresholds (mean absolute grey difference, 0-255) the planner may choose between.
REUSE_THRESHOLDS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


class ReuseError(CoinferError, ValueError):
    """Thumbnails and cameras that do not describe the same steps."""


def check_frames(thumbnails: np.ndarray, cameras: np.ndarray, count: int | None = None) -> None:
    if thumbnails.ndim < 2 or len(thumbnails) != len(cameras):
        raise ReuseError(f"need one thumbnail per camera entry; got thumbnails of shape "
                         f"{thumbnails.shape} and {len(cameras)} cameras")
    if count is not None and len(thumbnails) != count:
        raise ReuseError(f"need one thumbnail per stream step: {len(thumbnails)} thumbnails "
                         f"for {count} steps")


def change_schedule(thumbnails: np.ndarray, cameras: np.ndarray, threshold: float,
                    last: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Which steps run under reuse: each camera's first step, and every step whose thumbnail
    differs from the one at that camera's last run by more than ``threshold``. ``last``
    (each camera's thumbnail at its last run) carries the state from earlier steps and is
    updated in place."""
    check_frames(thumbnails, cameras)
    run = np.zeros(len(thumbnails), bool)
    grey = thumbnails.astype(np.float32)
    last = {} if last is None else last
    for row, camera in enumerate(cameras.tolist()):
        if camera not in last or float(pixel_change(grey[row:row + 1], last[camera][None])[0]) > threshold:
            run[row], last[camera] = True, grey[row]
    return run


def carry_forward(outputs: Any, run: np.ndarray, cameras: np.ndarray) -> Any:
    """Per step, the output of the latest run on the same camera (``outputs`` holds one row
    per run step, in order)."""
    source = np.empty(len(run), np.int64)
    latest: dict[int, int] = {}
    position = -1
    for row, (ran, camera) in enumerate(zip(run.tolist(), cameras.tolist(), strict=True)):
        if ran:
            position += 1
            latest[camera] = position
        if camera not in latest:
            raise ReuseError(f"step {row}: camera {camera} has no earlier run to reuse")
        source[row] = latest[camera]
    return take_rows(outputs, source)


def replay_with_reuse(runner: Any, name: str, run: np.ndarray, cameras: np.ndarray) -> Any:
    """The model's outputs where it ran, each camera's last one carried forward elsewhere."""
    return carry_forward(runner(name, np.flatnonzero(run)), run, cameras)


@dataclass(frozen=True)
class ReuseCalibration:
    """How often each threshold runs (``rates``) and each model's accuracy when reusing at
    it (``accuracy[model][k]`` for ``thresholds[k]``), measured on recorded steps."""

    thresholds: tuple[float, ...]
    rates: tuple[float, ...]
    accuracy: dict[str, tuple[float, ...]]

    def modes(self, rates: Sequence[float] | None = None) -> dict[str, list[ExecutionMode]]:
        """Every model's reuse modes for the planner, at these run ``rates`` (default: the
        calibrated ones; pass recent ones to follow how busy the cameras are now)."""
        rates = self.rates if rates is None else tuple(rates)
        return {name: [ExecutionMode(reuse_label(threshold), max(rate, 1e-3), value)
                       for threshold, rate, value in zip(self.thresholds, rates, values, strict=True)]
                for name, values in self.accuracy.items()}

    def threshold_of(self, label: str) -> float:
        for threshold in self.thresholds:
            if reuse_label(threshold) == label:
                return threshold
        raise ReuseError(f"no reuse mode {label!r}; calibrated thresholds are {self.thresholds}")

    def rates_on(self, thumbnails: np.ndarray, cameras: np.ndarray) -> tuple[float, ...]:
        """Each threshold's run rate on these steps."""
        return tuple(float(change_schedule(thumbnails, cameras, threshold).mean())
                     for threshold in self.thresholds)


def reuse_label(threshold: float) -> str:
    return f"on change > {threshold:g}"


def calibrate_reuse(table: OutputTable, thumbnails: np.ndarray,
                    thresholds: Sequence[float] = REUSE_THRESHOLDS) -> ReuseCalibration:
    """Run rates and reused-output accuracy per threshold, on a table of consecutive steps
    (``table.context["camera"]`` says whose) on which every model ran."""
    cameras = np.asarray(table.context["camera"])
    check_frames(thumbnails, cameras, len(table))
    rates: list[float] = []
    accuracy: dict[str, list[float]] = {name: [] for name in table.models}
    for threshold in thresholds:
        run = change_schedule(thumbnails, cameras, float(threshold))
        rates.append(float(run.mean()))
        for name in table.models:
            served = carry_forward(take_rows(table.outputs[name], run), run, cameras)
            accuracy[name].append(float(performance(table.specs[name], served, table.outputs[name])))
    return ReuseCalibration(tuple(float(t) for t in thresholds), tuple(rates),
                            {name: tuple(values) for name, values in accuracy.items()})


@dataclass
class ReuseGate:
    """One model's reuse on a live stream: remembers, per camera, the thumbnail and output
    of its last run, so periods follow one another seamlessly."""

    threshold: float
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)
    outputs: dict[int, Any] = field(default_factory=dict)

    def serve(self, runner: Any, name: str, steps: np.ndarray, thumbnails: np.ndarray,
              cameras: np.ndarray) -> tuple[Any, int]:
        """Outputs for ``steps`` (running ``runner(name, rows)`` only where the picture
        changed) and how many steps ran."""
        check_frames(thumbnails, cameras, len(steps))
        run = change_schedule(thumbnails, cameras, self.threshold, self.thumbnails)
        held = [camera for camera in sorted(set(cameras.tolist())) if camera in self.outputs]
        fresh = [runner(name, steps[run])] if run.any() else []
        pool = concat_rows([self.outputs[camera] for camera in held] + fresh)
        slot = {camera: k for k, camera in enumerate(held)}
        source = np.empty(len(steps), np.int64)
        position = len(held)
        for row, camera in enumerate(cameras.tolist()):
            if run[row]:
                slot[camera], position = position, position + 1
            source[row] = slot[camera]
        for camera, k in slot.items():
            self.outputs[camera] = take_rows(pool, np.array([k]))
        return take_rows(pool, source), int(run.sum())
