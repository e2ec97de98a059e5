"""A tiny crowd-level CNN we train ourselves: 0, 1 or 2+ people in view from a 64x36 frame.

It is the learned model of the MLink zoo (:mod:`coinfer.edge.mlink.zoo`), next to the
packaged detectors: a model whose outputs are soft (softmax probabilities) and whose
errors are its own. "People" are actors of kind face or person more than 30% visible in
the scene truth (:func:`crowd_labels`), the same presence rule as the scenes' speech.

Training runs in PyTorch (imported inside the functions, so importing this module needs
only numpy) and returns an ONNX model; inference runs it with onnxruntime on one thread.
The network takes ``frame``: float32 ``[N, 36, 64, 3]`` (RGB in [0, 1], what
:func:`downscale` gives) and returns ``probabilities``: float32 ``[N, 3]``.

Example::

    from coinfer.edge.models.crowd import (CrowdClassifier, crowd_labels, downscale,
                                          save_crowd_classifier, train_crowd_classifier)

    onnx_bytes = train_crowd_classifier(downscale(frames), labels, epochs=20, seed=0)
    save_crowd_classifier("out/crowd", onnx_bytes, metrics={"train_accuracy": 0.9})
    probabilities = CrowdClassifier("out/crowd")(frame_rgb)    # float32 [3]
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from coinfer.sdk.artifact import Artifact, ArtifactError, Manifest, load_artifact, save_artifact
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.tensor import TensorSpec

#: Input frame size (width, height): 16:9 like the scenes, small enough to cost well under 1 ms.
INPUT_SIZE = (64, 36)
CLASSES = ("0", "1", "2+")
#: Actor kinds that count as people, and the visible fraction above which they count.
PEOPLE_KINDS = ("face", "person")
MIN_VISIBLE = 0.3
CAPABILITY = "mlink"
KIND = "crowd-classifier"
MODEL_FILE = "crowd.onnx"
INPUT_NAME = "frame"
OUTPUT_NAME = "probabilities"
#: The ONNX graph must agree with the torch network it came from to this much.
PARITY_ATOL = 1e-5
# Adam with a cosine decay to 0; batches of 32. Picked on generated 320x180 scenes.
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
BATCH = 32
# Augmentation: share of frames turned grey, gain range, largest shift (x, y) in pixels.
GREY_SHARE = 0.3
GAIN = (0.6, 1.4)
SHIFT = (6, 3)


class CrowdModelError(CoinferError):
    """Bad training data, or a crowd model file that is not one."""


def crowd_labels(camera: Any) -> np.ndarray:
    """Crowd class per frame of a scene camera (``SceneCamera``): people in view, capped at 2."""
    people = sum(camera.truth_counts(kind, MIN_VISIBLE) for kind in PEOPLE_KINDS)
    return np.minimum(people, len(CLASSES) - 1).astype(np.int64)


def downscale(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """RGB uint8 frames ``[N, H, W, 3]`` (or one ``[H, W, 3]``) as the network's float32
    ``[N, 36, 64, 3]`` input in [0, 1] (area interpolation, so no aliasing)."""
    import cv2

    batch = np.asarray(frames)
    if batch.ndim == 3:
        batch = batch[np.newaxis]
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3 or 0 in batch.shape[1:]:
        raise CrowdModelError(f"the crowd classifier needs RGB uint8 frames [N, H, W, 3], got "
                              f"{batch.dtype} {batch.shape}")
    out = np.empty((len(batch), INPUT_SIZE[1], INPUT_SIZE[0], 3), np.float32)
    for i, frame in enumerate(batch):
        out[i] = cv2.resize(frame, INPUT_SIZE, interpolation=cv2.INTER_AREA)
    out *= np.float32(1 / 255)
    return out


def check_inputs(inputs: Any, what: str = "inputs") -> np.ndarray:
    """``inputs`` as float32 ``[N, 36, 64, 3]`` in [0, 1]; raises naming what was wrong."""
    array = np.asarray(inputs)
    shape = (INPUT_SIZE[1], INPUT_SIZE[0], 3)
    if array.dtype.kind != "f" or array.ndim != 4 or array.shape[1:] != shape or len(array) == 0:
        raise CrowdModelError(f"{what} must be a non-empty float array [N, {shape[0]}, {shape[1]}, 3] "
                              f"(use downscale() on RGB uint8 frames), got {array.dtype} {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise CrowdModelError(f"{what} must be finite pixels in [0, 1]")
    return array


@functools.cache
def _torch_modules() -> SimpleNamespace:
    """The network class, defined on first use so importing this module never imports torch."""
    import torch
    from torch import nn

    class CrowdNetwork(nn.Module):
        """Four conv stages (36x64 -> 4x8, batch-normalised) pooled by mean and max over the
        positions, then a two-layer head; ~40k parameters. Pooling over positions rather than
        flattening them: a person counts the same anywhere in the frame, and a position-wise
        head memorised the training cameras' backgrounds (held-out accuracy below the
        majority rate)."""

        def __init__(self) -> None:
            super().__init__()

            def stage(inputs: int, outputs: int, stride: int = 1) -> list[nn.Module]:
                return [nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1), nn.BatchNorm2d(outputs),
                        nn.ReLU()]

            self.features = nn.Sequential(*stage(3, 16, 2), *stage(16, 32), nn.MaxPool2d(2),
                                          *stage(32, 48), nn.MaxPool2d(2), *stage(48, 48))
            self.head = nn.Sequential(nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, len(CLASSES)))

        def forward(self, frame: Any) -> Any:
            """Logits from NHWC frames in [0, 1] (centred here, so callers feed raw pixels)."""
            features = self.features(frame.permute(0, 3, 1, 2) - 0.5)
            return self.head(torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1))

    class WithSoftmax(nn.Module):
        """What is exported: probabilities, so every runtime returns the same thing."""

        def __init__(self, network: nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, frame: Any) -> Any:
            return torch.softmax(self.network(frame), dim=1)

    return SimpleNamespace(torch=torch, CrowdNetwork=CrowdNetwork, WithSoftmax=WithSoftmax)


def check_labels(labels: Any, count: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (count,) or array.dtype.kind not in "iu":
        raise CrowdModelError(f"labels must be {count} integers (one per frame), got "
                              f"{array.dtype} {array.shape}")
    if array.min() < 0 or array.max() >= len(CLASSES):
        raise CrowdModelError(f"labels must be crowd classes in [0, {len(CLASSES) - 1}], got values in "
                              f"[{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def fit_crowd_network(inputs: np.ndarray, labels: Any, epochs: int = 20, seed: int = 0,
                      progress: bool = False) -> Any:
    """Train the torch network (returned in eval mode) on downscaled frames and crowd classes.

    Deterministic for a seed: weights, batch order and augmentation come from it, and
    training runs on one thread so the sums do not depend on the machine's core count.
    Augmentation stands in for cameras not seen in training: mirroring (a count does not
    care about left and right), a grey copy now and then (night cameras switch to
    infrared), a gain (dawn and dusk) and a shift of the whole batch. Classes are weighted
    by the inverse square root of their frequency: empty scenes dominate, and an
    unweighted loss learns to answer "0" to nearly everything.
    """
    inputs = check_inputs(inputs)
    labels = check_labels(labels, len(inputs))
    if not isinstance(epochs, int) or epochs < 1:
        raise CrowdModelError(f"epochs must be a positive integer, got {epochs!r}")
    from tqdm import tqdm

    found = _torch_modules()
    torch = found.torch
    x, y = torch.from_numpy(inputs), torch.from_numpy(labels)
    frequency = np.bincount(labels, minlength=len(CLASSES)) / len(labels)
    weight = torch.tensor(1.0 / np.sqrt(np.maximum(frequency, 1.0 / len(labels))), dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = found.CrowdNetwork()
            generator = torch.Generator().manual_seed(seed)
            optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
            steps = epochs * -(-len(x) // BATCH)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            network.train()
            for _ in tqdm(range(epochs), desc="crowd CNN", unit="epoch", disable=not progress):
                order = torch.randperm(len(x), generator=generator)
                for start in range(0, len(x), BATCH):
                    index = order[start:start + BATCH]
                    logits = network(_augment(torch, x[index], generator))
                    loss = torch.nn.functional.cross_entropy(logits, y[index], weight=weight)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
    finally:
        torch.set_num_threads(threads)
    return network.eval()


def _augment(torch: Any, batch: Any, generator: Any) -> Any:
    """A randomly mirrored, greyed, brightened or dimmed and shifted copy of an NHWC batch."""
    count = len(batch)
    flip = (torch.rand(count, generator=generator) < 0.5)[:, None, None, None]
    batch = torch.where(flip, batch.flip(2), batch)
    grey = (torch.rand(count, generator=generator) < GREY_SHARE)[:, None, None, None]
    batch = torch.where(grey, batch.mean(dim=3, keepdim=True).expand_as(batch), batch)
    low, high = GAIN
    batch = (batch * (low + (high - low) * torch.rand(count, 1, 1, 1, generator=generator))).clamp(0, 1)
    dx = int(torch.randint(-SHIFT[0], SHIFT[0] + 1, (1,), generator=generator))
    dy = int(torch.randint(-SHIFT[1], SHIFT[1] + 1, (1,), generator=generator))
    return torch.roll(batch, (dy, dx), (1, 2))


def network_probabilities(network: Any, inputs: np.ndarray) -> np.ndarray:
    """Softmax probabilities ``[N, 3]`` of a torch network from :func:`fit_crowd_network`."""
    found = _torch_modules()
    with found.torch.no_grad():
        return found.WithSoftmax(network)(found.torch.from_numpy(check_inputs(inputs))).numpy()


def export_crowd_network(network: Any) -> bytes:
    """The network with its softmax as ONNX bytes (opset 17, dynamic batch axis).

    The TorchScript exporter (``dynamo=False``): it needs no onnxscript and gives a small
    plain graph of Conv/Relu/MaxPool/Gemm/Softmax that any runtime executes.
    """
    found = _torch_modules()
    torch = found.torch
    buffer = io.BytesIO()
    example = torch.zeros(1, INPUT_SIZE[1], INPUT_SIZE[0], 3)
    torch.onnx.export(found.WithSoftmax(network).eval(), (example,), buffer, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=17, dynamo=False,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buffer.getvalue()


def train_crowd_classifier(frames: np.ndarray, labels: Any, epochs: int = 20, seed: int = 0,
                           progress: bool = False) -> bytes:
    """Train the crowd CNN and return it as ONNX bytes, checked against the torch network.

    ``frames``: RGB uint8 frames ``[N, H, W, 3]`` of any size, or already downscaled float32
    ``[N, 36, 64, 3]``; ``labels``: crowd classes (see :func:`crowd_labels`).
    """
    frames = np.asarray(frames)
    inputs = downscale(frames) if frames.dtype == np.uint8 else check_inputs(frames, "frames")
    network = fit_crowd_network(inputs, labels, epochs, seed, progress)
    onnx_bytes = export_crowd_network(network)
    sample = inputs[:8]
    exported = CrowdClassifier(onnx_bytes).predict(sample)
    error = float(np.abs(exported - network_probabilities(network, sample)).max())
    if error > PARITY_ATOL:
        raise CrowdModelError(f"the exported ONNX crowd classifier differs from the torch network by "
                              f"{error:.3g} (more than {PARITY_ATOL})")
    return onnx_bytes


def save_crowd_classifier(path: str | os.PathLike, onnx_bytes: bytes,
                          metrics: Mapping[str, float] | None = None, *, overwrite: bool = False) -> Artifact:
    """Write the classifier as an ``mlink`` / ``crowd-classifier`` artifact; ``metrics``
    (e.g. held-out accuracy) go into the manifest's metadata."""
    CrowdClassifier(onnx_bytes)  # refuse to save something that does not load
    manifest = Manifest(
        capability=CAPABILITY, kind=KIND,
        inputs=[TensorSpec(INPUT_NAME, (None, INPUT_SIZE[1], INPUT_SIZE[0], 3), "float32")],
        outputs=[TensorSpec(OUTPUT_NAME, (None, len(CLASSES)), "float32")],
        preprocessing={"resize": list(INPUT_SIZE), "interpolation": "area", "scale": 1 / 255,
                       "layout": "NHWC", "channels": "RGB"},
        metadata={"classes": list(CLASSES), "people_kinds": list(PEOPLE_KINDS), "min_visible": MIN_VISIBLE,
                  "metrics": {str(k): float(v) for k, v in (metrics or {}).items()}},
    )
    return save_artifact(path, manifest, {MODEL_FILE: onnx_bytes}, overwrite=overwrite)


