"""The ``scheduler`` section of the evolve bench: NestEvo's knapsack scheduler against running
tasks one at a time (B2) and random parallel starts (B1), on real training processes.

The question is how long devices wait for their evolved models when the edge trains many
devices' tasks in the memory it has. The workload: cameras (4 in the quick run, 8 in the full
one) given the device architectures of :data:`coinfer.bench.evolve.methods.DEVICE_ARCHITECTURES`
in turn (pruned to 70%, 50%, 30% and the tiny body), with weights built from the pretrained
network, and several rounds in which every camera uploads frames and asks for a distillation
task; tasks differ in architecture, number of frames (log-uniform in a range) and epochs, so
their durations differ by more than an order of magnitude. Each round arrives as one
burst, as co-evolution creates every device's task at once, queued in a random order; the
next round comes as long after as the round's tasks take to train one after another, as
predicted (the load a serial edge can just carry).

The features are synthetic: random float16 prefix features of the right shape
(N, 112, S/16, S/16) and random labels and teacher logits. A scheduler cares what a task
costs, which depends on the shapes, not on the values, and not on accuracy (the methods
section measures that).

Every task runs in its own process (:mod:`coinfer.edge.evolve.executor`), one torch thread each.
Before the policies run, :func:`~coinfer.edge.evolve.executor.calibrate` runs a few separate
tasks (two or three per architecture) alone to fit the memory workspace, the scheduler's
headroom and the training-time model; the evaluation tasks are never fitted on. The three
policies then run the same task list with the same memory budget, 2.5 x the median predicted
task memory (two or three typical tasks at once), one after the other in this run: the
knapsack DP (:class:`~coinfer.sdk.evolve.scheduler.DpPolicy`), serial (B2) and random (B1, one
seed in the quick run, the mean over two seeds in the full one). Every policy packs each
task's prediction plus the headroom (see :mod:`coinfer.edge.evolve.executor`).

Reported: each policy's mean latency (arrival to finish) and makespan, ``dp_over_serial``;
``budget_violations``, the moments at which the measured peaks of the running tasks summed to
more than the budget (each peak held for its task's whole run), summed over policies and per
policy; ``memory_prediction_error``, the median relative error of predicted against measured
peak RSS over every evaluation task of every policy; the time model with its error on the
serial runs (each task alone, as the model predicts) and on all runs (where concurrent tasks
share the cores); and, for comparison, what the sdk's simulation
(:func:`~coinfer.sdk.evolve.scheduler.simulate`, two cores) predicts for the same tasks.

The quick workload's cameras and their architectures:

>>> for camera, name, spec in SchedulerWorkload.for_mode(True).devices():
...     print(camera, name, spec.id)
cam0 M1 efficientnet-lite0-k70-s128-e128-t4
cam1 M2 efficientnet-lite0-k50-s128-e128-t4
cam2 M3 efficientnet-lite0-k30-s128-e128-t4
cam3 tiny tiny-k100-s128-e128-t4

Running it (one to two minutes on 2 cores)::

    report = run_scheduler_bench(quick=True)
    report["dp_over_serial"], report["budget_violations"], report["memory_prediction_error"]
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.bench.evolve.methods import DEVICE_ARCHITECTURES
from coinfer.bench.machine import machine_description
from coinfer.edge.evolve.executor import (
    Calibration,
    EvolutionExecutor,
    ExecutionReport,
    TaskPredictor,
    TrainingJob,
    calibrate,
)
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.networks import TASKS, ArchitectureSpec
from coinfer.sdk.evolve.profiling import prefix_shape
from coinfer.sdk.evolve.scheduler import (
    DpPolicy,
    EvolutionTask,
    Policy,
    RandomPolicy,
    SerialPolicy,
    processor_sharing,
    simulate,
)
from coinfer.sdk.evolve.training import TrainOptions

Say = Callable[[str], None]

@dataclass(frozen=True)
class SchedulerWorkload:
    """What the section runs: ``cameras`` devices, camera ``i`` with architecture
    ``architectures[i % len(architectures)]`` (name, keep; "tiny" is the tiny body); ``rounds``
    of one task per camera, each task's frames drawn log-uniformly from ``frames`` and its epochs
    from ``epochs``; ``calibration``: the (frames, epochs) of the calibration runs, each run for
    every architecture; the random policy's ``random_seeds``; images of ``input_size``;
    ``batch_size``; the budget as ``budget_factor`` x the median predicted task memory; ``seed``
    for the task list."""

    cameras: int
    rounds: int
    frames: tuple[int, int]
    epochs: tuple[int, ...]
    calibration: tuple[tuple[int, int], ...]
    architectures: tuple[tuple[str, float], ...] = DEVICE_ARCHITECTURES
    random_seeds: tuple[int, ...] = (0,)
    input_size: int = 128
    batch_size: int = 32
    budget_factor: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        names = [name for name, _ in self.architectures]
        if not names or len(set(names)) != len(names):
            raise InvalidArgumentError(f"architectures must have distinct names, got {self.architectures}")
        low, high = self.frames
        if not 1 <= low <= high:
            raise InvalidArgumentError(f"frames must be a range 1 <= low <= high, got {self.frames}")
        if self.cameras < 1 or self.rounds < 1 or not self.epochs or not self.calibration \
                or not self.random_seeds:
            raise InvalidArgumentError("a workload needs cameras >= 1, rounds >= 1, epochs, calibration runs "
                                       "and random seeds")
        if not self.budget_factor >= 1:
            raise InvalidArgumentError(f"budget_factor must be >= 1, got {self.budget_factor}")

    @classmethod
    def for_mode(cls, quick: bool) -> SchedulerWorkload:
        """The quick run (4 cameras x 2 rounds of small tasks, one random seed; about a minute on 2 cores)
        or the full one (8 cameras x 3 rounds, two random seeds; several minutes)."""
        if quick:
            return cls(cameras=4, rounds=2, frames=(32, 192), epochs=(1, 2),
                       calibration=((96, 1), (160, 2)))
        return cls(cameras=8, rounds=3, frames=(48, 480), epochs=(1, 2, 3),
                   calibration=((96, 1), (160, 2), (256, 1)), random_seeds=(0, 1))

    def devices(self) -> list[tuple[str, str, ArchitectureSpec]]:
        """(camera, architecture name, architecture) of every camera."""
        return [(f"cam{index}", *self._named(self.architectures[index % len(self.architectures)]))
                for index in range(self.cameras)]

    def named_architectures(self) -> list[tuple[str, ArchitectureSpec]]:
        return [self._named(entry) for entry in self.architectures]

    def _named(self, entry: tuple[str, float]) -> tuple[str, ArchitectureSpec]:
        name, keep = entry
        family = "tiny" if name == "tiny" else "efficientnet-lite0"
        return name, ArchitectureSpec(family, keep=keep, input_size=self.input_size)


States = Mapping[str, Mapping[str, np.ndarray]]


def _states(workload: SchedulerWorkload, pretrained: Any) -> dict[str, dict[str, np.ndarray]]:
    """Each architecture's deployed weights: built from the pretrained network."""
    import torch

    from coinfer.sdk.evolve.networks import build_network
    from coinfer.sdk.evolve.training import state_arrays

    torch.manual_seed(workload.seed)
    return {name: state_arrays(build_network(spec, pretrained))
            for name, spec in workload.named_architectures()}


