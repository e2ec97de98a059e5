"""``coinfer split serve``: the edge half of a split: decode what the device sends, run the tail.

    coinfer split serve --bundle out/split/edge [--max-batch 16] [--port 8400]   # COINFER_TOKEN

The body limit follows from the bundle's tensors and ``--max-batch``; it must fit within
``--max-request-mib``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coinfer.sdk.cli.flags import add_service, count, service_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR",
                        help="the edge side of coinfer split export (OUT/edge)")
    parser.add_argument("--max-batch", type=count(1024), default=16, help="samples per request (default 16)")
    parser.add_argument("--threads", type=count(256), default=1, help="ONNX Runtime threads per tail run")
    parser.add_argument("--workers", type=count(64), default=1, help="tail runs at once (default 1)")
    add_service(parser, port=8400)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.edge.split.service import SplitServiceOptions, create_app
    from coinfer.sdk.errors import InvalidArgumentError
    from coinfer.sdk.service import resolve_token

    options = SplitServiceOptions(max_batch=args.max_batch, threads=args.threads, workers=args.workers)
    app = create_app(args.bundle, resolve_token(args.token_file), options)
    needed = app.state.service.max_request_bytes
    if needed > args.max_request_mib << 20:
        raise InvalidArgumentError(f"{args.max_batch} samples of this split need requests of {needed} bytes, "
                                   f"over --max-request-mib {args.max_request_mib}; lower --max-batch")
    print(f"serving the tail of {args.bundle} on http://{args.host}:{args.port} "
          f"(requests up to {needed} bytes)", file=sys.stderr)
    uvicorn.run(app, **service_options(args))
    return 0
