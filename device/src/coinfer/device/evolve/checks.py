"""What a device model must pass before anyone serves it, checked the same way by both tiers.

The edge refuses to publish, and the device refuses to install, a model whose files do not
match their hashes, that is for another device or architecture, whose TFLite signature is not
the one its manifest declares, whose constant tensors (weights, biases, quantisation scales)
hold NaN or infinity, or that answers a probe input with non-finite logits. A diverged
training run produces exactly such a model, and the hashes cannot tell: they only vouch that
the bytes are the ones the trainer wrote. The edge store imports :func:`verify_device_model`
from here, so a model the edge published is one the device will accept.

Example, with a file that is no TFLite model (a real one is checked in the tests):

>>> import tempfile
>>> from pathlib import Path
>>> work = tempfile.TemporaryDirectory()
>>> model = Path(work.name) / "model.tflite"
>>> _ = model.write_bytes(b"not a flatbuffer")
>>> check_finite_weights(model)
Traceback (most recent call last):
    ...
coinfer.sdk.evolve.models.DeviceModelError: .../model.tflite: not a loadable TFLite model: ...
>>> work.cleanup()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinfer.device.runtime.base import Runner, RunnerError, RunnerOptions
from coinfer.device.runtime.tflite import TFLiteRunner, load_interpreter_class
from coinfer.sdk.artifact import Artifact, load_artifact
from coinfer.sdk.errors import one_line
from coinfer.sdk.evolve.models import (
    CAPABILITY,
    KIND,
    MODEL_FILE,
    DeviceModelError,
    DeviceModelInfo,
    check_device_model,
    publication_digest,
)
from coinfer.sdk.tensor import TensorSpec


@dataclass(frozen=True)
class VerifiedModel:
    """A device model that passed every check: its artifact, what its manifest says, the
    digest of its manifest, and a runner built and probed on it."""

    artifact: Artifact
    info: DeviceModelInfo
    manifest_sha256: str
    runner: Runner


def check_finite_weights(model: str | os.PathLike) -> int:
    """Check that every floating-point constant tensor of a ``.tflite`` file, and every
    quantisation scale, is finite; returns how many constant values were checked.

    Constants are the tensors no operator produces and the model does not take as input;
    only their data is read (activation buffers hold whatever memory was there).
    """
    path = Path(model)
    interpreter_class, _ = load_interpreter_class()
    try:
        interpreter = interpreter_class(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        operators = interpreter._get_ops_details()
    except (ValueError, RuntimeError) as error:
        raise DeviceModelError(f"{path}: not a loadable TFLite model: {one_line(error)}") from None
    produced = {int(index) for op in operators for index in op["outputs"]}
    produced.update(int(details["index"]) for details in interpreter.get_input_details())
    checked = 0
    for details in interpreter.get_tensor_details():
        scales = np.asarray(details.get("quantization_parameters", {}).get("scales", []), np.float64)
        if not np.isfinite(scales).all():
            raise DeviceModelError(f"{path}: tensor '{details['name']}' has a non-finite quantisation scale")
        if int(details["index"]) in produced:
            continue
        try:
            value = interpreter.get_tensor(details["index"])
        except ValueError:  # a tensor without data: no constant
            continue
        if value.dtype.kind != "f":
            continue
        checked += value.size
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise DeviceModelError(f"{path}: constant tensor '{details['name']}' holds {bad} non-finite "
                                   f"value(s) (NaN or infinity) of {value.size}")
    return checked


def probe_inference(runner: Runner, where: str | os.PathLike) -> np.ndarray:
    """Run one all-zero sample through ``runner`` and return its output; refuse a model that
    fails to run or answers with non-finite values (``where`` names it in the message)."""
    feeds = {spec.name: np.zeros(tuple(1 if dim is None else dim for dim in spec.shape), spec.numpy_dtype)
             for spec in runner.input_specs}
    try:
        outputs = runner.run(feeds)
    except RunnerError as error:
        raise DeviceModelError(f"{where}: the model fails on a probe input: {error}") from None
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise DeviceModelError(f"{where}: the model answers a zero input with non-finite output '{name}'")
    return outputs[runner.output_specs[0].name]


def same_signature(found: TensorSpec, declared: TensorSpec) -> bool:
    """Whether two tensors agree on name, shape and dtype (quantisation may differ between
    retrained versions of one architecture)."""
    return (found.name, found.shape, found.dtype) == (declared.name, declared.shape, declared.dtype)


def verify_device_model(path: str | os.PathLike, *, device: str, architecture: str,
                        options: RunnerOptions | None = None) -> VerifiedModel:
    """Verify the device model artifact at ``path`` for ``device`` and ``architecture`` and
    build its runner: file hashes, manifest, finite weights, the signature the manifest
    declares, a finite probe inference. Any failure raises one line naming ``path``
    (:class:`~coinfer.sdk.evolve.models.DeviceModelError` or another ``ArtifactError``)."""
    artifact = load_artifact(path, capability=CAPABILITY, kind=KIND)
    try:
        info = check_device_model(artifact.manifest, device=device, architecture=architecture)
    except DeviceModelError as error:
        raise DeviceModelError(f"{artifact.path}: {error}") from None
    digest = publication_digest(artifact.path)
    model = artifact.file(MODEL_FILE)
    check_finite_weights(model)
    try:
        runner = TFLiteRunner.create_from_artifact(artifact, options)
    except RunnerError as error:
        raise DeviceModelError(f"{model}: {error}") from None
    for what, found, declared in (("input", runner.input_specs, info.input), ("output", runner.output_specs,
                                                                              info.output)):
        if len(found) != 1 or not same_signature(found[0], declared):
            shown = ", ".join(spec.describe() for spec in found)
            raise DeviceModelError(f"{model}: the model's {what} {shown} is not the manifest's "
                                   f"{declared.describe()}")
    probe_inference(runner, model)
    return VerifiedModel(artifact, info, digest, runner)


__all__ = ["VerifiedModel", "check_finite_weights", "probe_inference", "same_signature",
           "verify_device_model"]