def _job(job_id: str, device: str, name: str, spec: ArchitectureSpec, frames: int, epochs: int,
         workload: SchedulerWorkload, states: States, rng: np.random.Generator) -> TrainingJob:
    features = rng.standard_normal((frames, *prefix_shape(workload.input_size)), dtype=np.float32)
    options = TrainOptions(epochs=epochs, batch_size=workload.batch_size, seed=int(rng.integers(2**31)))
    labels = rng.random((frames, len(TASKS))) < 0.3
    teacher = rng.standard_normal((frames, len(TASKS)), dtype=np.float32)
    return TrainingJob(job_id, device, spec, features.astype(np.float16), labels, options,
                       teacher_logits=teacher, state=states[name])


def calibration_jobs(workload: SchedulerWorkload, states: States) -> list[TrainingJob]:
    """The separate tasks the predictor is fitted on (their own data and seeds), each
    calibration (frames, epochs) for every architecture."""
    rng = np.random.default_rng([workload.seed, 1])
    return [_job(f"calibrate-{name}-{index}", "calibration", name, spec, frames, epochs, workload, states,
                 rng)
            for name, spec in workload.named_architectures()
            for index, (frames, epochs) in enumerate(workload.calibration)]


def _log_uniform(rng: np.random.Generator, low: int, high: int) -> int:
    return round(float(np.exp(rng.uniform(np.log(low), np.log(high)))))


