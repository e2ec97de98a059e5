"""Reading ``.npz`` files from elsewhere without trusting them, and writing them atomically.

``np.load`` would allocate whatever a header declares and, with ``allow_pickle``, run
code. :func:`read_arrays` reads each member's header first, refuses object and record
dtypes, checks that the declared size matches the bytes present (a truncated file is
named as such) and that the total stays under ``max_bytes``, and only then reads.

Example (in a temporary directory):

>>> import tempfile
>>> from pathlib import Path
>>> import numpy as np
>>> from coinfer.sdk.npz import NpzError, read_arrays, write_arrays
>>> work = tempfile.TemporaryDirectory()
>>> path = write_arrays(Path(work.name) / "table.npz", {"x": np.zeros((3, 2), np.float32),
...                                                    "names": np.array(["a", "b"])})
>>> arrays = read_arrays(path, required=("x",), max_bytes=1 << 20)
>>> sorted(arrays), arrays["x"].shape, arrays["names"].tolist()
(['names', 'x'], (3, 2), ['a', 'b'])
>>> read_arrays(path, required=("y",), max_bytes=1 << 20)
Traceback (most recent call last):
    ...
coinfer.sdk.npz.NpzError: .../table.npz: missing array(s) 'y' (it holds ['names', 'x'])
>>> read_arrays(path, max_bytes=16)
Traceback (most recent call last):
    ...
coinfer.sdk.npz.NpzError: .../table.npz: the arrays need more than 16 bytes (the limit)
>>> np.savez(Path(work.name) / "objects.npz", x=np.array([{"run": "code"}], dtype=object))
>>> read_arrays(Path(work.name) / "objects.npz", max_bytes=1 << 20)
Traceback (most recent call last):
    ...
coinfer.sdk.npz.NpzError: .../objects.npz: 'x' has dtype object (objects or records); ...never unpickled
>>> work.cleanup()
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.fsutil import atomic_write_bytes


class NpzError(CoinferError, ValueError):
    """An ``.npz`` file that is missing, corrupt, truncated, too large or holds objects."""


def read_arrays(path: str | os.PathLike, *, required: Iterable[str] = (), max_bytes: int,
                what: str = "arrays file") -> dict[str, np.ndarray]:
    """Every array of the file, checked as the module docstring says; errors name ``path``."""
    path = Path(path)
    if not path.is_file():
        raise NpzError(f"{path}: no such {what}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): archive.getinfo(name) for name in archive.namelist()}
            missing = [key for key in required if key not in members]
            if missing:
                raise NpzError(f"{path}: missing array(s) {', '.join(map(repr, missing))} "
                               f"(it holds {sorted(members) or 'nothing'})")
            total = 0
            for key, member in members.items():
                total += _declared_bytes(archive, member, path, key)
                if total > max_bytes:
                    raise NpzError(f"{path}: the arrays need more than {max_bytes} bytes (the limit)")
            arrays = {}
            for key, member in members.items():
                with archive.open(member) as handle:
                    arrays[key] = np.lib.format.read_array(handle, allow_pickle=False)
    except NpzError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise NpzError(f"{path}: not a readable .npz {what} (truncated or corrupt?): {error}") from error
    return arrays


def _declared_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path, key: str) -> int:
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(handle)
        header = handle.tell()
    if dtype.hasobject or dtype.fields is not None:
        raise NpzError(f"{path}: '{key}' has dtype {dtype} (objects or records); only plain numbers "
                       "and unicode strings are read: arrays are never unpickled")
    size = math.prod(shape) * dtype.itemsize
    if size != member.file_size - header:
        raise NpzError(f"{path}: '{key}' declares {shape} {dtype} ({size} bytes) but holds "
                       f"{member.file_size - header} bytes: the file is truncated or corrupt")
    return size


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, ArrayLike]) -> Path:
    """Write ``arrays`` as ``.npz`` atomically (an interrupted save leaves no partial file)."""
    buffer = io.BytesIO()
    # numpy's savez stub has allow_pickle: bool beside **kwds, and mypy lets a **dict fill it.
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
