"""How much a camera's picture changed: Reducto's pixel difference, the cheapest change signal.

A frame whose picture barely changed since a reference frame (the previous one, or the one
the model last ran on) can reuse that frame's result. MLink's reuse gate and the InFi
benchmark's Reducto baseline both decide "changed enough" by this one measure, so a
threshold means the same on both sides.
"""

from __future__ import annotations

import numpy as np


def pixel_change(frames: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Per frame, the mean absolute difference from its reference, on the pixels' own scale.

    ``frames`` and ``references`` are (n, ...) batches of grey pictures, compared row by
    row; the result has shape (n,).

    Example::

        >>> pixel_change(np.array([[[0.0, 4.0]]]), np.array([[[2.0, 2.0]]]))
        array([2.])
    """
    change = np.abs(np.asarray(frames) - np.asarray(references))
    return change.mean(axis=tuple(range(1, change.ndim)))
