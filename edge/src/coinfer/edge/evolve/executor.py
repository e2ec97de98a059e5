"""Run the edge's evolution tasks as processes under a scheduling policy, measuring what each used.

A scheduler (:mod:`coinfer.sdk.evolve.scheduler`) decides from *predicted* memory and time; this
module is where those decisions meet real training. Each task (:class:`TrainingJob`: a device's
architecture, its current weights, the prefix features and labels it uploaded, the training
options) runs in a process of its own, for three reasons: its peak memory can be measured (the
process's own ``VmHWM``), a task that crashes takes nothing else down, and concurrent tasks share
the host as they would share an accelerator. Each process trains with one torch thread, so ``k``
running tasks compete for cores the way the scheduler assumes.

:class:`EvolutionExecutor` asks its :class:`~coinfer.sdk.evolve.scheduler.Policy` which waiting
tasks to start whenever a task arrives (at its ``arrival``, seconds after the run starts; 0 is
immediately) or finishes, with ``free_bytes = budget - sum(memory of the running tasks)``
(each task's prediction plus the predictor's headroom, see below), and records for every task
its arrival, start, finish, exit code, measured peak and the resident memory right after the
child's imports (its baseline). A task that fails (exit code != 0) is reported as failed; the
others carry on. :func:`budget_violations` then checks the schedule against what was measured,
conservatively: a task's peak counts for its whole run.

Predictions come from :class:`TaskPredictor`: the layer costs of the job's architecture
(:func:`~coinfer.sdk.evolve.profiling.layer_costs`, measured once per architecture and feature
shape) through :func:`~coinfer.sdk.evolve.memory.predict_training_memory` with Adam and a
workspace ``W``, plus the bytes of the job's own inputs, which the child holds whole; and the
training-time model on :func:`~coinfer.sdk.evolve.profiling.task_features`. :func:`calibrate`
fits both on a few separate tasks, each run alone: ``W`` by
:func:`~coinfer.sdk.evolve.memory.calibrate_workspace` (the median of measured peak minus layer
estimate) and the time model on the runs' measured seconds. On a CPU host ``W`` is mostly the
torch runtime itself (a few hundred MB); the layers still separate big tasks from small ones.

A median fit under-predicts about half the tasks, and on a CPU host it is the small ones: the
layer model lets memory grow faster with the layers than it does (it gives the activations'
gradients the activations' full size), so the fitted ``W`` sits below a small task's fixed
cost. Packing several small tasks by such predictions would overrun the budget. So the
scheduler does not pack by the prediction alone but by the prediction plus a *headroom*: the
largest amount by which the fitted prediction fell short of a calibration run's measured peak.
The prediction itself (what :attr:`TaskRecord.memory_error` and the bench's error measure) is
left as fitted.

Data reaches a task through files only the parent writes: ``inputs.npz`` (features, labels,
teacher logits) and ``state.npz`` (weights), read with ``allow_pickle=False``; the task writes
``result.json`` (measurements, or the error) and, if asked, the trained weights. Only the small
task description is pickled, by :mod:`multiprocessing`.

Tasks are forked from a *forkserver* that imported torch and the training code once: spawning
a fresh interpreter would cost each task about two seconds of imports, a large share of a short
task and CPU taken from the running ones. A forked task's resident set includes the server's
pages it shares copy-on-write; the peak reported is that raw peak RSS, so shared pages count in
every task (conservative). If another part of the program started the forkserver first, tasks
import torch themselves: slower, equally correct.

Example: a job and what a predictor makes of it (250 MB workspace, 40 MB headroom); then a
schedule's records in which measured peaks overlapped beyond a 700 MB budget once (a + b).

>>> import numpy as np
>>> from coinfer.sdk.evolve.networks import ArchitectureSpec
>>> features = np.zeros((64, 112, 4, 4), np.float16)
>>> job = TrainingJob("cam3-r1", "cam3", ArchitectureSpec("tiny", input_size=64), features,
...                   np.zeros((64, 4), bool), TrainOptions(epochs=2, batch_size=16))
>>> predictor = TaskPredictor(workspace_bytes=250 * 10**6, headroom_bytes=40 * 10**6)
>>> predictor.memory_bytes(job), predictor.task(job).memory_bytes
(252047296, 292047296)
>>> records = [TaskRecord(EvolutionTask(name, "cam", 300 * 10**6, 1.0), 290 * 10**6, start, finish, 0,
...                       peak, None, None) for name, start, finish, peak in
...            [("a", 0.0, 5.0, 400 * 10**6), ("b", 1.0, 3.0, 350 * 10**6), ("c", 3.0, 6.0, 250 * 10**6)]]
>>> budget_violations(records, 700 * 10**6)
1

Running jobs needs real processes (see the tests and ``coinfer.bench.evolve.scheduling``)::

    executor = EvolutionExecutor(budget_bytes=2 * 10**9)
    calibration = calibrate(executor, calibration_jobs)
    report = executor.run(jobs, DpPolicy(), calibration.predictor)
    report.mean_latency, report.budget_violations, report.failed
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError, InvalidArgumentError, one_line
from coinfer.sdk.evolve.memory import (
    LayerCost,
    MemoryEstimate,
    MemoryModel,
    calibrate_workspace,
    predict_training_memory,
)
from coinfer.sdk.evolve.networks import ArchitectureSpec
from coinfer.sdk.evolve.profiling import layer_costs, task_features
from coinfer.sdk.evolve.scheduler import EvolutionTask, Policy, SerialPolicy, TaskOutcome
from coinfer.sdk.evolve.timing import MeasuredRun, TaskFeatures, TrainingTimeModel
from coinfer.sdk.evolve.training import TrainOptions
from coinfer.sdk.fsutil import atomic_write_json
from coinfer.sdk.npz import read_arrays, write_arrays

INPUTS, STATE, RESULT = "inputs.npz", "state.npz", "result.json"
#: What the forkserver imports once, so that every task starts with it loaded: "__main__" (the
#: program's main module, which each task would otherwise import again) and torch._dynamo, which
#: torch's optimizers import on first use (some 800 modules, seconds per task otherwise).
PRELOAD = ["__main__", "torch", "torch._dynamo", "efficientnet_lite_pytorch", "coinfer.sdk.evolve.networks",
           "coinfer.sdk.evolve.training", "coinfer.edge.evolve.executor"]

#: Called with (what happened, task id) as tasks start and finish.
Progress = Callable[[str, str], None]


class ExecutorError(CoinferError):
    """The executor could not go on: a policy that oversubscribes or stalls, or a calibration
    task that failed."""


@dataclass(frozen=True, eq=False)
class TrainingJob:
    """One evolution task to train: ``id`` and ``device``; the ``architecture`` to build, with
    ``state`` (from :func:`~coinfer.sdk.evolve.training.state_arrays`) or fresh random weights;
    prefix ``features`` (N, C, h, w) and bool ``labels`` (N, T); ``teacher_logits`` (N, T) to
    distill (None: plain fine-tuning); the ``options``; ``arrival`` (seconds after the run
    starts); ``output``: where the child writes the trained weights (npz), or None."""

    id: str
    device: str
    architecture: ArchitectureSpec
    features: np.ndarray
    labels: np.ndarray
    options: TrainOptions = field(default_factory=TrainOptions)
    arrival: float = 0.0
    teacher_logits: np.ndarray | None = None
    state: Mapping[str, np.ndarray] | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        for name in ("features", "labels", "teacher_logits"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, np.asarray(getattr(self, name)))
        tasks = len(self.architecture.tasks)
        if self.features.ndim != 4 or not len(self.features):
            raise InvalidArgumentError(f"job {self.id!r}: features must be a non-empty (N, C, h, w) array, "
                                       f"got shape {self.features.shape}")
        if self.labels.shape != (len(self.features), tasks):
            raise InvalidArgumentError(f"job {self.id!r}: labels must be (N, {tasks}) = "
                                       f"{(len(self.features), tasks)}, got {self.labels.shape}")
        if self.teacher_logits is not None and self.teacher_logits.shape != self.labels.shape:
            raise InvalidArgumentError(f"job {self.id!r}: teacher_logits must be shaped like the labels "
                                       f"{self.labels.shape}, got {self.teacher_logits.shape}")
        if not (math.isfinite(self.arrival) and self.arrival >= 0):
            raise InvalidArgumentError(f"job {self.id!r}: arrival must be a finite number >= 0, got "
                                       f"{self.arrival!r}")

    @property
    def input_bytes(self) -> int:
        """What the child loads and keeps while it trains: features, labels, teacher logits, weights."""
        arrays = [self.features, self.labels]
        if self.teacher_logits is not None:
            arrays.append(self.teacher_logits)
        arrays.extend((self.state or {}).values())
        return int(sum(np.asarray(array).nbytes for array in arrays))


@functools.lru_cache(maxsize=64)
def _architecture_profile(spec: ArchitectureSpec, shape: tuple[int, ...]) -> tuple[tuple[LayerCost, ...],
                                                                                    TaskFeatures]:
    """Layer costs and the per-task constant features of ``spec`` on features of ``shape``
    (the weights do not matter, so the network is built with random ones)."""
    from coinfer.sdk.evolve.networks import build_network

    model = build_network(spec)
    return tuple(layer_costs(model, shape)), task_features(model, 1, 1, 1, feature_shape=shape)


class TaskPredictor:
    """Predicted memory and seconds of :class:`TrainingJob` (see the module docstring):
    ``workspace_bytes`` for :class:`~coinfer.sdk.evolve.memory.MemoryModel` (Adam, float32), a
    ``time_model`` (an unfitted one ranks tasks by work until runs exist) and the
    ``headroom_bytes`` the scheduler reserves beyond each prediction."""

    def __init__(self, workspace_bytes: int = 0, time_model: TrainingTimeModel | None = None, *,
                 headroom_bytes: int = 0) -> None:
        if isinstance(headroom_bytes, bool) or not isinstance(headroom_bytes, int | np.integer) \
                or headroom_bytes < 0:
            raise InvalidArgumentError(f"headroom_bytes must be an integer >= 0, got {headroom_bytes!r}")
        self.memory_model = MemoryModel(optimizer="adam", workspace_bytes=workspace_bytes)
        self.time_model = time_model if time_model is not None else TrainingTimeModel()
        self.headroom_bytes = int(headroom_bytes)

    @property
    def workspace_bytes(self) -> int:
        return self.memory_model.workspace_bytes

    def layers(self, job: TrainingJob) -> list[LayerCost]:
        """The layer costs of the job's architecture on its features."""
        return list(_architecture_profile(job.architecture, tuple(job.features.shape[1:]))[0])

    def features(self, job: TrainingJob) -> TaskFeatures:
        """What the training-time model reads about the job."""
        constant = _architecture_profile(job.architecture, tuple(job.features.shape[1:]))[1]
        return dataclasses.replace(constant, samples=len(job.features), epochs=job.options.epochs,
                                   batch_size=job.options.batch_size)

    def estimate(self, job: TrainingJob) -> MemoryEstimate:
        """The five-part estimate; a batch never holds more samples than the job has."""
        batch = min(job.options.batch_size, len(job.features))
        return predict_training_memory(self.layers(job), batch, self.memory_model)

    def memory_bytes(self, job: TrainingJob) -> int:
        """The predicted peak: the estimate plus the job's inputs."""
        return self.estimate(job).total + job.input_bytes

    def reserved_bytes(self, job: TrainingJob) -> int:
        """What the scheduler packs: the prediction plus the headroom."""
        return self.memory_bytes(job) + self.headroom_bytes

    def seconds(self, job: TrainingJob) -> float:
        return self.time_model.predict(self.features(job))

    def task(self, job: TrainingJob) -> EvolutionTask:
        """The job as the scheduler sees it (its memory is :meth:`reserved_bytes`)."""
        return EvolutionTask(job.id, job.device, self.reserved_bytes(job), self.seconds(job), job.arrival)


