"""Evolved device models as artifacts: what an edge publishes and a device accepts.

The edge retrains a device's model as its data drifts and publishes each new version; the
device swaps it in while it keeps serving. Both sides must agree, without trusting the
transport, on what a publication is. A device model is an ordinary coinfer artifact
(capability ``evolve``, kind ``device-model``, one file ``model.tflite``) whose metadata
says which device it is for, its architecture id (equal ids mean the same layer structure,
so a model can replace another), its version and the tasks it serves. The manifest lists
the sha256 of every file, so the sha256 of the manifest's own bytes
(:func:`publication_digest`) vouches for the whole artifact: an edge announces that one
digest, and a device that checks it and then the manifest's file hashes has checked every
byte it received.

This module holds only the description and its checks (numpy and stdlib); loading and
running the TFLite model is the device tier's part.

Example (in a temporary directory):

>>> import tempfile
>>> from coinfer.sdk.artifact import save_artifact
>>> from coinfer.sdk.tensor import TensorSpec
>>> image = TensorSpec("image", (None, 16, 16, 3), "float32")
>>> logits = TensorSpec("output_0", (None, 4), "float32")
>>> manifest = device_model_manifest(device="cam3", architecture="effl0-p30-4c", version=2,
...                                  tasks=["person"], inputs=[image], outputs=[logits],
...                                  metrics={"accuracy": 0.91})
>>> work = tempfile.TemporaryDirectory()
>>> saved = save_artifact(work.name + "/v2", manifest, {MODEL_FILE: b"tflite bytes"})
>>> info = check_device_model(saved.manifest, device="cam3", architecture="effl0-p30-4c")
>>> info.version, info.tasks, info.output.shape
(2, ('person',), (None, 4))
>>> try:
...     check_device_model(saved.manifest, device="cam3", architecture="effl0-p50-4c")
... except DeviceModelError as error:
...     print(error)
model for device 'cam3' has architecture 'effl0-p30-4c', expected 'effl0-p50-4c'
>>> len(publication_digest(saved.path / "manifest.json"))
64
>>> work.cleanup()
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.sdk.artifact import MANIFEST_NAME, ArtifactError, Manifest
from coinfer.sdk.datadir import sha256_file
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.tensor import TensorSpec

CAPABILITY = "evolve"
KIND = "device-model"
#: The one file of a device model artifact.
MODEL_FILE = "model.tflite"
#: The metadata keys every device model carries; training metrics take any other key.
RESERVED_KEYS = ("device", "architecture", "version", "tasks")
#: Device names become folder names on the edge and path segments in URLs: keep them plain.
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Longest architecture id or task name accepted.
MAX_ID_CHARS = 256


class DeviceModelError(ArtifactError):
    """A device model artifact that does not describe a model the caller can serve: another
    device, another architecture, a malformed description, non-finite weights."""


@dataclass(frozen=True)
class DeviceModelInfo:
    """What a checked device model manifest says: its device, architecture id, version,
    tasks and the image input and logits output of its TFLite signature."""

    device: str
    architecture: str
    version: int
    tasks: tuple[str, ...]
    input: TensorSpec
    output: TensorSpec


def check_device_name(device: Any) -> str:
    """``device`` if it is a usable device name (letters, digits, ``.``, ``_``, ``-``; at most 64
    characters; not starting with a dot or dash), else :class:`InvalidArgumentError`."""
    if not isinstance(device, str) or DEVICE_NAME.fullmatch(device) is None:
        raise InvalidArgumentError(f"invalid device name {str(device)[:80]!r}: use 1 to 64 letters, digits, "
                                   "'.', '_' or '-', starting with a letter or digit")
    return device


def _check_id(what: str, value: Any) -> str:
    """``value`` if it is a printable, non-empty id of bounded length, else one line naming ``what``."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise InvalidArgumentError(f"{what} must be a printable string of 1 to {MAX_ID_CHARS} characters, "
                                   f"got {str(value)[:80]!r}")
    return value


def _check_version(value: Any) -> int:
    if type(value) is not int or value < 1:
        raise InvalidArgumentError(f"version must be an int >= 1, got {value!r}")
    return value


def check_architecture(architecture: Any) -> str:
    """``architecture`` if it is a usable architecture id (printable, 1 to 256 characters), else
    :class:`InvalidArgumentError`."""
    return _check_id("architecture", architecture)


