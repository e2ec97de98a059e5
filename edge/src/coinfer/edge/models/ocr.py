"""PP-OCRv4 text detection (DB detector) as shipped by ``rapidocr-onnxruntime``.

The detector maps a normalised image to a per-pixel "text here" probability map; this
module prepares the input tensor, turns the map into axis-aligned boxes and renders
synthetic text images with exact ground truth, so any runtime that can execute the ONNX
file (onnxruntime, a device runtime, a split edge/cloud pipeline) can be checked against
the same reference. Only numpy is needed at import time; OpenCV is imported by the
functions that resize, label or draw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.boxes import box_iou
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.packaged import packaged_file

PACKAGE = "rapidocr_onnxruntime"
DETECTOR_FILE = "ch_PP-OCRv4_det_infer.onnx"
INSTALL_HINT = "pip install --no-deps rapidocr-onnxruntime==1.4.4"
# The network downsamples by 32, so both input sides must be multiples of it.
STRIDE = 32
# RapidOCR's det config: mean = std = 0.5 on [0, 1] pixels, i.e. pixels map to [-1, 1].
MEAN = 0.5
STD = 0.5


def cpu_session(model: str | Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session for a model file (or serialised bytes) on ``threads``
    threads: one by default, deterministic, and no oversubscription when several
    processes run detectors at once."""
    import onnxruntime

    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, settings, providers=["CPUExecutionProvider"])


def detector_model_path() -> Path:
    """Path of the PP-OCRv4 detector ONNX file inside the installed RapidOCR package.

    ``find_spec`` locates the package without importing it: importing RapidOCR pulls in
    dependencies (and an OpenCV 5 build) that coinfer deliberately does not install.
    """
    return packaged_file(PACKAGE, f"models/{DETECTOR_FILE}", needed_by="the OCR detector",
                         install_hint=INSTALL_HINT)


@dataclass(frozen=True)
class TextBox:
    """An axis-aligned text region in original-image pixels, half-open: [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    @property
    def xywh(self) -> tuple[int, int, int, int]:
        """Corner and size, the box form :func:`~coinfer.sdk.boxes.box_iou` takes."""
        return self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0

    def iou(self, other: TextBox) -> float:
        """Intersection over union, the usual criterion for matching a detection to truth."""
        return float(box_iou(np.array(self.xywh), np.array(other.xywh)))


@dataclass(frozen=True)
class DetectorOptions:
    """Pre- and post-processing settings; defaults follow RapidOCR's detector config.

    ``limit_side_len`` is a lower bound on the shorter side (small images are scaled up
    so thin strokes survive the 32x downsampling); ``max_side_len`` caps the longer side
    so a huge image cannot blow up memory. ``thresh`` binarises the probability map,
    ``box_thresh`` rejects regions whose mean probability is low, ``unclip_ratio``
    re-grows the shrunken text kernels the DB detector predicts, and ``min_size`` drops
    regions thinner than that many map pixels.
    """

    limit_side_len: int = 736
    max_side_len: int = 2000
    thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    min_size: int = 3
    dilate: bool = True

    def __post_init__(self) -> None:
        if not STRIDE <= self.limit_side_len <= self.max_side_len:
            raise CoinferError(
                f"DetectorOptions needs {STRIDE} <= limit_side_len <= max_side_len, got "
                f"limit_side_len={self.limit_side_len}, max_side_len={self.max_side_len}"
            )
        for name in ("thresh", "box_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise CoinferError(f"DetectorOptions.{name} must be in [0, 1), got {value}")
        if self.unclip_ratio < 0 or self.min_size < 1:
            raise CoinferError(
                "DetectorOptions needs unclip_ratio >= 0 and min_size >= 1, got "
                f"unclip_ratio={self.unclip_ratio}, min_size={self.min_size}"
            )


DEFAULT_OPTIONS = DetectorOptions()


def check_bgr_image(image: object, what: str = "image") -> np.ndarray:
    """Reject anything but a non-empty uint8 (H, W, 3) array, naming ``what``; return the array."""
    if not isinstance(image, np.ndarray):
        raise CoinferError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise CoinferError(f"{what} must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise CoinferError(f"{what} must have shape (H, W, 3) (BGR), got {image.shape}")
    if image.size == 0:
        raise CoinferError(f"{what} is empty: shape {image.shape}")
    return image


def _target_side(side: int, ratio: float) -> int:
    return max(STRIDE, round(side * ratio / STRIDE) * STRIDE)


def preprocess(
    image: np.ndarray, options: DetectorOptions = DEFAULT_OPTIONS
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize and normalise a BGR uint8 image into the detector's (1, 3, H', W') input.

    Returns the tensor and ``(scale_y, scale_x)`` = resized size / original size, which
    is what maps detector-map coordinates back to the original image.
    """
    import cv2

    check_bgr_image(image)
    height, width = image.shape[:2]
    ratio = max(1.0, options.limit_side_len / min(height, width))
    ratio = min(ratio, options.max_side_len / max(height, width))
    new_h, new_w = _target_side(height, ratio), _target_side(width, ratio)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    normalised = (resized.astype(np.float32) / 255.0 - MEAN) / STD
    tensor = np.ascontiguousarray(normalised.transpose(2, 0, 1)[np.newaxis])
    return tensor, (new_h / height, new_w / width)


