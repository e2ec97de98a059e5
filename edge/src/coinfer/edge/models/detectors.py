"""Real object detectors that ship inside PyPI packages, as frame -> boxes callables.

OpenCV's Haar cascades (frontal human face, frontal cat face) and HOG people detector,
and the PP-OCRv4 text detector of :mod:`coinfer.edge.models.ocr`. They are the "heavy
models" of the video-analytics workloads: ``coinfer data scenes`` runs them on every
decoded frame to record what a decode-all system would see. Every detector takes an RGB
uint8 frame and returns float32 boxes ``[K, 4]`` as ``x, y, w, h`` in frame pixels,
sorted, so the output does not depend on thread scheduling inside OpenCV.

Defaults are tuned for small surveillance resolutions (about 160x90 to 640x360): sizes
are fractions of the frame height, because an object's size in pixels scales with the
frame, and the smallest scales, which dominate a cascade's cost, are skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from coinfer.edge.models import ocr
from coinfer.sdk.errors import CoinferError

FACE_CASCADE = "haarcascade_frontalface_default.xml"
CAT_CASCADE = "haarcascade_frontalcatface.xml"
# The cascades were trained on 24x24 windows; nothing smaller can be found.
CASCADE_WINDOW = 24
# The default HOG people detector scans 64x128 windows.
HOG_WINDOW = (64, 128)


class Detector(Protocol):
    """What the scene generator and the benchmarks call: an RGB frame in, boxes out."""

    name: str

    def __call__(self, frame: np.ndarray) -> np.ndarray: ...


def check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
            or frame.shape[2] != 3 or frame.size == 0:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise CoinferError(f"a detector needs an RGB uint8 frame of shape (H, W, 3), got {dtype} {shape}")


def as_boxes(rows: object) -> np.ndarray:
    """OpenCV's detections (an empty tuple or an [K, 4] array) as sorted float32 [K, 4]."""
    boxes = np.asarray(rows, dtype=np.float32).reshape(-1, 4)
    if len(boxes) > 1:
        boxes = boxes[np.lexsort(boxes.T[::-1])]
    return boxes


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run OpenCV on one thread: the same boxes whatever the machine, and no oversubscription
    when several processes detect at once."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


@dataclass(frozen=True)
class CascadeOptions:
    """``detectMultiScale`` settings; sizes are fractions of the frame height.

    ``min_size`` 0.22 skips the small scales, where most of the time goes (never below the
    24-pixel training window); ``scale_factor`` 1.15 with ``min_neighbors`` 2 keeps recall
    on the coarser grid of the shrunk frame (see :class:`HaarDetector`). Measured on
    generated 320x180 H.264 scenes against 1.2 / 0.2 / 3 on the full frame: ~30% less
    time, the same face recall (0.86-0.88 by day), cat recall at night 0.77 instead of 0.47.
    ``max_size`` 0.5 stays above the largest actor (0.42 of the height); against 0.6 it cuts
    another ~25% of the time and gives the same count on 99-100% of frames.
    """

    scale_factor: float = 1.15
    min_neighbors: int = 2
    min_size: float = 0.22
    max_size: float = 0.5

    def __post_init__(self) -> None:
        if not 1.01 <= self.scale_factor <= 2.0:
            raise CoinferError(f"CascadeOptions.scale_factor must be in [1.01, 2], got {self.scale_factor}")
        if self.min_neighbors < 0:
            raise CoinferError(f"CascadeOptions.min_neighbors must be >= 0, got {self.min_neighbors}")
        if not 0.0 <= self.min_size < self.max_size <= 1.0:
            raise CoinferError(
                f"CascadeOptions needs 0 <= min_size < max_size <= 1, got "
                f"min_size={self.min_size}, max_size={self.max_size}"
            )

    def size_range(self, height: int) -> tuple[int, int]:
        smallest = max(CASCADE_WINDOW, round(self.min_size * height))
        return smallest, max(smallest, round(self.max_size * height))


