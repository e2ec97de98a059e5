"""Shrink the frames an evolution task trains on, except those whose objects would vanish.

Training memory and time on the edge grow with the input resolution (activations dominate the
peak), yet most uploaded frames show objects large enough to survive halving the resolution.
NestEvo (section 6.2) therefore pools every frame the global model found no small object in and
keeps the others at full resolution, so accuracy on small objects is not traded for memory.

A box is *small* when its height is below ``small_fraction`` of the frame height, or its area is
below ``small_fraction**2`` of the frame area (the area of a box ``small_fraction`` of the frame
in each direction). The default 0.1 keeps, for a 640x480 frame, any object under 48 pixels tall
or under about 3,100 square pixels: pooled by 2 such objects would be under 24 pixels tall or
under 28x28 pixels, below what detectors find reliably (COCO calls anything under 32x32 small).

Example: a frame with a large object is pooled, one with a distant person is kept.

>>> import numpy as np
>>> frames = np.zeros((2, 480, 640, 3), dtype=np.uint8)
>>> boxes = [np.array([[100.0, 80.0, 300.0, 240.0]]), np.array([[10.0, 10.0, 12.0, 30.0]])]
>>> [needs_full_resolution(b, (480, 640)) for b in boxes]
[False, True]
>>> out, stats = adaptive_compress(frames, boxes)
>>> [frame.shape for frame in out], stats.pooled, round(stats.ratio, 3)
([(240, 320, 3), (480, 640, 3)], 1, 0.625)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError


def _check_fraction(small_fraction: float) -> None:
    if not (math.isfinite(small_fraction) and 0 < small_fraction <= 1):
        raise InvalidArgumentError(f"small_fraction must be in (0, 1], got {small_fraction!r}")


def needs_full_resolution(boxes_xywh: np.ndarray, frame_hw: tuple[int, int], *,
                          small_fraction: float = 0.1) -> bool:
    """Whether a frame must stay at full resolution: some box (``[K, 4]`` of x, y, width,
    height in pixels) is small. A frame with no box can be pooled."""
    boxes = np.asarray(boxes_xywh, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidArgumentError(f"boxes must be a [K, 4] array of x, y, width, height; got shape "
                                   f"{boxes.shape}")
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
        raise InvalidArgumentError("boxes must be finite with width and height >= 0")
    if len(frame_hw) != 2 or any(isinstance(side, bool) or not isinstance(side, int | np.integer) or side < 1
                                 for side in frame_hw):
        raise InvalidArgumentError(f"frame_hw must be two integers >= 1 (height, width), got {frame_hw!r}")
    _check_fraction(small_fraction)
    height, width = (float(side) for side in frame_hw)
    short = boxes[:, 3] < small_fraction * height
    tiny = boxes[:, 2] * boxes[:, 3] < small_fraction ** 2 * height * width
    return bool((short | tiny).any())


def pool_frames(frames: np.ndarray, factor: int = 2) -> np.ndarray:
    """Mean-pool ``[N, H, W, C]`` uint8 frames by ``factor`` in height and width (each output
    pixel the rounded mean of a ``factor x factor`` block); H and W must be multiples of it."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.dtype != np.uint8:
        raise InvalidArgumentError(f"frames must be a uint8 array [N, H, W, C], got {array.dtype} of shape "
                                   f"{array.shape}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InvalidArgumentError(f"factor must be an integer >= 1, got {factor!r}")
    count, height, width, channels = array.shape
    if height % factor or width % factor:
        raise InvalidArgumentError(f"frame size {height}x{width} is not divisible by the pooling factor "
                                   f"{factor}")
    blocks = array.reshape(count, height // factor, factor, width // factor, factor, channels)
    area = factor * factor
    sums = blocks.sum(axis=(2, 4), dtype=np.uint32)
    return ((sums + area // 2) // area).astype(np.uint8)


@dataclass(frozen=True)
class CompressionStats:
    """What adaptive compression did to a batch: frames seen and pooled, bytes before and after."""

    frames: int
    pooled: int
    bytes_before: int
    bytes_after: int

    @property
    def ratio(self) -> float:
        """Bytes after over bytes before (1.0 for an empty batch)."""
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    def __add__(self, other: CompressionStats) -> CompressionStats:
        return CompressionStats(self.frames + other.frames, self.pooled + other.pooled,
                                self.bytes_before + other.bytes_before, self.bytes_after + other.bytes_after)


def adaptive_compress(frames: np.ndarray, boxes: Sequence[np.ndarray], *, factor: int = 2,
                      small_fraction: float = 0.1) -> tuple[list[np.ndarray], CompressionStats]:
    """Pool each ``[H, W, C]`` frame of a uint8 ``[N, H, W, C]`` batch whose boxes (one ``[K, 4]``
    array per frame) hold no small object; keep the rest. Returns the frames, in order, and the
    batch's :class:`CompressionStats`."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.dtype != np.uint8:
        raise InvalidArgumentError(f"frames must be a uint8 array [N, H, W, C], got {array.dtype} of shape "
                                   f"{array.shape}")
    if len(boxes) != len(array):
        raise InvalidArgumentError(f"need one box array per frame: {len(array)} frames, {len(boxes)} box "
                                   "arrays")
    frame_hw = (int(array.shape[1]), int(array.shape[2]))
    keep = [needs_full_resolution(frame_boxes, frame_hw, small_fraction=small_fraction)
            for frame_boxes in boxes]
    pooled_indices = [index for index, full in enumerate(keep) if not full]
    pooled = pool_frames(array[pooled_indices], factor) if pooled_indices else None
    out: list[np.ndarray] = []
    position = 0
    for index, full in enumerate(keep):
        if full or pooled is None:
            out.append(array[index])
        else:
            out.append(pooled[position])
            position += 1
    stats = CompressionStats(len(array), len(pooled_indices), int(array.nbytes),
                             sum(int(frame.nbytes) for frame in out))
    return out, stats