@dataclass(frozen=True)
class TaskRecord:
    """One task as it ran: the scheduler's view (``task``: reserved memory, predicted seconds,
    arrival), the ``predicted_bytes`` peak (before headroom), ``start`` and ``finish`` (seconds
    on the run's clock), the child's ``exit_code``, its measured ``peak_bytes`` (raw peak RSS)
    and ``baseline_bytes`` (RSS after its imports), the seconds its training took inside the
    child, and the ``error`` of a failed task. Measurements a crashed child could not report
    are None."""

    task: EvolutionTask
    predicted_bytes: int
    start: float
    finish: float
    exit_code: int
    peak_bytes: int | None
    baseline_bytes: int | None
    train_seconds: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def outcome(self) -> TaskOutcome:
        """The record as a schedule's outcome: the task, its start and its finish."""
        return TaskOutcome(self.task, self.start, self.finish)

    @property
    def wait(self) -> float:
        """Arrival to start, as the scheduler counts it (:attr:`TaskOutcome.wait`)."""
        return self.outcome.wait

    @property
    def latency(self) -> float:
        """Arrival to finish, what the device waits for its new model (:attr:`TaskOutcome.latency`)."""
        return self.outcome.latency

    @property
    def run_seconds(self) -> float:
        return self.finish - self.start

    @property
    def held_bytes(self) -> int:
        """The memory the task is taken to hold while it runs: its measured peak, or the
        memory reserved for it when it crashed before measuring."""
        return self.peak_bytes if self.peak_bytes is not None else self.task.memory_bytes

    @property
    def memory_error(self) -> float | None:
        """|predicted - measured| / measured peak, or None without a measurement."""
        if not self.peak_bytes:
            return None
        return abs(self.predicted_bytes - self.peak_bytes) / self.peak_bytes


