"""The PP-OCRv4 text detector cut in two: a device head and an edge tail (model partition).

InFi's third deployment (dissertation ch. 3, "model partition") runs the first layers of
the heavy model on the device, sends the intermediate feature map to the edge, which runs
the rest, and puts the input filter on the device-side feature map: a frame whose result
would be useless is dropped before its feature map is sent. This module makes the cut on
the real detector of :mod:`coinfer.edge.models.ocr` with the ``onnx`` package:

- :func:`split_detector` writes ``head.onnx`` (image tensor -> feature map at the cut) and
  ``tail.onnx`` (feature map -> probability map) for a fixed input size and returns a
  :class:`DetectorSplit` (paths, cut tensor, shapes, bytes at the cut);
- :class:`SplitTextDetector` runs both halves on onnxruntime: ``features(frame)`` is what
  a device computes and sends, ``tail`` what the edge computes, ``__call__`` the boxes;
- :func:`backbone_features` pools the frozen pretrained backbone's stage outputs into one
  vector per frame, FilterForward's kind of features.

Where to cut. The detector is a PPLCNetV3 backbone (stage outputs at strides 4, 8, 16 and
32 of the input), an FPN-style neck that reads *all four* stage outputs, and the DB head.
A cut through the backbone behind the stride-4 stage therefore has several tensors
crossing it (the neck still needs the earlier stages), and a cut after the neck leaves the
device nearly all of the work. The deepest backbone tensor that alone separates the input
from the output is the stride-4 stage output ``p2o.Add.43``, :data:`DEFAULT_CUT`: 48
channels at a quarter of the input's height and width, (48, 56, 96) for the (3, 224, 384)
input a 320x180 scene frame becomes (see :data:`coinfer.edge.models.detectors.SCENE_TEXT_OPTIONS`).
In float32 that is 1,032,192 bytes, as many as the float32 input tensor (48 / 4² = 3
values per input pixel), 6x the raw 320x180 RGB frame and ~70x its JPEG: partitioning this detector costs
the uplink more than sending the frame, which is why a filter on the device side pays
(any filtered frame saves its feature map). :func:`single_tensor_cuts` lists every valid
cut; :func:`crossing_tensors` names what else would cross a bad one.

Only numpy is imported at module import; onnx and onnxruntime inside the functions.

Example::

    split = split_detector("out/ocr-split")          # head.onnx + tail.onnx
    detector = SplitTextDetector(split)
    sent = detector.features(frame)                  # (1, 48, 56, 96) float32, on the device
    prob = detector.tail(sent)                       # (1, 1, 224, 384), on the edge
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.edge.models import ocr
from coinfer.edge.models.detectors import SCENE_TEXT_OPTIONS, check_frame
from coinfer.sdk.errors import CoinferError

#: The stride-4 backbone stage output: the deepest single-tensor cut (see the module doc).
DEFAULT_CUT = "p2o.Add.43"
#: The backbone's four stage outputs (strides 4, 8, 16, 32; 48, 96, 192, 384 channels),
#: the tensors the neck reads.
BACKBONE_STAGES = ("p2o.Add.43", "p2o.Add.71", "p2o.Add.147", "p2o.Add.215")
#: The scene generator's frame size (height, width).
SCENE_FRAME = (180, 320)
HEAD_FILE = "head.onnx"
TAIL_FILE = "tail.onnx"
BATCH_DIM = "batch"


class SplitError(CoinferError):
    """A cut that does not split the detector in two, or an input the split was not made for."""


@dataclass(frozen=True)
class DetectorSplit:
    """The two halves on disk and what crosses between them; shapes exclude the batch axis."""

    head_path: Path
    tail_path: Path
    cut: str
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]
    feature_shape: tuple[int, ...]
    output_shape: tuple[int, int, int]

    @property
    def feature_bytes(self) -> int:
        """Bytes of one frame's float32 feature map at the cut, what a device sends."""
        return int(np.prod(self.feature_shape)) * 4

    @property
    def input_bytes(self) -> int:
        """Bytes of one frame's float32 input tensor."""
        return int(np.prod(self.input_shape)) * 4


def input_size_for(frame_shape: Sequence[int] = SCENE_FRAME,
                   options: ocr.DetectorOptions = SCENE_TEXT_OPTIONS) -> tuple[int, int]:
    """The detector input (height, width) that :func:`ocr.preprocess` makes of a frame."""
    height, width = (int(v) for v in frame_shape[:2])
    tensor, _ = ocr.preprocess(np.zeros((height, width, 3), np.uint8), options)
    return int(tensor.shape[2]), int(tensor.shape[3])