class CrowdClassifier:
    """The crowd CNN on one onnxruntime thread: frames in, class probabilities out.

    ``model`` is ONNX bytes, an ``.onnx`` file, or an artifact directory (verified: a file
    whose sha256 does not match its manifest is refused). ``onnx_bytes`` keeps the model,
    so a child process can rebuild the classifier from it.
    """

    def __init__(self, model: bytes | str | os.PathLike) -> None:
        from coinfer.edge.models.ocr import cpu_session

        if isinstance(model, bytes | bytearray):
            source, self.onnx_bytes = "the given ONNX bytes", bytes(model)
        else:
            path = Path(model)
            if path.is_dir():
                path = load_artifact(path, capability=CAPABILITY, kind=KIND).file(MODEL_FILE)
            elif not path.is_file():
                raise ArtifactError(f"{path}: no crowd classifier there (expected an artifact directory "
                                    f"or an .onnx file)")
            source, self.onnx_bytes = str(path), path.read_bytes()
        try:
            self._session = cpu_session(self.onnx_bytes)
        except Exception as error:  # onnxruntime raises its own untyped errors for bad models
            raise CrowdModelError(f"{source} is not a loadable ONNX model: {error}") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        expected = [None, INPUT_SIZE[1], INPUT_SIZE[0], 3]
        if len(inputs) != 1 or [d if isinstance(d, int) else None for d in inputs[0].shape] != expected \
                or len(outputs) != 1 or outputs[0].shape[-1] != len(CLASSES):
            found = [(i.name, i.shape) for i in inputs], [(o.name, o.shape) for o in outputs]
            raise CrowdModelError(f"{source} is not a crowd classifier: inputs/outputs {found}, expected "
                                  f"one input {expected} and one output [N, {len(CLASSES)}]")
        self._input = inputs[0].name

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, 3]`` for downscaled frames ``[N, 36, 64, 3]``."""
        return self._session.run(None, {self._input: check_inputs(inputs)})[0]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Probabilities ``[3]`` over 0, 1, 2+ people for one RGB uint8 frame of any size."""
        return self.predict(downscale(frame))[0]
