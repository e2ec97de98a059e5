"""Adaptive upload and training compression, measured (NestEvo section 6.2).

A frame in which the annotators found no small object is mean-pooled 2x before it is uploaded
and trained on; frames with a small object keep full resolution. This section evolves every
camera's device model twice by distillation from the global model on its uploaded frames: once
on full-resolution frames, once adaptively, and reports what the adaptive run saved (JPEG
bytes uploaded, training seconds, and the activation memory the profiler predicts) and what it
cost in accuracy on the held-out full-resolution frames.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from coinfer.bench.evolve.methods import Camera, EvolveOptions, World
from coinfer.sdk.evolve import training
from coinfer.sdk.evolve.compression import pool_frames

#: JPEG quality of uploads, as a camera would send them.
UPLOAD_QUALITY = 90
#: Epochs at the end of adaptive training that see the pooled frames restored to full size.
FINAL_EPOCHS = 2


def jpeg_bytes(frames: np.ndarray) -> int:
    """Total size of ``frames`` (uint8 N, H, W, 3) encoded as JPEG at :data:`UPLOAD_QUALITY`."""
    from PIL import Image

    total = 0
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=UPLOAD_QUALITY)
        total += buffer.tell()
    return total


def _accuracy(model: Any, features: np.ndarray, labels: np.ndarray) -> float:
    return training.balanced_accuracy(training.logits(model, features) > 0, labels)


def _upsample(frames: np.ndarray, factor: int = 2) -> np.ndarray:
    """Pooled frames back at the camera's resolution (bilinear), as the device will see them."""
    from PIL import Image

    height, width = frames.shape[1] * factor, frames.shape[2] * factor
    if not len(frames):
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
                     for frame in frames])


def _features(world: World, frames: np.ndarray) -> np.ndarray:
    if not len(frames):
        return np.zeros((0,), np.float16)
    return training.prefix_features(world.global_model, frames)


def _adaptive_distill(world: World, device: Any, camera: Camera, options: EvolveOptions) -> None:
    """Distil the global model into ``device`` on the adaptively compressed upload: every epoch
    but the last ``FINAL_EPOCHS`` on the pooled frames at their low resolution (a quarter of the
    activations), the last ones on the pooled frames restored to full size, so the model ends
    trained at the resolution it is tested on (progressive resizing: train coarse, finish at the
    test resolution). Frames with a small object are full resolution throughout."""
    small = np.asarray(camera.upload_small, bool)
    frames = camera.upload_frames
    side = frames.shape[1] // 2
    low = pool_frames(frames[~small]) if (~small).any() else np.zeros((0, side, side, 3), np.uint8)
    kept = _features(world, frames[small])
    low_features, restored = _features(world, low), _features(world, _upsample(low))
    coarse = max(1, options.evolve.epochs - FINAL_EPOCHS)
    for pooled_features, epochs in ((low_features, coarse), (restored, options.evolve.epochs - coarse)):
        parts = [(f, y) for f, y in ((kept, camera.upload_labels[small]),
                                     (pooled_features, camera.upload_labels[~small])) if len(f)]
        if epochs and parts:
            groups = [features for features, _ in parts]
            teacher = np.concatenate([training.logits(world.global_model, group) for group in groups])
            training.distill(device, teacher, groups, np.concatenate([y for _, y in parts]),
                             replace(options.evolve, epochs=epochs))


def compression_section(world: World, options: EvolveOptions,
                        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Full-resolution against adaptive evolution of every camera (see the module docstring).
    Both runs' seconds include computing the prefix features of what was uploaded."""
    totals = {"bytes_full": 0, "bytes_adaptive": 0, "seconds_full": 0.0, "seconds_adaptive": 0.0}
    per_camera = {}
    accuracy_full, accuracy_adaptive, pooled = [], [], []
    for camera in world.cameras:
        small = np.asarray(camera.upload_small, bool)
        frames = camera.upload_frames
        bytes_full = jpeg_bytes(frames)
        bytes_adaptive = jpeg_bytes(frames[small]) + (jpeg_bytes(pool_frames(frames[~small]))
                                                      if (~small).any() else 0)
        results = {}
        device = copy.deepcopy(world.devices[camera.id])
        started = time.perf_counter()
        features = training.prefix_features(world.global_model, frames)
        teacher = training.logits(world.global_model, features)
        training.distill(device, teacher, features, camera.upload_labels, options.evolve)
        results["full"] = (time.perf_counter() - started, _accuracy(device, camera.test, camera.test_labels))
        device = copy.deepcopy(world.devices[camera.id])
        started = time.perf_counter()
        _adaptive_distill(world, device, camera, options)
        seconds = time.perf_counter() - started
        results["adaptive"] = (seconds, _accuracy(device, camera.test, camera.test_labels))
        totals["bytes_full"] += bytes_full
        totals["bytes_adaptive"] += bytes_adaptive
        totals["seconds_full"] += results["full"][0]
        totals["seconds_adaptive"] += results["adaptive"][0]
        accuracy_full.append(results["full"][1])
        accuracy_adaptive.append(results["adaptive"][1])
        pooled.append(float((~small).mean()))
        per_camera[camera.id] = {"pooled_share": pooled[-1], "bytes_full": bytes_full,
                                 "bytes_adaptive": bytes_adaptive, "seconds_full": results["full"][0],
                                 "seconds_adaptive": results["adaptive"][0],
                                 "accuracy_full": results["full"][1],
                                 "accuracy_adaptive": results["adaptive"][1]}
        say(f"compression {camera.id}: {pooled[-1]:.0%} pooled, {bytes_full} -> {bytes_adaptive} B, "
            f"{results['full'][0]:.1f} -> {results['adaptive'][0]:.1f} s, "
            f"accuracy {results['full'][1]:.3f} -> {results['adaptive'][1]:.3f}")
    return {
        "upload_bytes_full": totals["bytes_full"],
        "upload_bytes_adaptive": totals["bytes_adaptive"],
        "upload_bytes_saved": 1 - totals["bytes_adaptive"] / totals["bytes_full"],
        "training_seconds_full": totals["seconds_full"],
        "training_seconds_adaptive": totals["seconds_adaptive"],
        "training_time_saved": 1 - totals["seconds_adaptive"] / totals["seconds_full"],
        "accuracy_full": float(np.mean(accuracy_full)),
        "accuracy_adaptive": float(np.mean(accuracy_adaptive)),
        "accuracy_drop": float(np.mean(accuracy_full) - np.mean(accuracy_adaptive)),
        "pooled_share": float(np.mean(pooled)),
        "per_camera": per_camera,
    }
