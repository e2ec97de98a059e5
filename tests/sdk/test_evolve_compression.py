"""Adaptive compression: pool frames without small objects, keep the others at full resolution."""

import numpy as np
import pytest

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.compression import (
    CompressionStats,
    adaptive_compress,
    needs_full_resolution,
    pool_frames,
)


def test_small_means_short_or_of_small_area_relative_to_the_frame():
    frame = (480, 640)  # thresholds at 0.1: height 48 px, area 0.01 * 307,200 = 3,072 px^2
    assert not needs_full_resolution(np.array([[0, 0, 100, 48]]), frame)      # 48 tall, 4,800 px^2
    assert needs_full_resolution(np.array([[0, 0, 100, 47.9]]), frame)        # just too short
    assert needs_full_resolution(np.array([[0, 0, 60, 50]]), frame)           # tall enough, 3,000 px^2
    assert not needs_full_resolution(np.array([[0, 0, 62, 50]]), frame)       # 3,100 px^2
    assert needs_full_resolution(np.array([[0, 0, 300, 300], [5, 5, 4, 4]]), frame)  # any small one
    assert not needs_full_resolution(np.zeros((0, 4)), frame)                 # nothing to lose
    assert not needs_full_resolution(np.array([[0, 0, 100, 47.9]]), frame, small_fraction=0.05)


def test_box_and_frame_inputs_are_validated():
    with pytest.raises(InvalidArgumentError, match=r"\[K, 4\]"):
        needs_full_resolution(np.zeros((2, 3)), (10, 10))
    with pytest.raises(InvalidArgumentError, match="width and height"):
        needs_full_resolution(np.array([[0, 0, -1, 5]]), (10, 10))
    with pytest.raises(InvalidArgumentError, match="frame_hw"):
        needs_full_resolution(np.zeros((0, 4)), (0, 10))
    with pytest.raises(InvalidArgumentError, match="small_fraction"):
        needs_full_resolution(np.zeros((0, 4)), (10, 10), small_fraction=0)


def test_pooling_is_the_rounded_block_mean():
    frames = np.zeros((1, 2, 4, 3), dtype=np.uint8)
    frames[0, :, :2, 0] = [[0, 1], [2, 3]]            # mean 1.5: rounds up to 2
    frames[0, :, 2:, 0] = [[255, 255], [255, 254]]    # mean 254.75: 255, and no overflow
    frames[0, :, :, 1] = 7
    pooled = pool_frames(frames)
    assert pooled.shape == (1, 1, 2, 3) and pooled.dtype == np.uint8
    assert pooled[0, 0, :, 0].tolist() == [2, 255]
    assert pooled[0, 0, :, 1].tolist() == [7, 7]
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 12, 18, 3), dtype=np.uint8)
    expected = batch.reshape(3, 4, 3, 6, 3, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(pool_frames(batch, 3).astype(float) - expected).max() <= 0.5
    assert np.array_equal(pool_frames(batch, 1), batch)


def test_pooling_rejects_sizes_it_cannot_pool_exactly():
    with pytest.raises(InvalidArgumentError, match="not divisible"):
        pool_frames(np.zeros((1, 6, 5, 3), dtype=np.uint8))
    with pytest.raises(InvalidArgumentError, match="uint8"):
        pool_frames(np.zeros((1, 4, 4, 3), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="factor"):
        pool_frames(np.zeros((1, 4, 4, 3), dtype=np.uint8), factor=0)


def test_a_batch_keeps_frames_with_small_objects_and_counts_the_bytes():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 120, 160, 3), dtype=np.uint8)
    boxes = [np.array([[10, 10, 80, 60]]),   # large: pooled
             np.array([[10, 10, 8, 8]]),     # small: kept
             np.zeros((0, 4)),               # empty scene: pooled
             np.array([[0, 0, 50, 11]])]     # short (11 < 12): kept
    out, stats = adaptive_compress(frames, boxes)
    assert [frame.shape for frame in out] == [(60, 80, 3), (120, 160, 3), (60, 80, 3), (120, 160, 3)]
    assert np.array_equal(out[1], frames[1]) and np.array_equal(out[3], frames[3])
    assert np.array_equal(out[2], pool_frames(frames[2:3])[0])
    full = 120 * 160 * 3
    assert stats == CompressionStats(frames=4, pooled=2, bytes_before=4 * full,
                                     bytes_after=2 * full + 2 * full // 4)
    assert stats.ratio == pytest.approx(0.625)
    total = stats + CompressionStats(2, 0, 2 * full, 2 * full)
    assert (total.frames, total.pooled) == (6, 2)
    assert total.ratio == pytest.approx((2.5 * full + 2 * full) / (6 * full))
    assert CompressionStats(0, 0, 0, 0).ratio == 1.0
    with pytest.raises(InvalidArgumentError, match="one box array per frame"):
        adaptive_compress(frames, boxes[:3])
