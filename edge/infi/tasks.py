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

from coinfer.sdk.infi.measurements import Measurement, create_measurement
from coinfer.sdk.infi.modalities import ModalitySpec, log_mel_spectrogram

#: The topics the text application acts on (the rest is redundant).
KEPT_TOPICS = ("sports", "finance")
TEXT_LENGTH = 32


@dataclass
class FilterTask:
    """Records of one task. ``raw_*`` keep what baselines need besides the filter's input
    (full frames, waveforms); ``streams_*`` give each input's stream for Reducto-style
    frame differencing and per-camera caches."""

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

    def redundant(self, outputs: Sequence[Any]) -> np.ndarray:
        return self.measurement.redundant_many(outputs)


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
    """Decoded frames of a scene set: full size (for the detector) and downscaled (filter)."""

    full: np.ndarray
    small: np.ndarray
    camera: np.ndarray
    boxes: list[np.ndarray]


def decode_scene_frames(directory: str | Path, size: tuple[int, int]) -> SceneFrames:
    """Every frame of every camera, with the ``faces`` detections recorded at generation."""
    import av
    import cv2

    from coinfer.sdk.data.scenes import SceneSet

    scene_set = SceneSet.load(directory)
    width, height = size
    full, small, camera, boxes = [], [], [], []
    for index, cam in enumerate(scene_set.cameras):
        with av.open(str(cam.video_path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        if len(frames) != cam.frame_count:
            raise ValueError(f"{cam.video_path}: decoded {len(frames)} frames, the index says "
                             f"{cam.frame_count}")
        full.extend(frames)
        small.extend(cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames)
        camera.extend([index] * len(frames))
        boxes.extend(cam.boxes("faces"))
    return SceneFrames(np.stack(full), np.stack(small).astype(np.float32) / 255.0, np.array(camera), boxes)


def scene_tasks(frames: SceneFrames, train_cameras: int) -> list[FilterTask]:
    """``faces`` (skip) and ``face-count`` (reuse) on the same decoded frames."""
    from coinfer.sdk.models.detectors import face_detector

    detector = face_detector()
    sample = frames.full[len(frames.full) // 2]
    model_ms = median_ms(lambda: detector(sample))
    train = frames.camera < train_cameras
    spec = ModalitySpec.image(*frames.small.shape[1:3])
    boxes = frames.boxes
    common = dict(spec=spec, train_x=frames.small[train], test_x=frames.small[~train], model_ms=model_ms,
                  model_name="OpenCV Haar frontal-face cascade", raw_train=frames.full[train],
                  raw_test=frames.full[~train], streams_train=frames.camera[train],
                  streams_test=frames.camera[~train])
    train_boxes = [b for b, keep in zip(boxes, train, strict=True) if keep]
    test_boxes = [b for b, keep in zip(boxes, train, strict=True) if not keep]
    return [
        FilterTask("faces", "skip", create_measurement("empty"), train_y=train_boxes, test_y=test_boxes,
                   **common),
        FilterTask("face-count", "reuse", create_measurement("count"), train_y=[len(b) for b in train_boxes],
                   test_y=[len(b) for b in test_boxes], **common),
    ]


def speech_task(clips: int, seconds: float, seed: int, train_fraction: float = 0.7) -> FilterTask:
    """``speech``: Silero VAD's decision on generated clips, the filter on log-mel features."""
    from coinfer.sdk.data.speech import SpeechOptions, speech_clips
    from coinfer.sdk.models.vad import SpeechDetector

    detector = SpeechDetector()
    speech_set = speech_clips(SpeechOptions(clips=clips, seconds=seconds, seed=seed), detector=detector)
    waves = speech_set.waveforms
    outputs = ["speech" if flag else "no-speech" for flag in speech_set.vad_speech]
    features = log_mel_spectrogram(waves)
    cut = int(len(outputs) * train_fraction)
    model_ms = median_ms(lambda: detector(waves[0]))
    return FilterTask("speech", "skip", create_measurement("class-subset", keep=["speech"]),
                      ModalitySpec.audio(*features.shape[1:]), features[:cut], outputs[:cut], features[cut:],
                      outputs[cut:], model_ms, "Silero VAD (onnxruntime)", raw_train=waves[:cut],
                      raw_test=waves[cut:])


def text_tasks(messages: int, seed: int, train_fraction: float = 0.7) -> list[FilterTask]:
    """``topics`` (class subset, filterable) and ``topic-confidence`` (not filterable)."""
    from coinfer.sdk.data.corpus import CorpusOptions, generate_messages
    from coinfer.sdk.models import minilm
    from coinfer.sdk.models.topics import TopicClassifier

    texts = [message.text for message in generate_messages(CorpusOptions(messages=messages, seed=seed))]
    classifier = TopicClassifier()
    predictions = classifier.classify(texts)
    embeddings, _ = classifier.embed(texts)  # FilterForward's frozen pretrained features
    tokens = np.zeros((len(texts), TEXT_LENGTH), dtype=np.int32)
    for row, ids in enumerate(predictions.token_ids):
        ids = ids[:TEXT_LENGTH]
        tokens[row, :ids.size] = ids
    vocabulary = minilm_vocabulary(minilm)
    spec = ModalitySpec.text(TEXT_LENGTH, vocabulary)
    cut = int(len(texts) * train_fraction)
    model_ms = median_ms(lambda: classifier.classify(texts[:1]), repeats=10)
    labels, probabilities = predictions.label, list(predictions.probabilities)
    common = dict(spec=spec, train_x=tokens[:cut], test_x=tokens[cut:], model_ms=model_ms,
                  model_name="MiniLM-L6 zero-shot topics (torch)",
                  extra={"texts": texts, "cut": cut, "embeddings": embeddings})
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
