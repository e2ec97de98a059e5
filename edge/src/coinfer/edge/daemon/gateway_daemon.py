"""The gateway daemon's state: its configuration, its streams, its services, its reloads.

:class:`GatewayDaemon` is everything ``coinfer edge gateway`` runs except the HTTP server
and the signals (:mod:`coinfer.edge.daemon.process`): it builds the configured services,
runs the streams, answers the status every view is made from, and applies a new
configuration. A reload (SIGHUP) reads the file again and checks it whole: a bad file is
refused with its one line and the daemon runs on as it was; a good one is applied as far as
it can be live (the decode budget at once; streams added, removed or changed, filters, the
other ``[gate]`` keys by restarting the streams they touch). What only a restart can apply
(``[server]``, the services' tables) is named in the reload's log line and left as it runs.
Reloads run on a thread of their own, one at a time, so a signal handler only asks for one.

Example::

    daemon = GatewayDaemon(load_config("gateway.toml"), token)
    daemon.start()                                 # streams and the reload thread
    daemon.request_reload()                        # what SIGHUP does
    daemon.status()["gate"]["budget_fraction"]
    daemon.close()
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from coinfer.edge.daemon.config import GatewayConfig, load_config
from coinfer.edge.daemon.events import EventLog
from coinfer.edge.daemon.services import HostedServices
from coinfer.edge.daemon.streams import StreamManager
from coinfer.edge.daemon.telemetry import ResponseCounts, StatusCollector
from coinfer.sdk._version import __version__
from coinfer.sdk.errors import CoinferError

__all__ = ["GatewayDaemon"]


class GatewayDaemon:
    """The daemon of ``config`` behind ``token``; ``overrides`` are the command line's
    ``[server]`` values, kept over every reload of the file; ``exporter`` is the evolution
    service's (:class:`~coinfer.edge.daemon.services.HostedServices`)."""

    def __init__(self, config: GatewayConfig, token: str, *, overrides: Mapping[str, Any] | None = None,
                 events: EventLog | None = None, exporter: Callable[[], Any] | None = None) -> None:
        from prometheus_client import CollectorRegistry

        if not token:
            raise CoinferError("the edge gateway needs a non-empty token")
        self.config = config
        self.token = token
        self.overrides = dict(overrides or {})
        self.events = events or EventLog()
        self.responses = ResponseCounts()
        self.registry = CollectorRegistry()
        self.registry.register(StatusCollector(self.status, self.responses))
        self.started = time.time()
        self.reloads: dict[str, Any] = {"applied": 0, "refused": 0, "last": None}
        self.services = HostedServices(config, token, exporter)
        try:
            self.streams = StreamManager(config.gate, config.streams, self.events)
        except BaseException:
            self.services.close()
            raise
        self._wanted = threading.Event()
        self._closing = False
        self._reloader = threading.Thread(target=self._reload_loop, name="coinfer-gateway-reload",
                                          daemon=True)

    @property
    def url(self) -> str:
        server = self.config.server
        return f"http://{server.host}:{server.port}"

    def start(self) -> None:
        """Start the streams and the reload thread (once the server listens)."""
        self.streams.start()
        self._reloader.start()
        names = ", ".join(stream.name for stream in self.config.streams) or "none"
        mlink = self.config.gate.mlink
        served = "" if mlink is None else f"; MLink budget {mlink.budget:g} ms per frame"
        self.events.info(f"started on {self.url} (pid {os.getpid()}) from {self.config.path}: hosting "
                         f"{', '.join(self.config.services)}; streams: {names}; decode budget "
                         f"{self.config.gate.budget_fraction:g}{served}")

    def request_reload(self) -> None:
        """Ask for a reload of the configuration file (safe in a signal handler)."""
        self._wanted.set()

    def reload(self) -> bool:
        """Read the configuration file again and apply it; ``False`` when it was refused."""
        path = self.config.path
        try:
            fresh = load_config(path).with_overrides(self.overrides)
        except CoinferError as error:
            self.reloads["refused"] += 1
            self.reloads["last"] = f"refused: {error}"
            self.events.error(f"reload refused, still running the previous configuration: {error}")
            return False
        changes = self.streams.apply(fresh.gate, fresh.streams)
        pending = fresh.restart_changes(self.config)
        self.config = replace(self.config, gate=fresh.gate, streams=fresh.streams)
        said = "; ".join(changes) or "no change"
        if pending:
            said += f"; needs a restart to apply: {', '.join(pending)}"
        self.reloads["applied"] += 1
        self.reloads["last"] = said
        self.events.info(f"reloaded {path}: {said}")
        return True

    def _reload_loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                self.reload()
            except Exception as error:  # the reload thread must survive whatever one reload hit
                self.events.error(f"reload failed: {type(error).__name__}: {error}")

    def status(self) -> dict[str, Any]:
        """Everything ``/v1/status``, ``/metrics`` and the status page show."""
        config = self.config
        gate = config.gate
        services = self.services.stats()
        return {
            "service": "coinfer edge gateway", "version": __version__, "pid": os.getpid(),
            "config": str(config.path), "listen": self.url, "started": self.started,
            "uptime_s": time.time() - self.started, "services": list(config.services),
            "gate": {"budget_fraction": self.streams.budget_fraction, "tasks": list(gate.tasks),
                     "policy": gate.policy or ("packetgame" if gate.predictor else "temporal"),
                     "predictor": None if gate.predictor is None else str(gate.predictor),
                     "workers": gate.workers, "realtime": gate.realtime},
            "streams": [stream.to_dict() for stream in self.streams.statuses()],
            "mlink": self.streams.mlink_status(),
            "uploads": services.get("uploads"), "infi": services.get("infi"), "split": services.get("split"),
            "evolve": services.get("evolve"), "reloads": dict(self.reloads),
            "errors": [event.to_dict() for event in self.events.recent()],
        }

    def close(self) -> None:
        """Stop the reload thread, the streams (their decoder workers) and the services."""
        self._closing = True
        self._wanted.set()
        if self._reloader.is_alive():
            self._reloader.join()
        self.streams.close()
        self.services.close()
