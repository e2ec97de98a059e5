"""Intersection over union of axis-aligned boxes, the one overlap every capability scores.

Gating asks whether a detection moved, MLink scores predicted boxes against the detector's,
the OCR recipe matches text lines to ground truth: all by the same IoU, so a threshold
means the same thing everywhere. Boxes are ``[x, y, w, h]`` rows (a corner plus a size,
the form detectors report); callers holding corners convert at the call site.
"""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` boxes on the last axis, elementwise under numpy broadcasting.

    Pass two (n, 4) arrays for one IoU per row, or ``a[:, None]`` and ``b[None]`` for the
    (len(a), len(b)) matrix of every pair. A negative width or height counts as zero, and
    boxes with no union (both empty) score 0.

    Example::

        >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 2, 2]]))
        array([0.33333333])
        >>> box_iou(np.array([[0, 0, 2, 2], [5, 5, 1, 1]])[:, None], np.array([[0, 0, 2, 2]])[None])
        array([[1.],
               [0.]])
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a_width, a_height = np.clip(a[..., 2], 0, None), np.clip(a[..., 3], 0, None)
    b_width, b_height = np.clip(b[..., 2], 0, None), np.clip(b[..., 3], 0, None)
    x0, y0 = np.maximum(a[..., 0], b[..., 0]), np.maximum(a[..., 1], b[..., 1])
    x1 = np.minimum(a[..., 0] + a_width, b[..., 0] + b_width)
    y1 = np.minimum(a[..., 1] + a_height, b[..., 1] + b_height)
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = a_width * a_height + b_width * b_height - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
