"""PP-OCRv4 text recogniser: dictionary, pre/post-processing units and the real ONNX model."""

import importlib.machinery
import importlib.util

import numpy as np
import pytest

from coinfer.edge.models import ocr
from coinfer.edge.models import ocr_recognizer as rec
from coinfer.sdk.errors import CoinferError, ModelNotAvailableError

cv2 = pytest.importorskip("cv2")

LINES = [
    "HELLO 2026",
    "coinfer edge",
    "EXIT 12",
    "speed 88 km/h",
    "Room 404, floor 3",
    "jumps over 13 lazy dogs",
]
SPACE = 6624


@pytest.fixture(scope="module")
def recognizer():
    pytest.importorskip("onnxruntime")
    try:
        return rec.TextRecognizer()
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))


def line_crops(image, truth, margin=4):
    return [image[max(0, b.y0 - margin) : b.y1 + margin, max(0, b.x0 - margin) : b.x1 + margin]
            for b in truth]


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        previous, row[0] = row[:], i
        for j, char_b in enumerate(b, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (char_a != char_b))
    return row[-1]


def test_dictionary_has_blank_first_and_space_last(recognizer):
    assert recognizer.vocabulary_size == 6625
    assert recognizer.decode_tokens([SPACE]) == " "
    letters = "".join(recognizer.decode_tokens([i]) for i in range(1, recognizer.vocabulary_size))
    assert len(letters) == 6624 and len(set(letters)) == 6624
    assert all(char in letters for char in "AZaz09,/")


def test_reads_the_rendered_lines_exactly(recognizer):
    image, truth = ocr.render_text_image(LINES)
    results = recognizer.read(image, truth)
    assert [r.text for r in results] == LINES
    for result in results:
        assert recognizer.decode_tokens(result.token_ids) == result.text
        assert all(1 <= i < recognizer.vocabulary_size for i in result.token_ids)
        assert 0.8 <= result.confidence <= 1.0


@pytest.mark.parametrize(("seed", "line_height", "width"), [(1, 40, 480), (2, 72, 800)])
def test_character_error_rate_across_sizes(recognizer, seed, line_height, width):
    # Measured over seeds 0-4 at these sizes: CER <= 0.012 and at most one line off, by a
    # space Hershey's narrow gap in "EXIT 12" loses at line height 40.
    image, truth = ocr.render_text_image(LINES, seed=seed, line_height=line_height, width=width)
    texts = [r.text for r in recognizer.read(image, truth)]
    errors = sum(edit_distance(line, text) for line, text in zip(LINES, texts, strict=True))
    assert errors / sum(map(len, LINES)) <= 0.03, texts
    assert sum(line == text for line, text in zip(LINES, texts, strict=True)) >= len(LINES) - 1, texts


def test_detector_then_recogniser_end_to_end(recognizer):
    detector = ocr.cpu_session(ocr.detector_model_path())
    name = detector.get_inputs()[0].name
    image, _ = ocr.render_text_image(LINES, seed=3)
    boxes = ocr.detect_text(image, lambda tensor: detector.run(None, {name: tensor})[0])
    assert [r.text for r in recognizer.read(image, boxes)] == LINES


def test_a_crop_does_not_depend_on_its_batch_mates(recognizer):
    image, truth = ocr.render_text_image(LINES)
    crops = line_crops(image, truth)
    alone = recognizer.recognize([crops[2]])[0]
    wide_mate = np.ascontiguousarray(np.tile(crops[5], (1, 3, 1)))
    assert rec.preprocess_crop(wide_mate).shape[2] > rec.preprocess_crop(crops[2]).shape[2]
    with_wide = recognizer.recognize([wide_mate, crops[2]])[1]
    # Same padded width: these share one batch.
    with_same = recognizer.recognize([crops[0], crops[2], crops[2]])[1:]
    assert alone.text == "EXIT 12"
    for other in (with_wide, *with_same):
        assert (other.text, other.token_ids) == (alone.text, alone.token_ids)
        assert other.confidence == pytest.approx(alone.confidence, abs=1e-6)


def test_results_keep_the_input_order_across_batches(recognizer):
    image, truth = ocr.render_text_image(LINES)
    crops = line_crops(image, truth)[::-1]
    small_batches = rec.TextRecognizer(rec.RecognizerOptions(batch_size=1))
    expected = LINES[::-1]
    assert [r.text for r in recognizer.recognize(crops)] == expected
    assert small_batches.recognize(crops) == recognizer.recognize(crops)
    assert recognizer.recognize([]) == []


def test_blank_crop_reads_as_empty_text(recognizer):
    blank = np.full((48, 200, 3), 235, np.uint8)
    assert recognizer.recognize([blank]) == [rec.Recognition("", (), 0.0)]