def load_detector(input_size: tuple[int, int] | None = None) -> Any:
    """The detector's ONNX graph with the input fixed to (batch, 3, H, W) and every
    intermediate shape inferred (``input_size`` defaults to a scene frame's)."""
    import onnx

    height, width = input_size or input_size_for()
    if height % ocr.STRIDE or width % ocr.STRIDE or min(height, width) < ocr.STRIDE:
        raise SplitError(f"the detector input must be a positive multiple of {ocr.STRIDE} on both sides, "
                         f"got {height}x{width}")
    model = onnx.load(str(ocr.detector_model_path()))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = BATCH_DIM
    for dim, value in zip(dims[1:], (3, height, width), strict=True):
        dim.dim_value = value
    return onnx.shape_inference.infer_shapes(model)


def crossing_tensors(model: Any, cut: str) -> list[str]:
    """Every tensor the tail reads from the head's side when the head is what ``cut`` needs
    (:meth:`coinfer.sdk.split.graph.SplitGraph.cut_after`): ``[cut]`` for a valid cut, else
    ``cut`` first and the others in graph order. Raises :class:`SplitError` when ``cut`` is
    no intermediate tensor.
    """
    from coinfer.sdk.split.graph import SplitGraph, SplitGraphError

    graph = SplitGraph(model)
    try:
        if cut in graph.outputs:
            raise SplitGraphError(f"{cut!r} is the graph's output")
        tensors = graph.cut_after(cut).tensors
    except SplitGraphError as error:
        raise SplitError(f"{cut!r} is not an intermediate tensor of the text detector; cut at a node "
                         f"output such as {DEFAULT_CUT!r} (single_tensor_cuts() lists the valid ones)",
                         ) from error
    return sorted(tensors, key=lambda name: name != cut)


def single_tensor_cuts(model: Any | None = None) -> list[str]:
    """Every computed tensor that alone separates the input from the output, in graph order."""
    from coinfer.sdk.split.graph import SplitGraph

    graph = SplitGraph(model if model is not None else load_detector())
    return [cut.tensors[0] for cut in graph.single_tensor_cuts()]


def _shape(model: Any, name: str) -> tuple[int, ...]:
    """Per-sample shape of an inferred tensor (batch axis dropped)."""
    for value in (*model.graph.value_info, *model.graph.output, *model.graph.input):
        if value.name == name:
            dims = value.type.tensor_type.shape.dim[1:]
            if all(d.HasField("dim_value") for d in dims):
                return tuple(int(d.dim_value) for d in dims)
    raise SplitError(f"shape inference gave no fixed shape for {name!r}")


def split_detector(out_dir: str | os.PathLike, cut: str | None = None,
                   input_size: tuple[int, int] | None = None) -> DetectorSplit:
    """Cut the detector at ``cut`` (default :data:`DEFAULT_CUT`) for a fixed input size and
    write ``head.onnx`` and ``tail.onnx`` into ``out_dir`` (created when missing).

    Raises :class:`SplitError` naming the other crossing tensors when ``cut`` does not
    split the graph at one tensor.
    """
    import onnx
    import onnx.utils

    cut = cut or DEFAULT_CUT
    model = load_detector(input_size)
    crossing = crossing_tensors(model, cut)
    if crossing != [cut]:
        raise SplitError(f"cutting the text detector at {cut!r} leaves other tensors crossing the cut: "
                         f"{', '.join(crossing[1:])}; choose one of single_tensor_cuts(), "
                         f"e.g. {DEFAULT_CUT!r}")
    input_name, output_name = model.graph.input[0].name, model.graph.output[0].name
    extractor = onnx.utils.Extractor(model)
    head = extractor.extract_model([input_name], [cut])
    tail = extractor.extract_model([cut], [output_name])
    for part in (head, tail):
        onnx.checker.check_model(part)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / HEAD_FILE, out / TAIL_FILE
    for part, path in zip((head, tail), paths, strict=True):
        partial = path.with_name(path.name + ".partial")
        onnx.save(part, str(partial))
        partial.replace(path)
    channels, height, width = _shape(model, input_name)  # the detector takes (N, 3, H, W)
    return DetectorSplit(paths[0], paths[1], cut, input_name, output_name, (channels, height, width),
                         _shape(model, cut), (1, height, width))


