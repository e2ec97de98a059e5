"""``coinfer mlink plan``: which models to run under a budget, and the accuracy to expect.

    coinfer mlink plan --links links/ --table outputs.npz --budget-fraction 0.5 --brute-force

The activation scores come from the links' performance on the table's steps; the plan
fills the budget greedily. The expected mean output accuracy F(A) is measured on the same
steps (executed models count 1, the others their ensemble's performance). With
``--brute-force`` the optimum over every subset is printed next to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.edge.cli.mlink_arguments import add_budget_arguments, budget_from_args, load_table
from coinfer.sdk.cli.flags import add_json, add_records, add_renamed
from coinfer.sdk.cli.report import report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=Path, required=True, metavar="DIR", help="link graph artifact")
    add_records(parser, "recorded outputs to profile the links on (with the models' costs)")
    add_renamed(parser, "--records", "--table")
    add_budget_arguments(parser)
    parser.add_argument("--brute-force", action="store_true", help="also find the optimum by enumeration")
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.mlink import (
        LinkGraph,
        activation_scores,
        brute_force_plan,
        greedy_plan,
        mean_output_accuracy,
    )
    from coinfer.sdk.mlink.table import costs_of

    graph = LinkGraph.load(args.links)
    table = load_table(args.records, graph.models)
    costs = {name: costs_of(table, args.cost)[name] for name in graph.models}
    budget = budget_from_args(args, costs)
    scores = activation_scores(graph.link_performance(table.outputs), costs)

    def predicted(active: tuple[str, ...]) -> dict[str, float]:
        return graph.ensemble_performance(table.outputs, active)

    plan = greedy_plan(scores, costs, budget)
    metrics: dict[str, object] = {
        "budget": round(budget, 4), "cost of every model": round(sum(costs.values()), 4),
        "run": ", ".join(plan.active) or "nothing", "cost": round(plan.cost, 4),
        "predicted": ", ".join(name for name in graph.models if name not in plan.active) or "nothing",
        "expected accuracy": round(mean_output_accuracy(plan.active, graph.models, predicted), 4),
    }
    metrics.update({f"score {name}": round(value, 4) for name, value in sorted(scores.items())})
    if args.brute_force:
        best = brute_force_plan(costs, budget, predicted)
        assert best.accuracy is not None  # brute_force_plan evaluates the plan it returns
        metrics.update({"optimum run": ", ".join(best.active) or "nothing",
                        "optimum cost": round(best.cost, 4), "optimum accuracy": round(best.accuracy, 4)})
    report("coinfer mlink plan", metrics, args.json)
    return 0
