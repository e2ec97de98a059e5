"""Data directories described by a JSON index: its format and version, and the sha256 of files.

Scene sets, corpora, speech sets and model artifacts are directories whose index names what
they are and pins every file by its sha256, so a truncated or edited file is refused when
the directory is loaded rather than read as data. This module holds what all of them check
the same way; each format keeps its own fields and error class.

Example:

>>> import json, tempfile
>>> from pathlib import Path
>>> from coinfer.sdk.errors import CoinferError
>>> work = tempfile.TemporaryDirectory()
>>> index = Path(work.name) / "set.json"
>>> _ = index.write_text(json.dumps({"format": "coinfer-example", "version": 2}))
>>> read_index(index, "coinfer-example", 1, CoinferError, "an example set")
Traceback (most recent call last):
...
coinfer.sdk.errors.CoinferError: .../set.json: version 2 is not supported (this coinfer reads version 1)
>>> read_index(index, "coinfer-example", 2, CoinferError, "an example set")["version"]
2
>>> work.cleanup()
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from coinfer.sdk.errors import CoinferError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_index(path: Path, expected_format: str, version: int, error: type[CoinferError],
               what: str, hint: str = "") -> dict[str, Any]:
    """The JSON object at ``path``, checked to be ``expected_format`` at ``version``; anything
    else raises ``error`` naming the file. ``what`` and ``hint`` complete the message for a
    missing file: ``{path} is missing: not {what} ({hint})``."""
    if not path.is_file():
        raise error(f"{path} is missing: not {what}" + (f" ({hint})" if hint else ""))
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise error(f"{path} is not valid JSON: nested deeper than Python can parse") from None
    except ValueError as problem:  # not JSON, not UTF-8, or an integer too long to convert
        raise error(f"{path} is not valid JSON: {problem}") from problem
    if not isinstance(index, dict) or index.get("format") != expected_format:
        found = index.get("format") if isinstance(index, dict) else None
        raise error(f"{path}: format is {found!r}, expected {expected_format!r}")
    if index.get("version") != version:
        raise error(f"{path}: version {index.get('version')!r} is not supported "
                    f"(this coinfer reads version {version})")
    return index