def budget_violations(records: Sequence[TaskRecord], budget_bytes: int) -> int:
    """The moments (task starts) at which the tasks running held more than ``budget_bytes``
    together, each holding its :attr:`~TaskRecord.held_bytes` from its start to its finish."""
    violations = 0
    for moment in sorted(record.start for record in records):
        held = sum(r.held_bytes for r in records if r.start <= moment < r.finish)
        violations += held > budget_bytes
    return violations


@dataclass(frozen=True)
class ExecutionReport:
    """A run of tasks under one policy: its ``records`` (arrival order, then id), the
    ``budget_bytes`` and the most memory the scheduler had reserved at once."""

    policy: str
    budget_bytes: int
    records: tuple[TaskRecord, ...]
    reserved_peak_bytes: int

    @property
    def mean_latency(self) -> float:
        return statistics.fmean(record.latency for record in self.records)

    @property
    def makespan(self) -> float:
        """From the first arrival to the last finish."""
        return max(r.finish for r in self.records) - min(r.task.arrival for r in self.records)

    @property
    def failed(self) -> list[str]:
        return [record.task.id for record in self.records if not record.ok]

    @property
    def budget_violations(self) -> int:
        return budget_violations(self.records, self.budget_bytes)

    def memory_errors(self) -> list[float]:
        """The relative memory prediction error of every task that measured its peak."""
        return [error for record in self.records if (error := record.memory_error) is not None]


