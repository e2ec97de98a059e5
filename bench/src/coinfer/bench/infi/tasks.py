"""The InFi benchmark's tasks: real models on generated workloads, as (input, output) records.

Each task is a modality, a heavy model that really runs, a redundancy measurement and a
train/test split (for videos: by camera, so filters are tested on scenes they never saw):

- ``faces`` (image, skip, ``empty``): OpenCV's Haar face detector on ``coinfer data scenes``
  frames; the filter sees the frame downscaled.
- ``face-count`` (image, reuse, ``count``): the same detector's count, reused from a cache.
- ``speech`` (audio, skip, ``class-subset``): Silero VAD on ``coinfer data speech`` clips;
  only "speech" needs the downstream recogniser. The filter sees a log-mel spectrogram.
- ``topics`` (text, skip, ``class-subset``): the MiniLM zero-shot topic classifier on
  ``coinfer data corpus`` messages; the application acts on sports and finance only.
- ``topic-confidence`` (text, skip, ``confidence-below`` 0.9): the same model, redundant when
  it is unsure. The theory says this is not filterable; the benchmark shows it.

The model's latency per input is measured on this machine (median of single-input runs),
so the analysis of whether a filter pays off uses real costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.infi.measurements import (
    Measurement,
    MeasurementError,
    ReuseMeasurement,
    SkipMeasurement,
    create_measurement,
)
from coinfer.sdk.infi.modalities import ModalitySpec, log_mel_spectrogram
from coinfer.sdk.scenes import SceneFormatError
from coinfer.sdk.splits import block_split

#: The topics the text application acts on (the rest is redundant).
KEPT_TOPICS = ("sports", "finance")
TEXT_LENGTH = 32


@dataclass
class FilterTask:
    """Records of one task. ``raw_*`` keep what baselines need besides the filter's input
    (full frames, waveforms); ``streams_*`` give each input's stream for Reducto-style
    frame differencing and per-camera caches; ``validation_block`` how many consecutive
    training records the threshold's validation holds out together (a stream's block)."""

    name: str
    kind: str
    measurement: Measurement
    spec: ModalitySpec
    train_x: np.ndarray
    train_y: list[Any]
    test_x: np.ndarray
    test_y: list[Any]
    model_ms: float
    model_name: str
    raw_train: np.ndarray | None = None
    raw_test: np.ndarray | None = None
    streams_train: np.ndarray | None = None
    streams_test: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    validation_block: int = 1

    @property
    def skip_measurement(self) -> SkipMeasurement:
        """The measurement of a skip task."""
        if not isinstance(self.measurement, SkipMeasurement):
            raise MeasurementError(f"task {self.name!r}: {self.measurement.name!r} is not a skip measurement")
        return self.measurement

    @property
    def reuse_measurement(self) -> ReuseMeasurement:
        """The measurement of a reuse task."""
        if not isinstance(self.measurement, ReuseMeasurement):
            raise MeasurementError(f"task {self.name!r}: {self.measurement.name!r} is not a reuse "
                                   "measurement")
        return self.measurement

    def redundant(self, outputs: Sequence[Any]) -> np.ndarray:
        return self.skip_measurement.redundant_many(outputs)


def median_ms(call: Callable[[], Any], repeats: int = 15) -> float:
    """Median wall time of ``call`` in milliseconds, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


@dataclass(frozen=True)
class SceneFrames:
    """Decoded frames of a scene set: full size (for the detectors) and downscaled (filters),
    each frame's camera and night flag, and the detections recorded at generation per task."""

    full: np.ndarray
    small: np.ndarray
    camera: np.ndarray
    night: np.ndarray
    boxes: dict[str, list[np.ndarray]]


