"""``coinfer mlink serve``: the federated aggregation service for link graphs (FedAvg rounds).

    coinfer mlink serve --links out/links --min-clients 3 [--state-dir out/links-rounds] [--port 8300]

(``coinfer cloud serve mlink --graph ...`` is the old spelling, accepted for one release.)
The bearer token comes from ``COINFER_TOKEN`` or ``--token-file``; without either, a fresh
one is generated and printed once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coinfer.sdk.cli.flags import add_renamed, add_service, positive, work_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=Path, required=True, metavar="DIR",
                        help="link graph artifact: the initial global links")
    add_renamed(parser, "--links", "--graph")
    parser.add_argument("--min-clients", type=positive(int), required=True, help="updates that close a round")
    add_service(parser, port=8300)
    parser.add_argument("--state-dir", type=work_directory, metavar="DIR",
                        help="where each round's global links are saved and resumed from "
                             "(default: LINKS-rounds next to --links)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.cloud.mlink.server import LinkAggregator, ServiceOptions, create_app
    from coinfer.sdk.mlink import LinkGraph
    from coinfer.sdk.service import resolve_token

    state_dir = args.state_dir or args.links.with_name(args.links.name + "-rounds")
    aggregator = LinkAggregator(LinkGraph.load(args.links), args.min_clients, state_dir)
    app = create_app(aggregator, resolve_token(args.token_file),
                     ServiceOptions(max_request_bytes=args.max_request_mib << 20))
    print(f"MLink aggregator at round {aggregator.round}, {args.min_clients} updates per round, "
          f"rounds saved in {state_dir}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
