"""The sdk helpers several capabilities and tiers share: box IoU, named built-ins, picture
change, per-camera splits and idle-slot eviction."""

import doctest
import time
from dataclasses import dataclass

import numpy as np
import pytest

from coinfer.sdk import boxes, frame_change, named_factories, splits
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.service import evict_idle


@pytest.mark.parametrize("module", [boxes, frame_change, named_factories, splits])
def test_docstring_examples_hold(module):
    failed, tried = doctest.testmod(module)
    assert tried and not failed


def test_box_iou_is_elementwise_and_pairwise_under_broadcasting():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]])
    b = np.array([[1, 0, 2, 2], [0, 0, 0, 0]])
    np.testing.assert_allclose(boxes.box_iou(a, b), [1 / 3, 0.0])
    pairs = boxes.box_iou(a[:, None], b[None])
    assert pairs.shape == (2, 2)
    np.testing.assert_allclose(pairs, [[1 / 3, 0.0], [0.0, 0.0]])
    assert boxes.box_iou(np.zeros((0, 1, 4)), b[None]).shape == (0, 2)
    assert boxes.box_iou(np.array([0, 0, -3, 2]), np.array([0, 0, 2, 2])) == 0.0


class _Box:
    name = "box"

    def __init__(self, width: float = 1.0) -> None:
        self.width = width


class _OtherBox(_Box):
    pass


def test_named_factories_key_classes_by_name_and_refuse_unknown_names_and_bad_options():
    table = named_factories.NamedFactories("shape", InvalidArgumentError, _Box)
    assert list(table) == ["box"] and len(table) == 1 and table["box"] is _Box
    assert table.create("box", width=2.0).width == 2.0
    with pytest.raises(InvalidArgumentError, match="unknown shape 'circle'; choose one of box"):
        table.create("circle")
    with pytest.raises(InvalidArgumentError, match="bad options for shape 'box'"):
        table.create("box", height=3)
    table.check(["box"])
    with pytest.raises(InvalidArgumentError, match=r"unknown shape\(s\) circle, square; choose from box"):
        table.check(["square", "box", "circle"])
    with pytest.raises(InvalidArgumentError, match="share a name"):
        named_factories.NamedFactories("shape", InvalidArgumentError, _Box, _OtherBox)


def test_pixel_change_compares_row_by_row():
    frames = np.stack([np.zeros((2, 3)), np.full((2, 3), 4.0)])
    np.testing.assert_array_equal(frame_change.pixel_change(frames, frames[::-1]), [4.0, 4.0])
    np.testing.assert_array_equal(frame_change.pixel_change(frames, frames), [0.0, 0.0])


def test_time_splits_cut_each_camera_on_its_own_and_refuse_bad_parameters():
    cameras = np.array([3, 3, 7, 3, 7, 7, 3])
    assert splits.stream_positions(cameras).tolist() == [0, 1, 0, 2, 1, 2, 3]
    assert splits.time_split(cameras, 0.1).tolist() == [True, False, True, False, False, False, False]
    assert splits.block_split(cameras, block=2, every=2).tolist() == [
        True, True, True, False, True, False, False]
    with pytest.raises(InvalidArgumentError, match="train fraction"):
        splits.time_split(cameras, 1.0)
    with pytest.raises(CoinferError, match="block >= 1 and every >= 2"):
        splits.block_split(cameras, block=0, every=3)


@dataclass
class _Slot:
    last_active: float


def test_evict_idle_frees_only_slots_idle_past_the_limit():
    now = time.monotonic()
    slots = {"stale": _Slot(now - 100.0), "fresh": _Slot(now)}
    evict_idle(slots, idle_seconds=10.0)
    assert list(slots) == ["fresh"]


@pytest.mark.parametrize("text", ["[" * 100_000, "1" * 5000, "\udcff"])
def test_a_hostile_data_index_is_the_callers_error(tmp_path, text):
    from coinfer.sdk.datadir import read_index
    from coinfer.sdk.errors import CoinferError

    class IndexError_(CoinferError):
        pass

    path = tmp_path / "corpus.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(IndexError_, match="is not valid JSON"):
        read_index(path, "coinfer-corpus", 1, IndexError_, "a corpus")
