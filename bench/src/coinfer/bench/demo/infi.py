"""Stage ``infi`` of ``coinfer demo``: a skip filter trained on camera frames, run as TFLite.

Why this shape: InFi's promise is that a small network can tell, from the input alone,
that the big model's result would be useless (here: no face and no cat in view), and that a
device can run that network with LiteRT and nothing heavier. So the stage trains the filter
on the frames of all shared cameras but one (labels from the real detectors' counts), exports
it to TFLite (:func:`coinfer.converters.filters.export_filter`), loads it the way a device
does (:func:`coinfer.device.infi.load_skip_filter`) and scores it on the held-out camera:
how many frames it skips (``filter_rate``, against ``redundant_fraction``, the most it could
skip) and how many frames still get the right result (``accuracy``: a skipped frame is
reported empty, which is right only when it was).

>>> skip_accuracy(np.array([True, True, False, False]), np.array([True, False, True, False]))
0.75
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coinfer.bench.demo.tour import SCENE_TASKS, Plot, StageResult, Tour, figure_png, new_figure

#: The size frames are scaled to (by PyAV) before the filter sees them: (height, width).
FRAME_SIZE = (36, 64)
EPOCHS = 5
#: The share of frames the filter's thresholds were chosen to report right on validation.
TARGET_ACCURACY = 0.9


def skip_accuracy(skipped: np.ndarray, redundant: np.ndarray) -> float:
    """Share of frames whose reported result is right: every frame the model ran on, and the
    skipped frames whose result was redundant (empty)."""
    return round(float(np.mean(~skipped | redundant)), 4)


def camera_frames(camera: Any) -> np.ndarray:
    """A camera's frames scaled to :data:`FRAME_SIZE` by PyAV, float32 in [0, 1]."""
    import av

    height, width = FRAME_SIZE
    with av.open(str(camera.video_path)) as container:
        frames = [frame.to_ndarray(width=width, height=height, format="rgb24")
                  for frame in container.decode(video=0)]
    return np.stack(frames).astype(np.float32) / 255


def run_infi(tour: Tour) -> StageResult:
    """Train on every camera but the last, export, load with LiteRT, score on the last."""
    from coinfer.converters.filters import export_filter
    from coinfer.device.infi import load_skip_filter
    from coinfer.sdk.infi import FilterOptions, ModalitySpec, redundancy_labels
    from coinfer.sdk.infi.measurements import Empty
    from coinfer.sdk.infi.training import train_skip_filter

    cameras = tour.scenes().cameras
    measurements = {task: Empty() for task in SCENE_TASKS}  # skippable: the detector finds nothing
    frames = [camera_frames(camera) for camera in cameras]
    labels = [redundancy_labels({task: camera.counts(task) for task in SCENE_TASKS}, measurements)
              for camera in cameras]
    train_x, train_y = np.concatenate(frames[:-1]), np.concatenate(labels[:-1])
    test_x, test_y = frames[-1], labels[-1]
    tour.say(f"training a skip filter on {len(train_x)} frames of {len(cameras) - 1} cameras")
    spec = {"frame": ModalitySpec.image(*FRAME_SIZE)}
    options = FilterOptions(epochs=EPOCHS, target_accuracy=TARGET_ACCURACY, validation_block=10)
    trained = train_skip_filter(train_x, train_y, spec, SCENE_TASKS, measurements, options)
    tour.say("exporting it to TFLite")
    exported = export_filter(trained, tour.folder("infi") / "skip-float32", samples=train_x[:32],
                             overwrite=True)
    device_filter = load_skip_filter(exported.artifact.path)
    skipped = device_filter.skip({"frame": test_x})
    scores = device_filter.scores({"frame": test_x})
    redundant = test_y.min(axis=1) > 0.5  # skippable: every task's result is empty
    metrics = {
        "train_frames": len(train_x), "held_out_frames": len(test_x),
        "redundant_fraction": round(float(redundant.mean()), 4),
        "filter_rate": round(float(skipped.mean()), 4),
        "accuracy": skip_accuracy(skipped, redundant),
        "false_skips": int(np.sum(skipped & ~redundant)),
        "tflite_max_abs_err": exported.parity.max_abs_err,
        "tflite_bytes": exported.parity.model_bytes,
        "tflite_ms": exported.parity.latency_ms,
    }
    checks = {
        "the filter skips some held-out frames": metrics["filter_rate"] > 0,
        "the TFLite filter matches Keras (max abs err <= 1e-4)": exported.parity.max_abs_err <= 1e-4,
        "the LiteRT runner counted every frame": device_filter.stats.seen == len(test_x),
    }
    return StageResult(metrics, checks, [_scores_plot(scores, redundant, device_filter.thresholds)])


def _scores_plot(scores: np.ndarray, redundant: np.ndarray, thresholds: np.ndarray) -> Plot:
    figure, axis = new_figure()
    score = scores.min(axis=1)  # a frame is skipped when every task's score passes its threshold
    bins = np.linspace(0, 1, 21)
    axis.hist(score[redundant], bins=bins, alpha=0.6, label="result empty (skippable)")
    axis.hist(score[~redundant], bins=bins, alpha=0.6, label="something found (needed)")
    axis.axvline(float(np.max(thresholds)), color="black", linestyle="--", linewidth=1, label="threshold")
    axis.set(xlabel="P(redundant), lowest over tasks", ylabel="held-out frames",
             title="infi: filter scores on the held-out camera by label")
    axis.legend()
    return Plot("filter scores vs labels on the held-out camera", figure_png(figure))
