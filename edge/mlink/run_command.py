"""``coinfer mlink run``: serve recorded steps under a budget and score what was served.

    coinfer mlink run --links links/ --table stream.npz --budget-fraction 0.5 --json run.json

The first plan comes from every model's outputs on the first tenth of a period (charged
as run); then every ``--period`` steps the plan is made again from the links' performance
on the steps profiled so far (``--profile-fraction`` of each period runs every model); the planned
models' recorded outputs are served and the others predicted. Each model's served outputs
are scored against its real outputs, and the time saved against running every model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from coinfer.edge.mlink.arguments import add_budget_arguments, budget_from_args, load_table
from coinfer.sdk.cli.report import report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=Path, required=True, metavar="DIR", help="link graph artifact")
    parser.add_argument("--table", type=Path, required=True, metavar="NPZ", help="recorded steps to serve")
    add_budget_arguments(parser)
    parser.add_argument("--period", type=int, default=100, help="steps between re-selections (default 100)")
    parser.add_argument("--profile-fraction", type=float, default=0.01,
                        help="fraction of each period on which every model runs (default 0.01)")
    parser.add_argument("--json", type=Path, help="also write the report here")


def run(args: argparse.Namespace) -> int:
    from coinfer.edge.mlink.serving import RecordedRunner, ServingOptions, serve
    from coinfer.sdk.mlink import LinkGraph

    graph = LinkGraph.load(args.links)
    table = load_table(args.table, graph.models)
    runner = RecordedRunner(table, cost=args.cost)
    budget = budget_from_args(args, runner.costs)
    first = np.arange(min(len(table), max(1, args.period // 10)))
    result = serve(graph, runner, len(table),
                   ServingOptions(budget=budget, period=args.period, profile_fraction=args.profile_fraction,
                                  carry=args.cost == "ms"),
                   profile=table.take(first))
    result.model_cost += sum(runner.costs.values()) * first.size  # every model ran on the seed steps
    scores = result.accuracy(table)
    metrics: dict[str, object] = {"steps": len(table), "budget": round(budget, 4),
                                  "mean output accuracy": round(float(np.mean(list(scores.values()))), 4)}
    if args.cost == "ms":
        metrics["time saved"] = round(result.time_saved(runner.costs), 4)
    metrics.update({f"accuracy {name}": round(value, 4) for name, value in scores.items()})
    metrics.update({f"runs {name}": count for name, count in result.runs.items()})
    metrics["plans"] = "; ".join(sorted({", ".join(plan.active) for plan in result.plans}))
    report("coinfer mlink run", metrics, args.json)
    return 0