def decode_scene_frames(directory: str | Path, size: tuple[int, int]) -> SceneFrames:
    """Every frame of every camera, with every task's detections recorded at generation."""
    import av
    import cv2

    from coinfer.bench.data.scenes import SceneSet

    scene_set = SceneSet.load(directory)
    width, height = size
    full: list[np.ndarray] = []
    small: list[np.ndarray] = []
    camera: list[int] = []
    night: list[bool] = []
    boxes: dict[str, list[np.ndarray]] = {task: [] for task in scene_set.tasks}
    for index, cam in enumerate(scene_set.cameras):
        with av.open(str(cam.video_path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        if len(frames) != cam.frame_count:
            raise SceneFormatError(f"{cam.video_path}: decoded {len(frames)} frames, the index says "
                                   f"{cam.frame_count}")
        full.extend(frames)
        small.extend(cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames)
        camera.extend([index] * len(frames))
        night.extend(cam.night.tolist())
        for task in scene_set.tasks:
            boxes[task].extend(cam.boxes(task))
    return SceneFrames(np.stack(full), np.stack(small).astype(np.float32) / 255.0, np.array(camera),
                       np.array(night, dtype=bool), boxes)


#: The time split: each camera's frames in blocks of SPLIT_BLOCK, every SPLIT_EVERY-th held out.
SPLIT_BLOCK = 20
SPLIT_EVERY = 3


def time_split(frames: SceneFrames, block: int = SPLIT_BLOCK, every: int = SPLIT_EVERY) -> np.ndarray:
    """Training mask: every ``every``-th block of ``block`` consecutive frames of each camera
    is held out for testing, the rest trains (:func:`~coinfer.sdk.splits.block_split`).

    An edge trains the filters of the cameras it serves (the paper's setting), so the test
    frames come from the same cameras at other moments."""
    return check_split(frames, block_split(frames.camera, block, every))


def check_split(frames: SceneFrames, train: np.ndarray) -> np.ndarray:
    """``train`` as one bool per frame, with frames on both sides."""
    train = np.asarray(train, dtype=bool)
    if train.shape != (len(frames.camera),):
        raise InvalidArgumentError(f"the split needs one bool per frame ({len(frames.camera)}), "
                                   f"got shape {train.shape}")
    if train.all() or not train.any():
        raise InvalidArgumentError(f"the split leaves no {'test' if train.all() else 'training'} frames")
    return train


def scene_tasks(frames: SceneFrames, train: np.ndarray) -> list[FilterTask]:
    """``faces`` (skip) and ``face-count`` (reuse) on the same decoded frames."""
    from coinfer.edge.models.detectors import face_detector

    detector = face_detector()
    sample = frames.full[len(frames.full) // 2]
    model_ms = median_ms(lambda: detector(sample))
    train = check_split(frames, train)
    spec = ModalitySpec.image(*frames.small.shape[1:3])
    boxes = frames.boxes["faces"]
    common = dict(spec=spec, train_x=frames.small[train], test_x=frames.small[~train], model_ms=model_ms,
                  model_name="OpenCV Haar frontal-face cascade", raw_train=frames.full[train],
                  raw_test=frames.full[~train], streams_train=frames.camera[train],
                  streams_test=frames.camera[~train], validation_block=SPLIT_BLOCK)
    train_boxes = [b for b, keep in zip(boxes, train, strict=True) if keep]
    test_boxes = [b for b, keep in zip(boxes, train, strict=True) if not keep]
    return [
        FilterTask("faces", "skip", create_measurement("empty"), train_y=train_boxes, test_y=test_boxes,
                   **common),
        FilterTask("face-count", "reuse", create_measurement("count"), train_y=[len(b) for b in train_boxes],
                   test_y=[len(b) for b in test_boxes], **common),
    ]


def clip_task(frames: SceneFrames, train: np.ndarray, length: int = 4, stride: int = 4) -> FilterTask:
    """``face-clips`` (video, skip, ``empty``): is there a face anywhere in a short clip?

    Clips are ``length`` consecutive frames, one every ``stride`` frames of a camera (those
    straddling the train/test split are left out); the model is the Haar detector on every
    frame of the clip, so it costs ``length`` runs."""
    from coinfer.edge.models.detectors import face_detector

    detector = face_detector()
    sample = frames.full[len(frames.full) // 2]
    model_ms = length * median_ms(lambda: detector(sample))
    train = check_split(frames, train)
    clips, outputs, cameras, sides = [], [], [], []
    for camera in np.unique(frames.camera):
        rows = np.flatnonzero(frames.camera == camera)
        for start in range(0, rows.size - length + 1, stride):
            window = rows[start:start + length]
            if train[window].any() and not train[window].all():
                continue
            sides.append(bool(train[window[0]]))
            clips.append(frames.small[window])
            outputs.append(np.concatenate([frames.boxes["faces"][i] for i in window]))
            cameras.append(camera)
    clips_array, cameras_array = np.stack(clips), np.array(cameras)
    test = ~np.array(sides)
    spec = ModalitySpec.video(*clips_array.shape[1:])
    return FilterTask("face-clips", "skip", create_measurement("empty"), spec,
                      clips_array[~test], [o for o, t in zip(outputs, test, strict=True) if not t],
                      clips_array[test], [o for o, t in zip(outputs, test, strict=True) if t], model_ms,
                      f"OpenCV Haar frontal-face cascade x {length} frames",
                      streams_train=cameras_array[~test], streams_test=cameras_array[test],
                      validation_block=max(1, SPLIT_BLOCK // stride))


def speech_records(clips: int, seconds: float, seed: int) -> dict[str, np.ndarray | np.generic]:
    """Generated clips, Silero VAD's decision per clip, its log-mel features and latency."""
    from coinfer.bench.data.speech import SpeechOptions, speech_clips
    from coinfer.edge.models.vad import SpeechDetector

    detector = SpeechDetector()
    speech_set = speech_clips(SpeechOptions(clips=clips, seconds=seconds, seed=seed), detector=detector)
    waves = speech_set.waveforms
    return {"waves": waves, "features": log_mel_spectrogram(waves),
            "outputs": np.where(speech_set.vad_speech, "speech", "no-speech"),
            "model_ms": np.float64(median_ms(lambda: detector(waves[0])))}


def speech_task(records: dict[str, np.ndarray], train_fraction: float = 0.7) -> FilterTask:
    """``speech``: the VAD's decision is redundant unless it heard speech."""
    features, waves, outputs = records["features"], records["waves"], records["outputs"].tolist()
    cut = int(len(outputs) * train_fraction)
    return FilterTask("speech", "skip", create_measurement("class-subset", keep=["speech"]),
                      ModalitySpec.audio(*features.shape[1:]), features[:cut], outputs[:cut], features[cut:],
                      outputs[cut:], float(records["model_ms"]), "Silero VAD (onnxruntime)",
                      raw_train=waves[:cut], raw_test=waves[cut:])


def text_records(messages: int, seed: int) -> dict[str, np.ndarray | np.generic]:
    """Generated messages through the MiniLM zero-shot classifier: token ids, labels,
    confidences, sentence embeddings (FilterForward's frozen features) and latency."""
    from coinfer.bench.data.corpus import CorpusOptions, generate_messages
    from coinfer.bench.models import minilm
    from coinfer.bench.models.topics import TopicClassifier

    texts = [message.text for message in generate_messages(CorpusOptions(messages=messages, seed=seed))]
    classifier = TopicClassifier()
    predictions = classifier.classify(texts)
    embeddings, _ = classifier.embed(texts)
    tokens = np.zeros((len(texts), TEXT_LENGTH), dtype=np.int32)
    for row, ids in enumerate(predictions.token_ids):
        ids = ids[:TEXT_LENGTH]
        tokens[row, :ids.size] = ids
    return {"tokens": tokens, "labels": np.asarray(predictions.label, dtype=str),
            "probabilities": np.asarray(predictions.probabilities, dtype=np.float32),
            "embeddings": np.asarray(embeddings, dtype=np.float32),
            "vocabulary": np.int64(minilm_vocabulary(minilm)),
            "model_ms": np.float64(median_ms(lambda: classifier.classify(texts[:1]), repeats=10))}


def text_tasks(records: dict[str, np.ndarray], train_fraction: float = 0.7) -> list[FilterTask]:
    """``topics`` (class subset, filterable) and ``topic-confidence`` (not filterable)."""
    tokens, labels = records["tokens"], records["labels"].tolist()
    probabilities = list(records["probabilities"])
    spec = ModalitySpec.text(TEXT_LENGTH, int(records["vocabulary"]))
    cut = int(len(labels) * train_fraction)
    common: dict[str, Any] = dict(spec=spec, train_x=tokens[:cut], test_x=tokens[cut:],
                                  model_ms=float(records["model_ms"]),
                                  model_name="MiniLM-L6 zero-shot topics (torch)",
                                  extra={"cut": cut, "embeddings": records["embeddings"]})
    return [
        FilterTask("topics", "skip", create_measurement("class-subset", keep=list(KEPT_TOPICS)),
                   train_y=labels[:cut], test_y=labels[cut:], **common),
        FilterTask("topic-confidence", "skip", create_measurement("confidence-below", threshold=0.9),
                   train_y=probabilities[:cut], test_y=probabilities[cut:], **common),
    ]


def minilm_vocabulary(minilm: Any) -> int:
    """The MiniLM tokenizer's vocabulary size (token ids lie below it)."""
    import json

    config = json.loads((minilm.model_dir() / "config.json").read_text())
    return int(config["vocab_size"])