def evaluation_jobs(workload: SchedulerWorkload, states: States,
                    predictor: TaskPredictor) -> list[TrainingJob]:
    """Every round's tasks with their arrival times (see the module docstring)."""
    rng = np.random.default_rng([workload.seed, 2])
    low, high = workload.frames
    jobs: list[TrainingJob] = []
    begins = 0.0
    for round_index in range(workload.rounds):
        # Tasks that arrive together are queued by id; a random rank in the id is a random queue order.
        devices = workload.devices()
        ranks = rng.permutation(len(devices))
        batch = [_job(f"r{round_index}-{rank:02d}-{camera}", camera, name, spec, _log_uniform(rng, low, high),
                      int(rng.choice(workload.epochs)), workload, states, rng)
                 for rank, (camera, name, spec) in zip(ranks, devices, strict=True)]
        jobs.extend(dataclasses.replace(job, arrival=round(begins, 3)) for job in batch)
        begins += sum(predictor.seconds(job) for job in batch)
    return jobs


def _summary(report: ExecutionReport) -> dict[str, Any]:
    return {"mean_latency_s": report.mean_latency, "makespan_s": report.makespan,
            "budget_violations": report.budget_violations, "failed": report.failed,
            "reserved_peak_bytes": report.reserved_peak_bytes,
            "measured_peak_sum_bytes": _measured_peak_sum(report),
            "latencies_s": [round(record.latency, 3) for record in report.records]}


def _measured_peak_sum(report: ExecutionReport) -> int:
    """The most measured memory running at once (each peak held for its task's whole run)."""
    return max(sum(r.held_bytes for r in report.records if r.start <= moment.start < r.finish)
               for moment in report.records)


def _median_error(pairs: Sequence[tuple[float, float]]) -> float:
    return float(np.median([abs(predicted - measured) / measured for predicted, measured in pairs]))