def _status_bytes(field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of this process's /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ExecutorError(f"/proc/self/status has no {field}")


def _ready() -> None:
    """A task that does nothing: starting it makes sure the forkserver has its imports."""


def _run_task(description: Mapping[str, Any]) -> None:
    """The child: train one job from its folder, write ``result.json``, exit 1 on failure."""
    import torch

    from coinfer.sdk.evolve import training
    from coinfer.sdk.evolve.networks import build_network

    torch.set_num_threads(1)
    folder = Path(description["folder"])
    result: dict[str, Any] = {"baseline_bytes": _status_bytes("VmRSS")}
    try:
        limit = int(description["input_bytes"]) + (1 << 20)
        inputs = read_arrays(folder / INPUTS, required=("features", "labels"), max_bytes=limit)
        model = build_network(ArchitectureSpec.from_dict(description["architecture"]))
        if (folder / STATE).exists():
            training.load_state_arrays(model, read_arrays(folder / STATE, max_bytes=limit))
        started = time.perf_counter()
        losses = training.distill(model, inputs.get("teacher_logits"), inputs["features"], inputs["labels"],
                                  TrainOptions(**description["options"]))
        result.update(train_seconds=time.perf_counter() - started, losses=losses)
        if description["output"]:
            write_arrays(description["output"], training.state_arrays(model))
    except Exception as error:  # whatever stops the task is its result, not the edge's crash
        result["error"] = f"{type(error).__name__}: {one_line(error)}"
    result["peak_bytes"] = _status_bytes("VmHWM")
    atomic_write_json(folder / RESULT, result)
    if "error" in result:
        sys.exit(1)


@functools.lru_cache(maxsize=1)
def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


@dataclass
class _Running:
    task: EvolutionTask
    process: Any
    start: float


class EvolutionExecutor:
    """Runs :class:`TrainingJob` under a policy within ``budget_bytes`` of reserved memory.
    Each run's files go to a temporary folder under ``work_dir`` (the system's by default),
    removed when the run ends."""

    def __init__(self, budget_bytes: int, *, work_dir: str | os.PathLike[str] | None = None) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int | np.integer) \
                or budget_bytes < 1:
            raise InvalidArgumentError(f"budget_bytes must be an integer >= 1, got {budget_bytes!r}")
        self.budget_bytes = int(budget_bytes)
        self.work_dir = None if work_dir is None else Path(work_dir)

    def run(self, jobs: Sequence[TrainingJob], policy: Policy, predictor: TaskPredictor,
            progress: Progress | None = None) -> ExecutionReport:
        """Run every job to its end under ``policy`` and report what happened. Raises before
        starting anything if a job's reserved memory exceeds the budget, and
        :class:`ExecutorError` if the policy oversubscribes the budget or leaves every task
        waiting with nothing running and nothing due."""
        if not jobs:
            raise InvalidArgumentError("no jobs to run")
        tasks = {job.id: predictor.task(job) for job in jobs}
        if len(tasks) != len(jobs):
            raise InvalidArgumentError("every job needs a distinct id")
        for task in tasks.values():
            if task.memory_bytes > self.budget_bytes:
                raise InvalidArgumentError(f"job {task.id!r} reserves {task.memory_bytes} bytes, more than "
                                           f"the budget of {self.budget_bytes}: it can never run")
        by_id = {job.id: job for job in jobs}
        predicted = {job.id: predictor.memory_bytes(job) for job in jobs}
        context = _context()
        warm = context.Process(target=_ready, daemon=True)
        warm.start()
        warm.join()
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="coinfer-evolve-", dir=self.work_dir) as folder:
            for index, job in enumerate(jobs):
                _write_inputs(Path(folder) / f"task{index}", job)
            folders = {job.id: Path(folder) / f"task{index}" for index, job in enumerate(jobs)}
            return self._schedule(by_id, tasks, predicted, folders, policy, context, progress)

    def _schedule(self, jobs: Mapping[str, TrainingJob], tasks: Mapping[str, EvolutionTask],
                  predicted: Mapping[str, int], folders: Mapping[str, Path], policy: Policy, context: Any,
                  progress: Progress | None) -> ExecutionReport:
        name = type(policy).__name__
        pending = sorted(tasks.values(), key=lambda task: (task.arrival, task.id))
        waiting: list[EvolutionTask] = []
        running: dict[str, _Running] = {}
        records: dict[str, TaskRecord] = {}
        used = peak = 0
        origin = time.monotonic()
        changed = False
        try:
            while pending or waiting or running:
                now = time.monotonic() - origin
                while pending and pending[0].arrival <= now:
                    waiting.append(pending.pop(0))
                    changed = True
                if changed and waiting:
                    chosen = policy.choose(list(waiting), [r.task for r in running.values()],
                                           self.budget_bytes - used, now)
                    ids = [task.id for task in chosen]
                    asked = sum(int(task.memory_bytes) for task in chosen)
                    if len(set(ids)) != len(ids) or not set(ids) <= {task.id for task in waiting}:
                        raise ExecutorError(f"policy {name} chose tasks that are not waiting (or twice): "
                                            f"{ids}")
                    if used + asked > self.budget_bytes:
                        raise ExecutorError(f"policy {name} started {ids} needing {asked} bytes with only "
                                            f"{self.budget_bytes - used} free")
                    for task in chosen:
                        waiting.remove(task)
                        running[task.id] = self._start(jobs[task.id], task, folders[task.id], context, origin)
                        if progress:
                            progress("start", task.id)
                    used += asked
                    peak = max(peak, used)
                changed = False
                if not running:
                    if not pending:
                        raise ExecutorError(f"policy {name} started nothing with nothing running and "
                                            f"{len(waiting)} tasks waiting")
                    time.sleep(max(0.0, pending[0].arrival - (time.monotonic() - origin)))
                    continue
                due = None if not pending else max(0.0, pending[0].arrival - (time.monotonic() - origin))
                sentinels = {item.process.sentinel: task_id for task_id, item in running.items()}
                for sentinel in multiprocessing.connection.wait(list(sentinels), due):
                    item = running.pop(sentinels[sentinel])  # type: ignore[index]
                    records[item.task.id] = _finish(item, predicted[item.task.id], folders[item.task.id],
                                                    time.monotonic() - origin)
                    used -= int(item.task.memory_bytes)
                    changed = True
                    if progress:
                        progress("finish" if records[item.task.id].ok else "fail", item.task.id)
        finally:
            for item in running.values():
                item.process.terminate()
                item.process.join()
        ordered = sorted(records.values(), key=lambda record: (record.task.arrival, record.task.id))
        return ExecutionReport(name, self.budget_bytes, tuple(ordered), peak)

    @staticmethod
    def _start(job: TrainingJob, task: EvolutionTask, folder: Path, context: Any, origin: float) -> _Running:
        description = {"folder": str(folder), "architecture": job.architecture.to_dict(),
                       "options": dataclasses.asdict(job.options), "output": job.output,
                       "input_bytes": job.input_bytes}
        process = context.Process(target=_run_task, args=(description,), name=f"coinfer-evolve-{job.id}",
                                  daemon=True)
        start = time.monotonic() - origin
        process.start()
        return _Running(task, process, start)


