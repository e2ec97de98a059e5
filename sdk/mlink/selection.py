"""Which models to run under a cost budget, the others predicted through their links.

The objective (eq. 5.4) is the mean output accuracy F(A) = (|A| + sum over j not in A of
p(A, j)) / |F|: an executed model is exact (1), a predicted one scores its ensemble's
performance. Maximising it under sum of c(f) <= B is NP-hard, so MLink ranks models by
the activation score (eq. 5.7)

    P_i = (1 + P1_i - P2_i) / (w c(f_i)),  w = 2 / min c

where P1_i is the mean performance of the links out of f_i (how well it predicts others)
and P2_i that of the links into f_i (how well others predict it), and adds models in that
order while they fit. :func:`brute_force_plan` finds the true optimum for small sets.

Example::

    scores = activation_scores(graph.link_performance(profile), costs)
    plan = greedy_plan(scores, costs, budget=0.5 * sum(costs.values()))
    print(plan.active, plan.cost)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
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
