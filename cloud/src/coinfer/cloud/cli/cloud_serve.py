"""``coinfer cloud serve``: every configured cloud service in one process, from one config file.

    coinfer cloud serve --config cloud.toml [--host H] [--port P] [--token-file FILE]
    coinfer cloud serve --config cloud.toml --ray [ADDRESS] [--replicas N]

``cloud.toml`` (see ``samples/cloud/cloud.toml`` and :mod:`coinfer.cloud.daemon.config`) names
the services (``[stip]``, ``[mlink]``) and the ``[server]`` settings; ``--host``, ``--port`` and
``--token-file`` override the file's. A bad configuration is refused, naming its line, before
any model is loaded or port bound. The bearer token comes from the token file, else
``COINFER_TOKEN``, else a fresh one is printed once. SIGTERM (or Ctrl-C) stops it cleanly:
uvicorn finishes the requests in flight; on Ray, Serve and the local Ray are shut down.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from coinfer.sdk.cli.flags import add_daemon, positive

if TYPE_CHECKING:
    from coinfer.cloud.daemon.config import CloudConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_daemon(parser, port=8200, reference="docs/cloud.md")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="deploy on Ray Serve: alone starts a local Ray, with an address joins a cluster")
    parser.add_argument("--replicas", type=positive(int), default=1,
                        help="Ray Serve replicas (1 when [mlink] is configured)")


def run(args: argparse.Namespace) -> int:
    from coinfer.cloud.daemon.config import read_config
    from coinfer.sdk.service import resolve_token

    config = read_config(args.config).with_overrides(host=args.host, port=args.port,
                                                     token_file=args.token_file)
    if args.ray is not None:
        from coinfer.cloud.daemon.ray_app import check_replicas

        check_replicas(config, args.replicas)
        return _serve_on_ray(config, resolve_token(config.server.token_file), args.ray or None, args.replicas)
    import uvicorn

    from coinfer.cloud.daemon.app import create_cloud_app, load_services
    from coinfer.sdk.service import uvicorn_options

    services = load_services(config)  # before the token: a fresh one is announced only to be used
    app = create_cloud_app(services, resolve_token(config.server.token_file))
    server = config.server
    print(f"coinfer cloud serve: {', '.join(config.services)} on http://{server.host}:{server.port} "
          f"(requests up to {server.max_request_mib} MiB)", file=sys.stderr)
    # uvicorn finishes the requests in flight on SIGTERM, then raises the signal again for the
    # handler it found: this one, so that the command ends with status 0, not death by signal.
    with _sigterm_stops():
        uvicorn.run(app, **uvicorn_options(server.host, server.port, server.limits))
    return 0


class _Stopped(Exception):
    """SIGTERM arrived."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Within the block, SIGTERM ends it quietly (the caller then returns 0)."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve_on_ray(config: CloudConfig, token: str, address: str | None, replicas: int) -> int:
    """Deploy on Ray Serve and wait until SIGTERM (status 0) or Ctrl-C. Either way the deployment
    goes: with the local Ray this started, Serve and Ray are shut down; on a cluster, only this
    application."""
    from coinfer.cloud.daemon.ray_app import APP_NAME, deploy, import_ray, start_ray

    ray, serve = import_ray()
    try:
        start_ray(address)  # installs Ray's own SIGTERM handler, which the block below replaces
        with _sigterm_stops():
            url = deploy(config, token, address=address, replicas=replicas)
            print(f"coinfer cloud serve: {', '.join(config.services)} on Ray Serve at {url}; SIGTERM or "
                  "Ctrl-C stops it", file=sys.stderr)
            while True:
                time.sleep(3600)
    finally:
        if ray.is_initialized():
            if address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            ray.shutdown()
    return 0
