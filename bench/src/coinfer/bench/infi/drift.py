"""Active update on a day/night-switching stream, measured on generated scenes.

The scene clock runs through a whole day, so every camera starts in the infrared night
mode, turns to daylight and falls back into the night. A faces skip filter is trained
offline on **daylight frames only** of the training split, then serves the held-out
frames in time order (the cameras interleaved, as a gateway would see them).
Three filters serve the same stream: the offline one as it is, one updated by
:class:`~coinfer.sdk.infi.ActiveUpdater` with the least-confident inputs, and one updated
with random inputs (periodic). Accuracy is the fraction of frames whose skip decision
matches the detector's redundancy (skip exactly when the detector finds no face), the
filter-decision accuracy the paper reports for its active update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.bench.infi.tasks import SPLIT_BLOCK, SceneFrames, check_split
from coinfer.sdk.splits import stream_positions


@dataclass(frozen=True)
class DriftOptions:
    """Offline training length, update period (frames), labelled fraction and batch size."""

    epochs: int = 8
    period: int = 80
    budget: float = 0.2
    update_epochs: int = 3
    batch: int = 20
    seed: int = 0


def stream_order(frames: SceneFrames, rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by time, cameras interleaved."""
    position = stream_positions(frames.camera)
    return rows[np.lexsort((frames.camera[rows], position[rows]))]


def drift_report(frames: SceneFrames, train: np.ndarray,
                 options: DriftOptions | None = None) -> dict[str, Any]:
    """``offline_accuracy``, ``periodic_accuracy`` and ``active_accuracy`` on the stream."""
    from coinfer.sdk.infi import (
        ActiveOptions,
        ActiveUpdater,
        FilterOptions,
        ModalitySpec,
        SkipFilter,
        train_skip_filter,
    )
    from coinfer.sdk.infi.measurements import Empty

    options = options or DriftOptions()
    redundant = Empty().redundant_many(frames.boxes["faces"])
    train = check_split(frames, train)
    day_train = np.flatnonzero(train & ~frames.night)
    spec = {"input": ModalitySpec.image(*frames.small.shape[1:3])}
    training = FilterOptions(epochs=options.epochs, seed=options.seed, validation_block=SPLIT_BLOCK)
    trained = train_skip_filter(frames.small[day_train], redundant[day_train].astype(np.float32), spec,
                                ("faces",), options=training)
    stream = stream_order(frames, np.flatnonzero(~train))
    truth = redundant[stream]
    index = {frames.small[row].tobytes(): row for row in stream}

    def label(arrays: list[np.ndarray]) -> np.ndarray:
        """The detector's verdict on the picked frames (recorded when the scenes were made)."""
        return redundant[[index[frame.tobytes()] for frame in arrays[0]]].astype(np.float32)

    def serve(decide: Any) -> np.ndarray:
        return np.concatenate([decide(frames.small[stream[start:start + options.batch]])
                               for start in range(0, stream.size, options.batch)])

    out: dict[str, Any] = {"offline_training_frames": int(day_train.size), "stream_frames": int(stream.size),
                           "stream_night_fraction": round(float(frames.night[stream].mean()), 4),
                           "stream_redundant_fraction": round(float(truth.mean()), 4)}
    decisions = {"offline": serve(SkipFilter.create_from_trained(trained).skip)}
    for strategy in ("periodic", "active"):
        updater = ActiveUpdater(trained, SkipFilter.create_from_trained(trained), label,
                                ActiveOptions(period=options.period, budget=options.budget, strategy=strategy,
                                              epochs=options.update_epochs, seed=options.seed),
                                training)
        decisions[strategy] = serve(updater.observe)
        out[f"{strategy}_labelled"] = updater.labelled
    night = frames.night[stream]
    for name, decided in decisions.items():
        correct = decided == truth
        out[f"{name}_accuracy"] = round(float(correct.mean()), 4)
        out[f"{name}_night_accuracy"] = round(float(correct[night].mean()), 4) if night.any() else None
        out[f"{name}_day_accuracy"] = round(float(correct[~night].mean()), 4) if (~night).any() else None
    return out
