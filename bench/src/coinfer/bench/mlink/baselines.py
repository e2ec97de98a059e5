"""The policies MLink is compared with, under the same budget, on the same recorded stream.

- **standalone**: run the models that fit (cheapest first, to run as many as possible);
  the others produce nothing. What a deployment without links does.
- **random subset**: a random set that fits, the rest predicted by the same ensembles.
- **Reducto-style reuse** (:mod:`coinfer.sdk.mlink.reuse`): every model runs only when
  the frame has changed enough since its last run (mean absolute difference of small grey
  thumbnails) and reuses its last output otherwise; one difference threshold for all
  models, the lowest that fits the budget on the stream itself (chosen with hindsight).
- **optimum**: the fixed subset with the best mean output accuracy, by brute force
  (:func:`coinfer.sdk.mlink.brute_force_plan`) over every subset that fits, chosen with
  hindsight on the very outputs it is scored on: a reference no planner can beat with
  one fixed set.

Each returns a :class:`~coinfer.sdk.mlink.serving.ServingResult`, scored like MLink's.

Example::

    result = reducto(runner, thumbnails, cameras, budget)
    print(result.mean_accuracy(stream_table))
"""

from __future__ import annotations

import numpy as np

from coinfer.sdk.mlink import LinkGraph, Plan, brute_force_plan
from coinfer.sdk.mlink.reuse import change_schedule, replay_with_reuse
from coinfer.sdk.mlink.serving import ModelRunner, ServingResult, empty_outputs
from coinfer.sdk.mlink.table import OutputTable


def static_plan(graph: LinkGraph, runner: ModelRunner, count: int, plan: Plan) -> ServingResult:
    """Serve one fixed set for the whole stream, the others predicted by the ensembles."""
    rows = np.arange(count)
    executed = {name: runner(name, rows) for name in plan.active}
    outputs = graph.predict(executed) if executed else {}
    served = {name: outputs[name] if name in outputs else empty_outputs(graph, name, count)
              for name in graph.models}
    return ServingResult(served, [plan], {name: count if name in plan.active else 0 for name in graph.models},
                         sum(runner.costs[name] for name in plan.active) * count, 0.0, count)


def standalone(graph: LinkGraph, runner: ModelRunner, count: int, budget: float) -> ServingResult:
    """The cheapest models that fit run; nothing is predicted for the others."""
    active, spent = [], 0.0
    for name in sorted(runner.costs, key=lambda name: (runner.costs[name], name)):
        if spent + runner.costs[name] <= budget:
            active.append(name)
            spent += runner.costs[name]
    rows = np.arange(count)
    served = {name: runner(name, rows) if name in active else empty_outputs(graph, name, count)
              for name in graph.models}
    runs = {name: count if name in active else 0 for name in graph.models}
    return ServingResult(served, [Plan(tuple(active), spent, budget)], runs, spent * count, 0.0, count)


def random_subset(graph: LinkGraph, runner: ModelRunner, count: int, budget: float,
                  seed: int) -> ServingResult:
    """Models in a random order, each added while it fits, the others predicted."""
    order = np.random.default_rng(seed).permutation(sorted(runner.costs))
    active, spent = [], 0.0
    for name in order:
        if spent + runner.costs[str(name)] <= budget:
            active.append(str(name))
            spent += runner.costs[str(name)]
    return static_plan(graph, runner, count, Plan(tuple(active), spent, budget))


def optimum(graph: LinkGraph, runner: ModelRunner, count: int, budget: float,
            reference: OutputTable) -> ServingResult:
    """The brute-force best subset on ``reference`` (the stream's own outputs, for the
    hindsight optimum), served for the whole stream."""
    def predicted(active: tuple[str, ...]) -> dict[str, float]:
        return graph.ensemble_performance(reference.outputs, active)

    plan = brute_force_plan(runner.costs, budget, predicted)
    return static_plan(graph, runner, count, plan)


def reducto(graph: LinkGraph, runner: ModelRunner, thumbnails: np.ndarray, cameras: np.ndarray,
            budget: float, thresholds: np.ndarray | None = None) -> ServingResult:
    """Reducto-style reuse with the lowest threshold whose runs fit the budget on average
    (if none does, every model runs once per camera and reuses that output)."""
    count = len(thumbnails)
    total = sum(runner.costs.values())
    candidates = np.linspace(0.0, 40.0, 81) if thresholds is None else np.sort(thresholds)
    for threshold in [*candidates, np.inf]:  # inf: each camera's first step only
        run = change_schedule(thumbnails, cameras, float(threshold))
        if total * run.sum() <= budget * count:
            break
    served = {name: replay_with_reuse(runner, name, run, cameras) for name in graph.models}
    return ServingResult(served, [], {name: int(run.sum()) for name in graph.models},
                         total * float(run.sum()), 0.0, count)

