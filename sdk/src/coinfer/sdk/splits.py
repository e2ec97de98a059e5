"""Train/test splits in time, per camera: train on some moments of each stream, test on others.

Recorded rows interleave cameras but keep each camera's steps in time order. Consecutive
frames of one camera are near duplicates, so a random split would test on neighbours of
training frames; both splits here cut each camera's own stream instead, by each row's
position in it (:func:`stream_positions`).

Example::

    >>> cameras = np.array([0, 1, 0, 1, 0, 1])
    >>> time_split(cameras, 0.5).tolist()
    [True, True, True, True, False, False]
    >>> block_split(cameras, block=1, every=3).tolist()
    [True, True, True, True, False, False]
"""

from __future__ import annotations

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError


def stream_positions(cameras: np.ndarray) -> np.ndarray:
    """Each row's index among its own camera's rows (0 for the camera's first step)."""
    cameras = np.asarray(cameras)
    position = np.zeros(len(cameras), dtype=np.int64)
    for camera in np.unique(cameras):
        mine = np.flatnonzero(cameras == camera)
        position[mine] = np.arange(mine.size)
    return position


def time_split(cameras: np.ndarray, train_fraction: float) -> np.ndarray:
    """True for the first ``train_fraction`` of each camera's steps (at least one): a model
    is trained on the past and tested on what follows."""
    if not 0 < train_fraction < 1:
        raise InvalidArgumentError(f"the train fraction must be in (0, 1), got {train_fraction}")
    _, stream, lengths = np.unique(np.asarray(cameras), return_inverse=True, return_counts=True)
    kept = np.maximum(1, np.round(train_fraction * lengths))
    return stream_positions(cameras) < kept[stream]


def block_split(cameras: np.ndarray, block: int, every: int) -> np.ndarray:
    """False for every ``every``-th block of ``block`` consecutive steps of each camera, True
    for the rest: the test steps come from the same cameras at other moments, and holding
    out whole blocks keeps a test step's near-identical neighbours out of training."""
    if block < 1 or every < 2:
        raise InvalidArgumentError(f"a block split needs block >= 1 and every >= 2, got block={block}, "
                                   f"every={every}")
    return (stream_positions(cameras) // block) % every != every - 1
