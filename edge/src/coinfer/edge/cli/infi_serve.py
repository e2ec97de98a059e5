"""``coinfer infi serve``: the edge detection service of InFi's offload deployment.

    coinfer infi serve --task faces [--host 127.0.0.1] [--port 8200] [--token-file F]

Cameras run the skip filter themselves and post only the frames whose result may matter,
as JPEG, to ``/v1/infi/detect``; the service runs the real detector of ``--task`` on each
(:mod:`coinfer.edge.infi.service`). The bearer token comes from ``COINFER_TOKEN`` or
``--token-file``; without either, a fresh one is generated and printed once.
"""

from __future__ import annotations

import argparse

from coinfer.sdk.cli.flags import add_service, service_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coinfer.edge.models.detectors import DETECTORS

    parser.add_argument("--task", default="faces", choices=sorted(DETECTORS),
                        help="the detector run on every posted frame (default faces)")
    add_service(parser, port=8200)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.edge.infi.service import DetectionOptions, create_detection_app
    from coinfer.sdk.service import resolve_token

    options = DetectionOptions(task=args.task, max_request_bytes=args.max_request_mib << 20)
    app = create_detection_app(options, resolve_token(args.token_file))
    uvicorn.run(app, **service_options(args))
    return 0
