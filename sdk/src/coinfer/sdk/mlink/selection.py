"""Which models to run under a cost budget, the others predicted through their links.

The objective (eq. 5.4) is the mean output accuracy F(A) = (|A| + sum over j not in A of
p(A, j)) / |F|: an executed model is exact (1), a predicted one scores its ensemble's
performance. Maximising it under sum of c(f) <= B is NP-hard, so MLink ranks models by
the activation score (eq. 5.7)

    P_i = (1 + P1_i - P2_i) / (w c(f_i)),  w = 2 / min c

where P1_i is the mean performance of the links out of f_i (how well it predicts others)
and P2_i that of the links into f_i (how well others predict it), and adds models in that
order while they fit. :func:`brute_force_plan` finds the true optimum for small sets.

:func:`mode_plan` widens the choice from "run or predict" to execution modes: a model may
also run only on some steps (e.g. when its input changed, reusing its last output
otherwise), at a fraction of its cost and an accuracy measured beforehand. It climbs the
objective greedily, each time taking the move with the best gain in F per unit of cost.

Example::

    scores = activation_scores(graph.link_performance(profile), costs)
    plan = greedy_plan(scores, costs, budget=0.5 * sum(costs.values()))
    print(plan.active, plan.cost)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from coinfer.sdk.errors import CoinferError

#: Brute force enumerates 2^n subsets; beyond this it is refused.
MAX_BRUTE_FORCE_MODELS = 16


class PlanError(CoinferError, ValueError):
    """A budget or cost table the planner cannot work with."""


@dataclass(frozen=True)
class Plan:
    """The models to execute, their total cost, and the objective if it was evaluated."""

    active: tuple[str, ...]
    cost: float
    budget: float
    accuracy: float | None = None


@dataclass(frozen=True)
class ExecutionMode:
    """One way to execute a model: on ``rate`` of the steps (1: every step), serving outputs
    of expected ``accuracy`` (1: exact)."""

    label: str
    rate: float
    accuracy: float


#: Running on every step: exact, at the full cost.
EVERY_STEP = ExecutionMode("every step", 1.0, 1.0)


@dataclass(frozen=True)
class ModePlan:
    """Each model's execution mode (absent: predicted by its ensemble), their expected
    cost per step, and the objective F as estimated when planning."""

    modes: dict[str, ExecutionMode]
    cost: float
    budget: float
    accuracy: float

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self.modes)


def check_costs(costs: Mapping[str, float], budget: float) -> None:
    if not costs:
        raise PlanError("no models to plan for")
    bad = {name: cost for name, cost in costs.items() if not cost > 0}
    if bad:
        raise PlanError(f"every model's cost must be positive; got {bad}")
    if not budget >= 0:
        raise PlanError(f"the budget must be a non-negative number, got {budget!r}")


def activation_scores(link_performance: Mapping[tuple[str, str], float],
                      costs: Mapping[str, float]) -> dict[str, float]:
    """P_i of every model in ``costs`` (a missing link counts as performance 0)."""
    check_costs(costs, 0.0)
    names = list(costs)
    others = max(1, len(names) - 1)
    weight = 2.0 / min(costs.values())
    scores = {}
    for name in names:
        out = sum(link_performance.get((name, other), 0.0) for other in names if other != name) / others
        into = sum(link_performance.get((other, name), 0.0) for other in names if other != name) / others
        scores[name] = (1.0 + out - into) / (weight * costs[name])
    return scores


def greedy_plan(scores: Mapping[str, float], costs: Mapping[str, float], budget: float) -> Plan:
    """Models in descending activation score, each added when it still fits the budget."""
    check_costs(costs, budget)
    active, spent = [], 0.0
    for name in sorted(scores, key=lambda name: (-scores[name], name)):
        if spent + costs[name] <= budget:
            active.append(name)
            spent += costs[name]
    return Plan(tuple(active), spent, budget)


def best_link_estimate(link_performance: Mapping[tuple[str, str], float],
                       models: Iterable[str]) -> Callable[[tuple[str, ...]], dict[str, float]]:
    """A cheap stand-in for the ensembles' performance when planning: each target not
    executed scores its best link from an executed model (an ensemble matches or beats it),
    so one pass of link predictions serves every candidate set."""
    models = list(models)

    def predicted(active: tuple[str, ...]) -> dict[str, float]:
        return {target: max((link_performance.get((source, target), 0.0) for source in active), default=0.0)
                for target in models if target not in active}

    return predicted


def mean_output_accuracy(active: Iterable[str], models: Iterable[str],
                         predicted_performance: Callable[[tuple[str, ...]], Mapping[str, float]]) -> float:
    """F(A): executed models count 1, the others their ensemble's performance (0 if none ran)."""
    active, models = tuple(active), list(models)
    predicted = predicted_performance(active) if active else {}
    predicted_sum = sum(predicted.get(name, 0.0) for name in models if name not in active)
    return (len(active) + predicted_sum) / len(models)


