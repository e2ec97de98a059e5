"""Fetch a device's newer model from the edge's model store and swap it in.

The device trusts nothing it downloads until it has checked it: the edge announces one
digest per publication (the sha256 of the manifest's bytes), the device checks the
downloaded manifest against it, each file against the manifest, and then hands the
directory to :meth:`ModelSlot.install <coinfer.device.evolve.slot.ModelSlot.install>`, which
verifies the model itself before it serves. Sizes are bounded before reading: a
publication whose files add up to more than ``max_bytes`` is refused before any download,
and a file whose ``Content-Length`` or body exceeds the size announced for it is refused
without reading further. A download lands in a temporary folder under the cache and
becomes ``cache_dir/vVERSION`` only once whole; whatever fails, the slot keeps serving and
the temporary folder is gone. The two newest installed versions stay in the cache (the one
serving and the one before).

Example::

    updater = ModelUpdater("http://edge:8300", token, slot, "/var/cache/coinfer/models")
    updater.check_once()                                   # the version installed, or None
    threading.Thread(target=updater.run, args=(300.0, stop), daemon=True).start()

Arguments are checked before anything is fetched:

>>> ModelUpdater("edge:8300", "token", None, "/tmp/models")
Traceback (most recent call last):
    ...
coinfer.device.evolve.updater.UpdateError: the edge's URL must start with http:// or https://, got 'edge:8300'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from coinfer.device.evolve.slot import ModelSlot
from coinfer.sdk.artifact import MANIFEST_NAME, MAX_MANIFEST_BYTES
from coinfer.sdk.errors import CoinferError

#: The model store's routes (:mod:`coinfer.edge.evolve.store`), relative to its base URL.
MODELS_PATH = "/v1/evolve/models"
#: Bytes of a publication description, or of an error answer's detail, read at most.
_MAX_JSON_BYTES = 1 << 20
_MAX_DETAIL_BYTES = 4096
_CHUNK = 1 << 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
#: Installed versions kept in the cache: the one serving and the one before it.
KEEP_INSTALLED = 2

log = logging.getLogger(__name__)


class UpdateError(CoinferError):
    """The edge could not be reached, refused, or sent a publication this device refuses."""


class ModelUpdater:
    """Keeps ``slot`` at the newest model the edge store at ``base_url`` publishes for its device.

    ``token``: the store's bearer token. ``cache_dir``: where downloads and installed versions
    live. ``max_bytes``: the most one publication may hold (its files together). ``timeout``:
    seconds for each HTTP connection and read.
    """

    def __init__(self, base_url: str, token: str, slot: ModelSlot, cache_dir: str | os.PathLike, *,
                 max_bytes: int = 64 << 20, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UpdateError(f"the edge's URL must start with http:// or https://, got {base_url!r}")
        if not token:
            raise UpdateError("the updater needs the model store's bearer token")
        if type(max_bytes) is not int or max_bytes < 1:
            raise UpdateError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
        if not timeout > 0:
            raise UpdateError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.slot = slot
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._token = token
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.cache_dir.glob(".download-*"):  # left by a process that died mid-download
            shutil.rmtree(stale, ignore_errors=True)

    def check_once(self) -> int | None:
        """Install the edge's latest model if it is newer than the served one; returns its
        version, or ``None`` when the served model is the latest. Raises :class:`UpdateError`
        (or the slot's refusal) in one line, with the slot untouched."""
        device = urllib.parse.quote(self.slot.device, safe="")
        version, digest, files = self._latest(self._get_json(f"{MODELS_PATH}/{device}"))
        if version <= self.slot.version:
            return None
        total = sum(files.values())
        if total > self.max_bytes:
            raise UpdateError(f"version {version} for device '{self.slot.device}' holds {total} bytes, over "
                              f"this device's {self.max_bytes}-byte limit")
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        target = self.cache_dir / f"v{version}"
        try:
            prefix = f"{MODELS_PATH}/{device}/v{version}/"
            manifest = self._download(prefix + MANIFEST_NAME, staging / MANIFEST_NAME,
                                      min(self.max_bytes, MAX_MANIFEST_BYTES), None)
            if manifest != digest:
                raise UpdateError(f"the manifest of version {version} has sha256 {manifest[:12]}..., the "
                                  f"edge published {digest[:12]}...; refusing a modified publication")
            listed = self._listed_files(staging / MANIFEST_NAME, set(files))
            for name, expected in sorted(listed.items()):  # each file within its announced size
                got = self._download(prefix + urllib.parse.quote(name, safe=""), staging / name,
                                     files[name], files[name])
                if got != expected:
                    raise UpdateError(f"{name} of version {version} has sha256 {got[:12]}..., its manifest "
                                      f"lists {expected[:12]}...; refusing a modified file")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            installed = self.slot.install(target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        self._prune()
        return installed

    def run(self, interval: float, stop: threading.Event) -> None:
        """Check every ``interval`` seconds until ``stop`` is set; a failed check is logged and
        the next one tried (the served model stays meanwhile)."""
        if not interval > 0:
            raise UpdateError(f"interval must be > 0 seconds, got {interval!r}")
        while not stop.is_set():
            try:
                installed = self.check_once()
            except (CoinferError, OSError) as error:  # OSError: the cache folder (disk full, removed)
                log.warning("model update for device '%s' failed: %s", self.slot.device, error)
            else:
                if installed is not None:
                    log.info("device '%s' now serves model version %d", self.slot.device, installed)
            stop.wait(interval)

    def _prune(self) -> None:
        """Delete installed versions beyond the newest :data:`KEEP_INSTALLED` (never the serving one)."""
        serving = self.slot.current.path.resolve()
        versions = sorted((int(match.group(1)), path) for path in self.cache_dir.iterdir()
                          if path.is_dir() and (match := _VERSION_DIR.fullmatch(path.name)))
        for _, path in versions[:-KEEP_INSTALLED]:
            if path.resolve() != serving:
                shutil.rmtree(path, ignore_errors=True)

    def _latest(self, answer: Any) -> tuple[int, str, dict[str, int]]:
        """The version, manifest digest and file sizes of a publication description."""
        where = f"the edge's answer for device '{self.slot.device}'"
        if not isinstance(answer, dict):
            raise UpdateError(f"{where} is not a JSON object")
        version, digest, files = answer.get("version"), answer.get("manifest_sha256"), answer.get("files")
        if type(version) is not int or version < 1:
            raise UpdateError(f"{where} has no valid version: {str(version)[:40]!r}")
        if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
            raise UpdateError(f"{where} has no valid manifest_sha256")
        if not isinstance(files, dict) or not files:
            raise UpdateError(f"{where} lists no files")
        sizes = {}
        for name, entry in files.items():
            size = entry.get("bytes") if isinstance(entry, dict) else None
            if not _plain_name(name) or type(size) is not int or size < 0:
                raise UpdateError(f"{where} lists a file {str(name)[:40]!r} without a plain name and a size")
            sizes[name] = size
        return version, digest, sizes

    @staticmethod
    def _listed_files(manifest: Path, announced: set[str]) -> dict[str, str]:
        """The files (and sha256) a downloaded manifest lists; they must be the ones announced."""
        try:
            data = json.loads(manifest.read_bytes())
            listed = {name: entry["sha256"] for name, entry in data["files"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UpdateError(f"the downloaded manifest is malformed: {error}") from None
        if set(listed) != announced or not all(_plain_name(name) for name in listed):
            raise UpdateError(f"the manifest lists {sorted(listed)[:4]}, the edge announced "
                              f"{sorted(announced)[:4]}")
        return listed

    def _request(self, path: str) -> Any:
        request = urllib.request.Request(self.base_url + path,
                                         headers={"Authorization": f"Bearer {self._token}"})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            detail = " ".join(error.read(_MAX_DETAIL_BYTES).decode("utf-8", "replace").split())
            error.close()
            raise UpdateError(f"GET {path}: HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise UpdateError(f"cannot reach the model store at {self.base_url}: {reason}") from None

    def _get_json(self, path: str) -> Any:
        with self._request(path) as response:
            body = _read_bounded(response, _MAX_JSON_BYTES, path)
        try:
            return json.loads(body)
        except ValueError as error:
            raise UpdateError(f"GET {path}: not JSON: {error}") from None

    def _download(self, path: str, destination: Path, limit: int, size: int | None) -> str:
        """Write the body at ``path`` to ``destination`` and return its sha256; more than
        ``limit`` bytes, or a size other than ``size`` where known, is refused."""
        digest = hashlib.sha256()
        received = 0
        try:
            with self._request(path) as response, open(destination, "wb") as out:
                declared = response.headers.get("Content-Length")
                if declared is not None and (not declared.isdigit() or int(declared) > limit):
                    raise UpdateError(f"GET {path}: Content-Length {declared[:20]} is over the {limit}-byte "
                                      "limit")
                while chunk := response.read(min(_CHUNK, limit - received + 1)):
                    received += len(chunk)
                    if received > limit:
                        raise UpdateError(f"GET {path}: the body is over the {limit}-byte limit")
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, urllib.error.URLError) as error:
            raise UpdateError(f"GET {path}: the download failed: {error}") from None
        if size is not None and received != size:
            raise UpdateError(f"GET {path}: received {received} bytes, the edge announced {size}")
        return digest.hexdigest()


def _read_bounded(response: BinaryIO, limit: int, path: str) -> bytes:
    body = response.read(limit + 1)
    if len(body) > limit:
        raise UpdateError(f"GET {path}: the answer is over the {limit}-byte limit")
    return body


def _plain_name(name: Any) -> bool:
    """Whether ``name`` is one file name (no folder, no traversal, not the manifest)."""
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST_NAME) and "\\" not in name
            and PurePosixPath(name).name == name)


__all__ = ["KEEP_INSTALLED", "MODELS_PATH", "ModelUpdater", "UpdateError"]
