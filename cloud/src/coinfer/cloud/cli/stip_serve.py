"""``coinfer stip serve``: the STIP model server, on uvicorn or scaled out on Ray Serve.

    coinfer stip serve --bundle out/server [--host 127.0.0.1] [--port 8000] [--max-response-mib N]
    coinfer stip serve --bundle out/server --ray [ADDRESS] --replicas 2

(``coinfer cloud serve stip --artifact ...`` is the old spelling, accepted for one release.)
The bearer token comes from ``COINFER_TOKEN`` or ``--token-file``; without either, a fresh
one is generated and printed once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from coinfer.sdk.cli.flags import add_renamed, add_service, count, positive, service_options
from coinfer.sdk.stip.protocol import RESPONSE_LIMITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR",
                        help="the server bundle from coinfer stip publish (OUT/server)")
    add_renamed(parser, "--bundle", "--artifact")
    add_service(parser, port=8000)
    most = RESPONSE_LIMITS.max_payload_bytes >> 20
    parser.add_argument("--max-response-mib", type=count(most), default=most, metavar="N",
                        help="largest output of one forward (batch x tokens x output size floats), refused "
                             f"before the model runs; at most what a client reads (default {most})")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="deploy on Ray Serve: alone starts a local Ray, with an address joins a cluster")
    parser.add_argument("--replicas", type=positive(int), default=1, help="Ray Serve replicas")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.cloud.stip.publish import load_cloud_model
    from coinfer.cloud.stip.server import ServerOptions, StipModelServer, create_app
    from coinfer.sdk.service import resolve_token

    options = ServerOptions(max_request_bytes=args.max_request_mib << 20,
                            max_response_bytes=args.max_response_mib << 20)
    token = resolve_token(args.token_file)
    if args.ray is not None:
        from coinfer.cloud.stip.ray_serve import deploy

        url = deploy(args.bundle, token, address=args.ray or None, host=args.host, port=args.port,
                     num_replicas=args.replicas, options=options)
        print(f"STIP server on Ray Serve at {url}; Ctrl-C stops it", file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        finally:
            from ray import serve

            serve.shutdown()
    model, info = load_cloud_model(args.bundle)
    app = create_app(StipModelServer(model, info, options), token)
    uvicorn.run(app, **service_options(args))
    return 0
