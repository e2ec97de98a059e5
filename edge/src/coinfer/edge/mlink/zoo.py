"""The MLink model zoo: seven real black-box models on one aligned frame + audio step.

MLink links models through their outputs only, so the zoo is a set of real models, each
reduced to one output row per time step in a format :class:`OutputSpec` knows:

- ``faces`` (image): OpenCV's Haar frontal-face cascade -> classes(4), one-hot count 0, 1, 2, 3+.
- ``cats`` (image): OpenCV's Haar frontal-cat-face cascade -> presence, 1.0 if any.
- ``people`` (image): OpenCV's HOG + linear SVM pedestrians -> boxes, the largest one.
- ``text`` (image): the PP-OCRv4 text detector -> boxes, the largest one.
- ``words`` (image): PP-OCRv4 detector + recogniser -> sequence(12), word token ids.
- ``speech`` (audio): Silero VAD, its state carried along a camera -> presence, the speech
  probability.
- ``crowd`` (image): our crowd CNN (:mod:`coinfer.edge.models.crowd`) -> classes(3), soft
  probabilities of 0, 1 and 2+ people.

Boxes are ``[x, y, w, h]`` in fractions of the frame's width and height, clipped to the
frame, all zero when nothing was found. ``words`` reads every detected text box in reading
order, joins the lines, lower-cases and splits on whitespace; a word's token id is
``zlib.crc32(word.encode()) & 0x7FFFFFFF`` (stable across processes and machines, unlike
``hash``). Only the first :data:`MAX_WORDS` words in reading order are kept (the spec's
``max_length``): the scenes' signs say one or two words, and no frame of 600 generated
ones read more than 4, so truncation only cuts a page of text or readings of clutter.

``speech`` is stateful: Silero VAD scores 512-sample windows with a recurrent state, and
a step's window (``samples_per_frame``, 1600 at 10 fps) is not a multiple of 512, so the
model buffers the remainder and carries its state and 64-sample context from step to step
of one camera. Its output is the mean speech probability of the windows completed during
the step (the previous step's value if none completed). :meth:`ZooModel.reset` clears it
when a new camera's stream starts, so a camera's outputs do not depend on the one before.

Example::

    from coinfer.edge.mlink.recording import iterate_steps
    from coinfer.edge.mlink.zoo import create_zoo

    zoo = create_zoo("work/crowd")            # the crowd CNN's artifact directory
    for step in iterate_steps("work/scenes"):
        if step.index == 0:
            for model in zoo.values():
                model.reset()
        row = {name: model(step) for name, model in zoo.items()}
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from coinfer.edge.models import detectors, ocr
from coinfer.edge.models.crowd import CrowdClassifier
from coinfer.edge.models.ocr_recognizer import TextRecognizer
from coinfer.edge.models.vad import STATE_SIZE, WINDOWS, SpeechDetector, SpeechDetectorOptions, check_waveform
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink.outputs import OutputSpec

#: Every model of the zoo, in the order tables list them.
MODEL_NAMES = ("faces", "cats", "people", "text", "words", "speech", "crowd")
#: ``words`` keeps at most this many words per step (the first ones in reading order).
MAX_WORDS = 12
#: ``faces`` counts 0, 1, 2 and "3 or more".
FACE_CLASSES = 4


@dataclass(frozen=True)
class Step:
    """One time step: a full-size RGB uint8 frame ``[H, W, 3]``, the float32 audio the camera
    heard during it (``samples_per_frame`` samples), the camera's number in its scene set
    and the frame's index in that camera's stream."""

    frame: np.ndarray
    audio: np.ndarray
    camera: int
    index: int


class ZooModel(Protocol):
    """A black-box model as MLink sees it: one output row per step, in ``spec``'s format
    (a float32 vector, or a tuple of token ids for a sequence)."""

    name: str
    spec: OutputSpec
    modality: str  # "image" or "audio"

    def __call__(self, step: Step) -> Any: ...

    def reset(self) -> None:
        """Forget what earlier steps left behind; called when a new camera's stream starts."""


