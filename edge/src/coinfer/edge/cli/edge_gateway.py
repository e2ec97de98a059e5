"""``coinfer edge gateway``: the edge gateway daemon, everything the edge hosts from one file.

    coinfer edge gateway --config gateway.toml [--host H] [--port P] [--token-file F]

The configuration (TOML; see docs/gateway.md and samples/gateway/gateway.toml) turns on live
camera streams gated by PacketGame with per-stream InFi filters, camera-gate uploads, and the
InFi, split and evolution services, all on one port behind one bearer token. ``--host``,
``--port`` and ``--token-file`` override its ``[server]`` values. A bad configuration is
refused with the line that is wrong before anything listens. SIGHUP reloads the file,
SIGTERM or SIGINT drain and stop (exit 0). The token comes from ``--token-file``, else
``[server] token_file``, else ``COINFER_TOKEN``; without any, a fresh one is printed once.
"""

from __future__ import annotations

import argparse
from typing import Any

from coinfer.sdk.cli.flags import add_daemon


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_daemon(parser, port=8100, reference="docs/gateway.md")


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.daemon.process import run_daemon

    return run_daemon(args.config, host=args.host, port=args.port, token_file=args.token_file,
                      exporter=_device_model_exporter)


def _device_model_exporter() -> Any:
    """What ``[evolve]`` converts evolved models with (``coinfer-converters``, imported when needed)."""
    from coinfer.sdk.errors import CoinferError

    try:
        from coinfer.converters.evolve_models import export_device_model
    except ImportError as error:
        raise CoinferError("evolving device models needs coinfer-converters: "
                           "pip install 'coinfer-edge[export]'") from error
    return export_device_model
