"""Budgeted multi-model inference at the edge (Algorithm 5.2): run some models, predict the rest.

Every period the planner scores each model by its activation score from the links'
recent performance, fills the budget greedily, and serves: the chosen models run on
every step of the period, the others are predicted by their ensembles from the chosen
ones' outputs. On a small random sample of each period (``profile_fraction``, about 1%)
every model runs, so the next period is planned on fresh link performance: the best set
follows the content (day and night, busy and quiet hours).

Models are reached through a :class:`ModelRunner`: anything that returns a model's outputs
for some stream rows. :class:`RecordedRunner` replays the outputs a workload recorded
and charges each model its measured per-step cost, which is how the bench compares
policies on the same real outputs.

Example::

    runner = RecordedRunner(stream_table, cost="ms")
    result = serve(graph, runner, ServingOptions(budget=0.5 * sum(runner.costs.values())),
                   profile=validation_table)
    print(result.accuracy(stream_table), result.time_saved(runner))
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from coinfer.sdk.mlink import LinkGraph, Plan, activation_scores, greedy_plan, performance
from coinfer.sdk.mlink.table import OutputTable, concat_rows, costs_of, take_rows


class ModelRunner(Protocol):
    """Runs models on stream rows; ``costs`` is each model's cost per step."""

    costs: dict[str, float]

    def __call__(self, name: str, rows: np.ndarray) -> Any: ...


@dataclass
class RecordedRunner:
    """Replays recorded outputs; every call is charged ``costs[name]`` per row."""

    table: OutputTable
    cost: str = "ms"
    costs: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.costs = costs_of(self.table, self.cost)

    def __call__(self, name: str, rows: np.ndarray) -> Any:
        return take_rows(self.table.outputs[name], rows)


@dataclass(frozen=True)
class ServingOptions:
    """``budget`` is in the runner's cost unit per step (e.g. ms); ``period`` in steps;
    ``history`` bounds the profiled steps the link scores come from."""

    budget: float
    period: int = 100
    profile_fraction: float = 0.01
    history: int = 200
    seed: int = 0


@dataclass
class ServingResult:
    """What was served, which sets were chosen, and what it cost."""

    outputs: dict[str, Any]
    plans: list[Plan]
    runs: dict[str, int]
    model_cost: float
    link_seconds: float
    steps: int

    def accuracy(self, reference: OutputTable) -> dict[str, float]:
        """Each model's served outputs scored against what the model itself outputs."""
        return {name: performance(reference.specs[name], self.outputs[name], reference.outputs[name])
                for name in reference.models}

    def mean_accuracy(self, reference: OutputTable) -> float:
        return float(np.mean(list(self.accuracy(reference).values())))

    def time_saved(self, costs: Mapping[str, float], link_cost_per_second: float = 1000.0) -> float:
        """1 - (models run + links) / (every model on every step); link wall time is
        converted with ``link_cost_per_second`` (1000 when costs are milliseconds)."""
        everything = sum(costs.values()) * self.steps
        return 1.0 - (self.model_cost + self.link_seconds * link_cost_per_second) / everything


class ProfileWindow:
    """The most recent fully profiled steps: every model's output on each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[dict[str, Any]] = []

    def add(self, outputs: Mapping[str, Any]) -> None:
        self.parts.append(dict(outputs))
        while len(self.parts) > 1 and sum(row_count(part) for part in self.parts[1:]) >= self.limit:
            self.parts.pop(0)

    def outputs(self) -> dict[str, Any]:
        return {name: concat_rows([part[name] for part in self.parts]) for name in self.parts[0]}


def row_count(outputs: Mapping[str, Any]) -> int:
    return len(next(iter(outputs.values())))


def plan_period(graph: LinkGraph, costs: Mapping[str, float], profile: Mapping[str, Any],
                budget: float) -> Plan:
    """The greedy activation-score plan from the links' performance on ``profile``."""
    return greedy_plan(activation_scores(graph.link_performance(profile), costs), costs, budget)


def serve(graph: LinkGraph, runner: ModelRunner, count: int, options: ServingOptions,
          profile: OutputTable) -> ServingResult:
    """Serve ``count`` stream steps under the budget; ``profile`` seeds the first plan."""
    rng = np.random.default_rng(options.seed)
    window = ProfileWindow(options.history)
    window.add(profile.outputs)
    served: dict[str, list[Any]] = {name: [] for name in graph.models}
    runs = dict.fromkeys(graph.models, 0)
    plans, model_cost, link_seconds = [], 0.0, 0.0
    for start in range(0, count, options.period):
        steps = np.arange(start, min(count, start + options.period))
        mark = time.perf_counter()
        plan = plan_period(graph, runner.costs, window.outputs(), options.budget)
        link_seconds += time.perf_counter() - mark
        plans.append(plan)
        executed = {name: runner(name, steps) for name in plan.active}
        mark = time.perf_counter()
        outputs = graph.predict(executed) if executed else {}
        link_seconds += time.perf_counter() - mark
        for name in graph.models:
            served[name].append(outputs[name] if name in outputs else empty_outputs(graph, name, len(steps)))
            runs[name] += len(steps) if name in plan.active else 0
        model_cost += sum(runner.costs[name] for name in plan.active) * len(steps)
        picked = np.sort(rng.choice(steps.size, size=max(1, round(options.profile_fraction * steps.size)),
                                    replace=False))
        profiled = {name: take_rows(executed[name], picked) if name in executed
                    else runner(name, steps[picked]) for name in graph.models}
        for name in graph.models:
            if name not in executed:
                runs[name] += picked.size
                model_cost += runner.costs[name] * picked.size
        window.add(profiled)
    return ServingResult({name: concat_rows(parts) for name, parts in served.items()}, plans, runs,
                         model_cost, link_seconds, count)


def empty_outputs(graph: LinkGraph, name: str, count: int) -> Any:
    """What a model nobody runs or predicts serves: nothing (zeros, empty sequences)."""
    spec = graph.endpoints[name].spec
    return [()] * count if spec.is_sequence else np.zeros((count, spec.size), np.float32)
