"""Offline evaluation of gating policies on traces: the paper's metrics, as functions.

- :func:`decode_all_cost_per_round`: what decoding everything costs per round;
- :func:`savings_at_accuracy`: the smallest budget at which a policy still reports >= 90%
  of frames correctly, and the decode cost it saves there (bisection on the budget);
- :func:`accuracy_curve`: accuracy against budget;
- :func:`sustained_streams`: how many streams a policy serves at the target accuracy under
  a fixed budget (the concurrency the decoder sustains);
- :func:`train_on_traces`: inference logs of a running system -> a trained predictor.

Example::

    point = savings_at_accuracy(traces, TemporalPolicy, costs, {"faces": CountChanged()})
    print(point.savings, point.result.accuracy)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.errors import GateError
from coinfer.sdk.gate.policies import Policy, TemporalPolicy
from coinfer.sdk.gate.predictor import (
    ContextualPredictor,
    PredictorDataset,
    PredictorOptions,
    train_predictor,
)
from coinfer.sdk.gate.redundancy import RedundancyMeasure
from coinfer.sdk.gate.replay import ReplayResult, StreamTrace, collect_training_rows, replay
from coinfer.sdk.gate.scheduler import GateOptions

PolicyFactory = Callable[[int], Policy]


def decode_all_cost_per_round(traces: Sequence[StreamTrace], costs: DecodeCostModel) -> float:
    rounds = max(len(trace.packets) for trace in traces)
    total = sum(float(costs.cost_of([p.picture for p in trace.packets]).sum()) for trace in traces)
    return total / rounds


def run_at_fraction(traces: Sequence[StreamTrace], factory: PolicyFactory, costs: DecodeCostModel,
                    fraction: float, measures: Mapping[str, RedundancyMeasure],
                    options: GateOptions | None = None) -> ReplayResult:
    """Replay with a per-round budget of ``fraction`` x the decode-all cost per round."""
    budget = fraction * decode_all_cost_per_round(traces, costs)
    return replay(traces, factory(len(traces)), costs, budget, measures, options)


@dataclass(frozen=True)
class SavingsPoint:
    """The cheapest budget found that meets the target accuracy (None: not even at 100%)."""

    fraction: float | None
    result: ReplayResult | None

    @property
    def savings(self) -> float:
        return self.result.savings if self.result is not None else 0.0


def savings_at_accuracy(traces: Sequence[StreamTrace], factory: PolicyFactory, costs: DecodeCostModel,
                        measures: Mapping[str, RedundancyMeasure], target: float = 0.9, *,
                        resolution: float = 1 / 128, options: GateOptions | None = None) -> SavingsPoint:
    """Bisection on the budget fraction; assumes accuracy grows with the budget."""
    high = run_at_fraction(traces, factory, costs, 1.0, measures, options)
    if high.accuracy < target:
        return SavingsPoint(None, None)
    low_fraction, high_fraction, best = 0.0, 1.0, high
    while high_fraction - low_fraction > resolution:
        middle = 0.5 * (low_fraction + high_fraction)
        result = run_at_fraction(traces, factory, costs, middle, measures, options)
        if result.accuracy >= target:
            high_fraction, best = middle, result
        else:
            low_fraction = middle
    return SavingsPoint(high_fraction, best)


def accuracy_curve(traces: Sequence[StreamTrace], factory: PolicyFactory, costs: DecodeCostModel,
                   fractions: Sequence[float], measures: Mapping[str, RedundancyMeasure],
                   options: GateOptions | None = None) -> list[ReplayResult]:
    return [run_at_fraction(traces, factory, costs, f, measures, options) for f in fractions]


def sustained_streams(traces: Sequence[StreamTrace], factory: PolicyFactory, costs: DecodeCostModel,
                      budget: float, candidates: Sequence[int], measures: Mapping[str, RedundancyMeasure],
                      target: float = 0.9, options: GateOptions | None = None) -> int:
    """The most streams (among ``candidates``) served at ``target`` accuracy under ``budget`` per round."""
    best = 0
    for count in sorted(candidates):
        if count > len(traces):
            break
        result = replay(traces[:count], factory(count), costs, budget, measures, options)
        if result.accuracy >= target:
            best = count
    return best


def training_rows(traces: Sequence[StreamTrace], costs: DecodeCostModel,
                  measures: Mapping[str, RedundancyMeasure],
                  fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
                  options: GateOptions | None = None) -> PredictorDataset:
    """Logs of the temporal policy running at a few budgets: views + per-task necessity.

    Budgets from tight to loose cover the states a gate meets (streams skipped for long,
    streams decoded every round), which steadies what the predictor learns.
    """
    per_round = decode_all_cost_per_round(traces, costs)
    parts = [collect_training_rows(traces, TemporalPolicy(len(traces)), costs, f * per_round, measures,
                                   options) for f in fractions]
    i_view, p_view, temporal, labels = (np.concatenate([getattr(part, name) for part in parts])
                                        for name in ("i_view", "p_view", "temporal", "labels"))
    return PredictorDataset(i_view, p_view, temporal, labels)


def train_on_traces(traces: Sequence[StreamTrace], costs: DecodeCostModel,
                    measures: Mapping[str, RedundancyMeasure], options: PredictorOptions,
                    gate_options: GateOptions | None = None) -> ContextualPredictor:
    if tuple(measures) != options.tasks:
        raise GateError(f"predictor tasks {options.tasks} differ from the measured tasks {tuple(measures)}")
    rows = training_rows(traces, costs, measures, options=gate_options)
    return train_predictor(rows, options)
