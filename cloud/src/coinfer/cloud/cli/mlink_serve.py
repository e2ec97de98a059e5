"""``coinfer mlink serve``: the federated aggregation service for link graphs (robust FedAvg rounds).

    coinfer mlink serve --links out/links --min-clients 3 --clients clients.txt \\
        [--state-dir out/links-rounds] [--aggregate median] [--port 8300]

(``coinfer cloud serve mlink --graph ...`` is the old spelling, accepted for one release.)
``--clients`` lists every edge server that may send updates, one a line: ``NAME
sha256:HEX`` for a client with its own token (the digest of ``printf %s "$TOKEN" |
sha256sum``), or ``NAME`` alone for one that speaks with the service token. The service
token comes from ``COINFER_TOKEN`` or ``--token-file``; without either, a fresh one is
generated and printed once. The aggregation flags bound what one client can do to the
global links (:mod:`coinfer.sdk.mlink.robust`); their defaults are the robust ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from coinfer.sdk.cli.flags import add_renamed, add_service, positive, work_directory
from coinfer.sdk.mlink.robust import AGGREGATES, RobustOptions

DEFAULTS = RobustOptions()


def _number(valid: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse ``type`` for a float ``valid`` accepts (``inf`` parses; NaN never passes)."""
    def parse(text: str) -> float:
        value = float(text)
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=Path, required=True, metavar="DIR",
                        help="link graph artifact: the initial global links")
    add_renamed(parser, "--links", "--graph")
    parser.add_argument("--min-clients", type=positive(int), required=True, help="updates that close a round")
    add_service(parser, port=8300)
    parser.add_argument("--state-dir", type=work_directory, metavar="DIR",
                        help="where each round's global links are saved and resumed from "
                             "(default: LINKS-rounds next to --links)")
    parser.add_argument("--clients", type=Path, required=True, metavar="FILE",
                        help="the clients that may send updates, one a line: 'NAME sha256:HEX' (its own "
                             "token's digest) or 'NAME' (speaks with the service token)")
    parser.add_argument("--aggregate", choices=AGGREGATES, default=DEFAULTS.aggregate,
                        help=f"how a round's clipped deltas are combined (default {DEFAULTS.aggregate}); "
                             "mean is FedAvg's sample-weighted mean, which one client can still pull")
    parser.add_argument("--trim", type=_number(lambda value: 0 < value < 0.5, "in (0, 0.5)"),
                        default=DEFAULTS.trim, metavar="F",
                        help=f"trimmed-mean: fraction dropped at each end (default {DEFAULTS.trim})")
    parser.add_argument("--clip-factor", type=_number(lambda value: value >= 1, "at least 1 (inf: off)"),
                        default=DEFAULTS.clip_factor, metavar="F",
                        help="clip each delta's norm to F times the round's median norm "
                             f"(default {DEFAULTS.clip_factor:g}; inf: no clipping)")
    parser.add_argument("--max-samples", type=positive(int), default=DEFAULTS.max_samples, metavar="N",
                        help=f"a client's sample count weighs the mean up to N samples "
                             f"(default {DEFAULTS.max_samples})")
    parser.add_argument("--max-growth", type=_number(lambda value: value > 1, "above 1 (inf: off)"),
                        default=DEFAULTS.max_growth, metavar="F",
                        help="discard a round whose global weight norm grows past F times the previous one "
                             f"(default {DEFAULTS.max_growth:g}; non-finite results are always discarded)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coinfer.cloud.mlink.server import ClientRegistry, LinkAggregator, ServiceOptions, create_app
    from coinfer.sdk.mlink import LinkGraph
    from coinfer.sdk.service import resolve_token

    clients = ClientRegistry.load(args.clients)
    rules = RobustOptions(args.aggregate, trim=args.trim, clip_factor=args.clip_factor,
                          max_samples=args.max_samples, max_growth=args.max_growth)
    state_dir = args.state_dir or args.links.with_name(args.links.name + "-rounds")
    aggregator = LinkAggregator(LinkGraph.load(args.links), args.min_clients, state_dir, clients=clients,
                                rules=rules)
    app = create_app(aggregator, resolve_token(args.token_file),
                     ServiceOptions(max_request_bytes=args.max_request_mib << 20))
    print(f"MLink aggregator at round {aggregator.round}, {args.min_clients} updates per round from "
          f"{len(clients)} registered clients, {args.aggregate} of deltas clipped to "
          f"{args.clip_factor:g}x the median norm, rounds saved in {state_dir}", file=sys.stderr)
    from coinfer.sdk.cli.flags import service_options

    uvicorn.run(app, **service_options(args))
    return 0