def brute_force_plan(costs: Mapping[str, float], budget: float,
                     predicted_performance: Callable[[tuple[str, ...]], Mapping[str, float]]) -> Plan:
    """The subset within the budget with the highest F(A), by enumeration; among equal
    values the cheaper, then the smaller set wins."""
    check_costs(costs, budget)
    names = list(costs)
    if len(names) > MAX_BRUTE_FORCE_MODELS:
        raise PlanError(f"brute force over {len(names)} models is 2^{len(names)} subsets; "
                        f"at most {MAX_BRUTE_FORCE_MODELS} models")
    best: Plan | None = None
    for size in range(len(names) + 1):
        for subset in itertools.combinations(names, size):
            cost = sum(costs[name] for name in subset)
            if cost > budget:
                continue
            value = mean_output_accuracy(subset, names, predicted_performance)
            if best is None or (value, -cost, -size) > (best.accuracy, -best.cost, -len(best.active)):
                best = Plan(subset, cost, budget, value)
    assert best is not None  # the empty set always fits
    return best


def mode_plan(costs: Mapping[str, float], modes: Mapping[str, Sequence[ExecutionMode]], budget: float,
              predicted_performance: Callable[[tuple[str, ...]], Mapping[str, float]]) -> ModePlan:
    """Greedy execution modes under the budget. From every model predicted, each move
    switches one model to a mode with a higher expected accuracy, and the move with the best
    gain in F (its own accuracy and what it adds to the others' ensembles) per unit of extra
    cost is taken, while one fits; the climb is repeated from each single model run on every
    step, and the best end is the plan. ``modes`` lists each model's modes besides
    :data:`EVERY_STEP`, which every model has."""
    check_costs(costs, budget)
    unknown = sorted(set(modes) - set(costs))
    if unknown:
        raise PlanError(f"execution modes given for models without a cost: {unknown}")
    for name, options in modes.items():
        for mode in options:
            if not (0.0 < mode.rate <= 1.0 and 0.0 <= mode.accuracy <= 1.0):
                raise PlanError(f"{name}: mode {mode.label!r} needs 0 < rate <= 1 and 0 <= accuracy <= 1, "
                                f"got rate {mode.rate} and accuracy {mode.accuracy}")
    names = list(costs)
    choices = {name: [EVERY_STEP, *modes.get(name, ())] for name in names}
    cache: dict[frozenset[str], Mapping[str, float]] = {}

    def objective(state: Mapping[str, ExecutionMode]) -> float:
        active = frozenset(state)
        if active not in cache:
            cache[active] = predicted_performance(tuple(sorted(active))) if active else {}
        predicted = cache[active]
        values = [state[name].accuracy if name in state else predicted.get(name, 0.0) for name in names]
        return sum(values) / len(names)

    def cost_of(state: Mapping[str, ExecutionMode]) -> float:
        return sum(costs[name] * mode.rate for name, mode in state.items())

    def climb(state: dict[str, ExecutionMode]) -> ModePlan:
        value, spent = objective(state), cost_of(state)
        while True:
            best: tuple[float, float, dict[str, ExecutionMode], float] | None = None
            for name in names:
                current = state.get(name)
                for mode in choices[name]:
                    if current is not None and mode.accuracy <= current.accuracy:
                        continue
                    moved = {**state, name: mode}
                    cost = cost_of(moved)
                    if cost > budget:
                        continue
                    gain = objective(moved) - value
                    if gain <= 0:
                        continue
                    ratio = gain / max(cost - spent, 1e-12)
                    if best is None or ratio > best[0]:
                        best = (ratio, gain, moved, cost)
            if best is None:
                return ModePlan(state, spent, budget, value)
            _, gain, state, spent = best
            value += gain

    # Gain per cost alone can fill the budget with small items and leave no room for the
    # one that matters (the knapsack trap), so the climb also starts from each model run
    # on every step, and the best end wins.
    starts: list[dict[str, ExecutionMode]] = [{}]
    starts += [{name: EVERY_STEP} for name in names if costs[name] <= budget]
    plans = [climb(start) for start in starts]
    return max(plans, key=lambda plan: (plan.accuracy, -plan.cost))
