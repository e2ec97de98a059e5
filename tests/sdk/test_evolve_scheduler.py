"""The knapsack task scheduler (NestEvo Algorithm 3), its baselines, the event simulation and LCP."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.lcp import life_cycle_performance
from coinfer.sdk.evolve.scheduler import (
    DpPolicy,
    EvolutionTask,
    RandomPolicy,
    SerialPolicy,
    knapsack_select,
    processor_sharing,
    simulate,
)

GB = 10**9

# (memory bytes, seconds, arrival) rows of up to 9 tasks: 512 subsets to brute-force at most.
instances = st.lists(st.tuples(st.integers(1, 60), st.floats(0.5, 100), st.integers(0, 5)), max_size=9)


def _tasks(rows):
    return [EvolutionTask(f"t{i}", f"cam-{i}", memory, seconds, float(arrival))
            for i, (memory, seconds, arrival) in enumerate(rows)]


def _value(tasks):
    return sum(1.0 / task.seconds for task in tasks)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(instances, st.integers(60, 150))
def test_the_exact_knapsack_matches_brute_force(rows, budget):
    tasks = _tasks(rows)
    chosen = knapsack_select(tasks, budget, unit_bytes=1)
    subsets = (subset for size in range(len(tasks) + 1) for subset in itertools.combinations(tasks, size))
    best = max(_value(subset) for subset in subsets if sum(task.memory_bytes for task in subset) <= budget)
    assert _value(chosen) == pytest.approx(best, rel=1e-9)
    assert sum(task.memory_bytes for task in chosen) <= budget
    assert chosen == sorted(chosen, key=lambda task: (task.arrival, task.id))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(instances, st.integers(60, 150), st.integers(1, 40))
def test_coarse_units_never_exceed_the_budget_and_leave_no_fitting_task_out(rows, budget, unit):
    tasks = _tasks(rows)
    chosen = knapsack_select(tasks, budget, unit_bytes=unit)
    left = budget - sum(task.memory_bytes for task in chosen)
    assert left >= 0
    assert all(task.memory_bytes > left for task in tasks if task not in chosen)


def test_ties_prefer_earlier_arrivals_whatever_the_input_order():
    tasks = [EvolutionTask(f"t{i}", "cam", 4, 10.0, arrival=float(9 - i)) for i in range(10)]
    for order in (tasks, tasks[::-1], tasks[3:] + tasks[:3]):
        chosen = knapsack_select(order, 10, unit_bytes=1)
        assert [task.id for task in chosen] == ["t9", "t8"]  # arrivals 0 and 1


def test_alpha_scales_values_without_changing_the_choice():
    rng = np.random.default_rng(0)
    tasks = [EvolutionTask(f"t{i}", "cam", int(m), float(s)) for i, (m, s) in
             enumerate(zip(rng.integers(1, 30, 12), rng.uniform(1, 50, 12), strict=True))]
    assert knapsack_select(tasks, 60, unit_bytes=1, alpha=7.5) == knapsack_select(tasks, 60, unit_bytes=1)


def test_a_task_larger_than_the_whole_budget_is_named():
    tasks = [EvolutionTask("small", "cam-1", 2 * GB, 10), EvolutionTask("huge", "cam-2", 11 * GB, 10)]
    with pytest.raises(InvalidArgumentError, match=r"'huge'.*never run"):
        knapsack_select(tasks, 10 * GB)
    with pytest.raises(InvalidArgumentError, match="'huge'"):
        simulate(tasks, DpPolicy(), 10 * GB, slowdown=processor_sharing(2))
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        knapsack_select([tasks[0], tasks[0]], 10 * GB)
    with pytest.raises(InvalidArgumentError, match="unit_bytes"):
        DpPolicy(unit_bytes=0)


def _workload(seed):
    """Twenty tasks of mixed sizes in three bursts: mostly short device-only distillations, some
    long co-evolution tasks, each needing 3-7 GB, so two (sometimes three) fit the 10 GB
    accelerator at once and which ones start first matters."""
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(20):
        long = rng.random() < 0.3
        memory = int(rng.uniform(4, 7) * GB) if long else int(rng.uniform(3, 5) * GB)
        seconds = float(rng.uniform(150, 300) if long else rng.uniform(10, 60))
        arrival = float(rng.choice([0.0, 200.0, 400.0]) + rng.uniform(0, 20))
        tasks.append(EvolutionTask(f"task-{i:02d}", f"cam-{i % 5}", memory, seconds, arrival))
    return tasks


def _max_memory_in_use(result):
    events = sorted([(o.start, o.task.memory_bytes) for o in result.outcomes]
                    + [(o.finish, -o.task.memory_bytes) for o in result.outcomes], key=lambda e: (e[0], e[1]))
    in_use, peak = 0, 0
    for _, change in events:
        in_use += change
        peak = max(peak, in_use)
    return peak


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knapsack_scheduling_beats_serial_and_random_on_mean_latency(seed):
    tasks = _workload(seed)
    slowdown = processor_sharing(2)
    results = {"dp": simulate(tasks, DpPolicy(), 10 * GB, slowdown=slowdown),
               "serial": simulate(tasks, SerialPolicy(), 10 * GB, slowdown=slowdown)}
    for r in range(5):
        results[f"random-{r}"] = simulate(tasks, RandomPolicy(seed=r), 10 * GB, slowdown=slowdown)
    for result in results.values():
        assert sorted(o.task.id for o in result.outcomes) == sorted(t.id for t in tasks)
        for outcome in result.outcomes:
            assert outcome.task.arrival <= outcome.start
            assert outcome.finish - outcome.start >= outcome.task.seconds * (1 - 1e-9)
        assert _max_memory_in_use(result) <= 10 * GB
        assert result.peak_memory_bytes <= 10 * GB
    random_mean = np.mean([results[f"random-{r}"].mean_latency for r in range(5)])
    assert results["dp"].mean_latency < results["serial"].mean_latency
    assert results["dp"].mean_latency < random_mean


def test_serial_runs_one_task_at_a_time_in_arrival_order():
    tasks = _workload(3)
    result = simulate(tasks, SerialPolicy(), 10 * GB, slowdown=processor_sharing(2))
    ordered = sorted(result.outcomes, key=lambda o: o.start)
    assert [o.task for o in ordered] == sorted(tasks, key=lambda t: (t.arrival, t.id))
    for before, after in itertools.pairwise(ordered):
        assert after.start >= before.finish
    for outcome in ordered:  # alone on the accelerator, so exactly its own time
        assert outcome.finish - outcome.start == pytest.approx(outcome.task.seconds)


def test_sharing_stretches_running_tasks_and_free_parallelism_does_not():
    tasks = [EvolutionTask("a", "cam-1", 1, 10.0), EvolutionTask("b", "cam-2", 1, 30.0, arrival=5.0)]
    one_core = simulate(tasks, DpPolicy(unit_bytes=1), 10, slowdown=processor_sharing(1))
    # a: 5 s alone, then shares: its last 5 s of work take 10 s -> 15. b: 5 s of work by 15, then
    # 25 s alone -> 40.
    assert [(o.start, o.finish) for o in one_core.outcomes] == [(0.0, pytest.approx(15.0)),
                                                                (5.0, pytest.approx(40.0))]
    free = simulate(tasks, DpPolicy(unit_bytes=1), 10, slowdown=lambda k: 1.0)
    assert [o.latency for o in free.outcomes] == pytest.approx([10.0, 30.0])
    assert free.makespan == pytest.approx(35.0) and free.peak_memory_bytes == 2


class _Greedy:
    """Starts everything, ignoring memory."""

    def choose(self, waiting, running, free_bytes, now):
        return list(waiting)


class _Idle:
    def choose(self, waiting, running, free_bytes, now):
        return []


def test_simulation_rejects_policies_that_oversubscribe_or_stall():
    tasks = [EvolutionTask("a", "cam-1", 6, 10.0), EvolutionTask("b", "cam-2", 6, 10.0)]
    with pytest.raises(InvalidArgumentError, match=r"_Greedy.*only 10 free"):
        simulate(tasks, _Greedy(), 10, slowdown=processor_sharing(2))
    with pytest.raises(InvalidArgumentError, match="_Idle started nothing"):
        simulate(tasks, _Idle(), 10, slowdown=processor_sharing(2))
    with pytest.raises(InvalidArgumentError, match="slowdown"):
        simulate(tasks, SerialPolicy(), 10, slowdown=lambda k: 0.0)


def test_policies_only_start_what_fits_the_free_memory():
    waiting = [EvolutionTask(f"t{i}", "cam", 3, float(i + 1)) for i in range(5)]
    for policy in (DpPolicy(unit_bytes=1), RandomPolicy(seed=4)):
        chosen = policy.choose(waiting, [], 7, 0.0)
        assert len(chosen) == 2 and all(task in waiting for task in chosen)
    assert [t.id for t in DpPolicy(unit_bytes=1).choose(waiting, [], 7, 0.0)] == ["t0", "t1"]
    assert SerialPolicy().choose(waiting, waiting[:1], 7, 0.0) == []
    assert DpPolicy().choose(waiting, [], 2, 0.0) == []


def test_life_cycle_performance():
    assert life_cycle_performance(0.5, 0.9, 0, 100) == pytest.approx(0.9)
    assert life_cycle_performance(0.5, 0.9, 25, 100) == pytest.approx(0.8)
    assert life_cycle_performance(0.5, 0.9, 100, 100) == 0.5
    assert life_cycle_performance(0.5, 0.9, 150, 100) == 0.5
    assert life_cycle_performance(60, 90, 10, 40) == pytest.approx(82.5)
    # Halving the evolution latency is worth as much as the accuracy it keeps on the new model.
    assert life_cycle_performance(0.5, 0.9, 20, 100) > life_cycle_performance(0.5, 0.9, 40, 100)
    for args in [(0.5, 0.9, -1, 100), (0.5, 0.9, 10, 0), (float("nan"), 0.9, 10, 100)]:
        with pytest.raises(InvalidArgumentError):
            life_cycle_performance(*args)
