"""The cloud app of ``coinfer cloud serve`` on Ray Serve: ``--ray``, or a Serve config file.

Each replica reads the same ``cloud.toml`` and builds the same app (:func:`~.app.create_cloud_app`:
routes, token, limits, ``/healthz``, ``/metrics``), so the services behave the same behind
Serve's HTTP proxy as behind uvicorn. Ray is imported only inside these functions.

Two ways to deploy:

- ``coinfer cloud serve --config cloud.toml --ray [ADDRESS]``: starts (or joins) Ray, puts
  Serve's proxy on the configured host and port, deploys, and stays until SIGTERM or Ctrl-C
  (:func:`deploy`);
- ``serve run samples/cloud/serve.yaml`` (or ``serve deploy``): the Serve config names
  :func:`app_builder` as its ``import_path`` with ``args: {config: PATH}``; the proxy's host and
  port are the Serve file's ``http_options``.

What differs on Ray: the proxy is Serve's, so the connection timeouts of ``[server]`` are
Serve's own (``http_options``), while the body limit and the token hold as everywhere.
``/metrics`` answers for the replica the proxy picked; an MLink aggregator holds its round in
memory, so a configuration with ``[mlink]`` runs exactly one replica. Ray binds its internal
ports on all interfaces even when the proxy is on 127.0.0.1: firewall them on shared hosts.

Example::

    url = deploy(read_config("cloud.toml"), token)       # http://127.0.0.1:8200
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coinfer.cloud.daemon.config import CloudConfig, read_config
from coinfer.cloud.ray_bridge import forward
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.service import TOKEN_ENV, client_token

__all__ = ["APP_NAME", "app_builder", "application", "build_deployment", "check_replicas", "deploy",
           "import_ray", "start_ray"]

#: The Serve application (and deployment) name of the cloud services.
APP_NAME = "coinfer-cloud"


def import_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or a one-line error saying how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise CoinferError(f"Ray Serve is not installed ({error}): "
                           "pip install 'coinfer-cloud[ray]'") from None
    return ray, serve


def check_replicas(config: CloudConfig, replicas: int) -> None:
    """Refuse more than one replica where an MLink aggregator is configured: each replica would
    hold its own round and staged updates, and no round would see every client's update."""
    if type(replicas) is not int or replicas < 1:
        raise InvalidArgumentError(f"replicas must be a positive integer, got {replicas!r}")
    if replicas > 1 and config.mlink is not None:
        raise InvalidArgumentError(f"{config.path}: [mlink] holds its round in one process; deploy it with "
                                   f"one replica (got {replicas}), or STIP alone in a configuration of its "
                                   "own")


def build_deployment(replicas: int = 1) -> Any:
    """A Serve deployment class whose replicas each serve the cloud app of one ``cloud.toml``."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(num_replicas=replicas, name=APP_NAME)
    class CloudDeployment:
        def __init__(self, config_path: str, token: str) -> None:
            from coinfer.cloud.daemon.app import create_cloud_app, load_services

            self.app = create_cloud_app(load_services(read_config(config_path)), token)

        async def __call__(self, request: Request) -> Response:
            return await forward(self.app, request)

    return CloudDeployment


def application(config: CloudConfig, token: str, replicas: int = 1) -> Any:
    """The Serve application (``Deployment.bind``) of ``config``; nothing is loaded until a replica
    starts. The replicas read ``config.path`` themselves: it and the files it names must be
    reachable at the same absolute paths on every node."""
    if not token:
        raise CoinferError("the cloud services need a non-empty token")
    check_replicas(config, replicas)
    return build_deployment(replicas).bind(str(Path(config.path).resolve()), token)


def app_builder(args: dict[str, Any]) -> Any:
    """The Serve application builder named by a Serve config file (``import_path:
    coinfer.cloud.daemon.ray_app:app_builder``). ``args``: ``config`` (the ``cloud.toml`` path,
    relative to where Serve runs) and optionally ``replicas``. The token is read here, once, from
    the configuration's ``token_file`` or else ``$COINFER_TOKEN``; without either it refuses, since
    a token made up inside Ray could reach nobody."""
    unknown = sorted(set(args) - {"config", "replicas"})
    if unknown:
        raise InvalidArgumentError(f"unknown application args {unknown}; expected config and replicas")
    if not args.get("config"):
        raise InvalidArgumentError("the application args need config: the path of cloud.toml")
    config = read_config(Path(os.path.expanduser(str(args["config"]))))
    token = client_token(config.server.token_file, TOKEN_ENV)
    return application(config, token, int(args.get("replicas", 1)))


def start_ray(address: str | None = None) -> None:
    """Start a local Ray (``address`` None) or join the cluster at ``address``, unless this process
    is connected already. Ray then owns SIGTERM: its handler exits the process."""
    ray, _ = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)


def deploy(config: CloudConfig, token: str, *, address: str | None = None, replicas: int = 1) -> str:
    """Start Ray (or join the cluster at ``address``, :func:`start_ray`), put Serve's HTTP proxy on the
    configured host and port, deploy the cloud app, and return its base URL once the replicas are
    up. Ray's files go to ``$RAY_TMPDIR`` when set."""
    app = application(config, token, replicas)
    _, serve = import_ray()
    start_ray(address)
    serve.start(http_options={"host": config.server.host, "port": config.server.port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{config.server.host}:{config.server.port}"
