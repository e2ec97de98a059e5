"""One FastAPI app for everything the daemon hosts: its own routes and the services' routes.

One server means one port to open, one token, one set of connection limits and one place to
drain on SIGTERM. The services' apps are not mounted (a mount would strip the paths their
routes were written with); their routes are taken over as they are, each with its own token
dependency, and so are their error handlers, so every service refuses exactly as it does
alone. Their paths never collide (``/v1/gate/...``, ``/v1/infi/...``, ``/v1/split/...``,
``/v1/evolve/...``); each app's ``/healthz`` and API description give way to the daemon's.

The daemon's own routes:

- ``GET /healthz``: ``{"status": "ok"}``, open (for load balancers and systemd checks);
- ``GET /metrics``: Prometheus text (:mod:`coinfer.edge.daemon.telemetry`), token;
- ``GET /v1/status``: the status as JSON, token;
- ``GET /status``: the status page (:mod:`coinfer.edge.daemon.status_page`), token.

Example::

    daemon = GatewayDaemon(load_config("gateway.toml"), token)
    uvicorn.run(create_daemon_app(daemon), **uvicorn_options("127.0.0.1", 8100))
"""

from __future__ import annotations

from typing import Any

from coinfer.edge.daemon.gateway_daemon import GatewayDaemon
from coinfer.edge.daemon.status_page import render_status_page
from coinfer.edge.daemon.telemetry import CountResponses
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.service import ServiceError, create_service_app, metrics_route

__all__ = ["STATUS_PAGE_PATH", "STATUS_PATH", "DaemonError", "create_daemon_app", "include_routes"]

STATUS_PATH = "/v1/status"
STATUS_PAGE_PATH = "/status"
#: Routes every service app has that the daemon serves once, for all of them.
_SHARED = frozenset({"/healthz", "/openapi.json", "/docs", "/redoc"})


class DaemonError(ServiceError):
    """A request the daemon's own routes refuse; ``status`` is the HTTP status to answer with."""


def include_routes(target: Any, source: Any) -> None:
    """Serve ``source``'s routes (but its ``/healthz`` and API description) from ``target``,
    with ``source``'s error handlers; a route both serve is refused."""
    taken = {(getattr(route, "path", None), frozenset(getattr(route, "methods", None) or ()))
             for route in target.router.routes}
    for route in source.router.routes:
        path = getattr(route, "path", None)
        if path in _SHARED:
            continue
        key = (path, frozenset(getattr(route, "methods", None) or ()))
        if key in taken:
            raise CoinferError(f"two services serve {sorted(key[1])} {path}")
        target.router.routes.append(route)
        taken.add(key)
    for kind, handler in source.exception_handlers.items():
        target.exception_handlers.setdefault(kind, handler)


def create_daemon_app(daemon: GatewayDaemon) -> Any:
    """The daemon's app: its own routes, then every hosted service's; ``app.state.daemon``."""
    from fastapi import Depends
    from fastapi.responses import HTMLResponse

    app, authorize = create_service_app("coinfer edge gateway", DaemonError, daemon.token)
    app.state.daemon = daemon
    guard = [Depends(authorize)]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    metrics_route(app, authorize, daemon.registry)

    @app.get(STATUS_PATH, dependencies=guard)
    def status() -> dict[str, Any]:
        return daemon.status()

    @app.get(STATUS_PAGE_PATH, dependencies=guard, response_class=HTMLResponse)
    def status_page() -> HTMLResponse:
        return HTMLResponse(render_status_page(daemon.status()))

    for service in daemon.services.apps:
        include_routes(app, service)
    app.add_middleware(CountResponses, counts=daemon.responses)
    return app