def one_hot_count(classes: int) -> Callable[[np.ndarray, tuple[int, int]], np.ndarray]:
    """Boxes -> one-hot over counts 0 .. classes - 2 and "classes - 1 or more"."""
    eye = np.eye(classes, dtype=np.float32)

    def summarise(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return eye[min(len(boxes), classes - 1)]

    return summarise


def any_box(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boxes -> ``[1.0]`` if there is one, else ``[0.0]``."""
    return np.array([1.0 if len(boxes) else 0.0], np.float32)


def largest_box(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The largest box (by area once clipped to the frame) as ``[x, y, w, h]`` fractions of
    the frame ``size`` (height, width); zeros when there is none. HOG boxes can reach past
    the frame's edges; clipping keeps every fraction in [0, 1]."""
    if not len(boxes):
        return np.zeros(4, np.float32)
    height, width = size
    x0 = np.clip(boxes[:, 0], 0, width)
    y0 = np.clip(boxes[:, 1], 0, height)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    best = int(np.argmax((x1 - x0) * (y1 - y0)))
    return np.array([x0[best] / width, y0[best] / height, (x1[best] - x0[best]) / width,
                     (y1[best] - y0[best]) / height], np.float32)


class DetectorModel:
    """An image model made of a detector (frame -> boxes) and a summary of its boxes."""

    modality = "image"

    def __init__(self, name: str, spec: OutputSpec, detector: detectors.Detector,
                 summarise: Callable[[np.ndarray, tuple[int, int]], np.ndarray]) -> None:
        self.name, self.spec, self.detector, self.summarise = name, spec, detector, summarise

    def __call__(self, step: Step) -> np.ndarray:
        return self.summarise(self.detector(step.frame), step.frame.shape[:2])

    def reset(self) -> None:
        """Stateless: nothing to forget."""


def word_token(word: str) -> int:
    """A word's token id: its CRC-32, non-negative, the same in every process."""
    return zlib.crc32(word.encode()) & 0x7FFFFFFF


class WordsModel:
    """Scene text as words: the PP-OCRv4 detector finds the text, the recogniser reads each
    box (reading order), and the words become crc32 token ids (at most :data:`MAX_WORDS`)."""

    name = "words"
    spec = OutputSpec.sequence(max_length=MAX_WORDS)
    modality = "image"

    def __init__(self) -> None:
        self._detector = ocr.cpu_session(ocr.detector_model_path())
        self._input = self._detector.get_inputs()[0].name
        self._recognizer = TextRecognizer()

    def _detect(self, tensor: np.ndarray) -> np.ndarray:
        return self._detector.run(None, {self._input: tensor})[0]

    def words(self, frame: np.ndarray) -> list[str]:
        """Every word read in an RGB frame, lower-cased, in reading order (not truncated)."""
        detectors.check_frame(frame)
        bgr = np.ascontiguousarray(frame[..., ::-1])
        boxes = ocr.detect_text(bgr, self._detect, detectors.SCENE_TEXT_OPTIONS)
        if not boxes:
            return []
        lines = self._recognizer.read(bgr, boxes)
        return " ".join(line.text for line in lines).lower().split()

    def __call__(self, step: Step) -> tuple[int, ...]:
        return tuple(word_token(word) for word in self.words(step.frame)[:MAX_WORDS])

    def reset(self) -> None:
        """Stateless: nothing to forget."""


class SpeechModel:
    """Silero VAD streamed over a camera's audio, one step at a time (see the module doc)."""

    name = "speech"
    spec = OutputSpec.presence()
    modality = "audio"

    def __init__(self, sample_rate: int = 16000) -> None:
        self._detector = SpeechDetector(SpeechDetectorOptions(sample_rate=sample_rate))
        self._window, self._context_size = WINDOWS[sample_rate]
        self._rate = np.array(sample_rate, np.int64)
        self.reset()

    def reset(self) -> None:
        """A fresh recurrent state, silent context and no buffered samples."""
        self._state = np.zeros((2, 1, STATE_SIZE), np.float32)
        self._context = np.zeros(self._context_size, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._last = 0.0

    def __call__(self, step: Step) -> np.ndarray:
        if np.ndim(step.audio) != 1:
            raise CoinferError(f"the speech model needs one audio window [samples], got shape "
                               f"{np.shape(step.audio)} at camera {step.camera} step {step.index}")
        audio = check_waveform(step.audio)[0]
        pending = np.concatenate([self._pending, audio])
        window, probabilities = self._window, []
        start = 0
        while len(pending) - start >= window:
            chunk = np.concatenate([self._context, pending[start:start + window]])[np.newaxis]
            probability, self._state = self._detector.session.run(
                None, {"input": chunk, "state": self._state, "sr": self._rate})
            probabilities.append(float(probability[0, 0]))
            self._context = pending[start + window - self._context_size:start + window]
            start += window
        self._pending = pending[start:]
        if probabilities:
            self._last = float(np.mean(probabilities))
        return np.array([self._last], np.float32)


class CrowdModel:
    """The crowd CNN: probabilities over 0, 1 and 2+ people in view (soft outputs)."""

    name = "crowd"
    spec = OutputSpec.classes(3)
    modality = "image"

    def __init__(self, classifier: CrowdClassifier) -> None:
        self.classifier = classifier

    def __call__(self, step: Step) -> np.ndarray:
        return self.classifier(step.frame)

    def reset(self) -> None:
        """Stateless: nothing to forget."""


CrowdSource = CrowdClassifier | bytes | str | os.PathLike


def create_model(name: str, crowd_model: CrowdSource | None = None) -> ZooModel:
    """One zoo model, loaded now (``crowd_model``: the crowd CNN as a classifier, ONNX bytes,
    an ``.onnx`` file or an artifact directory; only ``crowd`` needs it)."""
    if name == "faces":
        return DetectorModel(name, OutputSpec.classes(FACE_CLASSES), detectors.face_detector(),
                             one_hot_count(FACE_CLASSES))
    if name == "cats":
        return DetectorModel(name, OutputSpec.presence(), detectors.cat_detector(), any_box)
    if name == "people":
        return DetectorModel(name, OutputSpec.boxes(), detectors.people_detector(), largest_box)
    if name == "text":
        return DetectorModel(name, OutputSpec.boxes(), detectors.text_detector(), largest_box)
    if name == "words":
        return WordsModel()
    if name == "speech":
        return SpeechModel()
    if name == "crowd":
        if crowd_model is None:
            raise CoinferError("the crowd model needs the trained crowd CNN (an artifact directory, "
                               "an .onnx file or ONNX bytes); train one with build_workload()")
        if not isinstance(crowd_model, CrowdClassifier):
            crowd_model = CrowdClassifier(crowd_model)
        return CrowdModel(crowd_model)
    raise CoinferError(f"unknown zoo model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def create_zoo(crowd_model: CrowdSource) -> dict[str, ZooModel]:
    """Every model of the zoo, by name, in :data:`MODEL_NAMES` order; the crowd CNN is loaded
    first, so a bad ``crowd_model`` is refused before the packaged models take seconds to load."""
    crowd = create_model("crowd", crowd_model)
    return {name: crowd if name == "crowd" else create_model(name) for name in MODEL_NAMES}