def run_scheduler_bench(quick: bool, say: Say = print, *, workload: SchedulerWorkload | None = None,
                        work_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run the section (see the module docstring) and return its metrics. ``workload``
    replaces the quick or full one; ``work_dir`` holds the tasks' temporary files."""
    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0

    started = time.perf_counter()
    workload = workload if workload is not None else SchedulerWorkload.for_mode(quick)
    states = _states(workload, load_efficientnet_lite0())
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def progress(event: str, task_id: str) -> None:
        if event == "fail":
            say(f"  task {task_id} failed")

    # Calibration runs one task at a time, so the budget only has to admit each alone.
    calibration = calibrate(EvolutionExecutor(host, work_dir=work_dir), calibration_jobs(workload, states),
                            progress=progress)
    predictor = calibration.predictor
    say(f"calibrated on {len(calibration.runs)} runs alone: workspace {predictor.workspace_bytes / 1e6:.0f} "
        f"MB, headroom {predictor.headroom_bytes / 1e6:.0f} MB, time model {predictor.time_model.fitted}")
    jobs = evaluation_jobs(workload, states, predictor)
    tasks = [predictor.task(job) for job in jobs]
    predicted = [predictor.memory_bytes(job) for job in jobs]
    reserved = max(task.memory_bytes for task in tasks)
    budget = max(int(workload.budget_factor * statistics.median(predicted)), reserved)
    executor = EvolutionExecutor(budget, work_dir=work_dir)
    seconds = [task.seconds for task in tasks]
    say(f"{len(jobs)} tasks ({workload.cameras} cameras x {workload.rounds} rounds), predicted "
        f"{min(predicted) / 1e6:.0f}-{max(predicted) / 1e6:.0f} MB and {min(seconds):.1f}-{max(seconds):.1f} "
        f"s; budget {budget / 1e6:.0f} MB")
    policies: list[tuple[str, Policy]] = [("dp", DpPolicy()), ("serial", SerialPolicy())]
    policies += [(f"random-{seed}", RandomPolicy(seed)) for seed in workload.random_seeds]
    reports: dict[str, ExecutionReport] = {}
    for name, policy in policies:
        reports[name] = executor.run(jobs, policy, predictor, progress)
        report = reports[name]
        say(f"{name}: mean latency {report.mean_latency:.1f} s, makespan {report.makespan:.1f} s, "
            f"{report.budget_violations} budget violations, {len(report.failed)} failed")
    return _metrics(workload, calibration, jobs, tasks, budget, reports, quick, time.perf_counter() - started)


def _metrics(workload: SchedulerWorkload, calibration: Calibration, jobs: Sequence[TrainingJob],
             tasks: Sequence[EvolutionTask], budget: int, reports: Mapping[str, ExecutionReport], quick: bool,
             seconds: float) -> dict[str, Any]:
    predictor = calibration.predictor
    randoms = [report for name, report in reports.items() if name.startswith("random-")]
    dp, serial = reports["dp"].mean_latency, reports["serial"].mean_latency
    random_latency = statistics.fmean(report.mean_latency for report in randoms)
    violations = {name: report.budget_violations for name, report in reports.items()}
    records = [record for report in reports.values() for record in report.records]
    memory_errors = [error for report in reports.values() for error in report.memory_errors()]
    features = {job.id: predictor.features(job) for job in jobs}
    model = predictor.time_model
    alone = [(model.predict(features[r.task.id]), r.run_seconds) for r in reports["serial"].records if r.ok]
    shared = [(model.predict(features[r.task.id]), r.run_seconds) for r in records if r.ok]
    simulated = {name: simulate(tasks, policy, budget, slowdown=processor_sharing(2)).mean_latency
                 for name, policy in (("dp", DpPolicy()), ("serial", SerialPolicy()))}
    peaks = [r.peak_bytes for r in records if r.peak_bytes is not None]
    memory = [predictor.memory_bytes(job) for job in jobs]
    baselines = [r.baseline_bytes for r in records if r.baseline_bytes is not None]
    return {
        "quick": quick,
        "dp_mean_latency_s": dp,
        "serial_mean_latency_s": serial,
        "random_mean_latency_s": random_latency,
        "dp_over_serial": dp / serial,
        "dp_over_random": dp / random_latency,
        "random_mean_latency_per_seed_s": [report.mean_latency for report in randoms],
        "budget_violations": sum(violations.values()),
        "budget_violations_per_policy": violations,
        "failed_tasks": sum(len(report.failed) for report in reports.values()),
        "policies": {name: _summary(report) for name, report in reports.items()},
        "memory_prediction_error": float(np.median(memory_errors)),
        "memory_prediction_error_max": float(np.max(memory_errors)),
        "memory_prediction_error_calibration": float(np.median(calibration.memory_errors())),
        "budget_bytes": budget,
        "budget_rule": f"{workload.budget_factor} x the median predicted task memory",
        "workspace_bytes": predictor.workspace_bytes,
        "headroom_bytes": predictor.headroom_bytes,
        "baseline_rss_bytes": int(np.median(baselines)) if baselines else None,
        "predicted_task_bytes": {"min": min(memory), "max": max(memory)},
        "measured_peak_bytes": {"min": min(peaks), "max": max(peaks)} if peaks else None,
        "tasks": len(jobs),
        "rounds": workload.rounds,
        "devices": {camera: spec.id for camera, _, spec in workload.devices()},
        "random_seeds": list(workload.random_seeds),
        "calibration_runs": len(calibration.runs),
        "time_model": {
            "model": model.to_dict(),
            "median_relative_error": _median_error(alone) if alone else None,
            "median_relative_error_all_policies": _median_error(shared) if shared else None,
            "fit_median_relative_error": float(np.median(calibration.time_errors())),
        },
        "simulated_dp_over_serial": simulated["dp"] / simulated["serial"],
        "seconds": seconds,
        "machine": machine_description(),
    }
