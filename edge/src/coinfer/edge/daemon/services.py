"""The edge services a configuration turns on, built as their own commands build them.

Each service keeps its own FastAPI app, with its routes, its token check and its refusals
(``{"detail": ...}`` with the right status), exactly as ``coinfer gate serve``, ``coinfer
infi serve``, ``coinfer split serve`` and ``coinfer evolve serve`` run it alone; the daemon
only composes their routes into one server (:mod:`coinfer.edge.daemon.app`) under one token
and one request size limit (``[server] max_request_mib``). A service that cannot start (a
bundle that does not load, a request limit too small for the split's tensors) is refused
before the server binds, naming the configuration line that chose it; the services built
before it are closed again.

The evolution service converts the models it evolves to TFLite with an exporter from
``coinfer-converters``, which only a command may import; the command hands it in as
``exporter``, a function that imports it (and says what to install when it cannot).

Example::

    services = HostedServices(load_config("gateway.toml"), token)
    services.apps                                  # FastAPI apps, one per service
    services.stats()                               # {"uploads": {...}, "infi": {...}, ...}
    services.close()                               # the evolution service's trainer and lock
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coinfer.edge.daemon.config import EvolveConfig, GatewayConfig, SplitConfig
from coinfer.sdk.config_file import ConfigError
from coinfer.sdk.errors import CoinferError

__all__ = ["HostedServices"]


class HostedServices:
    """The uploads, InFi, split and evolution services of ``config``, behind ``token``;
    ``exporter`` returns the evolution service's exporter of device models."""

    def __init__(self, config: GatewayConfig, token: str, exporter: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.exporter = exporter
        self.apps: list[Any] = []
        self.gateway: Any = None
        self.detection: Any = None
        self.split: Any = None
        self.evolution: Any = None
        try:
            self._build(token)
        except BaseException:
            self.close()
            raise

    def _build(self, token: str) -> None:
        config, limit = self.config, self.config.server.max_request_bytes
        if config.uploads is not None:
            from coinfer.edge.gate.inference import DetectorPlugin
            from coinfer.edge.gateway import GatewayOptions, create_gateway_app

            uploads = config.uploads
            options = GatewayOptions(max_request_bytes=limit, max_streams=uploads.max_streams,
                                     max_packets_per_request=uploads.max_packets_per_request,
                                     plugin=DetectorPlugin(uploads.tasks) if uploads.tasks else None)
            app = create_gateway_app(options, token)
            self.gateway = app.state.gateway
            self.apps.append(app)
        if config.infi is not None:
            from coinfer.edge.infi.service import DetectionOptions, create_detection_app

            detection = DetectionOptions(task=config.infi.task, max_request_bytes=limit)
            app = create_detection_app(detection, token)
            self.detection = app.state.service
            self.apps.append(app)
        if config.split is not None:
            self._build_split(config.split, token, limit)
        if config.evolve is not None:
            self._build_evolve(config.evolve, token, limit)

    def _build_split(self, split: SplitConfig, token: str, limit: int) -> None:
        from coinfer.edge.split.service import SplitServiceOptions, create_app

        try:
            options = SplitServiceOptions(max_batch=split.max_batch, threads=split.threads,
                                          workers=split.workers)
            app = create_app(split.bundle, token, options)
        except CoinferError as error:
            raise ConfigError(f"{split.where}: {error}") from error
        needed = app.state.service.max_request_bytes
        if needed > limit:
            raise ConfigError(f"{split.where}: {split.max_batch} samples of this split need requests of "
                              f"{needed} bytes, over [server] max_request_mib; lower [split] max_batch")
        self.split = app.state.service
        self.apps.append(app)

    def _build_evolve(self, evolve: EvolveConfig, token: str, limit: int) -> None:
        from coinfer.edge.evolve.service import EvolutionConfig, EvolutionService, create_evolution_app

        try:
            settings = EvolutionConfig.load(evolve.config)
        except CoinferError as error:
            raise ConfigError(f"{evolve.where}: {error}") from error
        if settings.max_request_bytes > limit:
            raise ConfigError(f"{evolve.where}: uploads of {settings.max_upload_frames} frames need requests "
                              f"of {settings.max_request_bytes} bytes, over [server] max_request_mib; "
                              f"lower max_upload_frames")
        if self.exporter is None:
            raise ConfigError(f"{evolve.where}: the evolution service needs an exporter of device models; "
                              f"start it with `coinfer edge gateway`")
        export_device_model = self.exporter()
        try:
            self.evolution = EvolutionService(settings, export_device_model)
        except CoinferError as error:
            raise ConfigError(f"{evolve.where}: {error}") from error
        self.apps.append(create_evolution_app(self.evolution, token))

    @property
    def names(self) -> list[str]:
        """The services hosted, in the configuration's order."""
        return [name for name in ("uploads", "infi", "split", "evolve")
                if getattr(self.config, name) is not None]

    def upload_streams(self) -> list[dict[str, Any]]:
        """The status of every camera stream uploading to the gateway (none without ``[uploads]``)."""
        from coinfer.edge.gateway import GatewayError

        if self.gateway is None:
            return []
        found = []
        for stream in self.gateway.streams():
            try:
                found.append(self.gateway.status(stream))
            except GatewayError:
                continue  # evicted between the listing and its status
        return found

    def stats(self) -> dict[str, Any]:
        """What each service counted, for ``/v1/status`` and ``/metrics``."""
        out: dict[str, Any] = {}
        if self.gateway is not None:
            out["uploads"] = {"streams": self.upload_streams()}
        if self.detection is not None:
            out["infi"] = {"task": self.detection.options.task, **self.detection.stats()}
        if self.split is not None:
            info = self.split.info()
            out["split"] = {key: info[key] for key in ("requests", "samples", "bytes_received", "max_batch")}
        if self.evolution is not None:
            status = self.evolution.status()
            out["evolve"] = {"devices": len(status["devices"]), "jobs": status["jobs"],
                             "global_version": status["global_version"]}
        return out

    def close(self) -> None:
        """Stop what runs beyond requests (the evolution service's workers; its root lock)."""
        if self.evolution is not None:
            self.evolution.close()
            self.evolution = None