def frame_tensors(frames: np.ndarray, options: ocr.DetectorOptions = SCENE_TEXT_OPTIONS) -> np.ndarray:
    """RGB uint8 frames (H, W, 3) or (N, H, W, 3) as the detector's (N, 3, H', W') input."""
    batch = frames[np.newaxis] if np.ndim(frames) == 3 else frames
    tensors = []
    for frame in batch:
        check_frame(frame)
        tensors.append(ocr.preprocess(np.ascontiguousarray(frame[..., ::-1]), options)[0])
    if not tensors:
        raise SplitError("no frames to preprocess: the batch is empty")
    return np.concatenate(tensors)


class SplitTextDetector:
    """The split detector on onnxruntime: the head (device), the tail (edge), and the boxes
    of :func:`ocr.find_text_boxes` on the tail's map, like
    :class:`~coinfer.edge.models.detectors.TextDetector` on RGB uint8 frames.

    Frames must preprocess to the split's input size (a 320x180 frame with the default
    split); sessions run on ``threads`` threads (one: deterministic).
    """

    def __init__(self, split: DetectorSplit, options: ocr.DetectorOptions = SCENE_TEXT_OPTIONS,
                 threads: int = 1) -> None:
        self.name = "text"
        self.split, self.options = split, options
        self._head = ocr.cpu_session(split.head_path, threads)
        self._tail = ocr.cpu_session(split.tail_path, threads)

    def tensor(self, frames: np.ndarray) -> np.ndarray:
        """RGB uint8 frames (H, W, 3) or (N, H, W, 3) as the detector's (N, 3, H', W') input."""
        tensor = frame_tensors(frames, self.options)
        if tensor.shape[1:] != self.split.input_shape:
            raise SplitError(f"{np.shape(frames)[-3]}x{np.shape(frames)[-2]} frames become a detector input "
                             f"of {tensor.shape[1:]}, the split was made for {self.split.input_shape}; "
                             f"split again with input_size={tuple(tensor.shape[2:])}")
        return tensor

    def head(self, tensor: np.ndarray) -> np.ndarray:
        """Input tensor (N, 3, H, W) -> feature map at the cut (N, *feature_shape)."""
        return self._head.run(None, {self.split.input_name: tensor})[0]

    def tail(self, features: np.ndarray) -> np.ndarray:
        """Feature map at the cut -> probability map (N, 1, H, W)."""
        return self._tail.run(None, {self.split.cut: np.asarray(features, np.float32)})[0]

    def features(self, frames: np.ndarray) -> np.ndarray:
        """What the device sends: the head's feature map of RGB frame(s), (N, *feature_shape)."""
        return self.head(self.tensor(frames))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Text boxes ``x, y, w, h`` (float32 [K, 4]) of one RGB frame, through head and tail."""
        from coinfer.edge.models.detectors import as_boxes

        found = ocr.find_text_boxes(self.tail(self.features(frame)), frame.shape[:2], self.options)
        return as_boxes([(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0) for b in found])


def backbone_features(images: np.ndarray, stages: Sequence[str] = BACKBONE_STAGES, *,
                      options: ocr.DetectorOptions = SCENE_TEXT_OPTIONS, batch: int = 16,
                      threads: int = 1) -> np.ndarray:
    """Frozen pretrained features: each stage output global-average-pooled, concatenated,
    float32 (N, channels) (720 with the four :data:`BACKBONE_STAGES`; ``stages=(DEFAULT_CUT,)``
    pools the head's feature map alone, 48). ``images`` are RGB uint8 frames of one size."""
    import onnx.utils

    frames = np.asarray(images)
    if frames.ndim != 4 or len(frames) == 0:
        raise SplitError(f"images must be a non-empty batch (N, H, W, 3) of RGB uint8 frames, "
                         f"got {frames.shape}")
    model = load_detector(input_size_for(frames.shape[1:3], options))
    produced = {name for node in model.graph.node for name in node.output if name}
    unknown = [name for name in stages if name not in produced]
    if unknown or not stages:
        raise SplitError(f"unknown backbone tensors {unknown or list(stages)}; e.g. {list(BACKBONE_STAGES)}")
    input_name = model.graph.input[0].name
    backbone = onnx.utils.Extractor(model).extract_model([input_name], list(stages))
    session = ocr.cpu_session(backbone.SerializeToString(), threads)
    rows = []
    for start in range(0, len(frames), batch):
        maps = session.run(None, {input_name: frame_tensors(frames[start:start + batch], options)})
        rows.append(np.concatenate([m.mean(axis=(2, 3)) for m in maps], axis=1))
    return np.concatenate(rows).astype(np.float32)
