"""What every benchmark report records about the machine it ran on (never asserted)."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_description() -> dict[str, Any]:
    """Platform, architecture, Python and CPU count, for the ``machine`` key of a bench JSON.

    >>> sorted(machine_description())
    ['cpu_count', 'machine', 'platform', 'python']
    """
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
