"""The edge's store of evolved device models: what it publishes, and the routes devices fetch from.

The edge retrains each device's model as the device's data drifts; the store is where a new
version becomes available to the device, and it must never make a device worse off. So it
publishes only a model that passes the checks the device itself will run
(:func:`~coinfer.device.evolve.checks.verify_device_model`: hashes, the registered device and
architecture, finite weights, a finite probe inference), for a device it knows, newer than
the one published. A publication is copied into ``ROOT/DEVICE/vVERSION`` through a temporary
folder and a rename, and only then recorded in ``ROOT/index.json`` (written atomically), which
is what says which version is the latest: a crash between the two leaves the previous latest
served, and the next start removes the unrecorded copy. The last ``keep`` versions of each
device stay on disk. Each publication is announced by the sha256 of its manifest
(:func:`~coinfer.sdk.evolve.models.publication_digest`), which vouches for every file.

Routes (:func:`store_routes`; every one needs ``Authorization: Bearer <token>``, as do
``/docs``, ``/redoc`` and ``/openapi.json`` of :func:`create_store_app`):

- ``GET /v1/evolve/models/{device}``: the latest publication, ``{"device", "version",
  "manifest_sha256", "files": {name: {"sha256", "bytes"}}}``;
- ``GET /v1/evolve/models/{device}/v{version}/{name}``: a file of a kept version: one its
  manifest lists, or ``manifest.json``; nothing else is reachable.

An unknown device, version or file is a 404 with one line, ``{"detail": ...}``.

Example (in a temporary directory; publishing a real model is in the tests):

>>> import tempfile
>>> work = tempfile.TemporaryDirectory()
>>> store = ModelStore(work.name + "/models")
>>> store.register("cam3", "effl0-p30-4c", ["person"])
>>> store.latest("cam3") is None                      # registered, nothing published yet
True
>>> store.publish("cam9", work.name + "/cam9-v1")
Traceback (most recent call last):
    ...
coinfer.edge.evolve.store.UnknownModelError: unknown device 'cam9' (registered: cam3)
>>> work.cleanup()
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from coinfer.device.evolve.checks import verify_device_model
from coinfer.device.evolve.updater import MODELS_PATH
from coinfer.sdk.artifact import MANIFEST_NAME, load_artifact
from coinfer.sdk.datadir import read_index
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.evolve.models import (
    CAPABILITY,
    KIND,
    check_architecture,
    check_device_name,
    check_tasks,
    publication_digest,
)
from coinfer.sdk.fsutil import atomic_write_json
from coinfer.sdk.service import ServiceError, ThreadedServer, create_service_app

INDEX_NAME = "index.json"
INDEX_FORMAT = "coinfer-evolve-model-store"
INDEX_VERSION = 1
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
_STAGING_PREFIX = ".staging-"
_CHUNK = 1 << 16


class ModelStoreError(InvalidArgumentError):
    """A registration or publication the store refuses, or an index it cannot read."""


class UnknownModelError(ModelStoreError):
    """A device, version or file the store does not hold (a 404 on the routes)."""


class StoreRequestError(ServiceError):
    """A request the store's own app refuses (a missing or wrong token)."""


@dataclass(frozen=True)
class StoredFile:
    """A file of a publication: its sha256 and size."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Publication:
    """A published device model version, announced by the sha256 of its manifest."""

    device: str
    version: int
    manifest_sha256: str
    files: dict[str, StoredFile] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON a device fetches (``GET /v1/evolve/models/{device}``)."""
        return {"device": self.device, "version": self.version, "manifest_sha256": self.manifest_sha256,
                "files": {name: {"sha256": entry.sha256, "bytes": entry.bytes}
                          for name, entry in sorted(self.files.items())}}


@dataclass
class _Device:
    architecture: str
    tasks: tuple[str, ...]
    publications: list[Publication] = field(default_factory=list)  # oldest first


