"""``coinfer mlink federate``: one edge server's part in federated link training.

    coinfer mlink federate --server http://127.0.0.1:8300 --name edge-1 --token-file edge-1.token \\
        --records outputs.npz --rounds 3 --epochs 5 --out links/

Each round the edge fetches the global links from the aggregator (``coinfer mlink
serve``), fits them on its own recorded outputs, uploads the weight change, and waits
until every client of the round has sent theirs. Its outputs never leave the machine.
With ``--out`` the final global links are saved as a link graph artifact. ``--name`` must be
on the aggregator's client list and the token (``--token-file``, else ``COINFER_TOKEN``)
the one registered for it: the edge's own, or the service token for a name listed
without one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.edge.cli.mlink_arguments import check_models
from coinfer.sdk.cli.flags import add_json, add_output, add_records, add_renamed, check_output
from coinfer.sdk.cli.report import report
from coinfer.sdk.errors import CoinferError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="URL",
                        help="the aggregator, e.g. http://127.0.0.1:8300")
    parser.add_argument("--name", required=True,
                        help="this edge's client name, as listed in the aggregator's --clients file")
    add_records(parser, "this edge's recorded outputs")
    add_renamed(parser, "--records", "--table")
    parser.add_argument("--rounds", type=int, default=3, help="rounds to take part in (default 3)")
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per round (default 5)")
    parser.add_argument("--wait", type=float, default=600.0,
                        help="seconds to wait for the other clients each round (default 600)")
    parser.add_argument("--token-file", type=Path,
                        help="file holding the token registered for --name at the aggregator: this edge's "
                             "own, or the service token (else COINFER_TOKEN)")
    add_output(parser, "the final global links (an artifact directory)", required=False)
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.mlink.federated_client import FederatedClient
    from coinfer.sdk.mlink.table import OutputTable
    from coinfer.sdk.service import client_token

    if args.rounds < 1 or args.epochs < 1:
        raise CoinferError(f"--rounds and --epochs must be at least 1, got {args.rounds} and {args.epochs}")
    check_output(args)
    token = client_token(args.token_file)
    table = OutputTable.load(args.records)  # a bad table is refused before the aggregator is contacted
    client = FederatedClient(args.server, token, args.name)
    graph = client.fetch_graph()
    check_models(table, graph.models, args.records)
    outputs = {name: table.outputs[name] for name in graph.models}
    sent = received = 0
    for _ in range(args.rounds):
        result = client.train_round(graph, outputs, epochs=args.epochs)
        sent, received = sent + result.bytes_sent, received + result.bytes_received
        client.wait_for_round(result.round + 1, timeout=args.wait)
    final = client.fetch_global(graph)
    if args.out is not None:
        graph.save(args.out, overwrite=args.overwrite)
    metrics: dict[str, object] = {"client": args.name, "steps": len(table), "rounds": args.rounds,
                                  "global round": final, "bytes sent": sent, "bytes received": received}
    if args.out is not None:
        metrics["saved"] = str(args.out)
    report("coinfer mlink federate", metrics, args.json)
    return 0
