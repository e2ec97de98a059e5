"""Scale the STIP model server out on Ray Serve.

Each replica loads the server artifact itself and runs the same FastAPI application as
``coinfer stip serve`` (token, limits, endpoints), so behaviour does not depend on
the deployment. Ray is imported only here, when a Ray address or ``--ray`` is given.
Note: Ray binds its internal ports on all interfaces even when Serve's HTTP proxy is on
127.0.0.1; firewall them on shared hosts.
"""

from __future__ import annotations

import os
from typing import Any

from coinfer.cloud.ray_bridge import forward
from coinfer.cloud.stip.server import ServerOptions


def build_deployment(num_replicas: int = 1) -> Any:
    """A Serve deployment class whose replicas each host one STIP model server."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(num_replicas=num_replicas, name="coinfer-stip")
    class StipDeployment:
        def __init__(self, artifact: str, token: str, options: ServerOptions) -> None:
            from coinfer.cloud.stip.publish import load_cloud_model
            from coinfer.cloud.stip.server import StipModelServer, create_app

            model, info = load_cloud_model(artifact)
            self.app = create_app(StipModelServer(model, info, options), token)

        async def __call__(self, request: Request) -> Response:
            return await forward(self.app, request)

    return StipDeployment


def deploy(artifact: str | os.PathLike, token: str, *, address: str | None = None, host: str = "127.0.0.1",
           port: int = 8000, num_replicas: int = 1, options: ServerOptions | None = None) -> str:
    """Start (or join) Ray, deploy the server, and return its base URL."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    deployment = build_deployment(num_replicas)
    serve.run(deployment.bind(str(artifact), token, options or ServerOptions()), route_prefix="/",
              name="coinfer-stip")
    return f"http://{host}:{port}"
