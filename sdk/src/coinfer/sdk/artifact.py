"""Model artifacts: a directory holding model files and a ``manifest.json`` that vouches for them.

Every trained filter, predictor, link or transformed model coinfer produces is an
artifact. The manifest records what the model is (capability, kind), how to feed it
(inputs, outputs, preprocessing) and the sha256 of every file, so a device can refuse a
model that was truncated in transit or tampered with. Nothing is ever unpickled.

Example (in a temporary directory):

>>> import tempfile
>>> from pathlib import Path
>>> from coinfer.sdk.artifact import ArtifactError, Manifest, load_artifact, save_artifact
>>> work = tempfile.TemporaryDirectory()
>>> root = Path(work.name) / "filter"
>>> manifest = Manifest(capability="infi", kind="skip-filter", metadata={"threshold": 0.4})
>>> saved = save_artifact(root, manifest, {"model.tflite": b"the model's bytes"})
>>> sorted(path.name for path in root.iterdir())
['manifest.json', 'model.tflite']
>>> artifact = load_artifact(root, capability="infi")
>>> artifact.manifest.kind, artifact.manifest.metadata
('skip-filter', {'threshold': 0.4})
>>> artifact.file("model.tflite").read_bytes()
b"the model's bytes"

A modified file, or a model of another capability, is refused:

>>> _ = (root / "model.tflite").write_bytes(b"tampered")
>>> load_artifact(root)
Traceback (most recent call last):
    ...
coinfer.sdk.artifact.ArtifactError: .../model.tflite: sha256 mismatch (...); the file was modified ...
>>> load_artifact(root, capability="gate", verify=False)
Traceback (most recent call last):
    ...
coinfer.sdk.artifact.ArtifactError: .../manifest.json: capability is 'infi', expected 'gate'
>>> work.cleanup()
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from coinfer.sdk._version import __version__
from coinfer.sdk.datadir import sha256_file
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.fsutil import atomic_directory
from coinfer.sdk.tensor import TensorSpec

MANIFEST_NAME = "manifest.json"
#: Bumped when the manifest layout changes incompatibly; loaders refuse newer versions.
FORMAT_VERSION = 1
#: A manifest is small; refuse to read anything larger before parsing it.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class ArtifactError(CoinferError):
    """An artifact is missing, malformed, of the wrong kind, or fails verification."""


@dataclass
class Manifest:
    """What an artifact holds; ``files`` is filled in by :func:`save_artifact`."""

    capability: str
    kind: str
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    coinfer_version: str = __version__
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "coinfer_version": self.coinfer_version,
            "created": self.created,
            "capability": self.capability,
            "kind": self.kind,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "preprocessing": self.preprocessing,
            "metadata": self.metadata,
            "files": {name: {"sha256": digest} for name, digest in sorted(self.files.items())},
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: Path) -> Manifest:
        where = f"{source / MANIFEST_NAME}"
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in ("format_version", "capability", "kind", "files") if key not in data]
        if missing:
            raise ArtifactError(f"{where}: missing required field(s) {', '.join(missing)}")
        version = data["format_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ArtifactError(f"{where}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: format_version {version} was written by a newer coinfer "
                f"({data.get('coinfer_version', '?')}); this coinfer {__version__} reads up to "
                f"{FORMAT_VERSION}. Upgrade coinfer to load it."
            )
        files = data["files"]
        if not isinstance(files, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            for entry in files.values()
        ):
            raise ArtifactError(f"{where}: 'files' must map file names to {{'sha256': HEX}}")
        try:
            return cls(
                capability=str(data["capability"]),
                kind=str(data["kind"]),
                inputs=[TensorSpec.from_dict(spec) for spec in data.get("inputs", [])],
                outputs=[TensorSpec.from_dict(spec) for spec in data.get("outputs", [])],
                preprocessing=dict(data.get("preprocessing", {})),
                metadata=dict(data.get("metadata", {})),
                files={name: entry["sha256"] for name, entry in files.items()},
                format_version=version,
                coinfer_version=str(data.get("coinfer_version", "")),
                created=str(data.get("created", "")),
            )
        except CoinferError as error:
            raise ArtifactError(f"{where}: {error}") from error
        except (TypeError, ValueError) as error:
            raise ArtifactError(f"{where}: malformed field: {error}") from error


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on disk."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists (raises for anything else)."""
        if name not in self.manifest.files:
            listed = ", ".join(sorted(self.manifest.files)) or "none"
            raise ArtifactError(f"{self.path}: no file '{name}' in the manifest (listed: {listed})")
        return self.path / name

    def single_model_file(self, suffixes: tuple[str, ...] = (".tflite", ".onnx")) -> Path:
        """The one model file with one of ``suffixes`` (most artifacts hold exactly one)."""
        matches = [name for name in self.manifest.files if name.endswith(suffixes)]
        if len(matches) != 1:
            raise ArtifactError(
                f"{self.path}: expected exactly one model file ending in {', '.join(suffixes)}, "
                f"found {matches or 'none'}"
            )
        return self.path / matches[0]