def _as_map(prob_map: np.ndarray) -> np.ndarray:
    prob = np.asarray(prob_map)
    if prob.ndim == 4 and prob.shape[:2] == (1, 1):
        prob = prob[0, 0]
    if prob.ndim != 2 or prob.size == 0:
        raise CoinferError(
            f"probability map must have shape (1, 1, H, W) or (H, W), got {prob.shape}"
        )
    return prob.astype(np.float32, copy=False)


def _reading_order(boxes: list[TextBox]) -> list[TextBox]:
    """Top-to-bottom rows, left-to-right within a row.

    A plain (y0, x0) sort misorders boxes on one line whose tops differ by a pixel, so a
    box joins the current row when its vertical centre falls inside the row's first box.
    """
    rows: list[list[TextBox]] = []
    for box in sorted(boxes, key=lambda b: (b.y0 + b.y1, b.x0)):
        centre = (box.y0 + box.y1) / 2
        if rows and rows[-1][0].y0 <= centre < rows[-1][0].y1:
            rows[-1].append(box)
        else:
            rows.append([box])
    return [box for row in rows for box in sorted(row, key=lambda b: b.x0)]


def find_text_boxes(
    prob_map: np.ndarray,
    original_shape: tuple[int, int],
    options: DetectorOptions = DEFAULT_OPTIONS,
) -> list[TextBox]:
    """Turn the detector's probability map into text boxes in original-image pixels.

    Each connected region above ``thresh`` is one candidate; its score is the mean
    probability over its pixels. DB predicts a shrunken kernel of each text region, so
    the kept boxes are grown by d = area * unclip_ratio / perimeter on every side.
    """
    import cv2

    prob = _as_map(prob_map)
    height, width = (int(v) for v in original_shape)
    if height <= 0 or width <= 0:
        raise CoinferError(f"original_shape must be positive (H, W), got {original_shape}")
    mask: np.ndarray = (prob > options.thresh).astype(np.uint8)
    if options.dilate:
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=count)
    scores = sums / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
    scale_y, scale_x = prob.shape[0] / height, prob.shape[1] / width
    boxes = []
    for label in range(1, count):  # label 0 is the background
        x, y, w, h = stats[label, :4]
        if scores[label] < options.box_thresh or min(w, h) < options.min_size:
            continue
        d = w * h * options.unclip_ratio / (2 * (w + h))
        boxes.append(
            TextBox(
                x0=int(np.clip(round((x - d) / scale_x), 0, width)),
                y0=int(np.clip(round((y - d) / scale_y), 0, height)),
                x1=int(np.clip(round((x + w + d) / scale_x), 0, width)),
                y1=int(np.clip(round((y + h + d) / scale_y), 0, height)),
                score=float(scores[label]),
            )
        )
    return _reading_order(boxes)


def detect_text(
    image: np.ndarray,
    run: Callable[[np.ndarray], np.ndarray],
    options: DetectorOptions = DEFAULT_OPTIONS,
) -> list[TextBox]:
    """Detect text with any runtime: ``run`` maps the input tensor to the probability map."""
    tensor, _ = preprocess(image, options)
    return find_text_boxes(run(tensor), image.shape[:2], options)


def render_text_image(
    lines: Sequence[str],
    *,
    width: int = 640,
    line_height: int = 56,
    margin: int = 24,
    seed: int = 0,
) -> tuple[np.ndarray, list[TextBox]]:
    """Draw one text line per band, returning the BGR image and each line's tight ink box.

    Gives detector tests exact ground truth without shipping images: dark anti-aliased
    Hershey text on a light background with mild seeded noise so the input is not
    perfectly flat. All lines share one font scale, shrunk if the longest would not fit.
    """
    import cv2

    if not lines or any(not line.strip() for line in lines):
        raise CoinferError(f"lines must be a non-empty list of non-blank strings, got {lines!r}")
    if width <= 2 * margin or line_height < 16 or margin < 0:
        raise CoinferError(
            f"need width > 2 * margin, line_height >= 16 and margin >= 0, got "
            f"width={width}, line_height={line_height}, margin={margin}"
        )
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 2
    # Cap height 0.4 of the band: at 0.45 or more, Hershey's wide word gaps (scaled up by
    # preprocess) make the detector split some lines into words; 0.35-0.42 held in sweeps.
    scale = cv2.getFontScaleFromHeight(font, int(line_height * 0.4), thickness)
    widest = max(cv2.getTextSize(line, font, scale, thickness)[0][0] for line in lines)
    scale *= min(1.0, (width - 2 * margin) / widest)
    height = 2 * margin + len(lines) * line_height
    ink = np.zeros((height, width), np.uint8)
    for i, line in enumerate(lines):
        baseline = margin + i * line_height + int(line_height * 0.7)
        cv2.putText(ink, line, (margin, baseline), font, scale, 255, thickness, cv2.LINE_AA)
    truth = []
    for i in range(len(lines)):
        top = margin + i * line_height
        rows, cols = np.nonzero(ink[top : top + line_height] >= 128)
        y0, y1 = top + int(rows.min()), top + int(rows.max()) + 1
        truth.append(TextBox(int(cols.min()), y0, int(cols.max()) + 1, y1, 1.0))
    rng = np.random.default_rng(seed)
    alpha = ink.astype(np.float32)[..., np.newaxis] / 255.0
    paper = np.array([228.0, 236.0, 240.0], np.float32)  # warm off-white, BGR
    text = np.array([40.0, 30.0, 25.0], np.float32)  # near-black ink
    pixels = paper * (1 - alpha) + text * alpha + rng.normal(0, 4, (height, width, 1))
    return np.clip(pixels, 0, 255).round().astype(np.uint8), truth