class HaarDetector:
    """A Haar cascade from ``cv2.data.haarcascades`` run on the grey frame."""

    def __init__(self, name: str, cascade_file: str, options: CascadeOptions | None = None) -> None:
        import cv2
        import cv2.data

        self.name = name
        self.options = options or CascadeOptions()
        path = f"{cv2.data.haarcascades}{cascade_file}"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise CoinferError(f"could not load the Haar cascade {path}; "
                               "is opencv-python-headless<5 installed?")

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        check_frame(frame)
        height, width = frame.shape[:2]
        smallest, largest = self.options.size_range(height)
        if smallest > min(height, width):
            return as_boxes(())
        # Shrink the frame so the smallest wanted object fills the 24-pixel training window:
        # OpenCV slides windows in 1-pixel steps once its own scale passes 2x, so letting it
        # reach 40-pixel objects by scaling a full frame costs more than starting shrunk.
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        shrink = CASCADE_WINDOW / smallest
        if shrink < 1.0:
            size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        top = max(CASCADE_WINDOW, round(largest * grey.shape[0] / height))
        rows = self._cascade.detectMultiScale(
            grey, scaleFactor=self.options.scale_factor, minNeighbors=self.options.min_neighbors,
            minSize=(CASCADE_WINDOW, CASCADE_WINDOW), maxSize=(top, top),
        )
        scale = np.array([width / grey.shape[1], height / grey.shape[0]] * 2, np.float32)
        return as_boxes(np.asarray(rows, np.float32).reshape(-1, 4) * scale)


@dataclass(frozen=True)
class PeopleOptions:
    """HOG settings. A fine 1.05 scale step matters more than the stride: the detector's
    score peaks sharply at the right scale. On generated 320x180 scenes: 29 of 31 fully
    visible walkers found at ~12 ms a frame, against 13 of 31 with a 1.15 step (5 ms)."""

    win_stride: int = 8
    scale: float = 1.05
    hit_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.win_stride not in (4, 8, 16) or not 1.01 <= self.scale <= 2.0:
            raise CoinferError(
                f"PeopleOptions needs win_stride in (4, 8, 16) and scale in [1.01, 2], got "
                f"win_stride={self.win_stride}, scale={self.scale}"
            )


class PeopleDetector:
    """OpenCV's default HOG + linear SVM pedestrian detector (Dalal-Triggs)."""

    def __init__(self, options: PeopleOptions | None = None) -> None:
        import cv2

        self.name = "people"
        self.options = options or PeopleOptions()
        self._hog = cv2.HOGDescriptor()
        # An ndarray already; cv2's stubs call it Sequence[float], which setSVMDetector does not take.
        self._hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        check_frame(frame)
        width, height = HOG_WINDOW
        if frame.shape[0] < height or frame.shape[1] < width:
            return as_boxes(())
        stride = self.options.win_stride
        rows, _ = self._hog.detectMultiScale(
            frame, hitThreshold=self.options.hit_threshold, winStride=(stride, stride),
            padding=(stride, stride), scale=self.options.scale,
        )
        return as_boxes(rows)


#: The text detector's settings on scene frames (see :class:`TextDetector`); the split
#: head/tail pipeline of :mod:`coinfer.bench.models.ocr_split` uses the same.
SCENE_TEXT_OPTIONS = ocr.DetectorOptions(limit_side_len=224, box_thresh=0.6)


class TextDetector:
    """The PP-OCRv4 text detector on one onnxruntime thread (deterministic, and the scene
    generator parallelises over processes instead).

    ``limit_side_len`` is much lower than RapidOCR's 736: a 180-pixel frame is scaled up
    1.2x rather than 4x. On generated 320x180 scenes that kept every fully visible sign
    (63 of 63) at 22 ms instead of 55 ms (352) a frame, and ``box_thresh`` 0.6 with it cut
    the false hits on faces and cat eyes, which upscaling turns into "text", from 196 to 36
    in 720 frames.
    """

    def __init__(self, options: ocr.DetectorOptions | None = None) -> None:
        self.name = "text"
        self.options = options or SCENE_TEXT_OPTIONS
        self._session = ocr.cpu_session(ocr.detector_model_path())
        self._input = self._session.get_inputs()[0].name

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: tensor})[0]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        check_frame(frame)
        bgr = np.ascontiguousarray(frame[..., ::-1])
        found = ocr.detect_text(bgr, self._run, self.options)
        return as_boxes([(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0) for b in found])


def face_detector() -> HaarDetector:
    return HaarDetector("faces", FACE_CASCADE)


def cat_detector() -> HaarDetector:
    return HaarDetector("cats", CAT_CASCADE)


def people_detector() -> PeopleDetector:
    return PeopleDetector()


def text_detector() -> TextDetector:
    return TextDetector()


#: Task name -> factory of the detector that serves it (factories, because loading a
#: model is done once per process and the objects are not picklable).
DETECTORS: dict[str, Callable[[], Detector]] = {
    "faces": face_detector,
    "cats": cat_detector,
    "people": people_detector,
    "text": text_detector,
}


def create_detector(task: str) -> Detector:
    """The detector of ``task``, with a clear error for an unknown name."""
    if task not in DETECTORS:
        raise CoinferError(f"unknown detection task {task!r}; choose from {', '.join(DETECTORS)}")
    return DETECTORS[task]()
