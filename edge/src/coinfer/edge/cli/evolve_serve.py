"""``coinfer evolve serve``: the edge evolution service: cameras upload frames, the edge evolves
their models and publishes them.

    coinfer evolve serve --config evolve.json [--port 8500] [--token-file F]   # COINFER_TOKEN

The configuration names the global model, the devices and their initial weights, how they
train and the limits (see :mod:`coinfer.edge.evolve.service`); it is read and checked before
any model is loaded. Devices fetch their evolved models from the same port
(``coinfer evolve device``). Evolved models are converted to TFLite, which needs
``coinfer-converters`` and TensorFlow on the edge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coinfer.sdk.cli.flags import add_service, service_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                        help="the service's JSON configuration (global model, devices, limits)")
    add_service(parser, port=8500)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.edge.evolve.service import EvolutionConfig, EvolutionService, create_evolution_app
    from coinfer.sdk.errors import CoinferError, InvalidArgumentError
    from coinfer.sdk.service import resolve_token

    config = EvolutionConfig.load(args.config)
    token = resolve_token(args.token_file)
    try:
        from coinfer.converters.evolve_models import export_device_model
    except ImportError as error:
        raise CoinferError("evolving device models needs coinfer-converters: "
                           "pip install 'coinfer-edge[export]'") from error
    if config.max_request_bytes > args.max_request_mib << 20:
        raise InvalidArgumentError(f"uploads of {config.max_upload_frames} frames of {config.input_size} x "
                                   f"{config.input_size} need {config.max_request_bytes} bytes, over "
                                   f"--max-request-mib {args.max_request_mib}; lower max_upload_frames")
    service = EvolutionService(config, export_device_model)
    try:
        app = create_evolution_app(service, token)
        print(f"evolving {len(config.devices)} device model(s) on http://{args.host}:{args.port} "
              f"(uploads up to {service.max_request_bytes} bytes)", file=sys.stderr)
        uvicorn.run(app, **service_options(args))
    finally:
        service.close()
    return 0
