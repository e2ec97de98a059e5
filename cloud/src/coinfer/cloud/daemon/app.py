"""The one FastAPI application of ``coinfer cloud serve``: every configured cloud service, one
token, one body limit, ``/healthz`` and ``/metrics``.

Operators run one process (or one Ray Serve deployment) for the cloud tier rather than a
server per capability with its own flags, port and token. The services keep their own
endpoints, which do not overlap (STIP under ``/v1/info``, ``/v1/forward``, ``/v1/sessions``;
MLink under ``/v1/mlink/``), and their own refusals; this module loads what the
configuration names and adds their routes to one app (``add_routes`` of
:mod:`coinfer.cloud.stip.server` and :mod:`coinfer.cloud.mlink.server`).

Endpoints besides the services': ``GET /healthz`` (open: ``{"ok": true, "services": [...]}``)
and ``GET /metrics`` (Prometheus text, behind the token; :mod:`.telemetry`). Every refusal
is ``{"detail": "..."}`` with its status: 401 without the token (an MLink client may also use
its own registered token on the MLink routes), 413 for a body over the limit, 400 for a
malformed one.

Example (``coinfer cloud serve`` runs the app with ``uvicorn.run`` instead of a thread):

>>> import pathlib, tempfile, urllib.request
>>> from coinfer.cloud.daemon.config import read_config
>>> from coinfer.sdk.mlink import LinkGraph, OutputSpec
>>> from coinfer.sdk.service import ThreadedServer
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = LinkGraph.create({"people": OutputSpec.classes(3), "speech": OutputSpec.presence()}).save(
...     folder / "links")
>>> _ = (folder / "clients.txt").write_text("edge-1\\n")
>>> _ = (folder / "cloud.toml").write_text('[mlink]\\nlinks = "links"\\nclients = "clients.txt"\\n'
...                                        'min_clients = 1\\n')
>>> services = load_services(read_config(folder / "cloud.toml"))
>>> with ThreadedServer(create_cloud_app(services, "s3cret"), name="the cloud services") as running:
...     urllib.request.urlopen(running.url + "/healthz").read()
b'{"ok":true,"services":["mlink"]}'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from coinfer.cloud.daemon.config import CloudConfig, MLinkSettings, ServerSettings, StipSettings, config_error
from coinfer.cloud.daemon.telemetry import CloudMetrics, RequestCounter, TimedStipServer
from coinfer.cloud.mlink import server as mlink_server
from coinfer.cloud.stip import server as stip_server
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.service import ServiceError, create_service_app, metrics_route

__all__ = ["CloudServices", "create_cloud_app", "load_aggregator", "load_services", "load_stip_server"]


@dataclass
class CloudServices:
    """The loaded services of one configuration and the metrics they feed: what
    :func:`create_cloud_app` serves. ``stip`` and ``aggregator`` are None where not configured."""

    config: CloudConfig
    metrics: CloudMetrics
    stip: TimedStipServer | None = None
    aggregator: mlink_server.LinkAggregator | None = None


def load_services(config: CloudConfig) -> CloudServices:
    """Load every service ``config`` names (the STIP model, the links and saved rounds). A file
    that cannot be loaded is a :class:`~coinfer.sdk.config_file.ConfigError` at the line naming it."""
    metrics = CloudMetrics()
    stip = None if config.stip is None else load_stip_server(config.stip, config.server, metrics)
    aggregator = None if config.mlink is None else load_aggregator(config.mlink)
    return CloudServices(config, metrics, stip, aggregator)


def create_cloud_app(services: CloudServices, token: str) -> FastAPI:
    """One app serving every loaded service behind ``token``, with ``/healthz`` and ``/metrics``;
    ``app.state.services`` is ``services``."""
    if not token:
        raise CoinferError("the cloud services need a non-empty token")
    config, metrics = services.config, services.metrics
    app, authorize = create_service_app("coinfer cloud services", ServiceError, token)
    app.state.services = services
    if services.stip is not None:
        stip_server.add_routes(app, services.stip, authorize)
        metrics.watch_stip(services.stip)
    if services.aggregator is not None:
        options = mlink_server.ServiceOptions(max_request_bytes=config.server.max_request_bytes)
        try:
            mlink_server.add_routes(app, services.aggregator, token, options)
        except CoinferError as error:
            raise config_error(config.server, "max_request_mib", f"is too small: {error}") from None
        metrics.watch_mlink(services.aggregator)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "services": list(config.services)}

    metrics_route(app, authorize, metrics.registry)
    app.add_middleware(RequestCounter, metrics=metrics)
    return app


def load_stip_server(settings: StipSettings, server: ServerSettings,
                     metrics: CloudMetrics) -> TimedStipServer:
    """The STIP model server of ``settings.bundle``, with the limits of both tables."""
    from coinfer.cloud.stip.publish import load_cloud_model

    options = stip_server.ServerOptions(max_request_bytes=server.max_request_bytes,
                                        max_response_bytes=settings.max_response_mib << 20,
                                        max_batch=settings.max_batch, max_sessions=settings.max_sessions,
                                        session_idle_seconds=settings.session_idle_seconds)
    try:
        model, info = load_cloud_model(settings.bundle)
    except CoinferError as error:
        raise config_error(settings, "bundle", f"cannot be loaded: {error}") from None
    return TimedStipServer(model, info, options, metrics)


def load_aggregator(settings: MLinkSettings) -> mlink_server.LinkAggregator:
    """The MLink aggregator of ``settings``: its links, clients and saved rounds."""
    from coinfer.sdk.mlink import LinkGraph

    try:
        graph = LinkGraph.load(settings.links)
    except CoinferError as error:
        raise config_error(settings, "links", f"cannot be loaded: {error}") from None
    try:
        return mlink_server.LinkAggregator(graph, settings.min_clients, settings.state_dir,
                                           clients=settings.registry, rules=settings.rules)
    except CoinferError as error:
        raise config_error(settings, "state_dir", f"cannot be used: {error}") from None
