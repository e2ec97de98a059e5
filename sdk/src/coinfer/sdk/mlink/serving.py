"""Budgeted multi-model inference at the edge (Algorithm 5.2): run some models, predict the rest.

Every period the planner scores each model by its activation score from the links'
recent performance, fills the budget greedily, and serves: the chosen models run on
every step of the period, the others are predicted by their ensembles from the chosen
ones' outputs. On a small random sample of each period (``profile_fraction``, about 1%)
every model runs, so the next period is planned on fresh link performance: the best set
follows the content (day and night, busy and quiet hours).

Given the stream's frame changes (:class:`FrameChanges`), the planner may also run a model
only where its camera's picture changed, reusing its last output elsewhere
(:mod:`coinfer.sdk.mlink.reuse`): :func:`coinfer.sdk.mlink.mode_plan` weighs, per model,
running on every step, running on change at one of the calibrated thresholds (at the run
rates of the most recent ``history`` steps), or leaving it to the links. Unspent or
overspent budget (profiling and link time included) is spread over the next periods.

Models are reached through a :class:`ModelRunner`: anything that returns a model's outputs
for some stream rows. :class:`RecordedRunner` replays the outputs a workload recorded
and charges each model its measured per-step cost, which is how the bench compares
policies on the same real outputs.

Example: three made-up models whose outputs follow from how many people are in view (0, 1
or 2+): a people counter (4 ms a step), a speech detector (1 ms) and a crowd detector (2 ms).
Links trained on recorded outputs let the planner run only the two cheap ones at half the
cost of running all three, and predict the counter's outputs from theirs:

>>> import numpy as np
>>> from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec
>>> from coinfer.sdk.mlink.serving import RecordedRunner, ServingOptions, serve
>>> from coinfer.sdk.mlink.table import OutputTable
>>> specs = {"counts": OutputSpec.classes(3), "speech": OutputSpec.presence(),
...          "crowd": OutputSpec.classes(2)}
>>> def recorded(steps, seed):
...     people = np.random.default_rng(seed).integers(0, 3, steps)
...     outputs = {"counts": np.eye(3, dtype=np.float32)[people],
...                "speech": (people > 0).astype(np.float32)[:, None],
...                "crowd": np.eye(2, dtype=np.float32)[(people > 1).astype(int)]}
...     costs = {"counts": {"ms": 4.0}, "speech": {"ms": 1.0}, "crowd": {"ms": 2.0}}
...     return OutputTable(specs, outputs, costs=costs)
>>> train, profile, stream = recorded(120, 0), recorded(50, 1), recorded(400, 2)
>>> graph = LinkGraph.train(train.outputs, specs, LinkOptions(epochs=3, seed=0))
>>> runner = RecordedRunner(stream, cost="ms")
>>> result = serve(graph, runner, len(stream), ServingOptions(budget=3.5, period=100), profile)
>>> [sorted(plan.active) for plan in result.plans]
[['crowd', 'speech'], ['crowd', 'speech'], ['crowd', 'speech'], ['crowd', 'speech']]
>>> result.runs                      # the counter only on the profiled steps (1%)
{'counts': 4, 'speech': 400, 'crowd': 400}
>>> bool(result.mean_accuracy(stream) > 0.9), bool(result.time_saved(runner.costs) > 0.4)
(True, True)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.mlink import (
    EVERY_STEP,
    LinkGraph,
    ModePlan,
    Plan,
    activation_scores,
    best_link_estimate,
    greedy_plan,
    mode_plan,
    performance,
    sample_performance,
)
from coinfer.sdk.mlink.reuse import ReuseCalibration, ReuseGate, check_frames
from coinfer.sdk.mlink.table import OutputTable, concat_rows, costs_of, take_rows

#: A period's surplus or deficit is spread over this many following periods.
CARRY_PERIODS = 3


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
    ``history`` bounds the profiled steps the link scores come from; ``carry`` spreads
    unspent or overspent budget, link time included as ms, over the next periods (right for
    time in ms, not for memory)."""

    budget: float
    period: int = 100
    profile_fraction: float = 0.01
    history: int = 200
    seed: int = 0
    carry: bool = True

    def __post_init__(self) -> None:
        if not (np.isfinite(self.budget) and self.budget >= 0):
            raise InvalidArgumentError(f"budget must be a finite number >= 0, got {self.budget}")
        if self.period < 1 or self.history < 1:
            raise InvalidArgumentError(f"period and history must be >= 1, got {self.period} and "
                                       f"{self.history}")
        if not 0 <= self.profile_fraction <= 1:
            raise InvalidArgumentError(f"profile_fraction must be in [0, 1], got {self.profile_fraction}")


@dataclass(frozen=True)
class FrameChanges:
    """What reuse needs to know of the stream: a small grey thumbnail and the camera of
    every step, and the calibration of each threshold's run rate and reused accuracy."""

    thumbnails: np.ndarray
    cameras: np.ndarray
    calibration: ReuseCalibration


