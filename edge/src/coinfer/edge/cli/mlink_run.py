"""``coinfer mlink run``: serve steps under a budget and score what was served.

    coinfer mlink run --links links/ --table stream.npz --budget-fraction 0.5 --json run.json
    coinfer mlink run --links links/ --table stream.npz --scenes work/scenes --crowd work/crowd \\
        --budget-fraction 0.5

The first plan comes from every model's outputs on the first tenth of a period (charged
as run); then every ``--period`` steps the plan is made again from the links' performance
on the steps profiled so far (``--profile-fraction`` of each period runs every model); the planned
models' outputs are served and the others predicted. Each model's served outputs
are scored against its real outputs, and the time saved against running every model.

By default the planned models' outputs are replayed from the table. With ``--scenes`` (the
scene set the table was recorded on) and ``--crowd`` (the crowd CNN), the real models run
live on the decoded frames and audio, only where the plan runs them: the table then gives
the costs to plan with and the outputs to score against, and the report adds the wall
time the models really took against the recorded time of running every model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coinfer.edge.cli.mlink_arguments import add_budget_arguments, budget_from_args, load_table
from coinfer.sdk.cli.flags import add_json, add_records, add_renamed, fraction
from coinfer.sdk.cli.report import report
from coinfer.sdk.errors import CoinferError

if TYPE_CHECKING:
    from coinfer.edge.mlink.live import ZooRunner
    from coinfer.sdk.mlink.table import OutputTable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=Path, required=True, metavar="DIR", help="link graph artifact")
    add_records(parser, "recorded steps to serve")
    add_renamed(parser, "--records", "--table")
    add_budget_arguments(parser)
    parser.add_argument("--period", type=int, default=100, help="steps between re-selections (default 100)")
    parser.add_argument("--profile-fraction", type=fraction, default=0.01,
                        help="fraction of each period on which every model runs (default 0.01)")
    parser.add_argument("--scenes", type=Path, metavar="DIR",
                        help="run the models live on this scene set (the one the table was recorded on)")
    parser.add_argument("--crowd", type=Path, metavar="DIR", help="the crowd CNN artifact, with --scenes")
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.mlink import LinkGraph
    from coinfer.sdk.mlink.serving import RecordedRunner, ServingOptions, serve
    from coinfer.sdk.mlink.table import OutputTable

    if args.period < 1:
        raise CoinferError(f"--period must be at least 1, got {args.period}")
    if (args.scenes is None) != (args.crowd is None):
        raise CoinferError("--scenes and --crowd go together: the live models need the crowd CNN")
    graph = LinkGraph.load(args.links)
    table = load_table(args.records, graph.models)
    recorded = RecordedRunner(table, cost=args.cost)
    live = None if args.scenes is None else live_runner(args, table, graph.models, recorded.costs)
    runner = recorded if live is None else live
    budget = budget_from_args(args, recorded.costs)
    first = np.arange(min(len(table), max(1, args.period // 10)))
    if live is None:
        profile = table.take(first)
    else:
        specs = {name: table.specs[name] for name in graph.models}
        profile = OutputTable(specs, {name: live(name, first) for name in graph.models})
        live.restart()  # the stream is served from its first step again
    result = serve(graph, runner, len(table),
                   ServingOptions(budget=budget, period=args.period, profile_fraction=args.profile_fraction,
                                  carry=args.cost == "ms"),
                   profile=profile)
    result.model_cost += sum(recorded.costs.values()) * first.size  # every model ran on the seed steps
    scores = result.accuracy(table)
    metrics: dict[str, object] = {"steps": len(table), "budget": round(budget, 4),
                                  "mean output accuracy": round(float(np.mean(list(scores.values()))), 4)}
    if args.cost == "ms":
        metrics["time saved"] = round(result.time_saved(recorded.costs), 4)
    if live is not None:
        every = sum(table.costs[name]["ms_mean"] for name in graph.models) * len(table) / 1000
        ran = sum(live.seconds.values())
        metrics.update({"live model seconds": round(ran, 3),
                        "recorded seconds of every model": round(every, 3),
                        "live time saved": round(1 - (ran + result.link_seconds) / every, 4)})
    metrics.update({f"accuracy {name}": round(value, 4) for name, value in scores.items()})
    metrics.update({f"runs {name}": count for name, count in result.runs.items()})
    metrics["plans"] = "; ".join(sorted({", ".join(plan.active) for plan in result.plans}))
    report("coinfer mlink run", metrics, args.json)
    return 0


def live_runner(args: argparse.Namespace, table: OutputTable, models: list[str],
                costs: dict[str, float]) -> ZooRunner:
    """The zoo's real models on ``--scenes``, checked to match the table step for step."""
    from coinfer.edge.mlink.live import ZooRunner
    from coinfer.edge.mlink.zoo import create_model
    from coinfer.sdk.scenes import SceneSet

    scenes = SceneSet.load(args.scenes)
    steps = sum(camera.frame_count for camera in scenes.cameras)
    if steps != len(table):
        raise CoinferError(f"{args.scenes} has {steps} steps but {args.records} recorded {len(table)}: "
                           f"give the scene set the table was recorded on")
    zoo = {name: create_model(name, args.crowd if name == "crowd" else None) for name in models}
    return ZooRunner(scenes, zoo, costs, window=args.period)
