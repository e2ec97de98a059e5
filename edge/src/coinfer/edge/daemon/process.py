"""The daemon as a process: read the configuration, listen, react to signals, stop cleanly.

What a service manager (systemd) expects of a daemon, and what this module does:

- a bad configuration is refused before anything binds or starts, with one line naming the
  file, the line and the key, and a non-zero exit;
- one line on stderr when it has started (once the server listens), on every reload and
  when it has stopped;
- ``SIGHUP`` reloads the configuration (:meth:`GatewayDaemon.reload`);
- ``SIGTERM`` (and ``SIGINT``) drain: the server stops accepting connections and finishes
  the requests in flight (up to ``[server] drain_seconds``), then the streams' gate runtimes
  stop with their decoder worker processes and the services close (the evolution service
  finishes its batch and lets go of its root); the exit status is 0.

uvicorn handles SIGTERM and SIGINT while it serves and then raises the signal again for the
handlers it found; those are this module's, so the process ends with status 0 instead of
being killed by its own signal.

Example::

    status = run_daemon("gateway.toml", port=8200)       # returns when SIGTERM has drained it
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from coinfer.edge.daemon.app import create_daemon_app
from coinfer.edge.daemon.config import load_config
from coinfer.edge.daemon.events import LOGGER
from coinfer.edge.daemon.gateway_daemon import GatewayDaemon
from coinfer.sdk.service import resolve_token, uvicorn_options

__all__ = ["configure_logging", "run_daemon"]


def configure_logging() -> None:
    """Send the daemon's lines to stderr, one per event, prefixed ``coinfer edge gateway:``
    (journald adds the time)."""
    if LOGGER.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("coinfer edge gateway: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (a test may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _DaemonServer(uvicorn.Server):
    """uvicorn's server, starting the daemon once it listens (never when binding failed)."""

    def __init__(self, config: uvicorn.Config, daemon: GatewayDaemon) -> None:
        super().__init__(config)
        self.daemon = daemon

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.daemon.start()


class _Signals:
    """This process's handlers: SIGTERM and SIGINT stop the server, SIGHUP asks for a reload."""

    def __init__(self) -> None:
        self.server: uvicorn.Server | None = None
        self.daemon: GatewayDaemon | None = None
        self.stop_requested = False

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        if self.server is not None:
            self.server.should_exit = True

    def reload(self, signum: int, frame: FrameType | None) -> None:
        if self.daemon is not None:
            self.daemon.request_reload()

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self.reload}
        previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the decoder pools would start it) with SIGHUP
    ignored, which it keeps for life: a hang-up sent to the whole process group is for the
    daemon, and the tracker ignores SIGINT and SIGTERM already."""
    from multiprocessing import resource_tracker

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def run_daemon(config_path: str | Path, *, host: str | None = None, port: int | None = None,
               token_file: Path | None = None, exporter: Callable[[], Any] | None = None) -> int:
    """Run the gateway of ``config_path`` until SIGTERM or SIGINT; ``host``, ``port`` and
    ``token_file`` (when given) override the file's ``[server]`` values; ``exporter`` returns
    the evolution service's exporter of device models. Returns the exit status."""
    configure_logging()
    overrides: dict[str, Any] = {"host": host, "port": port, "token_file": token_file}
    with _Signals().installed() as signals:
        config = load_config(config_path).with_overrides(overrides)
        token = resolve_token(config.server.token_file)
        _start_resource_tracker()
        daemon = GatewayDaemon(config, token, overrides=overrides, exporter=exporter)
        signals.daemon = daemon
        server = None
        try:
            options = uvicorn_options(config.server.host, config.server.port, config.server.limits,
                                      log_level="warning")
            settings = uvicorn.Config(create_daemon_app(daemon), **options,
                                      timeout_graceful_shutdown=config.server.drain_seconds)
            server = _DaemonServer(settings, daemon)
            signals.server = server
            if not signals.stop_requested:
                server.run()
        finally:
            daemon.close()
            daemon.events.info(f"stopped (pid {os.getpid()})")
    return 0
