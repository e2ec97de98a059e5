"""Run the prior systems' filters (:mod:`coinfer.bench.infi.baselines`) on a benchmark task.

Which baselines apply depends on the modality: Reducto's frame differencing needs video
streams; the low-level KNN works everywhere; FilterForward needs pretrained features (here
MiniLM sentence embeddings for text); FoggyCache is the reuse baseline.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coinfer.bench.infi.tasks import FilterTask
from coinfer.sdk.infi.curves import FilterCurve


def _per_stream_scores(baseline: Any, inputs: np.ndarray, streams: np.ndarray) -> np.ndarray:
    """Scores of a baseline that looks at consecutive inputs, stream by stream."""
    scores = np.empty(len(inputs))
    for stream in np.unique(streams):
        rows = np.flatnonzero(streams == stream)
        scores[rows] = baseline.scores(inputs[rows])
    return scores


def skip_baseline_rates(task: FilterTask, test_redundant: np.ndarray, target: float) -> dict[str, float]:
    """Filter rate at ``target`` accuracy of every baseline that applies to the task."""
    from coinfer.bench.infi import baselines

    train_redundant = task.redundant(task.train_y)
    rates: dict[str, float] = {}

    def rate(scores: np.ndarray) -> float:
        return round(FilterCurve.from_scores(scores, test_redundant).rate_at(target), 4)

    if task.spec.kind == "image" and task.streams_test is not None:
        reducto = baselines.ReductoSkip().fit(task.train_x, train_redundant)
        rates["reducto"] = rate(_per_stream_scores(reducto, task.test_x, task.streams_test))
    if task.spec.kind == "audio" and task.raw_train is not None and task.raw_test is not None:
        knn_train, knn_test = task.raw_train, task.raw_test
    else:
        knn_train, knn_test = task.train_x, task.test_x
    kind = task.spec.kind
    if kind == "image" and task.spec.shape[-1] not in (1, 3):
        kind = "vector"  # a feature map: pixel statistics mean nothing there
    knn = baselines.LowLevelKNN(kind)
    rates["lowlevel_knn"] = rate(knn.fit(knn_train, train_redundant).scores(knn_test))
    if "embeddings" in task.extra:
        embeddings = task.extra["embeddings"]
        cut = task.extra["cut"]
        forward = baselines.FilterForwardSkip()
        forward.fit_features(embeddings[:cut], train_redundant)
        rates["filterforward"] = rate(forward.scores_from_features(embeddings[cut:]))
    return rates


def foggycache_rate(task: FilterTask, options: Any, target: float, seed: int = 0,
                    fit_frames: int = 150) -> float | None:
    """FoggyCache-style reuse rate at ``target`` accuracy, a cache per test stream.

    SIFT runs on the full-size frames (keypoints need the resolution); its vocabulary and
    the neighbour radius are fitted on ``fit_frames`` training frames."""
    from coinfer.bench.infi import baselines

    if task.raw_test is None or task.streams_test is None or task.raw_train is None:
        return None
    count = min(fit_frames, len(task.raw_train))
    pick = np.sort(np.random.default_rng(seed).choice(len(task.raw_train), size=count, replace=False))
    cache = baselines.FoggyCacheReuse("image", baselines.FoggyOptions(capacity=options.capacity, k=options.k,
                                                                      seed=seed))
    measurement = task.reuse_measurement
    cache.fit(_unit(task.raw_train[pick]), [measurement.key(task.train_y[i]) for i in pick])
    rates, sizes = [], []
    for stream in np.unique(task.streams_test):
        rows = np.flatnonzero(task.streams_test == stream)
        outputs = [task.test_y[i] for i in rows]
        vectors = cache.vectors(_unit(task.raw_test[rows]))
        curve = cache.curve(vectors, outputs, measurement.same, measurement.key)
        rates.append(curve.rate_at(target))
        sizes.append(rows.size)
    return float(np.average(rates, weights=sizes))


def _unit(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames
