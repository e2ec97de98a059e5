"""The edge's evolution service: cameras upload frames, ask for a better model, and fetch it.

Why a service: a device's model degrades as its scene drifts away from what it was trained on
(NestEvo), and the device can do nothing about it: it runs LiteRT, holds no labels and cannot
train. The edge can. It labels the frames a device uploads with its real annotators (HOG
people, Haar faces and cats, the PP-OCRv4 text detector), distils its global model into the
device's model on them, converts the result to TFLite and publishes it in its
:class:`~coinfer.edge.evolve.store.ModelStore`, from which the device's
:class:`~coinfer.device.evolve.updater.ModelUpdater` installs it while it keeps serving.

A device's request evolves that device on its own (NestEvo's *device-only* evolution, its
answer when few devices drifted): ``alpha CE(annotators' labels) + (1 - alpha) KL(p_global ||
p_device)`` on the prefix features of the device's uploads
(:func:`~coinfer.sdk.evolve.training.distill`; the global model is the teacher and stays as it
is). A *round* (``POST /v1/evolve/round``) is NestEvo's answer for the fleet
(:func:`~coinfer.edge.evolve.offline.run_round`, which ``coinfer evolve run`` runs offline):
on every device's buffered frames and labels, the drift policy (or the mode asked for) chooses
device-only evolution or co-evolution, the mutual learning of every device model with a middle
copy of the global model, which also writes a new global model (``root/global/vN.npz``). The
trainer runs a round in the service's process, alone: it is refused while any job is queued or
running, and device requests are refused while it is. Once it is done the service distils the
new global model in later device jobs and reports its version.

Evolution requests become :class:`~coinfer.edge.evolve.executor.TrainingJob` trained in
processes of their own by the :class:`~coinfer.edge.evolve.executor.EvolutionExecutor` under
NestEvo's knapsack policy (:class:`~coinfer.sdk.evolve.scheduler.DpPolicy`) within a memory
budget: the jobs waiting when the trainer is free form one batch, scheduled together; the
jobs requested while a batch trains form the next. A trained job is checked (finite weights),
exported (``float32`` or ``int8``, calibrated on the device's frames) and published as the
device's next version. Whatever fails (weights that are NaN, an export that misses its parity
check, a process that crashes) fails that job with one line and publishes nothing: the
device keeps the model it has, and the store keeps serving the previous version.

Routes (every one needs ``Authorization: Bearer <token>``, as do ``/docs``, ``/redoc`` and
``/openapi.json``; refusals are one line, ``{"detail": ...}``):

- ``POST /v1/evolve/devices/{device}/frames``: one CNFR frame (:mod:`coinfer.sdk.wire`) of type
  ``REQUEST`` holding one array ``frames``, uint8 ``(n, S, S, 3)`` with ``1 <= n <=
  max_upload_frames`` and ``S`` the models' input size. The frames are labelled (one worker, a
  bounded queue) and appended to the device's buffer; answers ``{"device", "received",
  "positives": {task: frames}, "buffered", "dropped"}``. 404 for an unknown device (before the
  body is read), 413 for a body or frame over the limit (before it is all read), 400 for a body
  that is not a frame, 422 for a frame of another type, with other arrays, another shape or
  dtype, 503 while the labelling queue is full;
- ``POST /v1/evolve/devices/{device}/evolve``: 202 ``{"job", "status": "queued", ...}``; 404
  for an unknown device, 409 while a job of the device or a round is queued or running or when
  the device has uploaded no frames;
- ``POST /v1/evolve/round``: a round over every device with buffered frames (their buffers as
  the round starts). The body is optional JSON (at most ``MAX_ROUND_BYTES``), ``{"mode":
  "auto" | "device-only" | "co-evolution", "gamma": 30.0, "epsilon": 2, "rounds": 3,
  "validation": 0.25}`` (these are the defaults; any key may be left out). 202 with the job;
  400 for a body that is not JSON or a value the round refuses (mode ``auto`` without the
  configuration's source statistics too), 413 for a body over the limit, 422 for JSON that is
  not an object or has other keys, 409 while any job is queued or running or when no device
  has buffered frames;
- ``GET /v1/evolve/jobs/{job}``: the job: ``kind`` (``device``, or ``round`` with ``device``
  ""), ``status`` (queued, running, done or failed), the ``error`` line of a failed one (its
  stage first: preparing, training or publishing; a round's ``round`` names its last progress
  line), the ``version`` a done device job published and the ``report`` of a done round
  (:func:`~coinfer.edge.evolve.offline.run_round`); 404 for an unknown id;
- ``GET /v1/evolve/status``: the devices (buffered frames, published versions, active job),
  the active round job, the jobs, the labelling queue and the global model's version;
- ``GET /v1/evolve/models/{device}`` and its files: the store's routes
  (:func:`~coinfer.edge.evolve.store.store_routes`).

No prometheus ``/metrics``: no coinfer service exposes one; ``/v1/evolve/status`` carries the
numbers.

What the service keeps under its ``root`` (each write atomic, so a crash leaves the previous
file): ``models/`` (the store, which survives restarts), ``buffers/DEVICE.npz`` (the device's
labelled uploads, rewritten whole on each upload, at most ``max_buffer_frames``: the oldest are
dropped first, the newest show the scene as it is now), ``states/DEVICE/vN.npz`` (the weights
behind published version N, written before the publication; the next evolution starts from the
latest published version's weights, else from the configured initial state),
``global/vN.npz`` (the global models co-evolution made, N from 2: the configured state is
version 1; the service and ``coinfer evolve run`` start from the newest), ``work/`` (the
executor's temporary files) and ``.lock``: one process at a time evolves a root, so the service
holds an exclusive ``flock`` on it from start to :meth:`EvolutionService.close` and ``coinfer
evolve run`` for its round; the other is refused with ``ROOT is in use by another coinfer
evolve process`` (:class:`RootLock`, Linux).

The configuration (JSON; relative paths are relative to its folder; :class:`EvolutionConfig`)::

    {"root": "evolve-edge",
     "global": {"architecture": {"family": "efficientnet-lite0", "input_size": 128},
                "state": "global.npz"},
     "devices": [{"id": "cam1", "architecture": {"family": "efficientnet-lite0", "keep": 0.3,
                                                 "input_size": 128},
                  "state": "cam1.npz", "model": "cam1-v1", "precision": "int8"}],
     "training": {"epochs": 3, "batch_size": 32},
     "precision": "float32", "max_upload_frames": 32, "max_buffer_frames": 512,
     "annotate_side": 320, "label_queue": 8, "budget_mib": 4096, "workspace_mib": 400,
     "keep_versions": 3, "source": "source-embeddings.npz"}

``state``: an ``.npz`` of :func:`~coinfer.sdk.evolve.training.state_arrays` of the
architecture (the frozen prefix is the pretrained EfficientNet-Lite0 trunk, never stored);
``model``: optionally the device's initial TFLite artifact, published when the store holds no
version of the device yet; ``source``: optionally an ``.npz`` of the global model's
``embeddings`` (M, E) and ``labels`` (M, T) on the source domain, with which every job reports
the drift of the device's uploads (:func:`~coinfer.sdk.evolve.drift.class_drift`). The
statistics are the configured global model's (``global.state``), so the uploads are embedded
by that model too (:func:`drift_network`), also once co-evolution wrote newer global models:
drift stays measured in the space the statistics were made in. Every model shares the input
size and the tasks, which must be annotators' tasks.

Checked before anything is loaded:

>>> config = EvolutionConfig.from_dict({
...     "root": "edge", "global": {"architecture": {"family": "efficientnet-lite0", "input_size": 64},
...                                "state": "global.npz"},
...     "devices": [{"id": "cam1", "architecture": {"family": "tiny", "input_size": 64},
...                  "state": "cam1.npz"}]}, base="/srv/evolve")
>>> config.root, config.input_size, config.devices[0].precision, config.training.epochs
(PosixPath('/srv/evolve/edge'), 64, 'float32', 3)
>>> EvolutionConfig.from_dict({"root": "edge", "global": {}, "devices": []}, base=".")
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: global.architecture: missing
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from coinfer.edge.evolve.executor import EvolutionExecutor, TaskPredictor, TrainingJob
from coinfer.edge.evolve.store import ModelStore, store_routes
from coinfer.edge.models.detectors import DETECTORS, Detector, create_detector, single_threaded
from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError, InputNotFoundError, InvalidArgumentError, one_line
from coinfer.sdk.evolve.coevolution import CoEvolutionOptions
from coinfer.sdk.evolve.drift import DriftPolicy
from coinfer.sdk.evolve.models import check_device_name
from coinfer.sdk.evolve.networks import ArchitectureSpec, load_pretrained
from coinfer.sdk.evolve.scheduler import DpPolicy
from coinfer.sdk.evolve.training import TrainOptions
from coinfer.sdk.npz import read_arrays, write_arrays
from coinfer.sdk.service import ServiceError, ThreadedServer, create_service_app, read_limited_body

log = logging.getLogger(__name__)

#: The routes, relative to the service's base URL.
DEVICES_PATH = "/v1/evolve/devices"
JOBS_PATH = "/v1/evolve/jobs"
ROUND_PATH = "/v1/evolve/round"
STATUS_PATH = "/v1/evolve/status"
#: The one array an upload frame holds.
FRAMES_ARRAY = "frames"
#: Bytes of an upload's msgpack header (its user header and array table) accepted at most.
MAX_UPLOAD_HEADER_BYTES = 4096
#: Precisions a device model is exported in.
PRECISIONS = ("float32", "int8")
#: Bytes a weights file, or the source statistics, may hold at most.
MAX_STATE_BYTES = 512 << 20
#: Bytes a device's buffer may hold at most (frames + labels).
MAX_BUFFER_BYTES = 2 << 30
#: Finished jobs remembered for ``GET /v1/evolve/jobs/{job}``; older ones are forgotten.
KEEP_FINISHED_JOBS = 1000
#: The file in the root whose ``flock`` says which process evolves the root.
LOCK_NAME = ".lock"
#: Status of a job: waiting for the trainer, training (or exporting), finished.
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
#: Kind of a job: one device's evolution, or a round over the fleet.
DEVICE_JOB, ROUND_JOB = "device", "round"
#: What the body of a round request may hold, and its size at most.
ROUND_KEYS = ("mode", "gamma", "epsilon", "rounds", "validation")
MAX_ROUND_BYTES = 4096
_GLOBAL_FILE = re.compile(r"v([1-9][0-9]*)\.npz")


class EvolutionRequestError(ServiceError):
    """A request the evolution service refuses; ``status`` is the HTTP status to answer with."""


class Exporter(Protocol):
    """Writes a trained evolve network as a device-model artifact and returns its folder:
    :func:`coinfer.converters.evolve_models.export_device_model`, which the edge's command
    passes in (an edge library module does not import the converters)."""

    def __call__(self, model: Any, out_dir: str | os.PathLike, *, device: str, version: int,
                 precision: str = ..., calibration: np.ndarray | None = ...,
                 metrics: Mapping[str, Any] | None = ...) -> Path:
        ...


def _where(path: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{path}: {message}")


def _integer(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise _where(key, f"must be an integer in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def _mapping(value: Any, path: str, keys: Sequence[str], required: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _where(path or "the configuration", f"must be a JSON object, got {type(value).__name__}")
    unknown = sorted(str(key)[:40] for key in set(value) - set(keys))
    if unknown:
        raise _where(path or "the configuration", f"unknown key(s) {unknown[:4]} (known: {', '.join(keys)})")
    for key in required:
        if key not in value:
            raise _where(f"{path}.{key}" if path else key, "missing")
    return value


def _path(value: Any, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise _where(where, f"must be a path, got {str(value)[:40]!r}")
    return base / value


def _architecture(value: Any, where: str) -> ArchitectureSpec:
    try:
        return ArchitectureSpec.from_dict(value)
    except (InvalidArgumentError, TypeError) as error:
        raise _where(where, one_line(error)) from None


def _precision(value: Any, where: str) -> str:
    if value not in PRECISIONS:
        raise _where(where, f"must be one of {', '.join(PRECISIONS)}, got {str(value)[:40]!r}")
    return str(value)


@dataclass(frozen=True)
class DeviceConfig:
    """One device the service evolves: its ``id``, its model's ``architecture``, the ``state``
    its first evolution starts from, its initial ``model`` artifact (or None) and the
    ``precision`` its models are exported in."""

    id: str
    architecture: ArchitectureSpec
    state: Path
    model: Path | None
    precision: str


@dataclass(frozen=True)
class EvolutionConfig:
    """The service's configuration (the module docstring shows the JSON): where it keeps its
    files, the global model, the devices, how evolution trains and the limits on uploads,
    buffers, the labelling queue and the trainer's memory."""

    root: Path
    global_architecture: ArchitectureSpec
    global_state: Path
    devices: tuple[DeviceConfig, ...]
    training: TrainOptions = field(default_factory=TrainOptions)
    max_upload_frames: int = 32
    max_buffer_frames: int = 512
    annotate_side: int = 320
    label_queue: int = 8
    budget_bytes: int = 4096 << 20
    workspace_bytes: int = 400 << 20
    keep_versions: int = 3
    source: Path | None = None

    KEYS = ("root", "global", "devices", "training", "precision", "max_upload_frames", "max_buffer_frames",
            "annotate_side", "label_queue", "budget_mib", "workspace_mib", "keep_versions", "source")

    @property
    def input_size(self) -> int:
        """The side of the square frames every model takes."""
        return self.global_architecture.input_size

    @property
    def max_request_bytes(self) -> int:
        """The largest upload body: a frame of ``max_upload_frames`` frames."""
        side = self.input_size
        return wire.FIXED_HEADER_SIZE + MAX_UPLOAD_HEADER_BYTES + self.max_upload_frames * side * side * 3

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks every model serves, in the order of the labels' columns."""
        return self.global_architecture.tasks

    def device(self, device: str) -> DeviceConfig:
        """The configuration of ``device`` (:class:`KeyError` if it has none)."""
        return {entry.id: entry for entry in self.devices}[device]

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvolutionConfig:
        """The configuration in the JSON file ``path``; every error is one line naming the file."""
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such configuration file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise InvalidArgumentError(f"{path}: not a readable JSON configuration: "
                                       f"{one_line(error)}") from None
        try:
            return cls.from_dict(data, base=path.parent)
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, data: Any, *, base: str | os.PathLike) -> EvolutionConfig:
        """The configuration in ``data`` (parsed JSON); relative paths are taken from ``base``.
        Paths are only resolved here: :class:`EvolutionService` reads the files."""
        folder = Path(base)
        data = _mapping(data, "", cls.KEYS, ("root", "global", "devices"))
        model = _mapping(data["global"], "global", ("architecture", "state"), ("architecture", "state"))
        architecture = _architecture(model["architecture"], "global.architecture")
        unknown = [task for task in architecture.tasks if task not in DETECTORS]
        if unknown:
            raise _where("global.architecture.tasks", f"{unknown} have no annotator (known: "
                                                      f"{', '.join(DETECTORS)})")
        precision = _precision(data.get("precision", "float32"), "precision")
        devices = data["devices"]
        if not isinstance(devices, list) or not 1 <= len(devices) <= 64:
            raise _where("devices", "must be a list of 1 to 64 devices")
        entries = [cls._device(item, f"devices[{index}]", folder, architecture, precision)
                   for index, item in enumerate(devices)]
        names = [entry.id for entry in entries]
        if len(set(names)) != len(names):
            raise _where("devices", f"device ids must be distinct, got {names}")
        training = data.get("training", {})
        known = [item.name for item in dataclasses.fields(TrainOptions)]
        _mapping(training, "training", known, ())
        try:
            options = TrainOptions(**training)
        except InvalidArgumentError as error:
            raise _where("training", str(error)) from None
        side = architecture.input_size
        upload = _integer(data, "max_upload_frames", 32, 1, 1024)
        buffer = _integer(data, "max_buffer_frames", 512, 1, 1_000_000)
        if buffer * (side * side * 3 + len(architecture.tasks)) > MAX_BUFFER_BYTES:
            raise _where("max_buffer_frames", f"{buffer} frames of {side} x {side} are over the "
                                              f"{MAX_BUFFER_BYTES >> 20} MiB a device's buffer may hold")
        source = data.get("source")
        return cls(root=_path(data["root"], "root", folder), global_architecture=architecture,
                   global_state=_path(model["state"], "global.state", folder), devices=tuple(entries),
                   training=options, max_upload_frames=upload, max_buffer_frames=buffer,
                   annotate_side=_integer(data, "annotate_side", 320, 32, 2048),
                   label_queue=_integer(data, "label_queue", 8, 1, 1024),
                   budget_bytes=_integer(data, "budget_mib", 4096, 1, 1 << 24) << 20,
                   workspace_bytes=_integer(data, "workspace_mib", 400, 0, 1 << 24) << 20,
                   keep_versions=_integer(data, "keep_versions", 3, 1, 100),
                   source=None if source is None else _path(source, "source", folder))

    @staticmethod
    def _device(item: Any, where: str, base: Path, global_architecture: ArchitectureSpec,
                precision: str) -> DeviceConfig:
        entry = _mapping(item, where, ("id", "architecture", "state", "model", "precision"),
                         ("id", "architecture", "state"))
        try:
            name = check_device_name(entry["id"])
        except InvalidArgumentError as error:
            raise _where(f"{where}.id", str(error)) from None
        architecture = _architecture(entry["architecture"], f"{where}.architecture")
        if architecture.input_size != global_architecture.input_size:
            raise _where(f"{where}.architecture", f"input_size {architecture.input_size} differs from the "
                                                  f"global model's {global_architecture.input_size}")
        if architecture.tasks != global_architecture.tasks or architecture.embedding != \
                global_architecture.embedding:
            raise _where(f"{where}.architecture", "tasks and embedding must be the global model's "
                                                  f"({list(global_architecture.tasks)}, "
                                                  f"{global_architecture.embedding})")
        initial = entry.get("model")
        return DeviceConfig(name, architecture, _path(entry["state"], f"{where}.state", base),
                            None if initial is None else _path(initial, f"{where}.model", base),
                            _precision(entry.get("precision", precision), f"{where}.precision"))