def check_tasks(value: Any) -> tuple[str, ...]:
    """The task names of a non-empty list of distinct, printable names, else
    :class:`InvalidArgumentError`."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidArgumentError(f"tasks must be a non-empty list of names, got {str(value)[:80]!r}")
    tasks = tuple(_check_id("a task name", task) for task in value)
    if len(set(tasks)) != len(tasks):
        raise InvalidArgumentError(f"tasks must be distinct, got {list(tasks)}")
    return tasks


def _check_signature(inputs: Sequence[TensorSpec],
                     outputs: Sequence[TensorSpec]) -> tuple[TensorSpec, TensorSpec]:
    """The one image input (rank 4, NHWC) and the one logits output (rank 2) of a device model."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise InvalidArgumentError(f"a device model has one image input and one logits output, got "
                                   f"{len(inputs)} input(s) and {len(outputs)} output(s)")
    image, logits = inputs[0], outputs[0]
    if len(image.shape) != 4:
        raise InvalidArgumentError(f"the image input {image.describe()} must have rank 4 (batch, height, "
                                   "width, channels)")
    if len(logits.shape) != 2:
        raise InvalidArgumentError(f"the logits output {logits.describe()} must have rank 2 (batch, classes)")
    return image, logits


def device_model_manifest(*, device: str, architecture: str, version: int, tasks: Sequence[str],
                          inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                          metrics: Mapping[str, Any] | None = None,
                          preprocessing: Mapping[str, Any] | None = None) -> Manifest:
    """The manifest of a device model artifact; save it with ``save_artifact(path, manifest,
    {MODEL_FILE: tflite_bytes})``.

    ``inputs``/``outputs`` are the TFLite signature's (a runner's ``input_specs`` and
    ``output_specs``); ``metrics`` are training metrics stored next to the reserved keys of the
    metadata (JSON values; a reserved key is refused).
    """
    metadata: dict[str, Any] = {"device": check_device_name(device),
                                "architecture": check_architecture(architecture),
                                "version": _check_version(version), "tasks": list(check_tasks(tasks))}
    _check_signature(inputs, outputs)
    extra = dict(metrics or {})
    clashing = sorted(key for key in extra if key in RESERVED_KEYS)
    if clashing:
        raise InvalidArgumentError(f"metrics may not use the reserved metadata key(s) {', '.join(clashing)}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"metrics must be finite JSON values: {error}") from error
    metadata.update(extra)
    return Manifest(capability=CAPABILITY, kind=KIND, inputs=list(inputs), outputs=list(outputs),
                    preprocessing=dict(preprocessing or {}), metadata=metadata)


def check_device_model(manifest: Manifest, *, device: str, architecture: str) -> DeviceModelInfo:
    """The description in ``manifest``, checked to be a device model for ``device`` of
    ``architecture``; anything else raises :class:`DeviceModelError` in one line."""
    if (manifest.capability, manifest.kind) != (CAPABILITY, KIND):
        raise DeviceModelError(f"not a device model: capability '{manifest.capability}', kind "
                               f"'{manifest.kind}' (expected '{CAPABILITY}', '{KIND}')")
    metadata = manifest.metadata
    missing = [key for key in RESERVED_KEYS if key not in metadata]
    if missing:
        raise DeviceModelError(f"device model metadata lacks {', '.join(missing)}")
    try:
        named = check_device_name(metadata["device"])
        claimed = check_architecture(metadata["architecture"])
        version = _check_version(metadata["version"])
        tasks = check_tasks(metadata["tasks"])
        image, logits = _check_signature(manifest.inputs, manifest.outputs)
    except InvalidArgumentError as error:
        raise DeviceModelError(f"device model metadata: {error}") from None
    if named != device:
        raise DeviceModelError(f"model is for device '{named}', expected '{device}'")
    if claimed != architecture:
        raise DeviceModelError(f"model for device '{device}' has architecture '{claimed}', "
                               f"expected '{architecture}'")
    if set(manifest.files) != {MODEL_FILE}:
        raise DeviceModelError(f"a device model holds exactly the file {MODEL_FILE}, this one "
                               f"{sorted(manifest.files)[:4]}")
    return DeviceModelInfo(named, claimed, version, tasks, image, logits)


def publication_digest(manifest_path: str | os.PathLike) -> str:
    """The hex sha256 of a manifest's bytes (the ``manifest.json`` file, or the artifact
    directory holding it): the one digest that vouches for every file the manifest lists."""
    path = Path(manifest_path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest to digest")
    return sha256_file(path)


__all__ = ["CAPABILITY", "KIND", "MODEL_FILE", "DeviceModelError", "DeviceModelInfo", "check_architecture",
           "check_device_model", "check_device_name", "check_tasks", "device_model_manifest",
           "publication_digest"]