@dataclass
class ServingResult:
    """What was served, which sets were chosen, and what it cost."""

    outputs: dict[str, Any]
    plans: list[Plan | ModePlan]
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


class LinkScores:
    """Each link's per-step performance on the most recent ``limit`` profiled steps. Links
    do not change while serving, so a profiled step is scored once, when it arrives."""

    def __init__(self, graph: LinkGraph, limit: int) -> None:
        self.graph = graph
        self.scores: dict[tuple[str, str], deque[float]] = {pair: deque(maxlen=limit) for pair in graph.links}

    def add(self, outputs: Mapping[str, Any]) -> None:
        """Score every link on steps where every model ran (``outputs`` of each model)."""
        for (source, target), link in self.graph.links.items():
            spec = self.graph.endpoints[target].spec
            scores = sample_performance(spec, link.predict(outputs[source]), outputs[target])
            self.scores[(source, target)].extend(scores.tolist())

    def performance(self) -> dict[tuple[str, str], float]:
        return {pair: float(np.mean(scores)) for pair, scores in self.scores.items() if scores}


def plan_period(costs: Mapping[str, float], link_performance: Mapping[tuple[str, str], float],
                budget: float) -> Plan:
    """The greedy activation-score plan from the links' recent performance."""
    return greedy_plan(activation_scores(link_performance, costs), costs, budget)


def serve(graph: LinkGraph, runner: ModelRunner, count: int, options: ServingOptions,
          profile: OutputTable, changes: FrameChanges | None = None) -> ServingResult:
    """Serve ``count`` stream steps under the budget; ``profile`` seeds the first plan;
    with ``changes``, models may also run only on changed frames."""
    if changes is not None:
        check_frames(changes.thumbnails, changes.cameras, count)
    rng = np.random.default_rng(options.seed)
    window = LinkScores(graph, options.history)
    window.add(profile.outputs)
    served: dict[str, list[Any]] = {name: [] for name in graph.models}
    runs = dict.fromkeys(graph.models, 0)
    plans: list[Plan | ModePlan] = []
    gates: dict[str, ReuseGate] = {}
    rates = changes.calibration.rates if changes is not None else ()
    model_cost, link_seconds = 0.0, 0.0
    for start in range(0, count, options.period):
        steps = np.arange(start, min(count, start + options.period))
        budget = options.budget
        if options.carry:
            balance = options.budget * start - model_cost - 1000.0 * link_seconds
            budget = float(np.clip(options.budget + balance / (CARRY_PERIODS * steps.size),
                                   0.0, 2.0 * options.budget))
        mark = time.perf_counter()
        if changes is None:
            plan: Plan | ModePlan = plan_period(runner.costs, window.performance(), budget)
        else:
            estimate = best_link_estimate(window.performance(), graph.models)
            plan = mode_plan(runner.costs, changes.calibration.modes(rates), budget, estimate)
        link_seconds += time.perf_counter() - mark
        plans.append(plan)
        executed: dict[str, Any] = {}
        modes = plan.modes if isinstance(plan, ModePlan) else dict.fromkeys(plan.active, EVERY_STEP)
        gates = {name: gate for name, gate in gates.items() if name in modes and modes[name] != EVERY_STEP}
        for name, mode in modes.items():
            if mode == EVERY_STEP or changes is None:
                executed[name] = runner(name, steps)
                ran = steps.size
            else:
                gate = gates.setdefault(name, ReuseGate(threshold=0.0))
                gate.threshold = changes.calibration.threshold_of(mode.label)  # a kept gate may change it
                executed[name], ran = gate.serve(runner, name, steps, changes.thumbnails[steps],
                                                 changes.cameras[steps])
            runs[name] += ran
            model_cost += runner.costs[name] * ran
        if changes is not None:
            seen = np.arange(max(0, steps[-1] + 1 - options.history), steps[-1] + 1)
            rates = changes.calibration.rates_on(changes.thumbnails[seen], changes.cameras[seen])
        mark = time.perf_counter()
        outputs = graph.predict(executed) if executed else {}
        link_seconds += time.perf_counter() - mark
        for name in graph.models:
            served[name].append(outputs[name] if name in outputs else empty_outputs(graph, name, len(steps)))
        picked = np.sort(rng.choice(steps.size, size=max(1, round(options.profile_fraction * steps.size)),
                                    replace=False))
        exact = {name for name, mode in modes.items() if mode == EVERY_STEP}
        profiled = {name: take_rows(executed[name], picked) if name in exact
                    else runner(name, steps[picked]) for name in graph.models}
        for name in graph.models:
            if name not in exact:
                runs[name] += picked.size
                model_cost += runner.costs[name] * picked.size
        window.add(profiled)
    return ServingResult({name: concat_rows(parts) for name, parts in served.items()}, plans, runs,
                         model_cost, link_seconds, count)


def empty_outputs(graph: LinkGraph, name: str, count: int) -> Any:
    """What a model nobody runs or predicts serves: nothing (zeros, empty sequences)."""
    spec = graph.endpoints[name].spec
    return [()] * count if spec.is_sequence else np.zeros((count, spec.size), np.float32)
