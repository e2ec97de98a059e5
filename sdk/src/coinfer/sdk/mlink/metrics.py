"""How well predicted outputs agree with the real model's outputs, in [0, 1] per target task.

As in the paper, a link is scored against the outputs of the model it stands in for (its
"exact inference"), not against ground truth; 1 means indistinguishable. Accuracy for
classes (arg-max) and presence (0.5 threshold), mean average precision for multi-label
outputs, mean IoU for boxes, 1 - MAE / scale for regression and 1 - word error rate for
sequences (each clipped at 0).

Example::

    score = performance(OutputSpec.boxes(), predicted_boxes, detector_boxes)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from coinfer.sdk.boxes import box_iou
from coinfer.sdk.mlink.outputs import OutputError, OutputSpec

#: A predicted box smaller than this (fraction of the frame) means "nothing found".
MIN_BOX_AREA = 1e-3


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall steps, ranking by score (ties broken by position)."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(np.sum(precision * hits) / hits.sum())


def mean_average_precision(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Mean AP over the labels the reference turns on at least once (1.0 if it never does)."""
    values = [average_precision(predicted[:, k], reference[:, k] >= 0.5) for k in range(reference.shape[1])]
    values = [value for value in values if not np.isnan(value)]
    return float(np.mean(values)) if values else 1.0


def box_agreement(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row IoU of ``[x, y, w, h]`` boxes, except that a box under :data:`MIN_BOX_AREA`
    means "nothing found": two such boxes agree (1), one alone scores 0."""
    def area(boxes: np.ndarray) -> np.ndarray:
        return np.clip(boxes[:, 2], 0, None) * np.clip(boxes[:, 3], 0, None)

    empty_p, empty_r = area(predicted) < MIN_BOX_AREA, area(reference) < MIN_BOX_AREA
    return np.where(empty_p & empty_r, 1.0, np.where(empty_p | empty_r, 0.0, box_iou(predicted, reference)))


def edit_distance(hypothesis: Sequence[int], reference: Sequence[int]) -> int:
    """Levenshtein distance between token sequences."""
    previous = list(range(len(reference) + 1))
    for i, token in enumerate(hypothesis, 1):
        current = [i]
        for j, wanted in enumerate(reference, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != wanted)))
        previous = current
    return previous[-1]


def word_error_rates(predicted: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> np.ndarray:
    """Per-row edits / reference length; an empty reference scores 0 errors only when the
    prediction is empty too, 1 otherwise."""
    rates = []
    for hypothesis, wanted in zip(predicted, reference, strict=True):
        if not wanted:
            rates.append(0.0 if not hypothesis else 1.0)
        else:
            rates.append(edit_distance(hypothesis, wanted) / len(wanted))
    return np.asarray(rates, np.float64)


def sample_performance(spec: OutputSpec, predicted: Any, reference: Any) -> np.ndarray:
    """Per-row performance in [0, 1] (mAP has no per-row form: it uses presence accuracy)."""
    if spec.is_sequence:
        return np.clip(1.0 - word_error_rates(predicted, reference), 0.0, 1.0)
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    if spec.metric == "accuracy" and spec.task == "softmax":
        return (np.argmax(predicted, axis=1) == np.argmax(reference, axis=1)).astype(np.float64)
    if spec.metric in ("accuracy", "map"):
        return np.mean((predicted >= 0.5) == (reference >= 0.5), axis=1)
    if spec.metric == "iou":
        return box_agreement(predicted, reference)
    return np.clip(1.0 - np.mean(np.abs(predicted - reference), axis=1) / spec.scale, 0.0, 1.0)


def performance(spec: OutputSpec, predicted: Any, reference: Any) -> float:
    """The target task's metric as a performance in [0, 1] (see the module docstring)."""
    if len(reference) == 0:
        raise OutputError(f"performance of an empty set of {spec.task} outputs is undefined")
    if spec.metric == "map":
        return mean_average_precision(np.asarray(predicted, np.float64), np.asarray(reference, np.float64))
    return float(np.mean(sample_performance(spec, predicted, reference)))