class ModelStore:
    """Device models published under ``root`` for the registered devices; the last ``keep``
    versions of each stay. Safe to use from several threads (the HTTP routes and a trainer)."""

    def __init__(self, root: str | os.PathLike, *, keep: int = 3) -> None:
        if type(keep) is not int or keep < 1:
            raise InvalidArgumentError(f"keep must be an int >= 1, got {keep!r}")
        self.root = Path(root)
        self.keep = keep
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self._devices = self._read_index() if (self.root / INDEX_NAME).exists() else {}
        self._remove_unrecorded()

    def register(self, device: str, architecture: str, tasks: Sequence[str]) -> None:
        """Accept models for ``device`` of ``architecture`` serving ``tasks``. Registering a
        device again with the same architecture and tasks changes nothing; with others it is refused."""
        check_device_name(device)
        check_architecture(architecture)
        names = check_tasks(tasks)
        with self._lock:
            known = self._devices.get(device)
            if known is not None:
                if (known.architecture, known.tasks) != (architecture, names):
                    raise ModelStoreError(f"device '{device}' is registered with architecture "
                                          f"'{known.architecture}' and tasks {list(known.tasks)}, not "
                                          f"'{architecture}' and {list(names)}")
                return
            devices = {**self._devices, device: _Device(architecture, names)}
            self._write_index(devices)
            self._devices = devices

    def devices(self) -> list[str]:
        """The registered devices, sorted."""
        with self._lock:
            return sorted(self._devices)

    def latest(self, device: str) -> Publication | None:
        """The latest publication for ``device`` (``None`` before the first)."""
        with self._lock:
            publications = self._device(device).publications
            return publications[-1] if publications else None

    def versions(self, device: str) -> list[int]:
        """The versions of ``device`` kept, oldest first."""
        with self._lock:
            return [publication.version for publication in self._device(device).publications]

    def publish(self, device: str, artifact_dir: str | os.PathLike) -> Publication:
        """Verify the device model at ``artifact_dir`` for ``device`` and make it the latest.

        Refused (one line, nothing changed): an unknown device; a model of another device,
        architecture or tasks; files that are missing or do not match their hashes; NaN or
        infinite weights or probe outputs; a version not newer than the latest.
        """
        with self._lock:
            registered = self._device(device)
            newest = registered.publications[-1].version if registered.publications else 0
        verified = verify_device_model(artifact_dir, device=device, architecture=registered.architecture)
        where, info = verified.artifact.path, verified.info
        if info.tasks != registered.tasks:
            raise ModelStoreError(f"{where}: the model serves tasks {list(info.tasks)}, device '{device}' "
                                  f"is registered for {list(registered.tasks)}")
        self._check_newer(where, device, info.version, newest)
        folder = self.root / device
        folder.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder))
        target = folder / f"v{info.version}"
        try:
            copy = staging / "artifact"
            shutil.copytree(where, copy, symlinks=True)
            copied = load_artifact(copy, capability=CAPABILITY, kind=KIND)
            if publication_digest(copy) != verified.manifest_sha256:
                raise ModelStoreError(f"{where}: the artifact changed while it was published; publish it "
                                      "again")
            files = {name: StoredFile(digest, (copy / name).stat().st_size)
                     for name, digest in copied.manifest.files.items()}
            publication = Publication(device, info.version, verified.manifest_sha256, files)
            with self._lock:
                current = self._device(device)
                self._check_newer(where, device, info.version,
                                  current.publications[-1].version if current.publications else 0)
                if target.exists():  # a copy an interrupted publication left unrecorded
                    shutil.rmtree(target)
                os.replace(copy, target)
                kept = [*current.publications, publication]
                devices = {**self._devices, device: _Device(current.architecture, current.tasks,
                                                            kept[-self.keep:])}
                try:
                    self._write_index(devices)
                except BaseException:
                    shutil.rmtree(target, ignore_errors=True)
                    raise
                self._devices = devices
                for dropped in kept[:-self.keep]:
                    shutil.rmtree(folder / f"v{dropped.version}", ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return publication

    def open_file(self, device: str, version: int, name: str) -> BinaryIO:
        """An open binary file of a kept version: ``manifest.json`` or a file its manifest lists.
        The handle stays readable even if a newer publication retires the version meanwhile."""
        with self._lock:
            registered = self._device(device)
            found = [item for item in registered.publications if item.version == version]
            if not found:
                kept = ", ".join(f"v{item.version}" for item in registered.publications) or "none"
                raise UnknownModelError(f"device '{device}' has no version {str(version)[:20]} (kept: "
                                        f"{kept})")
            if name != MANIFEST_NAME and name not in found[0].files:
                raise UnknownModelError(f"version {version} of device '{device}' has no file "
                                        f"{name[:64]!r}")
            return open(self.root / device / f"v{version}" / name, "rb")

    def _device(self, device: str) -> _Device:
        """The registration of ``device``; call with the lock held."""
        known = self._devices.get(device) if isinstance(device, str) else None
        if known is None:
            registered = ", ".join(sorted(self._devices)[:8]) or "none"
            raise UnknownModelError(f"unknown device {str(device)[:64]!r} (registered: {registered})")
        return known

    @staticmethod
    def _check_newer(where: Path, device: str, version: int, newest: int) -> None:
        if version <= newest:
            raise ModelStoreError(f"{where}: version {version} is not newer than version {newest}, the "
                                  f"latest published for device '{device}'")

    def _write_index(self, devices: dict[str, _Device]) -> None:
        atomic_write_json(self.root / INDEX_NAME, {
            "format": INDEX_FORMAT, "version": INDEX_VERSION,
            "devices": {name: {"architecture": entry.architecture, "tasks": list(entry.tasks),
                               "publications": [item.to_dict() for item in entry.publications]}
                        for name, entry in sorted(devices.items())}})

    def _read_index(self) -> dict[str, _Device]:
        path = self.root / INDEX_NAME
        index = read_index(path, INDEX_FORMAT, INDEX_VERSION, ModelStoreError, "a model store index")
        try:
            devices = {}
            for name, entry in index["devices"].items():
                publications = [Publication(name, item["version"], item["manifest_sha256"],
                                            {file: StoredFile(str(value["sha256"]), int(value["bytes"]))
                                             for file, value in item["files"].items()})
                                for item in entry["publications"]]
                devices[check_device_name(name)] = _Device(check_architecture(entry["architecture"]),
                                                           check_tasks(entry["tasks"]), publications)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ModelStoreError(f"{path}: malformed index: {error}") from None
        return devices

    def _remove_unrecorded(self) -> None:
        """Delete what an interrupted publication left: staging folders and version folders the
        index does not record."""
        for device, entry in self._devices.items():
            folder = self.root / device
            if not folder.is_dir():
                continue
            recorded = {f"v{item.version}" for item in entry.publications}
            for path in folder.iterdir():
                if path.name.startswith(_STAGING_PREFIX) or (
                        _VERSION_DIR.fullmatch(path.name) and path.name not in recorded):
                    shutil.rmtree(path, ignore_errors=True)


def store_routes(app: Any, store: ModelStore, authorize: Callable[..., None]) -> None:
    """Add the store's ``GET`` routes to the FastAPI ``app``, each behind the ``authorize``
    dependency (the second value of :func:`~coinfer.sdk.service.create_service_app`)."""
    from fastapi import Depends
    from fastapi.responses import JSONResponse, StreamingResponse

    guard = [Depends(authorize)]

    def not_found(error: CoinferError) -> Any:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.get(MODELS_PATH + "/{device}", dependencies=guard)
    def latest(device: str) -> Any:
        try:
            publication = store.latest(device)
        except UnknownModelError as error:
            return not_found(error)
        if publication is None:
            return not_found(UnknownModelError(f"no model is published for device '{device}' yet"))
        return publication.to_dict()

    @app.get(MODELS_PATH + "/{device}/v{version}/{name}", dependencies=guard)
    def download(device: str, version: str, name: str) -> Any:
        if not version.isdigit() or len(version) > 12:
            return not_found(UnknownModelError(f"no version {version[:20]!r}: versions are whole numbers"))
        try:
            handle = store.open_file(device, int(version), name)
        except UnknownModelError as error:
            return not_found(error)
        size = os.fstat(handle.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk

        return StreamingResponse(chunks(), media_type="application/octet-stream",
                                 headers={"Content-Length": str(size)})


def create_store_app(store: ModelStore, token: str) -> Any:
    """A FastAPI app serving only ``store``'s routes behind ``token``."""
    if not token:
        raise CoinferError("the model store needs a non-empty token")
    app, authorize = create_service_app("coinfer evolve model store", StoreRequestError, token)
    store_routes(app, store, authorize)
    app.state.store = store
    return app


class ModelStoreServer(ThreadedServer):
    """The store's app on a uvicorn thread (port 0 picks a free one); for samples and tests.

    Example::

        with ModelStoreServer(store, token) as server:
            ModelUpdater(server.url, token, slot, cache).check_once()
    """

    def __init__(self, store: ModelStore, token: str, host: str = "127.0.0.1", port: int = 0,
                 start_timeout: float = 30.0) -> None:
        self.store = store
        super().__init__(create_store_app(store, token), host, port, start_timeout, name="the model store")


__all__ = ["MODELS_PATH", "ModelStore", "ModelStoreError", "ModelStoreServer", "Publication",
           "StoreRequestError", "StoredFile", "UnknownModelError", "create_store_app", "store_routes"]