def _check_member_name(name: str) -> None:
    pure = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or name == MANIFEST_NAME
    ):
        raise ArtifactError(f"invalid artifact file name {name!r}: use a relative path inside it")


def save_artifact(
    path: str | os.PathLike,
    manifest: Manifest,
    files: Mapping[str, bytes | os.PathLike | str],
    *,
    overwrite: bool = False,
) -> Artifact:
    """Write ``files`` (bytes, or paths to copy) and a manifest with their hashes to ``path``.

    The directory appears atomically: an interrupted save leaves no partial artifact.
    """
    if not files:
        raise ArtifactError("an artifact needs at least one file")
    for name in files:
        _check_member_name(name)
    destination = Path(path)
    try:
        with atomic_directory(destination, overwrite=overwrite) as staging:
            hashes = {}
            for name, content in files.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes | bytearray | memoryview):
                    target.write_bytes(bytes(content))
                else:
                    source = Path(content)
                    if not source.is_file():
                        raise ArtifactError(f"cannot add '{name}' to the artifact: {source} is not a file")
                    shutil.copyfile(source, target)
                hashes[name] = sha256_file(target)
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            final = replace(manifest, files=hashes, format_version=FORMAT_VERSION,
                            coinfer_version=__version__, created=created)
            text = json.dumps(final.to_dict(), indent=2, sort_keys=True) + "\n"
            (staging / MANIFEST_NAME).write_text(text, encoding="utf-8")
    except FileExistsError as error:
        raise ArtifactError(str(error)) from error
    return Artifact(destination, final)


def load_artifact(
    path: str | os.PathLike,
    *,
    capability: str | None = None,
    kind: str | None = None,
    verify: bool = True,
) -> Artifact:
    """Read and verify an artifact; every problem raises :class:`ArtifactError` naming the file."""
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact directory (it does not exist or is a file)")
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing; {root} is not a coinfer artifact")
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{manifest_path}: {size} bytes is over the {MAX_MANIFEST_BYTES} limit")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ArtifactError(f"{manifest_path}: nested deeper than Python can parse; not a coinfer "
                            "manifest") from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer too long to convert
        raise ArtifactError(f"{manifest_path}: not valid JSON: {error}") from error
    manifest = Manifest.from_dict(data, source=root)
    if capability is not None and manifest.capability != capability:
        raise ArtifactError(
            f"{manifest_path}: capability is '{manifest.capability}', expected '{capability}'"
        )
    if kind is not None and manifest.kind != kind:
        raise ArtifactError(f"{manifest_path}: kind is '{manifest.kind}', expected '{kind}'")
    if verify:
        _verify_files(root, manifest)
    return Artifact(root, manifest)


def _verify_files(root: Path, manifest: Manifest) -> None:
    resolved_root = root.resolve()
    for name, expected in sorted(manifest.files.items()):
        _check_member_name(name)
        member = root / name
        if not member.resolve().is_relative_to(resolved_root):
            raise ArtifactError(f"{member}: points outside the artifact directory")
        if not member.is_file():
            problem = "not a regular file" if os.path.lexists(member) else "missing"
            raise ArtifactError(f"{member}: listed in the manifest but {problem}")
        actual = sha256_file(member)
        if actual != expected:
            raise ArtifactError(
                f"{member}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...); "
                "the file was modified or corrupted"
            )
    # An artifact holds exactly its listed regular files and the folders they are in: anything
    # else (a stray file, a FIFO a reader could block on, an empty folder) means it was altered.
    listed = set(manifest.files) | {MANIFEST_NAME}
    folders = {parent.as_posix() for name in listed for parent in PurePosixPath(name).parents}
    for member in sorted(root.rglob("*")):
        relative = member.relative_to(root).as_posix()
        if member.is_dir() and not member.is_symlink():
            if relative not in folders:
                raise ArtifactError(f"{member}: a directory holding no listed file; refusing an altered "
                                    "artifact")
        elif relative not in listed:
            what = "not listed" if member.is_file() else "not a regular file listed"
            raise ArtifactError(f"{member}: {what} in the manifest; refusing an altered artifact")
