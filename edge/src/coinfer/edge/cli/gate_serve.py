"""``coinfer gate serve``: the edge gateway that ingests gated camera uploads, decodes and infers.

    coinfer gate serve [--host 127.0.0.1] [--port 8100] [--token-file F] [--max-request-mib N]
                       [--max-streams N] [--max-packets-per-request N] [--tasks faces,cats]

It serves camera uploads alone; ``coinfer edge gateway`` hosts it with the other edge
services from one configuration file. The bearer token
comes from ``COINFER_TOKEN`` or ``--token-file``; without either, a fresh one is generated
and printed once. The gateway binds to loopback unless told otherwise. With ``--tasks`` it
runs the real detectors (:class:`coinfer.edge.gate.inference.DetectorPlugin`) on the
pictures the cameras chose and answers with necessity feedback; without, it only decodes.
"""

from __future__ import annotations

import argparse

from coinfer.sdk.cli.flags import add_service, positive, service_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coinfer.edge.gateway import GatewayOptions

    packets = GatewayOptions.max_packets_per_request
    add_service(parser, port=8100)
    parser.add_argument("--max-streams", type=positive(int), default=64, metavar="N",
                        help="concurrent camera streams (default 64)")
    parser.add_argument("--max-packets-per-request", type=positive(int), default=packets, metavar="N",
                        help="packets one request may have decoded, refused (413) before any is; bounds "
                             f"the decoding a request costs (default {packets})")
    parser.add_argument("--tasks", default="",
                        help="comma-separated detection tasks run on the chosen pictures: faces, cats, "
                             "people, text (default none: decode only)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.edge.gateway import GatewayOptions, create_gateway_app
    from coinfer.sdk.service import resolve_token

    tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
    plugin = None
    if tasks:
        from coinfer.edge.gate.inference import DetectorPlugin

        plugin = DetectorPlugin(tasks)
    options = GatewayOptions(max_request_bytes=args.max_request_mib << 20, max_streams=args.max_streams,
                             max_packets_per_request=args.max_packets_per_request, plugin=plugin)
    app = create_gateway_app(options, resolve_token(args.token_file))
    uvicorn.run(app, **service_options(args))
    return 0
