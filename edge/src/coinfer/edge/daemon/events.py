"""What the daemon says: one line per event on stderr, and the recent problems for its status.

An operator reads the daemon in two places: its log (journald under systemd) and its status
page. Both must tell the same story, so every start, reload, stop and failure goes through
one :class:`EventLog`, which writes the line to the ``coinfer.edge.daemon`` logger and keeps
the latest warnings and errors (a bounded number: a camera that fails every few seconds for
a week must not grow the daemon) for ``/v1/status`` and ``/status``.

Example:

>>> events = EventLog(keep=2)
>>> events.info("started")
>>> for n in range(3):
...     events.error(f"stream cam{n}: no data")
>>> [event.message for event in events.recent()]
['stream cam1: no data', 'stream cam2: no data']
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["LOGGER", "Event", "EventLog"]

#: The logger every line of the daemon goes to (the command attaches it to stderr).
LOGGER = logging.getLogger("coinfer.edge.daemon")


@dataclass(frozen=True)
class Event:
    """One warning or error: when (Unix time), how bad and what."""

    time: float
    level: str
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"time": self.time, "level": self.level, "message": self.message}


class EventLog:
    """Writes each event as one log line; keeps the last ``keep`` warnings and errors."""

    def __init__(self, keep: int = 50) -> None:
        self._kept: deque[Event] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def info(self, message: str) -> None:
        LOGGER.info("%s", message)

    def warning(self, message: str) -> None:
        LOGGER.warning("%s", message)
        self._keep("warning", message)

    def error(self, message: str) -> None:
        LOGGER.error("%s", message)
        self._keep("error", message)

    def recent(self) -> list[Event]:
        """The kept warnings and errors, oldest first."""
        with self._lock:
            return list(self._kept)

    def _keep(self, level: str, message: str) -> None:
        with self._lock:
            self._kept.append(Event(time.time(), level, message))
