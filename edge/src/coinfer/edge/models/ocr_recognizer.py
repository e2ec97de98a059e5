"""PP-OCRv4 text recognition (SVTR-LCNet + CTC) as shipped by ``rapidocr-onnxruntime``.

The recogniser reads one text line per crop: a (B, 3, 48, W) image batch goes in, a
per-step class distribution (B, W / 8, classes) comes out, and greedy CTC decoding turns
it into text and token ids. The token ids are the variable-length sequence a downstream
link consumes; :meth:`TextRecognizer.decode_tokens` maps them back to text.

The character dictionary travels in the ONNX metadata (key ``character``, one character
a line): 6623 characters (Chinese, Japanese kana, Latin letters, digits, punctuation and
the ideographic space U+3000, but no ASCII space). The model has 6625 classes: index 0
is the CTC blank and PaddleOCR appends the ASCII space as the last class (6624), so
token ids run from 1 to 6624.

The network mixes features globally along the line, so zero padding is not inert:
measured on rendered lines, padding a crop 960 px wider than itself dropped its spaces
and every pad width changed its confidences. A crop's padded width therefore depends on
the crop alone (its resized width rounded up to ``width_step``, at least ``min_width``),
and only crops of equal padded width share a batch: results never depend on batch mates.

Latency on one CPU thread (``recognize`` on one 48x200 crop, padded to the 320 px
default minimum): about 25 ms, of which the model run is about 21 ms; with
``min_width=32`` (padded to 224) about 18 ms, and a 48x640 crop takes about 41 ms in the
model. Batching does not make a crop cheaper on one thread (about 25 ms per crop in
batches of 1 and 27 ms in batches of 6); batched results are bit-identical to single ones.

Example::

    from coinfer.edge.models import ocr
    from coinfer.edge.models.ocr_recognizer import TextRecognizer

    image, _ = ocr.render_text_image(["speed 88 km/h", "Room 404, floor 3"])
    detector = ocr.cpu_session(ocr.detector_model_path())
    boxes = ocr.detect_text(image, lambda x: detector.run(None, {"x": x})[0])
    for line in TextRecognizer().read(image, boxes):
        print(line.text, line.confidence, line.token_ids)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.edge.models import ocr
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.packaged import packaged_file

RECOGNIZER_FILE = "ch_PP-OCRv4_rec_infer.onnx"
DICTIONARY_KEY = "character"
BLANK = 0
# The recogniser's width downsampling: one output step per 8 input columns.
STEP_COLUMNS = 8
# Larger crops are almost surely a whole page or a wrong box, and would cost memory.
MAX_CROP_SIDE = 4096
# Same normalisation as the detector: pixels map to [-1, 1].
MEAN = 0.5
STD = 0.5


def recognizer_model_path() -> Path:
    """Path of the PP-OCRv4 recogniser ONNX file inside the installed RapidOCR package,
    found without importing it (see :func:`ocr.detector_model_path`)."""
    return packaged_file(ocr.PACKAGE, f"models/{RECOGNIZER_FILE}", needed_by="the OCR recogniser",
                         install_hint=ocr.INSTALL_HINT)


def character_dictionary(session: Any) -> tuple[str, ...]:
    """The class list of a PP-OCR recogniser session: blank (``""``) at 0, the metadata's
    characters, then the ASCII space PaddleOCR appends; checked against the class count so
    a model with another dictionary fails here rather than decoding garbage."""
    metadata = session.get_modelmeta().custom_metadata_map
    if DICTIONARY_KEY not in metadata:
        raise CoinferError(
            f"the recogniser model has no {DICTIONARY_KEY!r} metadata (keys: {sorted(metadata)}); "
            "it is not a PP-OCR recogniser with an embedded dictionary"
        )
    # Split on "\n" only: str.splitlines would also split on characters such as U+2028.
    classes = ("", *metadata[DICTIONARY_KEY].split("\n"), " ")
    outputs = session.get_outputs()[0].shape[-1]
    if isinstance(outputs, int) and outputs != len(classes):
        raise CoinferError(
            f"the recogniser outputs {outputs} classes but its dictionary gives {len(classes)} "
            "(blank + characters + space)"
        )
    return classes


@dataclass(frozen=True)
class RecognizerOptions:
    """Pre-processing and batching settings.

    Crops are resized to ``height`` (48, the training height) keeping their aspect ratio,
    squeezed to at most ``max_width``, and right-padded with zeros to a multiple of
    ``width_step`` of at least ``min_width`` (320, PaddleOCR's training width: short crops
    read more reliably padded to it). At most ``batch_size`` crops of equal padded width
    run together. :meth:`TextRecognizer.read` grows each box by ``crop_margin`` times its
    height on every side: on tight boxes the model drops spaces next to the edges.
    """

    height: int = 48
    min_width: int = 320
    max_width: int = 1280
    width_step: int = 32
    batch_size: int = 6
    crop_margin: float = 0.2

    def __post_init__(self) -> None:
        if self.height < 16 or self.width_step < 1 or self.width_step % STEP_COLUMNS:
            raise CoinferError(
                f"RecognizerOptions needs height >= 16 and width_step a positive multiple of "
                f"{STEP_COLUMNS}, got height={self.height}, width_step={self.width_step}"
            )
        if not (self.width_step <= self.min_width <= self.max_width
                and self.min_width % self.width_step == 0 == self.max_width % self.width_step):
            raise CoinferError(
                "RecognizerOptions needs width_step <= min_width <= max_width, both multiples of "
                f"width_step, got min_width={self.min_width}, max_width={self.max_width}, "
                f"width_step={self.width_step}"
            )
        if self.batch_size < 1 or not 0.0 <= self.crop_margin <= 1.0:
            raise CoinferError(
                "RecognizerOptions needs batch_size >= 1 and crop_margin in [0, 1], got "
                f"batch_size={self.batch_size}, crop_margin={self.crop_margin}"
            )


DEFAULT_OPTIONS = RecognizerOptions()


@dataclass(frozen=True)
class Recognition:
    """One line's text, its token ids (dictionary indices, 1-based: the blank is 0 and
    never appears) and the mean probability of the emitted steps (0.0 when empty)."""

    text: str
    token_ids: tuple[int, ...]
    confidence: float


def check_crop(crop: object, what: str = "crop") -> None:
    """Reject what the model cannot read, naming ``what`` and the problem."""
    shape = ocr.check_bgr_image(crop, what).shape
    if max(shape[:2]) > MAX_CROP_SIDE:
        raise CoinferError(
            f"{what} is {shape[1]}x{shape[0]} px; a text line crop must be at most "
            f"{MAX_CROP_SIDE} px a side"
        )


def preprocess_crop(crop: np.ndarray, options: RecognizerOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """One BGR uint8 line crop as the model's (3, height, padded width) float32 input.

    The padded width is a function of the crop alone, which is what keeps batch mates
    from changing each other's results.
    """
    import cv2

    check_crop(crop)
    height, width = crop.shape[:2]
    resized_w = min(options.max_width, max(1, math.ceil(options.height * width / height)))
    resized = cv2.resize(crop, (resized_w, options.height), interpolation=cv2.INTER_LINEAR)
    padded_w = max(options.min_width, -(-resized_w // options.width_step) * options.width_step)
    tensor = np.zeros((3, options.height, padded_w), np.float32)
    tensor[:, :, :resized_w] = ((resized.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return tensor


def ctc_greedy(
    probs: np.ndarray, strip_ids: frozenset[int] = frozenset()
) -> list[tuple[tuple[int, ...], float]]:
    """Greedy CTC decoding of (B, T, classes) probabilities into (token ids, confidence).

    Takes the best class per step, collapses runs of one class, drops blanks, then drops
    ``strip_ids`` (whitespace) at either end: a line's outer spaces are margin, not text.
    Confidence is the mean best probability over the steps that emitted a kept token.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[2] < 2:
        raise CoinferError(f"recogniser output must have shape (B, T, classes), got {probs.shape}")
    best = probs.argmax(axis=2)
    best_prob = np.take_along_axis(probs, best[..., np.newaxis], axis=2)[..., 0]
    results = []
    for ids, prob in zip(best, best_prob, strict=True):
        emits = (ids != BLANK) & np.concatenate(([True], ids[1:] != ids[:-1]))
        steps = np.flatnonzero(emits)
        while len(steps) and int(ids[steps[0]]) in strip_ids:
            steps = steps[1:]
        while len(steps) and int(ids[steps[-1]]) in strip_ids:
            steps = steps[:-1]
        confidence = float(prob[steps].mean()) if len(steps) else 0.0
        results.append((tuple(int(i) for i in ids[steps]), confidence))
    return results


