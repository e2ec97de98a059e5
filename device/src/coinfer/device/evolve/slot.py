"""The model a device serves, replaced by a newer version without a single request failing.

A camera that answers requests cannot stop while the edge's retrained model arrives. The
slot holds the served model as one reference to an immutable pair (its description and a
runner built for it alone). :meth:`ModelSlot.install` does all the slow and fallible work
first (hashes, manifest, finite weights, the same signature as the served model, a probe
inference, a fully built runner) and only then replaces the reference under a lock: a
request sees the old model or the new one, never a mix, and a model that fails any check
never serves (the old one keeps on). Each runner has its own lock, because a TFLite
interpreter must not be invoked from two threads at once; requests to the old model still
running when the new one arrives finish on the old runner.

Example::

    slot = ModelSlot("cam3", "effl0-p30-4c", "models/cam3-v1")
    logits = slot.predict(images)                  # from any thread
    slot.install("downloads/cam3-v2")              # raises, and keeps v1, if v2 is refused
    slot.version                                   # 2

A directory that is not a device model is refused up front:

>>> import tempfile
>>> work = tempfile.TemporaryDirectory()
>>> ModelSlot("cam3", "effl0-p30-4c", work.name + "/missing")
Traceback (most recent call last):
    ...
coinfer.sdk.artifact.ArtifactError: .../missing: not an artifact directory (it does not exist or is a file)
>>> work.cleanup()
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinfer.device.evolve.checks import VerifiedModel, same_signature, verify_device_model
from coinfer.device.runtime.base import Runner, RunnerOptions
from coinfer.sdk.evolve.models import DeviceModelError, check_device_name
from coinfer.sdk.tensor import TensorSpec


@dataclass(frozen=True)
class ServedModel:
    """One version a slot served: its version number, artifact directory and manifest digest."""

    version: int
    path: Path
    manifest_sha256: str


class _Loaded:
    """A served model with the runner built for it and the lock that serialises its interpreter."""

    def __init__(self, verified: VerifiedModel) -> None:
        self.model = ServedModel(verified.info.version, verified.artifact.path, verified.manifest_sha256)
        self.runner: Runner = verified.runner
        self.output = verified.info.output.name
        self.lock = threading.Lock()


class ModelSlot:
    """The device model ``device`` serves (of ``architecture``), swappable while it serves.

    ``artifact_dir`` is the initial model, verified like any later one; ``options`` configure
    every runner the slot builds (interpreter threads, batch size).
    """

    def __init__(self, device: str, architecture: str, artifact_dir: str | os.PathLike,
                 options: RunnerOptions | None = None) -> None:
        self.device = check_device_name(device)
        self.architecture = architecture
        self.options = options or RunnerOptions()
        loaded = _Loaded(verify_device_model(artifact_dir, device=device, architecture=architecture,
                                             options=self.options))
        self._swap = threading.Lock()
        self._installing = threading.Lock()
        self._loaded = loaded
        self._history = [loaded.model]

    @property
    def current(self) -> ServedModel:
        """The model serving now."""
        with self._swap:
            return self._loaded.model

    @property
    def version(self) -> int:
        """The version serving now."""
        return self.current.version

    @property
    def history(self) -> tuple[ServedModel, ...]:
        """Every model this slot served, oldest first (the last one serves now)."""
        with self._swap:
            return tuple(self._history)

    @property
    def input_spec(self) -> TensorSpec:
        """The image input every version of this slot takes."""
        with self._swap:
            return self._loaded.runner.input_specs[0]

    @property
    def output_spec(self) -> TensorSpec:
        """The logits output every version of this slot answers."""
        with self._swap:
            return self._loaded.runner.output_specs[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The logits of a batch of ``images`` from the model serving when the call starts; safe
        to call from many threads (calls on one model take turns on its interpreter)."""
        with self._swap:
            loaded = self._loaded
        with loaded.lock:
            return loaded.runner.run(images)[loaded.output]

    def install(self, artifact_dir: str | os.PathLike) -> int:
        """Verify the model at ``artifact_dir``, build its runner and make it the served one;
        returns its version. It must be newer than the served version and take and answer the
        same tensors. On any failure this raises one line and the served model stays."""
        with self._installing:
            served = self.current
            verified = verify_device_model(artifact_dir, device=self.device, architecture=self.architecture,
                                           options=self.options)
            where = verified.artifact.path
            if verified.info.version <= served.version:
                raise DeviceModelError(f"{where}: version {verified.info.version} is not newer than the "
                                       f"served version {served.version}")
            with self._swap:
                current = self._loaded.runner
            for what, new, old in (("input", verified.runner.input_specs[0], current.input_specs[0]),
                                   ("output", verified.runner.output_specs[0], current.output_specs[0])):
                if not same_signature(new, old):
                    raise DeviceModelError(f"{where}: the model's {what} {new.describe()} differs from the "
                                           f"served model's {old.describe()}")
            loaded = _Loaded(verified)
            with self._swap:
                self._loaded = loaded
                self._history.append(loaded.model)
            return loaded.model.version


__all__ = ["ModelSlot", "ServedModel"]