@pytest.mark.parametrize(
    ("crop", "problem"),
    [
        (np.zeros((32, 100, 3), np.float32), "crop 0 must have dtype uint8"),
        (np.zeros((32, 100), np.uint8), r"crop 0 must have shape \(H, W, 3\)"),
        (np.zeros((32, 100, 4), np.uint8), r"crop 0 must have shape \(H, W, 3\)"),
        (np.zeros((0, 100, 3), np.uint8), "crop 0 is empty"),
        (np.zeros((32, 5000, 3), np.uint8), "at most 4096 px"),
        ([[0, 0, 0]], "crop 0 must be a numpy array"),
    ],
)
def test_bad_crops_are_rejected(recognizer, crop, problem):
    with pytest.raises(CoinferError, match=problem):
        recognizer.recognize([crop])


def test_bad_boxes_and_images_are_rejected(recognizer):
    image = np.zeros((64, 128, 3), np.uint8)
    with pytest.raises(CoinferError, match=r"box 1 .* is empty once clipped to the 128x64 image"):
        recognizer.read(image, [ocr.TextBox(0, 0, 50, 20, 1.0), ocr.TextBox(200, 10, 260, 30, 1.0)])
    with pytest.raises(CoinferError, match=r"box 0 .* is empty"):
        recognizer.read(image, [ocr.TextBox(10, 10, 10, 30, 1.0)])
    with pytest.raises(CoinferError, match="image must be"):
        recognizer.read(image[..., 0], [ocr.TextBox(0, 0, 50, 20, 1.0)])


def test_out_of_range_token_ids_are_rejected(recognizer):
    with pytest.raises(CoinferError, match="0 is the CTC blank"):
        recognizer.decode_tokens([5, 0])
    with pytest.raises(CoinferError, match=r"\[6625\]"):
        recognizer.decode_tokens([6625])


def one_hot(*steps: int, classes: int = 6) -> np.ndarray:
    probs = np.full((1, len(steps), classes), 0.02, np.float32)
    for t, label in enumerate(steps):
        probs[0, t, label] = 0.9
    return probs


def test_ctc_collapses_repeats_and_drops_blanks():
    # a a _ a b b _ _ b -> a a b b (the blank separates genuine repeats)
    [(ids, confidence)] = rec.ctc_greedy(one_hot(1, 1, 0, 1, 2, 2, 0, 0, 2))
    assert ids == (1, 1, 2, 2)
    assert confidence == pytest.approx(0.9)


def test_ctc_strips_outer_whitespace_and_scores_kept_steps():
    probs = one_hot(5, 0, 1, 5, 2, 0, 5)
    probs[0, 2, 1] = 0.5
    [(ids, confidence)] = rec.ctc_greedy(probs, frozenset({5}))
    assert ids == (1, 5, 2)
    assert confidence == pytest.approx((0.5 + 0.9 + 0.9) / 3)
    assert rec.ctc_greedy(one_hot(0, 5, 0), frozenset({5})) == [((), 0.0)]


def test_ctc_rejects_bad_output_shapes():
    with pytest.raises(CoinferError, match=r"\(B, T, classes\)"):
        rec.ctc_greedy(np.zeros((4, 6), np.float32))


@pytest.mark.parametrize(
    ("shape", "resized", "padded"),
    [((24, 100), 200, 320), ((48, 400), 400, 416), ((20, 2000), 1280, 1280), ((96, 10), 5, 320)],
)
def test_preprocess_keeps_aspect_pads_with_zeros_and_caps_width(shape, resized, padded):
    crop = np.full((*shape, 3), 255, np.uint8)
    tensor = rec.preprocess_crop(crop)
    assert tensor.shape == (3, 48, padded) and tensor.dtype == np.float32
    assert np.all(tensor[:, :, :resized] == 1.0)
    assert np.all(tensor[:, :, resized:] == 0.0)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"width_step": 12}, "width_step"),
        ({"min_width": 640, "max_width": 320}, "min_width <= max_width"),
        ({"min_width": 100}, "multiples of width_step"),
        ({"batch_size": 0}, "batch_size"),
        ({"crop_margin": -0.1}, "crop_margin"),
    ],
)
def test_bad_options_are_rejected(kwargs, problem):
    with pytest.raises(CoinferError, match=problem):
        rec.RecognizerOptions(**kwargs)


class FakeSession:
    def __init__(self, metadata, classes):
        self.metadata, self.classes = metadata, classes

    def get_modelmeta(self):
        return type("Meta", (), {"custom_metadata_map": self.metadata})()

    def get_outputs(self):
        return [type("Output", (), {"shape": ["batch", "steps", self.classes]})()]


def test_dictionary_comes_from_metadata_and_must_match_the_classes():
    assert rec.character_dictionary(FakeSession({"character": "a\nb\nc"}, 5)) == ("", "a", "b", "c", " ")
    with pytest.raises(CoinferError, match="no 'character' metadata"):
        rec.character_dictionary(FakeSession({}, 5))
    with pytest.raises(CoinferError, match="outputs 6 classes but its dictionary gives 5"):
        rec.character_dictionary(FakeSession({"character": "a\nb\nc"}, 6))


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match=r"recogniser.*pip install --no-deps rapidocr"):
        rec.recognizer_model_path()


def test_missing_model_file_is_reported(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("rapidocr_onnxruntime", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ModelNotAvailableError, match=r"ch_PP-OCRv4_rec_infer\.onnx"):
        rec.recognizer_model_path()