def _write_inputs(folder: Path, job: TrainingJob) -> None:
    folder.mkdir()
    arrays = {"features": job.features, "labels": np.asarray(job.labels, bool)}
    if job.teacher_logits is not None:
        arrays["teacher_logits"] = np.asarray(job.teacher_logits, np.float32)
    write_arrays(folder / INPUTS, arrays)
    if job.state is not None:
        write_arrays(folder / STATE, job.state)


def _finish(item: _Running, predicted: int, folder: Path, now: float) -> TaskRecord:
    item.process.join()
    code = item.process.exitcode
    result: dict[str, Any] = {}
    if (folder / RESULT).exists():
        result = json.loads((folder / RESULT).read_text(encoding="utf-8"))
    error = result.get("error")
    if code != 0 and error is None:
        error = f"the task's process ended with exit code {code}"

    def number(key: str) -> Any:
        value = result.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return TaskRecord(item.task, predicted, item.start, now, int(code if code is not None else -1),
                      number("peak_bytes"), number("baseline_bytes"), number("train_seconds"), error)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` fitted (``predictor``), the runs it fitted on (``report``, and the
    time model's ``runs``) and the fitted prediction of each run's peak."""

    predictor: TaskPredictor
    report: ExecutionReport
    runs: tuple[MeasuredRun, ...]
    predicted_bytes: Mapping[str, int]

    def memory_errors(self) -> list[float]:
        """Relative memory error of the fitted predictor on the calibration runs (in sample)."""
        return [abs(self.predicted_bytes[r.task.id] - r.held_bytes) / r.held_bytes
                for r in self.report.records]

    def time_errors(self) -> list[float]:
        """Relative time error of the fitted time model on the calibration runs (in sample)."""
        model = self.predictor.time_model
        return [abs(model.predict(run.task) - run.seconds) / run.seconds for run in self.runs]


def calibrate(executor: EvolutionExecutor, jobs: Sequence[TrainingJob],
              predictor: TaskPredictor | None = None, progress: Progress | None = None) -> Calibration:
    """Run ``jobs`` one at a time (:class:`~coinfer.sdk.evolve.scheduler.SerialPolicy`, so each
    runs alone) and fit the workspace, the headroom and the training-time model on them (see the
    module docstring); ``predictor`` gives the time model's settings. Raises
    :class:`ExecutorError` if any of them fails."""
    start = predictor if predictor is not None else TaskPredictor()
    report = executor.run(jobs, SerialPolicy(), start, progress)
    if report.failed:
        errors = "; ".join(f"{r.task.id}: {r.error}" for r in report.records if not r.ok)
        raise ExecutorError(f"calibration task(s) failed: {errors}")
    by_id = {job.id: job for job in jobs}
    ran = [by_id[record.task.id] for record in report.records]
    layers = [start.estimate(job).without_workspace + job.input_bytes for job in ran]
    workspace = calibrate_workspace([record.held_bytes for record in report.records], layers)
    runs = tuple(MeasuredRun(start.features(job), record.run_seconds)
                 for job, record in zip(ran, report.records, strict=True))
    time_model = TrainingTimeModel(min_runs=start.time_model.min_runs, ridge=start.time_model.ridge).fit(runs)
    prediction = TaskPredictor(workspace, time_model)
    shortfall = max(record.held_bytes - prediction.memory_bytes(job)
                    for job, record in zip(ran, report.records, strict=True))
    fitted = TaskPredictor(workspace, time_model, headroom_bytes=max(0, shortfall))
    return Calibration(fitted, report, runs, {job.id: fitted.memory_bytes(job) for job in ran})