class RootInUseError(CoinferError):
    """Another ``coinfer evolve`` process (a service or an offline round) holds the root."""


class RootLock:
    """An exclusive :func:`fcntl.flock` on ``ROOT/.lock`` (the root is made if missing), taken at
    once or refused with :class:`RootInUseError`; held until :meth:`release`, the end of a
    ``with`` block or the process (the kernel drops it with the file), so a crash never leaves a
    root locked.

    >>> import tempfile
    >>> work = tempfile.TemporaryDirectory()
    >>> with RootLock(work.name):
    ...     RootLock(work.name)
    Traceback (most recent call last):
        ...
    coinfer.edge.evolve.service.RootInUseError: ... is in use by another coinfer evolve process
    >>> RootLock(work.name).release()
    >>> work.cleanup()
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise RootInUseError(f"{self.root} is in use by another coinfer evolve process") from None
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        """Let another process have the root (again: nothing)."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)

    def __enter__(self) -> RootLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def load_network(spec: ArchitectureSpec, path: Path, what: str, pretrained: Any = None) -> Any:
    """The network of ``spec`` with the weights in ``path`` (refused in one line naming the file
    and ``what`` when they do not fit or are not finite). Without ``pretrained`` the prefix is
    random: enough to check a weights file."""
    from coinfer.sdk.evolve.networks import build_network
    from coinfer.sdk.evolve.training import load_state_arrays

    network = build_network(spec, pretrained)
    arrays = read_arrays(path, max_bytes=MAX_STATE_BYTES, what=f"weights file of the {what}")
    try:
        load_state_arrays(network, arrays)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"{path}: the {what} ({spec.id}): {error}") from None
    return network


