"""PP-OCRv4 text detection recipe: pre/post-processing units and the real ONNX model."""

import importlib.machinery
import importlib.util

import numpy as np
import pytest

from coinfer.edge.models import ocr
from coinfer.sdk.errors import CoinferError, ModelNotAvailableError

cv2 = pytest.importorskip("cv2")

LINES = [
    "coinfer edge gateway",
    "packet gating before decoding",
    "secure transformer inference",
    "learnable input filters",
]
NO_DILATE = ocr.DetectorOptions(dilate=False)


@pytest.fixture(scope="module")
def run_detector():
    ort = pytest.importorskip("onnxruntime")
    try:
        path = ocr.detector_model_path()
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda tensor: session.run(None, {name: tensor})[0]


def test_real_detector_finds_each_rendered_line(run_detector):
    image, truth = ocr.render_text_image(LINES)
    boxes = ocr.detect_text(image, run_detector)
    assert len(boxes) == len(LINES)
    for line, expected in zip(LINES, truth, strict=True):
        best = max(box.iou(expected) for box in boxes)
        assert best >= 0.5, f"{line!r}: best IoU {best:.2f}"
    assert [box.y0 for box in boxes] == sorted(box.y0 for box in boxes)
    assert all(box.score >= ocr.DetectorOptions().box_thresh for box in boxes)


def test_real_detector_finds_nothing_on_plain_background(run_detector):
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(232, 6, (240, 640, 3)), 0, 255).astype(np.uint8)
    assert ocr.detect_text(image, run_detector) == []


def blob_map(*blobs: tuple[slice, slice, float]) -> np.ndarray:
    prob = np.zeros((1, 1, 64, 128), np.float32)
    for rows, cols, value in blobs:
        prob[0, 0, rows, cols] = value
    return prob


def test_two_blobs_are_unclipped_and_scaled_to_the_original_image():
    # Original 32x32 -> map 64x128: scale_y = 2, scale_x = 4.
    prob = blob_map((slice(10, 20), slice(13, 43), 0.9), (slice(40, 50), slice(70, 110), 0.8))
    boxes = ocr.find_text_boxes(prob, (32, 32), NO_DILATE)
    # Blob 1: 30x10, d = 300 * 1.6 / 80 = 6 -> x [7, 49] / 4, y [4, 26] / 2.
    # Blob 2: 40x10, d = 400 * 1.6 / 100 = 6.4 -> x [63.6, 116.4] / 4, y [33.6, 56.4] / 2.
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(2, 2, 12, 13), (16, 17, 29, 28)]
    assert [b.score for b in boxes] == pytest.approx([0.9, 0.8])


def test_boxes_are_clipped_to_the_image():
    prob = blob_map((slice(0, 10), slice(100, 128), 0.9))
    boxes = ocr.find_text_boxes(prob, (64, 128), NO_DILATE)
    # 28x10, d = 280 * 1.6 / 76 = 5.89: x [94.1, 133.9] and y [-5.9, 15.9] before clipping.
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(94, 0, 128, 16)]


def test_low_score_and_thin_blobs_are_dropped():
    prob = blob_map(
        (slice(5, 15), slice(5, 40), 0.9),
        (slice(30, 40), slice(5, 40), 0.4),  # above thresh, below box_thresh
        (slice(50, 52), slice(60, 100), 0.9),  # 2 px high < min_size
    )
    boxes = ocr.find_text_boxes(prob, (64, 128), NO_DILATE)
    assert len(boxes) == 1 and boxes[0].y0 < 5


def test_dilation_bridges_a_one_pixel_gap():
    prob = blob_map((slice(10, 20), slice(10, 30), 0.9), (slice(10, 20), slice(31, 50), 0.9))
    assert len(ocr.find_text_boxes(prob, (64, 128), NO_DILATE)) == 2
    assert len(ocr.find_text_boxes(prob, (64, 128))) == 1


def test_boxes_are_in_reading_order():
    prob = blob_map(
        (slice(12, 22), slice(80, 120), 0.9),  # same row, starts lower, right
        (slice(10, 20), slice(10, 50), 0.9),  # same row, left
        (slice(40, 50), slice(10, 50), 0.9),  # next row
    )
    boxes = ocr.find_text_boxes(prob, (64, 128), NO_DILATE)
    assert [b.x0 < 40 for b in boxes] == [True, False, True]
    assert boxes[2].y0 > boxes[1].y1 - 10


def test_empty_map_gives_no_boxes():
    assert ocr.find_text_boxes(np.zeros((64, 128), np.float32), (64, 128)) == []


def test_bad_probability_map_is_rejected():
    with pytest.raises(CoinferError, match="probability map"):
        ocr.find_text_boxes(np.zeros((1, 2, 8, 8), np.float32), (8, 8))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((100, 300), (672, 1984)), ((800, 900), (800, 896)), ((1000, 3000), (672, 1984))],
)
def test_preprocess_shape_scale_and_range(shape, expected):
    image = np.zeros((*shape, 3), np.uint8)
    image[: shape[0] // 2] = 255
    tensor, (scale_y, scale_x) = ocr.preprocess(image)
    assert tensor.shape == (1, 3, *expected)
    assert tensor.dtype == np.float32
    assert tensor.min() == -1.0 and tensor.max() == 1.0
    assert (scale_y, scale_x) == (expected[0] / shape[0], expected[1] / shape[1])


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((0, 32, 3), np.uint8), "empty"),
    ],
)
def test_preprocess_rejects_bad_images(image, problem):
    with pytest.raises(CoinferError, match=problem):
        ocr.preprocess(image)


def test_bad_options_are_rejected():
    with pytest.raises(CoinferError, match="box_thresh"):
        ocr.DetectorOptions(box_thresh=1.5)


def test_render_is_deterministic_and_boxes_cover_the_ink():
    image, truth = ocr.render_text_image(LINES, seed=7)
    again, _ = ocr.render_text_image(LINES, seed=7)
    other, _ = ocr.render_text_image(LINES, seed=8)
    assert image.shape == (2 * 24 + 4 * 56, 640, 3) and image.dtype == np.uint8
    assert np.array_equal(image, again) and not np.array_equal(image, other)
    dark = image.mean(axis=2) < 128
    covered = np.zeros_like(dark)
    for box in truth:
        assert box.y1 <= box.y0 + 56 and 0 <= box.x0 < box.x1 <= 640
        covered[box.y0 : box.y1, box.x0 : box.x1] = True
        assert dark[box.y0 : box.y1, box.x0 : box.x1].any()
    assert not (dark & ~covered).any()


def test_render_rejects_blank_lines():
    with pytest.raises(CoinferError, match="non-blank"):
        ocr.render_text_image(["ok", "  "])


def test_iou():
    a = ocr.TextBox(0, 0, 10, 10, 1.0)
    assert a.iou(a) == 1.0
    assert a.iou(ocr.TextBox(5, 0, 15, 10, 1.0)) == pytest.approx(50 / 150)
    assert a.iou(ocr.TextBox(20, 20, 30, 30, 1.0)) == 0.0


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps rapidocr"):
        ocr.detector_model_path()


def test_missing_model_file_is_reported(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("rapidocr_onnxruntime", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ModelNotAvailableError, match=r"ch_PP-OCRv4_det_infer\.onnx"):
        ocr.detector_model_path()
