"""InFi tasks on the PP-OCRv4 text detector: on the frame, and on the device-side feature map.

Two deployments of a skip filter for "is there text in this frame?" (measurement ``empty``
on the detector's boxes), both on the frames of a ``coinfer data scenes`` set generated
with the ``text`` task, split by a training mask like :func:`~coinfer.bench.infi.tasks.scene_tasks`:

- :func:`text_frame_task` (``text``): on-device / offload; the filter sees the frame
  downscaled, the model is the whole detector.
- :func:`text_featuremap_task` (``text-featuremap``): model partition (InFi's third
  deployment); the device runs the detector's head (:mod:`coinfer.bench.models.ocr_split`),
  the filter sees the head's feature map average-pooled, and a frame the filter keeps
  sends its full feature map to the edge, which runs the tail. ``model_ms`` is the edge's
  part (tail + boxes), the work a skipped frame saves; ``extra`` carries the device's part
  and the bytes crossing the cut. :func:`partition_report` turns skip decisions into bytes
  and milliseconds saved.

Both put FilterForward's frozen pretrained features in ``extra["embeddings"]`` with
``extra["cut"]`` = the number of training rows (rows ``[:cut]`` train, ``[cut:]`` test),
the convention of :func:`~coinfer.bench.infi.baselines_run.skip_baseline_rates`;
:func:`backbone_embeddings` gives the same for other tasks on the same frames (faces).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coinfer.bench.infi.tasks import SPLIT_BLOCK, FilterTask, SceneFrames, check_split, median_ms
from coinfer.bench.models.ocr_split import DetectorSplit
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.infi.measurements import create_measurement
from coinfer.sdk.infi.modalities import ModalitySpec

TEXT = "text"
#: Average-pooling factor of the feature map the partition filter sees: (48, 56, 96) at
#: the default cut -> (7, 12, 48) channels-last. On the 6-camera 320x180 scene set (480
#: training frames, 5 epochs) 8x gave a filter rate of 0.49 at 90% accuracy in 10 s of
#: training, 4x 0.47 in 17 s; the flattened (vector) map 0.21 and 0.11.
FEATURE_POOL = 8
FEATUREMAP_MODALITIES = ("image", "vector")
_BATCH = 8


def _text_boxes(frames: SceneFrames) -> list[np.ndarray]:
    if TEXT not in frames.boxes:
        raise InvalidArgumentError(f"the scene set has no {TEXT!r} detections (tasks: "
                                   f"{', '.join(frames.boxes)}); generate it with tasks including {TEXT!r}")
    return frames.boxes[TEXT]


def _train_first(rows: np.ndarray, train: np.ndarray) -> dict[str, Any]:
    return {"embeddings": np.concatenate([rows[train], rows[~train]]), "cut": int(train.sum())}


def backbone_embeddings(frames: SceneFrames, train: np.ndarray) -> dict[str, Any]:
    """FilterForward's features for any task on these frames: the text detector's backbone
    stage outputs pooled (:func:`~coinfer.bench.models.ocr_split.backbone_features`, 720-d),
    as ``{"embeddings": train rows then test rows, "cut": training rows}`` to merge into a
    task's ``extra``."""
    from coinfer.bench.models.ocr_split import backbone_features

    train = check_split(frames, train)
    extra = _train_first(backbone_features(frames.full, batch=_BATCH), train)
    extra["embedding_model"] = "PP-OCRv4 det backbone, 4 stage outputs average-pooled"
    return extra


def _common(frames: SceneFrames, train: np.ndarray, boxes: list[np.ndarray]) -> dict[str, Any]:
    return dict(validation_block=SPLIT_BLOCK,
                train_y=[b for b, keep in zip(boxes, train, strict=True) if keep],
                test_y=[b for b, keep in zip(boxes, train, strict=True) if not keep],
                raw_train=frames.full[train], raw_test=frames.full[~train])