def check_weights(config: EvolutionConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """Check the weights files the configuration names (global and every device) and read its
    source statistics (None without): what the service and ``coinfer evolve run`` refuse a
    configuration for before they touch its root."""
    load_network(config.global_architecture, config.global_state, "global model")
    for entry in config.devices:
        load_network(entry.architecture, entry.state, f"device '{entry.id}'")
    return None if config.source is None else load_source(config)


def load_source(config: EvolutionConfig) -> tuple[np.ndarray, np.ndarray]:
    """The source statistics ``config.source`` names: the global model's embeddings (M, E) as
    float32 and the annotators' labels (M, T) on the source domain."""
    if config.source is None:
        raise InvalidArgumentError("the configuration names no source statistics ('source')")
    path = config.source
    arrays = read_arrays(path, required=("embeddings", "labels"), max_bytes=MAX_STATE_BYTES,
                         what="source statistics file")
    embeddings, labels = arrays["embeddings"], arrays["labels"]
    width, tasks = config.global_architecture.embedding, len(config.tasks)
    if embeddings.ndim != 2 or embeddings.shape[1] != width or labels.shape != (len(embeddings), tasks) \
            or not len(embeddings) or labels.dtype != bool:
        raise InvalidArgumentError(f"{path}: source statistics must be embeddings (M, {width}) and "
                                   f"bool labels (M, {tasks}), got {embeddings.shape} and "
                                   f"{labels.dtype} {labels.shape}")
    return embeddings.astype(np.float32), labels


def annotate(frames: np.ndarray, annotators: Mapping[str, Detector], tasks: Sequence[str],
             side: int) -> np.ndarray:
    """The annotators' labels of uint8 frames (n, S, S, 3): bool (n, T), True where the
    task's annotator finds at least one box on the frame scaled to ``side`` x ``side``."""
    import cv2

    labels = np.zeros((len(frames), len(tasks)), bool)
    with single_threaded():
        for row, frame in enumerate(frames):
            seen = frame if frame.shape[0] == side else cv2.resize(frame, (side, side),
                                                                   interpolation=cv2.INTER_LINEAR)
            for column, task in enumerate(tasks):
                labels[row, column] = len(annotators[task](seen)) > 0
    return labels


def drift_network(config: EvolutionConfig, version: int, global_model: Any, pretrained: Any) -> Any:
    """The network that embeds frames for drift: the configured global model, whose embeddings
    the source statistics hold; ``global_model`` itself when it is that one (``version`` 1)."""
    if version == 1:
        return global_model
    return load_network(config.global_architecture, config.global_state, "global model", pretrained)


def global_versions(config: EvolutionConfig) -> list[int]:
    """The versions of the global model written under ``root/global`` (from 2), oldest first."""
    folder = config.root / "global"
    found = [_GLOBAL_FILE.fullmatch(path.name) for path in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(match.group(1)) for match in found if match)


def latest_global(config: EvolutionConfig) -> tuple[int, Path]:
    """The newest global model: its version and weights file, ``root/global/vN.npz`` when
    co-evolution wrote one, else ``(1, config.global_state)``."""
    versions = global_versions(config)
    if not versions:
        return 1, config.global_state
    return versions[-1], config.root / "global" / f"v{versions[-1]}.npz"


def write_global(config: EvolutionConfig, network: Any) -> int:
    """Write ``network``'s weights as the next global version (atomically; the last
    ``keep_versions`` stay) and return that version."""
    from coinfer.sdk.evolve.training import state_arrays

    version = latest_global(config)[0] + 1
    folder = config.root / "global"
    write_arrays(folder / f"v{version}.npz", state_arrays(network))
    for old in global_versions(config)[:-config.keep_versions]:
        (folder / f"v{old}.npz").unlink(missing_ok=True)
    return version


def open_store(config: EvolutionConfig) -> ModelStore:
    """The root's model store with every configured device registered and its initial model
    (``model``) published while the store holds no version of it."""
    store = ModelStore(config.root / "models", keep=config.keep_versions)
    for entry in config.devices:
        store.register(entry.id, entry.architecture.id, entry.architecture.tasks)
        if entry.model is not None and store.latest(entry.id) is None:
            store.publish(entry.id, entry.model)
    return store


def state_path(config: EvolutionConfig, device: str, version: int) -> Path:
    """Where the weights behind ``device``'s published ``version`` are kept."""
    return config.root / "states" / device / f"v{version}.npz"


def latest_state(config: EvolutionConfig, store: ModelStore,
                 device: str) -> tuple[int, dict[str, np.ndarray]]:
    """The weights ``device``'s next evolution starts from and the version they stand behind:
    its latest published version's, else its configured initial state (version 1)."""
    latest = store.latest(device)
    version, path = 1, config.device(device).state
    if latest is not None and state_path(config, device, latest.version).exists():
        version, path = latest.version, state_path(config, device, latest.version)
    return version, read_arrays(path, max_bytes=MAX_STATE_BYTES, what=f"weights file of device '{device}'")


@dataclass(frozen=True)
class ExportedModel:
    """A device model exported and not yet published: the ``version`` it will be published as,
    its artifact folder and the weights behind it."""

    device: str
    version: int
    artifact: Path
    arrays: dict[str, np.ndarray]


def export_model(config: EvolutionConfig, store: ModelStore, exporter: Exporter, device: str,
                 arrays: Mapping[str, np.ndarray], frames: np.ndarray, metrics: Mapping[str, Any],
                 scratch: Path, pretrained: Any) -> ExportedModel:
    """Export trained weights of ``device`` (refused when they do not fit its architecture or are
    not finite) as its next version, calibrated on ``frames``, into ``scratch``."""
    from coinfer.sdk.evolve.networks import build_network
    from coinfer.sdk.evolve.training import load_state_arrays

    entry = config.device(device)
    network = build_network(entry.architecture, pretrained)
    load_state_arrays(network, arrays)  # refuses NaN or infinite weights
    latest = store.latest(device)
    version = (1 if latest is None else latest.version) + 1
    artifact = exporter(network, scratch / f"{device}-v{version}", device=device, version=version,
                        precision=entry.precision, calibration=frames, metrics=dict(metrics))
    return ExportedModel(device, version, Path(artifact), dict(arrays))


def publish_model(config: EvolutionConfig, store: ModelStore, exported: ExportedModel) -> int:
    """Publish an exported model: its weights are written first (``states/DEVICE/vN.npz``), then
    the store makes it the device's latest; the weights of versions the store no longer keeps
    are removed. Returns the version."""
    state = state_path(config, exported.device, exported.version)
    state.parent.mkdir(parents=True, exist_ok=True)
    write_arrays(state, exported.arrays)
    store.publish(exported.device, exported.artifact)
    kept = {f"v{number}.npz" for number in store.versions(exported.device)}
    for old in state.parent.glob("v*.npz"):
        if old.name not in kept:
            old.unlink(missing_ok=True)
    return exported.version


@dataclass
class EvolutionJob:
    """One evolution request: its ``id`` and ``device``, its ``status`` (queued, running,
    done, failed), the ``error`` line of a failed one and the ``version`` a done one published;
    the ``frames`` it trained on, the ``drift`` of those frames from the source (when the
    configuration gives source statistics), its measured ``peak_bytes`` and its times (Unix
    seconds). A round (``kind`` ``round``) has ``device`` "", counts every device's ``frames``
    and, once done, holds the round's ``report``
    (:func:`~coinfer.edge.evolve.offline.run_round`)."""

    id: str
    device: str
    submitted: float
    status: str = QUEUED
    error: str | None = None
    version: int | None = None
    frames: int | None = None
    drift: float | None = None
    peak_bytes: int | None = None
    started: float | None = None
    finished: float | None = None
    kind: str = DEVICE_JOB
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON values, its id under ``job``."""
        fields = dataclasses.asdict(self)
        return {"job": fields.pop("id"), **fields}


class _Buffer:
    """A device's labelled uploads, in memory and in ``path`` (rewritten atomically)."""

    def __init__(self, path: Path, side: int, tasks: int, capacity: int) -> None:
        self.path, self.capacity = path, capacity
        self.lock = threading.Lock()
        self.frames = np.zeros((0, side, side, 3), np.uint8)
        self.labels = np.zeros((0, tasks), bool)
        if path.exists():
            arrays = read_arrays(path, required=(FRAMES_ARRAY, "labels"), max_bytes=MAX_BUFFER_BYTES,
                                 what="upload buffer")
            frames, labels = arrays[FRAMES_ARRAY], arrays["labels"]
            if frames.dtype != np.uint8 or frames.shape[1:] != self.frames.shape[1:] \
                    or labels.dtype != bool or labels.shape != (len(frames), tasks):
                raise InvalidArgumentError(f"{path}: the buffer holds frames {frames.dtype} {frames.shape} "
                                           f"and labels {labels.dtype} {labels.shape}, not this "
                                           "configuration's")
            self.frames, self.labels = frames[-capacity:], labels[-capacity:]

    def __len__(self) -> int:
        with self.lock:
            return len(self.frames)

    def append(self, frames: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
        """Add labelled frames, dropping the oldest beyond the capacity; returns how many are
        buffered and how many were dropped. The file is written before the memory changes."""
        with self.lock:
            joined = np.concatenate([self.frames, frames])
            marks = np.concatenate([self.labels, labels])
            dropped = max(0, len(joined) - self.capacity)
            joined, marks = joined[dropped:], marks[dropped:]
            write_arrays(self.path, {FRAMES_ARRAY: joined, "labels": marks})
            self.frames, self.labels = joined, marks
            return len(joined), dropped

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.frames, self.labels


@dataclass
class _Prepared:
    """A job ready to train: what the executor runs and what publishing it needs."""

    job: EvolutionJob
    training: TrainingJob
    frames: np.ndarray


@dataclass(frozen=True)
class _RoundPlan:
    """What a round job was asked to run with."""

    mode: str
    policy: DriftPolicy
    options: CoEvolutionOptions


class EvolutionService:
    """The evolution service without HTTP (:func:`create_evolution_app` serves it).

    ``config``: an :class:`EvolutionConfig` or the path of its JSON file. ``exporter``: writes a
    trained network as a device model (:func:`coinfer.converters.evolve_models.export_device_model`).
    ``pretrained``: the ImageNet EfficientNet-Lite0 every network's prefix is taken from
    (loaded with :func:`coinfer.sdk.evolve.networks.load_pretrained` when not given). Loading
    checks every file the configuration names (weights that do not fit their architecture, an initial model of
    another architecture), takes the root (:class:`RootLock`; refused while another process
    holds it), loads the newest global model (:func:`latest_global`) and starts two threads, the
    labeller and the trainer; :meth:`close` stops them and lets the root go. The trainer runs
    device jobs (:meth:`request_evolution`) in processes and rounds (:meth:`request_round`) in
    its own thread.
    """

    def __init__(self, config: EvolutionConfig | str | os.PathLike, exporter: Exporter, *,
                 pretrained: Any = None) -> None:
        self.config = config if isinstance(config, EvolutionConfig) else EvolutionConfig.load(config)
        self.exporter = exporter
        config = self.config
        self.pretrained = pretrained if pretrained is not None else load_pretrained()
        self.source = check_weights(config)
        side = config.input_size
        self.frame_bytes = side * side * 3
        self.limits = wire.WireLimits(max_header_bytes=MAX_UPLOAD_HEADER_BYTES,
                                      max_payload_bytes=config.max_upload_frames * self.frame_bytes,
                                      max_arrays=1, max_ndim=4)
        self.max_request_bytes = config.max_request_bytes
        self._root = RootLock(config.root)
        try:
            self._load_global()
            for folder in ("buffers", "states", "work"):
                (config.root / folder).mkdir(parents=True, exist_ok=True)
            self.store = open_store(config)
            self.buffers = {entry.id: _Buffer(config.root / "buffers" / f"{entry.id}.npz", side,
                                              len(config.tasks), config.max_buffer_frames)
                            for entry in config.devices}
            self.annotators: dict[str, Detector] = {task: create_detector(task) for task in config.tasks}
            self.executor = EvolutionExecutor(config.budget_bytes, work_dir=config.root / "work")
        except BaseException:
            self._root.release()
            raise
        self.predictor = TaskPredictor(config.workspace_bytes)
        self._annotating = threading.Lock()
        self._labels: queue.Queue[tuple[str, np.ndarray, Future[dict[str, Any]]] | None] = \
            queue.Queue(maxsize=config.label_queue)
        self._jobs: dict[str, EvolutionJob] = {}
        self._waiting: list[EvolutionJob] = []
        self._plans: dict[str, _RoundPlan] = {}
        self._changed = threading.Condition()
        self._closing = False
        self._labeller = threading.Thread(target=self._label_loop, name="coinfer-evolve-labeller",
                                          daemon=True)
        self._trainer = threading.Thread(target=self._train_loop, name="coinfer-evolve-trainer",
                                         daemon=True)
        self._labeller.start()
        self._trainer.start()

    # Requests ----------------------------------------------------------------------------------------

    def check_device(self, device: str) -> None:
        """Refuse (404) a device the configuration does not name."""
        if device not in self.buffers:
            known = ", ".join(sorted(self.buffers)[:8])
            raise EvolutionRequestError(f"unknown device {device[:64]!r} (configured: {known})", status=404)

    def read_frames(self, body: bytes) -> np.ndarray:
        """The frames of an upload body (a copy), or its refusal (400, 413, 422; see the module)."""
        structure = wire.WireLimits(max_header_bytes=(1 << 32) - 1, max_payload_bytes=(1 << 64) - 1)
        try:
            wire.frame_length(body, structure)
        except wire.WireError as error:
            raise EvolutionRequestError(f"malformed frame: {error}") from None
        try:
            wire.frame_length(body, self.limits)
        except wire.WireError as error:
            raise EvolutionRequestError(f"frame over this service's limit of {self.config.max_upload_frames} "
                                        f"frames: {error}", status=413) from None
        try:
            message = wire.decode(body, wire.WireLimits(self.limits.max_header_bytes,
                                                        self.limits.max_payload_bytes))
        except wire.WireError as error:
            raise EvolutionRequestError(f"malformed frame: {error}") from None
        if message.type != wire.MessageType.REQUEST:
            raise EvolutionRequestError(f"expected a REQUEST frame, got {message.type.name}", status=422)
        if set(message.arrays) != {FRAMES_ARRAY}:
            raise EvolutionRequestError(f"an upload holds exactly one array '{FRAMES_ARRAY}', this one "
                                        f"{sorted(message.arrays)[:4]}", status=422)
        frames = message.arrays[FRAMES_ARRAY]
        side, most = self.config.input_size, self.config.max_upload_frames
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (side, side, 3) \
                or not 1 <= len(frames) <= most:
            raise EvolutionRequestError(f"frames must be uint8 (n, {side}, {side}, 3) with 1 <= n <= {most}, "
                                        f"got {frames.dtype} {tuple(frames.shape)}", status=422)
        return frames.copy()

    def upload(self, device: str, body: bytes) -> dict[str, Any]:
        """Label the frames of an upload body and add them to the device's buffer; waits for
        the labeller, and answers what the module docstring says."""
        self.check_device(device)
        frames = self.read_frames(body)
        if self._closing:
            raise EvolutionRequestError("the service is stopping; retry later", status=503)
        done: Future[dict[str, Any]] = Future()
        try:
            self._labels.put_nowait((device, frames, done))
        except queue.Full:
            raise EvolutionRequestError(f"the labelling queue is full ({self.config.label_queue} uploads "
                                        "waiting); retry later", status=503) from None
        return done.result()

    def label(self, frames: np.ndarray) -> np.ndarray:
        """The annotators' labels of uint8 frames (n, S, S, 3): bool (n, T), True where the
        task's annotator finds at least one box on the frame scaled to ``annotate_side``
        (:func:`annotate`; one call at a time, the annotators are not thread-safe)."""
        with self._annotating:
            return annotate(frames, self.annotators, self.config.tasks, self.config.annotate_side)

    def request_evolution(self, device: str) -> EvolutionJob:
        """Queue an evolution of ``device`` on its buffered frames; refused (409) while one is
        queued or running, or with no frame buffered."""
        self.check_device(device)
        with self._changed:
            active = self._active(device)
            if active is not None:
                raise EvolutionRequestError(f"device '{device}' already has job {active.id} {active.status}",
                                            status=409)
            round_job = self._active_round()
            if round_job is not None:
                raise EvolutionRequestError(f"round job {round_job.id} is {round_job.status}; evolve device "
                                            f"'{device}' after it", status=409)
            if not len(self.buffers[device]):
                raise EvolutionRequestError(f"device '{device}' has uploaded no frames to evolve on",
                                            status=409)
            job = EvolutionJob(f"{device}-{uuid.uuid4().hex[:12]}", device, time.time())
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old_jobs()
            self._changed.notify_all()
            return dataclasses.replace(job)

    def request_round(self, mode: str = "auto", gamma: float = 30.0, epsilon: int = 2, rounds: int = 3,
                      validation: float = 0.25) -> EvolutionJob:
        """Queue a round over every device with buffered frames
        (:func:`~coinfer.edge.evolve.offline.run_round`: ``mode``, the drift policy's ``gamma``
        and ``epsilon``, the co-evolution's ``rounds`` and ``validation``). Refused in one line:
        a value the round refuses (400), any job queued or running, or no device with frames (409).
        """
        from coinfer.edge.evolve.offline import check_plan

        try:
            check_plan(self.config, [entry.id for entry in self.config.devices], mode)
            options = CoEvolutionOptions(train=self.config.training, rounds=rounds, validation=validation)
            plan = _RoundPlan(mode, DriftPolicy(gamma, epsilon), options)
        except InvalidArgumentError as error:
            raise EvolutionRequestError(one_line(error)[:300]) from None
        with self._changed:
            busy = next((job for job in self._jobs.values() if job.status in (QUEUED, RUNNING)), None)
            if busy is not None:
                raise EvolutionRequestError(f"job {busy.id} is {busy.status}; a round starts when no job is "
                                            "queued or running", status=409)
            if not any(len(buffer) for buffer in self.buffers.values()):
                raise EvolutionRequestError("no device has uploaded frames for a round", status=409)
            job = EvolutionJob(f"round-{uuid.uuid4().hex[:12]}", "", time.time(), kind=ROUND_JOB)
            self._plans[job.id] = plan
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old_jobs()
            self._changed.notify_all()
            return dataclasses.replace(job)

    def job(self, job_id: str) -> EvolutionJob:
        """A copy of the job ``job_id`` (404 if unknown or forgotten)."""
        with self._changed:
            found = self._jobs.get(job_id)
            if found is None:
                raise EvolutionRequestError(f"unknown job {job_id[:80]!r}", status=404)
            return dataclasses.replace(found)

    def status(self) -> dict[str, Any]:
        """The devices, the active round job's id (or None), the jobs by status, the labelling
        queue and the global model's version (1: the configured one; co-evolution writes the next
        ones)."""
        with self._changed:
            jobs = list(self._jobs.values())
            active = {entry.id: self._active(entry.id) for entry in self.config.devices}
            round_job = self._active_round()
        devices = {}
        for entry in self.config.devices:
            latest = self.store.latest(entry.id)
            running = active[entry.id]
            devices[entry.id] = {"architecture": entry.architecture.id, "precision": entry.precision,
                                 "buffered": len(self.buffers[entry.id]),
                                 "capacity": self.config.max_buffer_frames,
                                 "latest_version": None if latest is None else latest.version,
                                 "versions": self.store.versions(entry.id),
                                 "job": None if running is None else running.id}
        counts = {state: sum(job.status == state for job in jobs)
                  for state in (QUEUED, RUNNING, DONE, FAILED)}
        recent = sorted(jobs, key=lambda job: job.submitted)[-20:]
        return {"devices": devices, "round": None if round_job is None else round_job.id,
                "jobs": counts, "recent_jobs": [job.to_dict() for job in recent],
                "labelling": {"waiting": self._labels.qsize(), "capacity": self.config.label_queue},
                "global_version": self.global_version,
                "input_size": self.config.input_size, "tasks": list(self.config.tasks),
                "max_upload_frames": self.config.max_upload_frames, "budget_bytes": self.config.budget_bytes}

    def close(self) -> None:
        """Stop the labeller (after the uploads it holds) and the trainer (after its batch), then
        let the root go."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._labels.put(None)
        self._labeller.join()
        self._trainer.join()
        self._root.release()

    def _active(self, device: str) -> EvolutionJob | None:
        """The queued or running job of ``device``; call with ``_changed`` held."""
        return next((job for job in self._jobs.values() if job.kind == DEVICE_JOB and job.device == device
                     and job.status in (QUEUED, RUNNING)), None)

    def _active_round(self) -> EvolutionJob | None:
        """The queued or running round job; call with ``_changed`` held."""
        return next((job for job in self._jobs.values()
                     if job.kind == ROUND_JOB and job.status in (QUEUED, RUNNING)), None)

    def _forget_old_jobs(self) -> None:
        finished = sorted((job for job in self._jobs.values() if job.status in (DONE, FAILED)),
                          key=lambda job: job.submitted)
        for job in finished[:max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self._jobs[job.id]

    # The labeller --------------------------------------------------------------------------------------

    def _label_loop(self) -> None:
        while (item := self._labels.get()) is not None:
            device, frames, done = item
            try:
                labels = self.label(frames)
                buffered, dropped = self.buffers[device].append(frames, labels)
            except Exception as error:  # a failed upload is that request's answer, not the service's end
                log.exception("labelling an upload of device '%s' failed", device)
                done.set_exception(EvolutionRequestError(f"labelling the upload failed: {one_line(error)}",
                                                         status=500))
                continue
            done.set_result({"device": device, "received": len(frames),
                             "positives": {task: int(count) for task, count in
                                           zip(self.config.tasks, labels.sum(0), strict=True)},
                             "buffered": buffered, "dropped": dropped})

    # The trainer ---------------------------------------------------------------------------------------

    def _train_loop(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closing:
                    self._changed.wait()
                if self._closing:
                    return
                batch, self._waiting = self._waiting, []
            devices = [job for job in batch if job.kind == DEVICE_JOB]
            try:
                if devices:
                    self._run_batch(devices)
            except Exception as error:  # the trainer outlives a batch that could not run at all
                for job in devices:
                    if job.status in (QUEUED, RUNNING):
                        self._fail(job, "training", error)
            for job in batch:
                if job.kind == ROUND_JOB:
                    self._run_round(job)

    def _update(self, job: EvolutionJob, **changes: Any) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(job, key, value)

    def _fail(self, job: EvolutionJob, stage: str, error: BaseException | str) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {one_line(error)}"
        log.warning("evolution job %s failed while %s: %s", job.id, stage, message)
        self._update(job, status=FAILED, error=f"{stage}: {message}", finished=time.time())

    def _run_batch(self, batch: list[EvolutionJob]) -> None:
        work = self.config.root / "work"
        with tempfile.TemporaryDirectory(prefix="coinfer-evolve-jobs-", dir=work) as scratch:
            prepared: dict[str, _Prepared] = {}
            for job in batch:
                try:
                    prepared[job.id] = self._prepare(job, Path(scratch))
                except Exception as error:  # whatever stops one job fails that job only
                    self._fail(job, "preparing", error)
            if not prepared:
                return

            def progress(event: str, task_id: str) -> None:
                if event == "start":
                    self._update(prepared[task_id].job, status=RUNNING, started=time.time())

            report = self.executor.run([item.training for item in prepared.values()], DpPolicy(),
                                       self.predictor, progress)
            for record in report.records:
                item = prepared[record.task.id]
                self._update(item.job, peak_bytes=record.peak_bytes)
                if not record.ok:
                    self._fail(item.job, "training", record.error or f"exit code {record.exit_code}")
                    continue
                try:
                    version = self._publish(item, Path(scratch))
                except Exception as error:  # a model that cannot be exported or published is not served
                    self._fail(item.job, "publishing", error)
                    continue
                self._update(item.job, status=DONE, version=version, finished=time.time())

    def _run_round(self, job: EvolutionJob) -> None:
        """Run a round job in this thread on every device's buffer as it is now, publishing in
        the service's store; then serve the global model it wrote. A failure fails the job with
        the round's last progress line."""
        from coinfer.edge.evolve.offline import run_round

        with self._changed:
            plan = self._plans.pop(job.id)
        self._update(job, status=RUNNING, started=time.time())
        labelled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for entry in self.config.devices:
            frames, labels = self.buffers[entry.id].snapshot()
            if len(frames):
                labelled[entry.id] = (frames, labels)
        self._update(job, frames=sum(len(frames) for frames, _ in labelled.values()))
        last: list[str] = []

        def say(line: str) -> None:
            log.info("round job %s: %s", job.id, line)
            last[:] = [line]

        try:
            report = run_round(self.config, labelled, self.exporter, mode=plan.mode, policy=plan.policy,
                               options=plan.options, source=self.source, pretrained=self.pretrained,
                               store=self.store, say=say)
        except Exception as error:  # a failed round fails its job; the service keeps serving
            self._fail(job, "round" + (f" (after {last[0]!r})" if last else ""), error)
            return
        self._update(job, report=report)
        if report["global_version"] is not None:
            try:
                self._load_global()
            except Exception as error:  # the round is published; the service keeps the model it has
                self._fail(job, "loading the new global model", error)
                return
        self._update(job, status=DONE, finished=time.time())

    def _load_global(self) -> None:
        """Load the newest global model (:func:`latest_global`), which device jobs distil from
        then on, and the network drift is measured with (:func:`drift_network`)."""
        version, state = latest_global(self.config)
        model = load_network(self.config.global_architecture, state, "global model", self.pretrained)
        drift = None if self.source is None else drift_network(self.config, version, model, self.pretrained)
        self.global_model, self.drift_model, self.global_version = model, drift, version

    def current_state(self, device: str) -> dict[str, np.ndarray]:
        """The weights of ``device``'s latest published version (those its next evolution
        starts from), else its configured initial state (:func:`latest_state`)."""
        return latest_state(self.config, self.store, device)[1]

    def _prepare(self, job: EvolutionJob, scratch: Path) -> _Prepared:
        from coinfer.sdk.evolve import training
        from coinfer.sdk.evolve.drift import class_drift

        frames, labels = self.buffers[job.device].snapshot()
        features = training.prefix_features(self.global_model, frames)
        teacher = training.logits(self.global_model, features)
        drift = None
        if self.source is not None:
            embeddings = training.embeddings(self.drift_model, features)
            drift = class_drift(self.source[0], self.source[1], embeddings, labels).delta
        entry = self.config.device(job.device)
        task = TrainingJob(job.id, job.device, entry.architecture, features, labels, self.config.training,
                           teacher_logits=teacher, state=self.current_state(job.device),
                           output=str(scratch / f"{job.id}.npz"))
        reserved = self.predictor.reserved_bytes(task)
        if reserved > self.config.budget_bytes:
            raise InvalidArgumentError(f"training needs {reserved >> 20} MiB, over the memory budget of "
                                       f"{self.config.budget_bytes >> 20} MiB")
        self._update(job, frames=len(frames),
                     drift=None if drift is None or not math.isfinite(drift) else drift)
        return _Prepared(job, task, frames)

    def _publish(self, item: _Prepared, scratch: Path) -> int:
        """Check, export and publish a trained job's weights; returns the version published."""
        job = item.job
        output = item.training.output
        if output is None:
            raise InvalidArgumentError("the job wrote no weights")
        arrays = read_arrays(output, max_bytes=MAX_STATE_BYTES, what="trained weights")
        metrics: dict[str, Any] = {"job": job.id, "frames": len(item.frames)}
        if job.drift is not None:
            metrics["drift"] = job.drift
        exported = export_model(self.config, self.store, self.exporter, job.device, arrays, item.frames,
                                metrics, scratch, self.pretrained)
        return publish_model(self.config, self.store, exported)


def read_round_request(body: bytes) -> dict[str, Any]:
    """The options of a round request's body (empty: none), or its refusal: 400 when it is not
    JSON, 422 when it is not an object or holds a key other than :data:`ROUND_KEYS`. The values
    are :meth:`EvolutionService.request_round`'s to check.

    >>> read_round_request(b'{"mode": "co-evolution", "rounds": 2}')
    {'mode': 'co-evolution', 'rounds': 2}
    >>> read_round_request(b"")
    {}
    >>> read_round_request(b'{"mode": "auto", "epochs": 3}')
    Traceback (most recent call last):
        ...
    coinfer.edge.evolve.service.EvolutionRequestError: unknown key(s) ['epochs'] in the round request ...
    """
    if not body.strip():
        return {}
    try:
        options = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise EvolutionRequestError(f"the round request is not JSON: {one_line(error)[:120]}") from None
    if not isinstance(options, dict):
        raise EvolutionRequestError(f"the round request must be a JSON object, got {type(options).__name__}",
                                    status=422)
    unknown = sorted(str(key)[:40] for key in set(options) - set(ROUND_KEYS))
    if unknown:
        raise EvolutionRequestError(f"unknown key(s) {unknown[:4]} in the round request (known: "
                                    f"{', '.join(ROUND_KEYS)})", status=422)
    return options


def create_evolution_app(service: EvolutionService, token: str) -> Any:
    """The FastAPI app of ``service`` behind ``token`` (``app.state.service`` is the service)."""
    if not token:
        raise CoinferError("the evolution service needs a non-empty token")
    app, authorize = create_service_app("coinfer evolve service", EvolutionRequestError, token)
    guard = [Depends(authorize)]

    @app.post(DEVICES_PATH + "/{device}/frames", dependencies=guard)
    async def frames(device: str, request: Request) -> dict[str, Any]:
        service.check_device(device)
        body = await read_limited_body(request, service.max_request_bytes, EvolutionRequestError)
        return await run_in_threadpool(service.upload, device, body)

    @app.post(DEVICES_PATH + "/{device}/evolve", dependencies=guard, status_code=202)
    def evolve(device: str) -> dict[str, Any]:
        return service.request_evolution(device).to_dict()

    @app.post(ROUND_PATH, dependencies=guard, status_code=202)
    async def round_request(request: Request) -> dict[str, Any]:
        body = await read_limited_body(request, MAX_ROUND_BYTES, EvolutionRequestError)
        return service.request_round(**read_round_request(body)).to_dict()

    @app.get(JOBS_PATH + "/{job_id}", dependencies=guard)
    def job(job_id: str) -> dict[str, Any]:
        return service.job(job_id).to_dict()

    @app.get(STATUS_PATH, dependencies=guard)
    def status() -> dict[str, Any]:
        return service.status()

    store_routes(app, service.store, authorize)
    app.state.service = service
    return app


class EvolutionServer(ThreadedServer):
    """``service``'s app on a uvicorn thread (port 0 picks a free one); for samples and tests.
    Stopping the server leaves the service running (:meth:`EvolutionService.close` stops it).

    Example::

        service = EvolutionService("evolve.json", export_device_model)
        with EvolutionServer(service, token) as server:
            ModelUpdater(server.url, token, slot, cache).check_once()
    """

    def __init__(self, service: EvolutionService, token: str, host: str = "127.0.0.1", port: int = 0,
                 start_timeout: float = 30.0) -> None:
        self.service = service
        super().__init__(create_evolution_app(service, token), host, port, start_timeout,
                         name="the evolution service")


__all__ = ["DEVICES_PATH", "DEVICE_JOB", "JOBS_PATH", "LOCK_NAME", "MAX_ROUND_BYTES", "PRECISIONS",
           "ROUND_JOB", "ROUND_KEYS", "ROUND_PATH", "STATUS_PATH", "DeviceConfig", "EvolutionConfig",
           "EvolutionJob", "EvolutionRequestError", "EvolutionServer", "EvolutionService", "ExportedModel",
           "Exporter", "RootInUseError", "RootLock", "annotate", "check_weights", "create_evolution_app",
           "drift_network", "export_model", "global_versions", "latest_global", "latest_state",
           "load_network", "load_source", "open_store", "publish_model", "read_round_request", "state_path",
           "write_global"]
