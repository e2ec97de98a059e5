"""Files of models that ship inside PyPI packages, found without importing those packages.

Importing some of them pulls in what coinfer deliberately does not install (torch for
silero-vad, OpenCV 5 for RapidOCR), so ``find_spec`` locates the package directory instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from coinfer.sdk.errors import ModelNotAvailableError


def packaged_file(package: str, relative: str, *, needed_by: str, install_hint: str) -> Path:
    """Path of ``relative`` inside installed ``package``; a clear error naming the install
    command when the package or the file is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"{needed_by} needs the {package} package, which is not installed; "
            f"install it with: {install_hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelNotAvailableError(
            f"{path} is missing from the installed {package} package; reinstall it with: {install_hint}"
        )
    return path
