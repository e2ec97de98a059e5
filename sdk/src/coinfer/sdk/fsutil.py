"""Interrupt-safe file output: write to a temporary sibling, then rename into place.

A Ctrl-C or crash in the middle of writing leaves the previous file (or nothing) at the
destination, never a half-written one.

Example (in a temporary directory):

>>> import tempfile
>>> from pathlib import Path
>>> import numpy as np
>>> from coinfer.sdk.fsutil import atomic_directory, atomic_write_json
>>> work = tempfile.TemporaryDirectory()
>>> root = Path(work.name)
>>> atomic_write_json(root / "metrics.json", {"accuracy": np.float32(0.5), "counts": np.arange(2)})
>>> print((root / "metrics.json").read_text())
{
  "accuracy": 0.5,
  "counts": [
    0,
    1
  ]
}
>>> with atomic_directory(root / "model") as staging:
...     _ = (staging / "weights.bin").write_bytes(b"...")
...     print((root / "model").exists())        # nothing at the destination until the end
False
>>> sorted(path.name for path in (root / "model").iterdir())
['weights.bin']
>>> try:
...     with atomic_directory(root / "model"):
...         pass
... except FileExistsError as error:
...     print(error.args[0].replace(work.name, "TMP"))
TMP/model already exists (pass overwrite=True to replace it)
>>> work.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coinfer.sdk.errors import OutputExistsError


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``destination`` on success."""
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise OutputExistsError(f"{destination} already exists (pass overwrite=True to replace it)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        if destination.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
            os.replace(destination, retired / destination.name)
            os.replace(staging, destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_bytes(destination: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``destination`` so readers see the old or the new file, never a mix."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(staging, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


def atomic_write_json(destination: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write_bytes(destination, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays show up in metrics; write them as plain JSON values.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
