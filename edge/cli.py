"""``coinfer edge``: edge-tier services.

    coinfer edge gateway [--host 127.0.0.1] [--port 8100] [--token-file F] [--max-request-mib N]
                         [--max-streams N] [--tasks faces,cats]

The bearer token comes from ``COINFER_TOKEN`` or ``--token-file``; without either, a fresh
one is generated and printed once. The gateway binds to loopback unless told otherwise.
With ``--tasks`` it runs the real detectors (:class:`coinfer.edge.gate.inference.DetectorPlugin`)
on the pictures the cameras chose and answers with necessity feedback; without, it only decodes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.service import TOKEN_ENV, resolve_token

__all__ = ["TOKEN_ENV", "add_arguments", "resolve_token", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gateway = sub.add_parser("gateway", help="ingest gated camera uploads, decode and infer",
                             description="Ingest packets uploaded by coinfer.device.gate.CameraGate.")
    gateway.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    gateway.add_argument("--port", type=int, default=8100)
    gateway.add_argument("--token-file", type=Path, help="file holding the bearer token")
    gateway.add_argument("--max-request-mib", type=int, default=64, help="largest request body accepted")
    gateway.add_argument("--max-streams", type=int, default=64, help="concurrent camera streams")
    gateway.add_argument("--tasks", default="",
                         help="comma-separated detection tasks run on the chosen pictures: faces, cats, "
                              "people, text (default none: decode only)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.edge.gateway import GatewayOptions, create_gateway_app

    if args.max_request_mib < 1 or args.max_streams < 1:
        raise CoinferError("--max-request-mib and --max-streams must be >= 1")
    tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
    plugin = None
    if tasks:
        from coinfer.edge.gate.inference import DetectorPlugin

        plugin = DetectorPlugin(tasks)
    options = GatewayOptions(max_request_bytes=args.max_request_mib << 20, max_streams=args.max_streams,
                             plugin=plugin)
    app = create_gateway_app(options, resolve_token(args.token_file))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
