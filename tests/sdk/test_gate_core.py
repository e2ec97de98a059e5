"""The gate's algorithms on hand-built packets: dependencies, costs, estimator, optimizer, replay."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.dependencies import DependencyTracker
from coinfer.sdk.gate.estimator import SlidingWindowUCB
from coinfer.sdk.gate.features import SizeWindows
from coinfer.sdk.gate.optimizer import DecodeBudgetOptimizer
from coinfer.sdk.gate.packet import PacketInfo, PictureInfo, PictureType
from coinfer.sdk.gate.policies import (
    DecodeAllPolicy,
    OraclePolicy,
    RandomPolicy,
    RoundRobinPolicy,
    TemporalPolicy,
)
from coinfer.sdk.gate.redundancy import BoxesMoved, ClassSubset, CountChanged, create_measure
from coinfer.sdk.gate.replay import replay

COSTS = DecodeCostModel(i_seconds=3.0, p_seconds=1.0, b_seconds=0.5)


def packet(index: int, kind: str, *, stream: int = 0, size: int = 100) -> PacketInfo:
    picture = {"I": PictureType.I, "P": PictureType.P, "B": PictureType.B, "b": PictureType.B}[kind]
    header = PictureInfo(picture, reference=kind != "b", random_access=kind == "I")
    return PacketInfo(stream, index, size, index, index, kind == "I", header)


def gop(pattern: str, stream: int = 0) -> list[PacketInfo]:
    return [packet(i, kind, stream=stream) for i, kind in enumerate(pattern)]


def arrive(tracker: DependencyTracker, item: PacketInfo) -> float:
    return float(tracker.arrive([item], COSTS.cost_of([item.picture]))[0])


def test_skipped_references_are_decoded_first_and_priced() -> None:
    tracker = DependencyTracker(1)
    packets = gop("IPPbP")
    assert arrive(tracker, packets[0]) == 3.0
    tracker.decode(np.array([False]))
    assert arrive(tracker, packets[1]) == 1.0 + 3.0
    assert arrive(tracker, packets[2]) == 1.0 + 4.0
    assert arrive(tracker, packets[3]) == 0.5 + 5.0      # non-reference B needs I, P, P
    cost = arrive(tracker, packets[4])
    assert cost == 1.0 + 5.0                               # the skipped B is not a dependency
    plan = tracker.decode(np.array([True]))[0]
    assert [p.index for p in plan] == [0, 1, 2, 4]
    assert arrive(tracker, packet(5, "P")) == 1.0


def test_random_access_forgets_pending_and_unsynced_streams_cost_inf() -> None:
    tracker = DependencyTracker(2)
    costs = tracker.arrive([packet(0, "P"), packet(0, "I", stream=1)], COSTS.cost_of([2, 1]))
    assert np.isinf(costs[0]) and costs[1] == 3.0
    with pytest.raises(ValueError, match="stream 0"):
        tracker.decode(np.array([True, False]))
    tracker.arrive([packet(1, "I"), packet(1, "P", stream=1)], COSTS.cost_of([1, 2]))
    costs = tracker.arrive([packet(2, "P"), packet(2, "I", stream=1)], COSTS.cost_of([2, 1]))
    assert list(costs) == [1.0 + 3.0, 3.0]


def test_prefetch_takes_the_oldest_references_that_fit() -> None:
    tracker = DependencyTracker(1)
    for item in gop("IPPP"):
        arrive(tracker, item)
    arrive(tracker, packet(4, "P"))
    taken = tracker.prefetch(0, 4.5)
    assert [p.index for p in taken] == [0, 1]
    assert tracker.pending_cost[0] == 2.0
    plan = tracker.decode(np.array([True]))[0]
    assert [p.index for p in plan] == [2, 3, 4]


def test_cost_model_from_timings_and_validation() -> None:
    model = DecodeCostModel.from_timings(np.array([1, 2, 2, 2]), np.array([4e-3, 1e-3, 2e-3, 3e-3]))
    assert (model.i_seconds, model.p_seconds, model.b_seconds) == (4e-3, 2e-3, 2e-3)
    assert model.cost_of([0])[0] == 4e-3
    with pytest.raises(ValueError, match="p_seconds"):
        DecodeCostModel(1.0, 0.0, 1.0)


def test_ucb_prefers_unseen_and_necessary_streams_and_forgets() -> None:
    ucb = SlidingWindowUCB(3, window=4)
    assert np.all(ucb.estimate() == ucb.unseen_bonus)
    for _ in range(4):
        ucb.update(np.array([True, True, False]), np.array([True, False, False]))
    mu = ucb.estimate()
    assert mu[0] > mu[1] and mu[2] == ucb.unseen_bonus
    assert mu[0] - mu[1] == pytest.approx(1.0)
    for _ in range(4):
        ucb.update(np.array([False, True, True]), np.array([False, True, True]))
    assert ucb.estimate()[0] == ucb.unseen_bonus


def test_size_windows_normalise_per_class() -> None:
    windows = SizeWindows(2, window=3)
    i_view, p_view = windows.push(np.array([1000, 100]), np.array([1, 2]))
    assert i_view.shape == (2, 3, 4) and p_view.shape == (2, 3, 4)
    assert i_view[0, 0, 0] == 0.0 and p_view[1, 0, 0] == 0.0
    _, p_view = windows.push(np.array([200, 300]), np.array([2, 2]))
    assert p_view[1, 1, 0] > 0 and p_view[1, 0, 0] == 0.0       # ring buffer: slot 1 is the newest
    assert p_view[1, 1, 1] > 0  # the P packets since the last decode average above their baseline
    for size in (10, 20, 30):
        windows.push(np.array([size, size]), np.array([2, 2]))
    assert np.all(p_view[1, :, 0] != 0.0)                        # every slot written, oldest overwritten
    assert p_view[1, 1, 3] == pytest.approx(np.log1p(5) / 4)     # newest slot: 5 rounds undecoded
    windows.mark_decoded(np.array([False, True]))
    windows.push(np.array([900, 900]), np.array([2, 2]))
    assert p_view[1, 2, 3] == pytest.approx(np.log1p(1) / 4)     # the count restarts at a decode
    assert p_view[0, 1, 3] == pytest.approx(np.log1p(6) / 4)
    windows.mark_decoded(np.array([True, True]))
    windows.push(np.array([5000, 40]), np.array([2, 2]))
    assert p_view[0, 2, 2] > 0 > p_view[1, 0, 2]                 # activity up / down since then


def brute_force(values: np.ndarray, costs: np.ndarray, budget: float) -> float:
    best = 0.0
    for size in range(len(values) + 1):
        for chosen in itertools.combinations(range(len(values)), size):
            if costs[list(chosen)].sum() <= budget:
                best = max(best, values[list(chosen)].sum())
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.1, 3)), min_size=1, max_size=8),
       st.floats(0, 10))
def test_optimizer_respects_budget_and_is_near_optimal(items: list, budget: float) -> None:
    values = np.array([v for v, _ in items])
    costs = np.array([c for _, c in items])
    choice = DecodeBudgetOptimizer().select(values, costs, budget)
    assert choice.spent <= budget + 1e-12
    assert choice.spent == pytest.approx(costs[choice.selected].sum())
    greedy = values[choice.selected].sum()
    bound = greedy + (values[choice.next_best] if choice.next_best is not None else 0.0)
    assert bound >= brute_force(values, costs, budget) - 1e-9


def test_optimizer_ranks_by_value_per_cost_and_skips_undecodable() -> None:
    values = np.array([0.9, 0.5, 0.4, 1.0])
    costs = np.array([3.0, 1.0, 1.0, np.inf])
    choice = DecodeBudgetOptimizer().select(values, costs, 2.5)
    assert list(np.flatnonzero(choice.selected)) == [1, 2]
    assert choice.next_best == 0 and choice.leftover == pytest.approx(0.5)
    with pytest.raises(ValueError, match="budget"):
        DecodeBudgetOptimizer().select(values, costs, -1.0)


def test_redundancy_measures() -> None:
    count = CountChanged()
    assert count.necessary(np.zeros((1, 4)), np.zeros((2, 4))) and not count.necessary(2, 2)
    moved = BoxesMoved(0.5)
    a = np.array([[0, 0, 10, 10], [20, 20, 10, 10]], dtype=float)
    assert not moved.necessary(a, a[::-1] + 1)
    assert moved.necessary(a, a + np.array([8, 0, 0, 0]))
    assert not moved.necessary(np.zeros((0, 4)), np.zeros((0, 4)))
    subset = ClassSubset({"nothing"})
    assert not subset.necessary("fire", "nothing") and subset.necessary("nothing", "fire")
    assert subset.agrees("nothing", "nothing") and not subset.agrees("nothing", "fire")
    with pytest.raises(ValueError, match="unknown redundancy"):
        create_measure("psnr")


def test_replay_decode_all_and_oracle_reference_points(synthetic_traces) -> None:
    traces = synthetic_traces(8, 60)
    measures = {"count": CountChanged()}
    full = replay(traces, DecodeAllPolicy(8), COSTS, budget=0.0, measures=measures)
    assert full.accuracy == 1.0 and full.cost_fraction == pytest.approx(1.0)
    starved = replay(traces, TemporalPolicy(8), COSTS, budget=0.0, measures=measures)
    assert starved.spent == 0.0
    initial = np.mean([np.mean(trace.results["count"] == 0) for trace in traces])
    assert starved.accuracy == pytest.approx(initial)
    half = 0.5 * full.decode_all_cost / 60
    oracle = replay(traces, OraclePolicy(8), COSTS, budget=half, measures=measures)
    others = [replay(traces, policy, COSTS, budget=half, measures=measures)
              for policy in (RandomPolicy(8), RoundRobinPolicy(8), TemporalPolicy(8))]
    assert oracle.cost_fraction <= 0.5 + 1e-9
    assert all(oracle.accuracy >= other.accuracy for other in others)
    assert oracle.accuracy > 0.9


def test_savings_bisection_and_sustained_streams(synthetic_traces) -> None:
    from coinfer.sdk.gate.evaluation import (
        decode_all_cost_per_round,
        run_at_fraction,
        savings_at_accuracy,
        sustained_streams,
    )

    traces = synthetic_traces(16, 80, seed=3)
    measures = {"count": CountChanged()}
    oracle = savings_at_accuracy(traces, OraclePolicy, COSTS, measures, resolution=1 / 32)
    rr = savings_at_accuracy(traces, RoundRobinPolicy, COSTS, measures, resolution=1 / 32)
    assert oracle.result.accuracy >= 0.9 and rr.result.accuracy >= 0.9
    assert oracle.savings > rr.savings > 0.0
    below = run_at_fraction(traces, OraclePolicy, COSTS, oracle.fraction - 1 / 32, measures)
    assert below.accuracy < 0.9
    budget = decode_all_cost_per_round(traces[:4], COSTS)
    served = sustained_streams(traces, OraclePolicy, COSTS, budget, [4, 8, 12, 16], measures)
    assert served >= 8
    assert sustained_streams(traces, RandomPolicy, COSTS, 0.0, [4, 8], measures) == 0
