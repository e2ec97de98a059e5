"""The PP-OCRv4 detector cut into a device head and an edge tail, and the InFi text tasks on it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from coinfer.edge.models import ocr
from coinfer.sdk.errors import ModelNotAvailableError

pytest.importorskip("cv2")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from coinfer.bench.models import ocr_split


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> ocr_split.DetectorSplit:
    try:
        return ocr_split.split_detector(tmp_path_factory.mktemp("ocr-split"))
    except ModelNotAvailableError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def detector(split) -> ocr_split.SplitTextDetector:
    return ocr_split.SplitTextDetector(split)


@pytest.fixture(scope="module")
def sign_frame() -> np.ndarray:
    """A 320x180 RGB scene-sized frame with one line of text on a noisy grey background."""
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(120, 8, (180, 320, 3)), 0, 255).astype(np.uint8)
    text, _ = ocr.render_text_image(["OPEN 24 HOURS"], width=220, line_height=40, margin=8)
    frame[60:60 + text.shape[0], 50:50 + text.shape[1]] = text[..., ::-1]
    return frame


def test_head_then_tail_equals_the_whole_detector(split, detector, sign_frame):
    from coinfer.edge.models.detectors import TextDetector

    tensor = detector.tensor(sign_frame)
    whole = ocr.cpu_session(ocr.detector_model_path())
    expected = whole.run(None, {split.input_name: tensor})[0]
    composed = detector.tail(detector.head(tensor))
    assert composed.shape == expected.shape == (1, *split.output_shape)
    assert np.abs(composed - expected).max() < 1e-4
    assert expected.max() > 0.9  # the text is there, so the comparison covers real detections
    boxes = detector(sign_frame)
    assert len(boxes) >= 1
    np.testing.assert_array_equal(boxes, TextDetector()(sign_frame))


def test_the_cut_tensor_is_the_only_one_crossing(split):
    import onnx

    assert split.cut == ocr_split.DEFAULT_CUT
    model = ocr_split.load_detector()
    assert ocr_split.crossing_tensors(model, split.cut) == [split.cut]
    head, tail = onnx.load(str(split.head_path)), onnx.load(str(split.tail_path))
    assert [v.name for v in head.graph.output] == [v.name for v in tail.graph.input] == [split.cut]
    made = {name for node in tail.graph.node for name in node.output}
    read = {name for node in tail.graph.node for name in node.input if name}
    assert read - made == {split.cut}
    assert len(head.graph.node) + len(tail.graph.node) >= len(model.graph.node)


def test_a_cut_behind_the_stride4_stage_has_more_tensors_crossing(tmp_path):
    model = ocr_split.load_detector()
    crossing = ocr_split.crossing_tensors(model, "p2o.Add.147")
    assert crossing == ["p2o.Add.147", "p2o.Add.43", "p2o.Add.71"]  # the neck reads the earlier stages
    with pytest.raises(ocr_split.SplitError, match=re.escape("p2o.Add.43, p2o.Add.71")):
        ocr_split.split_detector(tmp_path, cut="p2o.Add.147")
    assert not (tmp_path / ocr_split.HEAD_FILE).exists()


@pytest.mark.parametrize("cut", ["no-such-tensor", "x", "sigmoid_0.tmp_0"])
def test_a_bad_cut_name_gives_a_clear_error(tmp_path, cut):
    with pytest.raises(ocr_split.SplitError, match=r"not an intermediate tensor.*single_tensor_cuts"):
        ocr_split.split_detector(tmp_path, cut=cut)


def test_features_shape_bytes_and_pooled_backbone(split, detector, sign_frame):
    assert split.input_shape == (3, 224, 384) and split.feature_shape == (48, 56, 96)
    assert split.feature_bytes == split.input_bytes == 48 * 56 * 96 * 4
    frames = np.stack([sign_frame, sign_frame[:, ::-1]])
    maps = detector.features(frames)
    assert maps.shape == (2, *split.feature_shape) and maps.dtype == np.float32
    pooled = ocr_split.backbone_features(frames, stages=(split.cut,))
    np.testing.assert_allclose(pooled, maps.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    assert ocr_split.backbone_features(frames[:1]).shape == (1, 48 + 96 + 192 + 384)
    with pytest.raises(ocr_split.SplitError, match="split again with input_size"):
        detector.features(np.zeros((240, 320, 3), np.uint8))


# ----------------------------------------------------------------------------- InFi tasks


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from coinfer.bench.data.scenes import SceneOptions, generate_scenes
    from coinfer.bench.infi.tasks import decode_scene_frames

    options = SceneOptions(cameras=2, seconds=4, tasks=("faces", "text"), crowd=3, seed=3)
    root = tmp_path_factory.mktemp("scenes") / "text"
    scene_set = generate_scenes(root, options, workers=1, progress=False)
    decoded = decode_scene_frames(scene_set.root, (80, 48))
    for camera in (0, 1):  # seed 3: text in 22 and 10 of the 40 frames
        with_text = [len(b) > 0 for b, cam in zip(decoded.boxes["text"], decoded.camera, strict=True)
                     if cam == camera]
        assert 0 < sum(with_text) < len(with_text), "the fixture needs frames with and without text"
    return decoded


@pytest.mark.slow  # renders scenes and runs the OCR detector on 80 frames (the frames fixture)
def test_text_frame_task(frames):
    from coinfer.bench.infi.ocr_tasks import text_frame_task

    task = text_frame_task(frames, frames.camera < 1)
    train = frames.camera < 1
    empty = np.array([len(b) == 0 for b in frames.boxes["text"]])
    assert task.redundant(task.test_y).mean() == pytest.approx(empty[~train].mean())
    assert task.redundant(task.train_y).mean() == pytest.approx(empty[train].mean())
    assert task.train_x.shape == (train.sum(), 48, 80, 3) and task.model_ms > 0
    embeddings, cut = task.extra["embeddings"], task.extra["cut"]
    assert cut == train.sum() and embeddings.shape == (len(frames.full), 720)
    last_test = np.flatnonzero(~train)[-1]
    np.testing.assert_allclose(embeddings[-1], ocr_split.backbone_features(frames.full[last_test:])[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # renders scenes and runs the OCR detector on 80 frames (the frames fixture)
def test_text_featuremap_task_and_partition_report(frames, split):
    from coinfer.bench.infi.ocr_tasks import partition_report, text_featuremap_task

    task = text_featuremap_task(frames, frames.camera < 1, split=split)
    train = frames.camera < 1
    assert task.spec.kind == "image" and task.spec.shape == (7, 12, 48)
    assert task.test_x.shape == (len(task.test_y), 7, 12, 48)
    assert task.extra["feature_bytes"] == split.feature_bytes
    assert task.extra["frame_bytes"] == 180 * 320 * 3
    assert task.extra["embeddings"].shape == (len(frames.full), 48) and task.extra["cut"] == train.sum()
    redundant = task.redundant(task.test_y)
    assert 0 < redundant.sum() < redundant.size

    oracle = partition_report(task, redundant)
    assert oracle["partition_bytes_saved"] == pytest.approx(redundant.mean(), abs=1e-4)
    assert oracle["partition_bytes_with_filter"] == (~redundant).sum() * split.feature_bytes
    assert oracle["accuracy"] == 1.0

    skip_all = partition_report(task, np.ones(redundant.size, bool))
    assert skip_all["partition_bytes_with_filter"] == 0 and skip_all["edge_ms_with_filter"] == 0
    assert skip_all["accuracy"] == pytest.approx(redundant.mean(), abs=1e-4)
    with pytest.raises(ValueError, match="one bool skip decision per test frame"):
        partition_report(task, redundant[:-1])