class TextRecognizer:
    """The PP-OCRv4 recogniser on an onnxruntime CPU session: line crops in, text out."""

    def __init__(self, options: RecognizerOptions | None = None, threads: int = 1) -> None:
        self.options = options or DEFAULT_OPTIONS
        self._session = ocr.cpu_session(recognizer_model_path(), threads)
        self._input = self._session.get_inputs()[0].name
        self._classes = character_dictionary(self._session)
        self._whitespace = frozenset(
            i for i, char in enumerate(self._classes) if i != BLANK and char.isspace()
        )

    @property
    def vocabulary_size(self) -> int:
        """Number of model classes, blank included (token ids are 1 .. size - 1)."""
        return len(self._classes)

    def decode_tokens(self, ids: Sequence[int]) -> str:
        """Text of a token id sequence, e.g. one received over a link."""
        bad = [i for i in ids if not 1 <= i < len(self._classes)]
        if bad:
            raise CoinferError(
                f"token ids must be in [1, {len(self._classes) - 1}] (0 is the CTC blank), got {bad[:5]}"
            )
        return "".join(self._classes[i] for i in ids)

    def recognize(self, crops: Sequence[np.ndarray]) -> list[Recognition]:
        """Read each BGR uint8 crop of a single text line; results in the order given."""
        for i, crop in enumerate(crops):
            check_crop(crop, f"crop {i}")
        tensors = [preprocess_crop(crop, self.options) for crop in crops]
        by_width: dict[int, list[int]] = {}
        for i, tensor in enumerate(tensors):
            by_width.setdefault(tensor.shape[2], []).append(i)
        results: dict[int, Recognition] = {}
        size = self.options.batch_size
        for width in sorted(by_width):
            members = by_width[width]
            for start in range(0, len(members), size):
                batch = members[start : start + size]
                probs = self._session.run(None, {self._input: np.stack([tensors[i] for i in batch])})[0]
                for i, (ids, confidence) in zip(batch, ctc_greedy(probs, self._whitespace), strict=True):
                    results[i] = Recognition(self.decode_tokens(ids), ids, confidence)
        return [results[i] for i in range(len(tensors))]

    def read(self, image: np.ndarray, boxes: Sequence[ocr.TextBox]) -> list[Recognition]:
        """Read the text in each box of a full BGR image (e.g. :func:`ocr.detect_text`'s).

        Boxes are grown by ``crop_margin`` and clipped to the image; a box with nothing
        left is an error rather than a silent gap, so results stay aligned with boxes.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or image.size == 0:
            raise CoinferError(
                f"image must be a non-empty BGR uint8 array of shape (H, W, 3), got "
                f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', None)}"
            )
        height, width = image.shape[:2]
        crops = []
        for i, box in enumerate(boxes):
            if box.x1 <= box.x0 or box.y1 <= box.y0:
                raise CoinferError(f"box {i} {box} is empty")
            grow = round(self.options.crop_margin * (box.y1 - box.y0))
            x0, x1 = max(0, box.x0 - grow), min(width, box.x1 + grow)
            y0, y1 = max(0, box.y0 - grow), min(height, box.y1 + grow)
            if x1 <= x0 or y1 <= y0:
                raise CoinferError(f"box {i} {box} is empty once clipped to the {width}x{height} image")
            crops.append(image[y0:y1, x0:x1])
        return self.recognize(crops)
