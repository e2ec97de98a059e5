"""Which evolution tasks the edge trains now, given its free memory (NestEvo Algorithm 3).

Devices' evolution tasks arrive at the edge over time and compete for one accelerator's memory.
Two observations drive NestEvo's scheduler: filling the memory keeps the accelerator busy, and
running short jobs first minimises the mean waiting time. So whenever a task arrives or
finishes, it solves a 0/1 knapsack over the waiting tasks: capacity the free memory, weight a
task's predicted memory, value ``alpha / t`` with ``t`` its predicted training time.
:func:`knapsack_select` solves it by dynamic programming over memory counted in ``unit_bytes``
units; each task's size is rounded *up* and the capacity *down*, so the chosen set never needs
more than the budget, and the few bytes lost to rounding are offered to the remaining tasks in
value order afterwards, so a task that fits is never left waiting on an idle accelerator.

Schedulers share one interface, :class:`Policy`: given the waiting and running tasks, the free
memory and the time, return the tasks to start now. :class:`DpPolicy` is NestEvo's,
:class:`SerialPolicy` (baseline B2) trains one task at a time in arrival order and
:class:`RandomPolicy` (baseline B1) starts random waiting tasks while they fit. A policy knows
nothing of how tasks run: the edge's executor calls it with measured completions, and
:func:`simulate` calls it from an event simulation in which ``k`` concurrent tasks each run
``slowdown(k)`` times slower than alone (parallelism shares the accelerator; it is not free).

Example: 10 GB free, four tasks; the three short ones go first, three at once on an accelerator
that runs two at full speed, and the long one waits until enough memory is free.

>>> GB = 10**9
>>> tasks = [EvolutionTask("a", "cam-1", 6 * GB, seconds=100, arrival=0),
...          EvolutionTask("b", "cam-2", 3 * GB, seconds=20, arrival=0),
...          EvolutionTask("c", "cam-3", 4 * GB, seconds=30, arrival=0),
...          EvolutionTask("d", "cam-4", 2 * GB, seconds=25, arrival=0)]
>>> [task.id for task in knapsack_select(tasks, 10 * GB)]
['b', 'c', 'd']
>>> result = simulate(tasks, DpPolicy(), 10 * GB, slowdown=processor_sharing(2))
>>> [(o.task.id, o.start, o.finish) for o in result.outcomes]
[('a', 35.0, 135.0), ('b', 0.0, 30.0), ('c', 0.0, 40.0), ('d', 0.0, 35.0)]
>>> result.mean_latency, result.peak_memory_bytes
(60.0, 10000000000)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError

MAX_DP_CELLS = 1 << 26
"""Largest ``tasks * (capacity units + 1)`` table :func:`knapsack_select` builds (64 MiB of flags)."""


@dataclass(frozen=True)
class EvolutionTask:
    """One device's evolution task: its ``id``, the ``device`` it serves, its predicted peak
    ``memory_bytes`` and training ``seconds`` (alone on the accelerator), and when it arrived."""

    id: str
    device: str
    memory_bytes: int
    seconds: float
    arrival: float = 0.0

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidArgumentError("an evolution task needs a non-empty id")
        if isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int | np.integer) \
                or self.memory_bytes < 1:
            raise InvalidArgumentError(f"task {self.id!r}: memory_bytes must be an integer >= 1, got "
                                       f"{self.memory_bytes!r}")
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise InvalidArgumentError(f"task {self.id!r}: seconds must be a finite number > 0, got "
                                       f"{self.seconds!r}")
        if not (math.isfinite(self.arrival) and self.arrival >= 0):
            raise InvalidArgumentError(f"task {self.id!r}: arrival must be a finite number >= 0, got "
                                       f"{self.arrival!r}")


def _arrival_order(tasks: Sequence[EvolutionTask]) -> list[EvolutionTask]:
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise InvalidArgumentError(f"task id {task.id!r} appears twice")
        seen.add(task.id)
    return sorted(tasks, key=lambda task: (task.arrival, task.id))


def _check_budget(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise InvalidArgumentError(f"{name} must be an integer number of bytes >= 0, got {value!r}")
    return int(value)


def _check_options(unit_bytes: int, alpha: float) -> None:
    if isinstance(unit_bytes, bool) or not isinstance(unit_bytes, int) or unit_bytes < 1:
        raise InvalidArgumentError(f"unit_bytes must be an integer >= 1, got {unit_bytes!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise InvalidArgumentError(f"alpha must be a finite number > 0, got {alpha!r}")


def _check_fits(tasks: Sequence[EvolutionTask], budget: int) -> None:
    for task in tasks:
        if task.memory_bytes > budget:
            raise InvalidArgumentError(f"task {task.id!r} needs {task.memory_bytes} bytes, more than the "
                                       f"whole budget of {budget}: it can never run")


def knapsack_select(tasks: Sequence[EvolutionTask], budget_bytes: int, *, unit_bytes: int = 1 << 20,
                    alpha: float = 1.0) -> list[EvolutionTask]:
    """The set of ``tasks`` of greatest total ``alpha / seconds`` whose memory fits ``budget_bytes``,
    in arrival order (then id).

    Memory is counted in ``unit_bytes`` units (1 MiB by default; 1 for an exact solution over
    bytes). Among sets of equal value the one of earlier-arrived tasks wins. A task that needs
    more than the whole budget can never be chosen, which is a configuration error: it raises.
    """
    budget = _check_budget("budget_bytes", budget_bytes)
    _check_options(unit_bytes, alpha)
    ordered = _arrival_order(tasks)
    _check_fits(ordered, budget)
    if not ordered:
        return []
    capacity = budget // unit_bytes
    if len(ordered) * (capacity + 1) > MAX_DP_CELLS:
        raise InvalidArgumentError(f"{len(ordered)} tasks over {capacity} memory units is too large a table; "
                                   f"raise unit_bytes (now {unit_bytes})")
    sizes = [-(-int(task.memory_bytes) // unit_bytes) for task in ordered]
    values = [alpha / task.seconds for task in ordered]
    best = np.zeros(capacity + 1)
    taken = np.zeros((len(ordered), capacity + 1), dtype=bool)
    for index, (size, value) in enumerate(zip(sizes, values, strict=True)):
        if size > capacity:
            continue
        with_task = best[: capacity + 1 - size] + value
        # Take a task only when it adds value beyond rounding noise, so ties keep earlier tasks.
        better = with_task > best[size:] * (1 + 1e-12) + 1e-300
        taken[index, size:] = better
        best[size:] = np.where(better, with_task, best[size:])
    chosen = set()
    room = capacity
    for index in range(len(ordered) - 1, -1, -1):
        if taken[index, room]:
            chosen.add(index)
            room -= sizes[index]
    left = budget - sum(int(ordered[index].memory_bytes) for index in chosen)
    for index in sorted(set(range(len(ordered))) - chosen, key=lambda i: (-values[i], i)):
        if ordered[index].memory_bytes <= left:
            chosen.add(index)
            left -= int(ordered[index].memory_bytes)
    return [ordered[index] for index in sorted(chosen)]


class Policy(Protocol):
    """Chooses which waiting tasks to start now. The returned tasks come from ``waiting`` and
    their predicted memory together fits ``free_bytes``; ``running`` and ``now`` (seconds, on
    the caller's clock) are there for policies that need them."""

    def choose(self, waiting: Sequence[EvolutionTask], running: Sequence[EvolutionTask], free_bytes: int,
               now: float) -> list[EvolutionTask]:
        ...


class DpPolicy:
    """NestEvo: the knapsack-optimal set (value ``alpha / seconds``) of the waiting tasks that fit
    the free memory, re-planned on every call."""

    def __init__(self, *, unit_bytes: int = 1 << 20, alpha: float = 1.0) -> None:
        _check_options(unit_bytes, alpha)
        self.unit_bytes, self.alpha = unit_bytes, alpha

    def choose(self, waiting: Sequence[EvolutionTask], running: Sequence[EvolutionTask], free_bytes: int,
               now: float) -> list[EvolutionTask]:
        free = _check_budget("free_bytes", free_bytes)
        fitting = [task for task in waiting if task.memory_bytes <= free]
        return knapsack_select(fitting, free, unit_bytes=self.unit_bytes, alpha=self.alpha)


class SerialPolicy:
    """Baseline B2: one task at a time, in arrival order (then id)."""

    def choose(self, waiting: Sequence[EvolutionTask], running: Sequence[EvolutionTask], free_bytes: int,
               now: float) -> list[EvolutionTask]:
        if running or not waiting:
            return []
        first = _arrival_order(waiting)[0]
        return [first] if first.memory_bytes <= _check_budget("free_bytes", free_bytes) else []


class RandomPolicy:
    """Baseline B1: the waiting tasks in a random order, each started if it still fits.
    ``seed`` makes the sequence of choices reproducible."""

    def __init__(self, seed: int = 0) -> None:
        self.random = random.Random(seed)

    def choose(self, waiting: Sequence[EvolutionTask], running: Sequence[EvolutionTask], free_bytes: int,
               now: float) -> list[EvolutionTask]:
        left = _check_budget("free_bytes", free_bytes)
        order = _arrival_order(waiting)
        self.random.shuffle(order)
        chosen = []
        for task in order:
            if task.memory_bytes <= left:
                chosen.append(task)
                left -= int(task.memory_bytes)
        return chosen


def processor_sharing(cores: int) -> Callable[[int], float]:
    """A slowdown for :func:`simulate`: ``cores`` tasks run at full speed together, more share
    them (``k`` tasks each take ``max(1, k / cores)`` times as long)."""
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise InvalidArgumentError(f"cores must be an integer >= 1, got {cores!r}")
    return lambda running: max(1.0, running / cores)


@dataclass(frozen=True)
class TaskOutcome:
    """When a task started and finished in a schedule."""

    task: EvolutionTask
    start: float
    finish: float

    @property
    def wait(self) -> float:
        """Arrival to start: how long the task waited before the policy started it."""
        return self.start - self.task.arrival

    @property
    def latency(self) -> float:
        """Arrival to finish: what the device waits for its new model."""
        return self.finish - self.task.arrival


@dataclass(frozen=True)
class ScheduleResult:
    """Every task's outcome (in arrival order, then id) and the schedule's summary numbers."""

    outcomes: tuple[TaskOutcome, ...]
    peak_memory_bytes: int

    @property
    def mean_latency(self) -> float:
        return sum(outcome.latency for outcome in self.outcomes) / len(self.outcomes)

    @property
    def makespan(self) -> float:
        """From the first arrival to the last finish."""
        return max(o.finish for o in self.outcomes) - min(o.task.arrival for o in self.outcomes)


def simulate(tasks: Sequence[EvolutionTask], policy: Policy, budget_bytes: int, *,
             slowdown: Callable[[int], float]) -> ScheduleResult:
    """Run ``tasks`` under ``policy`` on an accelerator with ``budget_bytes`` of memory.

    The policy is asked at every arrival and completion. Each task needs ``seconds`` of work;
    while ``k`` tasks run, each does ``1 / slowdown(k)`` seconds of work per second. Raises if a
    task can never fit, or if the policy oversubscribes memory, starts a task that is not waiting,
    or leaves an idle accelerator idle with no task due to arrive.
    """
    budget = _check_budget("budget_bytes", budget_bytes)
    ordered = _arrival_order(tasks)
    if not ordered:
        raise InvalidArgumentError("no tasks to simulate")
    _check_fits(ordered, budget)
    name = type(policy).__name__
    pending = list(ordered)
    waiting: list[EvolutionTask] = []
    remaining: dict[str, float] = {}
    running: dict[str, EvolutionTask] = {}
    starts: dict[str, float] = {}
    finishes: dict[str, float] = {}
    now, used, peak = 0.0, 0, 0
    while pending or waiting or running:
        while pending and pending[0].arrival <= now:
            waiting.append(pending.pop(0))
        if waiting:
            chosen = policy.choose(list(waiting), list(running.values()), budget - used, now)
            ids = [task.id for task in chosen]
            if len(set(ids)) != len(ids) or not set(ids) <= {task.id for task in waiting}:
                raise InvalidArgumentError(f"policy {name} chose tasks that are not waiting (or twice): "
                                           f"{ids}")
            asked = sum(int(task.memory_bytes) for task in chosen)
            if used + asked > budget:
                raise InvalidArgumentError(f"policy {name} started {ids} needing {asked} bytes with only "
                                           f"{budget - used} free")
            for task in chosen:
                waiting.remove(task)
                running[task.id], remaining[task.id], starts[task.id] = task, float(task.seconds), now
            used += asked
            peak = max(peak, used)
        if not running:
            if not pending:
                raise InvalidArgumentError(f"policy {name} started nothing on an idle accelerator with "
                                           f"{len(waiting)} tasks waiting")
            now = pending[0].arrival
            continue
        stretch = float(slowdown(len(running)))
        if not (math.isfinite(stretch) and stretch > 0):
            raise InvalidArgumentError(f"slowdown({len(running)}) must be a finite number > 0, got "
                                       f"{stretch!r}")
        step = min(remaining.values()) * stretch
        if pending and pending[0].arrival - now < step:
            step = pending[0].arrival - now
        now += step
        for task_id in list(running):
            remaining[task_id] -= step / stretch
            if remaining[task_id] <= 1e-9 * running[task_id].seconds:
                finishes[task_id] = now
                used -= int(running.pop(task_id).memory_bytes)
                del remaining[task_id]
    outcomes = tuple(TaskOutcome(task, starts[task.id], finishes[task.id]) for task in ordered)
    return ScheduleResult(outcomes, peak)
