"""The converters an edge command exports with, from the optional ``coinfer-converters``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coinfer.sdk.errors import CoinferError


def converter(name: str) -> Callable[..., Any]:
    """``coinfer.converters.filters.<name>``; one line saying what to install when it is missing.

    Called before the long work, so a missing package is said at once.
    """
    try:
        from coinfer.converters import filters
    except ImportError as error:
        raise CoinferError("exporting to TFLite needs coinfer-converters: "
                           "pip install 'coinfer-edge[export]'") from error
    return getattr(filters, name)
