"""``coinfer cloud``: cloud-tier services.

    coinfer cloud serve stip --artifact out/server [--host 127.0.0.1] [--port 8000]
    coinfer cloud serve stip --artifact out/server --ray [ADDRESS] --replicas 2
    coinfer cloud serve mlink --graph out/links --min-clients 3 [--state-dir out/links-rounds] [--port 8100]

The bearer token comes from ``COINFER_TOKEN`` or ``--token-file``; without either, a
fresh one is generated and printed once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from coinfer.sdk.service import TOKEN_ENV, resolve_token

__all__ = ["TOKEN_ENV", "add_arguments", "resolve_token", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run a cloud service")
    services = serve.add_subparsers(dest="service", metavar="SERVICE", required=True)
    stip = services.add_parser("stip", help="the STIP model server")
    stip.add_argument("--artifact", type=Path, required=True, help="server bundle from coinfer stip publish")
    stip.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    stip.add_argument("--port", type=int, default=8000)
    stip.add_argument("--token-file", type=Path, help="file holding the bearer token")
    stip.add_argument("--max-request-mib", type=int, default=64)
    stip.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                      help="deploy on Ray Serve: alone starts a local Ray, with an address joins a cluster")
    stip.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas")
    mlink = services.add_parser("mlink", help="the MLink federated aggregation service for link graphs")
    mlink.add_argument("--graph", type=Path, required=True,
                       help="link graph artifact: the initial global links")
    mlink.add_argument("--min-clients", type=int, required=True, help="updates that close a round")
    mlink.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    mlink.add_argument("--port", type=int, default=8100)
    mlink.add_argument("--token-file", type=Path, help="file holding the bearer token")
    mlink.add_argument("--max-request-mib", type=int, default=64,
                       help="refuse to serve a graph whose update frame is larger")
    mlink.add_argument("--state-dir", type=Path,
                       help="where each round's global links are saved and resumed from "
                            "(default: GRAPH-rounds next to --graph)")


def run(args: argparse.Namespace) -> int:
    if args.service == "mlink":
        return _serve_mlink(args)
    return _serve_stip(args)


def _serve_mlink(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.cloud.mlink.server import LinkAggregator, ServiceOptions, create_app
    from coinfer.sdk.mlink import LinkGraph

    state_dir = args.state_dir or args.graph.with_name(args.graph.name + "-rounds")
    aggregator = LinkAggregator(LinkGraph.load(args.graph), args.min_clients, state_dir)
    app = create_app(aggregator, resolve_token(args.token_file),
                     ServiceOptions(max_request_bytes=args.max_request_mib << 20))
    print(f"MLink aggregator at round {aggregator.round}, {args.min_clients} updates per round, "
          f"rounds saved in {state_dir}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _serve_stip(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.cloud.stip.publish import load_cloud_model
    from coinfer.cloud.stip.server import ServerOptions, StipModelServer, create_app

    options = ServerOptions(max_request_bytes=args.max_request_mib << 20)
    token = resolve_token(args.token_file)
    if args.ray is not None:
        from coinfer.cloud.stip.ray_serve import deploy

        url = deploy(args.artifact, token, address=args.ray or None, host=args.host, port=args.port,
                     num_replicas=args.replicas, options=options)
        print(f"STIP server on Ray Serve at {url}; Ctrl-C stops it", file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        finally:
            from ray import serve

            serve.shutdown()
    model, info = load_cloud_model(args.artifact)
    app = create_app(StipModelServer(model, info, options), token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