def text_frame_task(frames: SceneFrames, train: np.ndarray,
                    embeddings: dict[str, Any] | None = None) -> FilterTask:
    """``text``: skip the whole detector on frames without text; the filter sees ``frames.small``.

    ``embeddings``: :func:`backbone_embeddings` of the same split when already computed."""
    from coinfer.edge.models.detectors import TextDetector

    boxes = _text_boxes(frames)
    train = check_split(frames, train)
    detector = TextDetector()
    sample = frames.full[len(frames.full) // 2]
    height, width = frames.full.shape[1:3]
    return FilterTask(
        "text", "skip", create_measurement("empty"), ModalitySpec.image(*frames.small.shape[1:3]),
        train_x=frames.small[train], test_x=frames.small[~train],
        model_ms=median_ms(lambda: detector(sample)),
        model_name=f"PP-OCRv4 DB text detector (onnxruntime, 1 thread) on {width}x{height} frames",
        streams_train=frames.camera[train], streams_test=frames.camera[~train],
        extra=dict(embeddings or backbone_embeddings(frames, train)), **_common(frames, train, boxes))


def _pool(maps: np.ndarray, factor: int) -> np.ndarray:
    """(N, C, H, W) -> (N, H / factor, W / factor, C) by average pooling (sides must divide)."""
    n, channels, height, width = maps.shape
    if factor < 1 or height % factor or width % factor:
        raise InvalidArgumentError(f"pool factor {factor} does not divide the {height}x{width} feature map")
    blocks = maps.reshape(n, channels, height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(3, 5)).transpose(0, 2, 3, 1).astype(np.float32)


def text_featuremap_task(frames: SceneFrames, train: np.ndarray, split: DetectorSplit, *,
                         pool: int = FEATURE_POOL, modality: str = "image") -> FilterTask:
    """``text-featuremap``: the partition filter on the head's feature map (pooled ``pool``x).

    ``modality`` ``image`` keeps the map spatial (InFi's convolutional feature network with
    C channels); ``vector`` flattens it into the paper's dense network for feature maps
    (and suits :class:`~coinfer.bench.infi.baselines.LowLevelKNN`, whose image features
    need 1 or 3 channels in [0, 1]). No streams are set: Reducto differences frames,
    not feature maps.
    """
    from coinfer.bench.models.ocr_split import SplitTextDetector
    from coinfer.edge.models import ocr

    if modality not in FEATUREMAP_MODALITIES:
        raise InvalidArgumentError(f"modality must be one of {FEATUREMAP_MODALITIES}, got {modality!r}")
    boxes = _text_boxes(frames)
    train = check_split(frames, train)
    detector = SplitTextDetector(split)
    maps = np.concatenate([detector.features(frames.full[start:start + _BATCH])
                           for start in range(0, len(frames.full), _BATCH)])
    inputs = _pool(maps, pool)
    spec = (ModalitySpec.image(inputs.shape[1], inputs.shape[2], channels=inputs.shape[3])
            if modality == "image" else ModalitySpec.vector(*inputs.shape[1:]))
    sample = frames.full[len(frames.full) // 2]
    tensor = detector.tensor(sample)
    sent = detector.head(tensor)

    def edge() -> Any:
        return ocr.find_text_boxes(detector.tail(sent), sample.shape[:2], detector.options)

    extra = _train_first(maps.mean(axis=(2, 3)), train)
    extra.update(
        embedding_model=f"the head's feature map at {split.cut} average-pooled ({maps.shape[1]}-d)",
        head_ms=median_ms(lambda: detector.head(detector.tensor(sample))),
        feature_bytes=split.feature_bytes, frame_bytes=int(sample.nbytes),
        jpeg_bytes=_jpeg_bytes(frames.full), cut_tensor=split.cut, feature_shape=list(split.feature_shape),
        input_shape=list(split.input_shape), pool=pool)
    return FilterTask(
        "text-featuremap", "skip", create_measurement("empty"), spec,
        train_x=inputs[train], test_x=inputs[~train], model_ms=median_ms(edge),
        model_name=f"PP-OCRv4 DB text detector tail after {split.cut} (onnxruntime, 1 thread)",
        extra=extra, **_common(frames, train, boxes))


def _jpeg_bytes(frames: np.ndarray, quality: int = 90, samples: int = 16) -> int:
    """Median JPEG size of a few frames, what offloading the frame itself would send."""
    import cv2

    picks = np.linspace(0, len(frames) - 1, min(samples, len(frames))).round().astype(int)
    sizes = [len(cv2.imencode(".jpg", np.ascontiguousarray(frames[i][..., ::-1]),
                              [cv2.IMWRITE_JPEG_QUALITY, quality])[1]) for i in picks]
    return int(np.median(sizes))


def partition_report(task: FilterTask, skip_decisions: np.ndarray, filter_ms: float = 0.0) -> dict[str, Any]:
    """What a partition filter's decisions on ``task``'s test frames save.

    Without the filter every frame's feature map crosses the cut and the edge runs the tail
    on it; with it, only kept frames' do. Skipping a frame whose output was not redundant
    loses its result: ``accuracy`` is InFi's inference accuracy (agreement with the model).
    The device runs the head (and the filter, ``filter_ms``) on every frame either way.
    """
    if "feature_bytes" not in task.extra:
        raise InvalidArgumentError(f"task {task.name!r} is not a partition task (no extra['feature_bytes'])")
    skip = np.asarray(skip_decisions)
    if skip.shape != (len(task.test_y),) or skip.dtype.kind not in "biu":
        raise InvalidArgumentError(f"need one bool skip decision per test frame ({len(task.test_y)}), got "
                                   f"{skip.dtype} of shape {skip.shape}")
    skip = skip.astype(bool)
    redundant = task.redundant(task.test_y)
    frames, sent = skip.size, int((~skip).sum())
    feature_bytes = int(task.extra["feature_bytes"])
    tail_ms = float(task.model_ms)
    return {
        "frames": frames,
        "sent_frames": sent,
        "skipped_fraction": round(1.0 - sent / frames, 4),
        "accuracy": round(float(1.0 - (skip & ~redundant).mean()), 4),
        "redundant_fraction": round(float(redundant.mean()), 4),
        "feature_bytes_per_frame": feature_bytes,
        "frame_bytes_per_frame": int(task.extra["frame_bytes"]),
        "jpeg_bytes_per_frame": int(task.extra.get("jpeg_bytes", 0)),
        "partition_bytes_without_filter": frames * feature_bytes,
        "partition_bytes_with_filter": sent * feature_bytes,
        "partition_bytes_saved": round(1.0 - sent / frames, 4),
        "head_ms": round(float(task.extra["head_ms"]), 3),
        "tail_ms": round(tail_ms, 3),
        "device_ms_per_frame": round(float(task.extra["head_ms"]) + filter_ms, 3),
        "edge_ms_without_filter": round(frames * tail_ms, 1),
        "edge_ms_with_filter": round(sent * tail_ms, 1),
    }
