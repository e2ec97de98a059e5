"""The evolution-task executor: real training processes under a policy, measured peaks, a task
with corrupt weights failing alone, predictions kept within the budget, calibration."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from coinfer.edge.evolve.executor import (
    EvolutionExecutor,
    ExecutorError,
    TaskPredictor,
    TaskRecord,
    TrainingJob,
    budget_violations,
    calibrate,
)
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network
from coinfer.sdk.evolve.profiling import prefix_shape
from coinfer.sdk.evolve.scheduler import DpPolicy, EvolutionTask, SerialPolicy, TaskOutcome
from coinfer.sdk.evolve.training import TrainOptions, load_state_arrays, state_arrays
from coinfer.sdk.npz import read_arrays

SIZE = 64
TINY = ArchitectureSpec("tiny", input_size=SIZE)
PRUNED = ArchitectureSpec("efficientnet-lite0", keep=0.3, input_size=SIZE)
MB = 10**6


def _job(job_id: str, spec: ArchitectureSpec, frames: int, epochs: int, seed: int, **extra) -> TrainingJob:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((frames, *prefix_shape(SIZE))).astype(np.float16)
    labels = rng.random((frames, len(spec.tasks))) < 0.5
    options = TrainOptions(epochs=epochs, batch_size=16)
    return TrainingJob(job_id, f"cam-{job_id}", spec, features, labels, options, **extra)


@pytest.fixture(scope="module")
def calibration():
    """Three small tasks, each alone: the workspace and the time model they fit."""
    jobs = [_job("cal-tiny", TINY, 48, 1, 1), _job("cal-pruned", PRUNED, 48, 1, 2),
            _job("cal-tiny-2", TINY, 96, 2, 3)]
    return calibrate(EvolutionExecutor(8 * 10**9), jobs)


def test_a_job_is_checked_when_made():
    with pytest.raises(InvalidArgumentError, match="labels must be"):
        TrainingJob("x", "cam", TINY, np.zeros((4, 112, 4, 4), np.float16), np.zeros((3, 4), bool))
    with pytest.raises(InvalidArgumentError, match="arrival"):
        _job("x", TINY, 4, 1, 0, arrival=-1.0)
    with pytest.raises(InvalidArgumentError, match="budget_bytes"):
        EvolutionExecutor(0)


def _record(task_id: str, start: float, finish: float, peak: int | None, reserved: int = 100) -> TaskRecord:
    task = EvolutionTask(task_id, "cam", reserved, 1.0)
    return TaskRecord(task, reserved, start, finish, 0 if peak is not None else -9, peak, None, None)


def test_budget_violations_count_the_moments_measured_peaks_overlap_beyond_the_budget():
    records = [_record("a", 0, 10, 60), _record("b", 1, 4, 50), _record("c", 4, 6, 30),
               _record("d", 5, 7, 20)]
    # at 1: a+b = 110 > 100; at 4: a+c = 90 (b finished at 4); at 5: a+c+d = 110 > 100; at 0: 60
    assert budget_violations(records, 100) == 2
    assert budget_violations(records, 110) == 0
    # a task that crashed before measuring is taken to hold what was reserved for it
    crashed = [_record("a", 0, 10, 60), _record("b", 1, 2, None, reserved=45)]
    assert budget_violations(crashed, 100) == 1


def test_a_record_times_its_task_as_the_schedulers_outcome_does():
    task = EvolutionTask("late", "cam", 100, 1.0, arrival=2.0)
    record = TaskRecord(task, 90, 5.0, 11.5, 0, 80, 40, 6.0)
    assert record.outcome == TaskOutcome(task, 5.0, 11.5)
    assert (record.wait, record.latency, record.run_seconds) == (3.0, 9.5, 6.5)


@pytest.mark.slow  # starts a forkserver and trains in real processes (about 10 s)
def test_calibration_fits_a_workspace_that_predicts_its_runs(calibration):
    predictor = calibration.predictor
    baselines = [r.baseline_bytes for r in calibration.report.records]
    # on a CPU host the workspace is mostly the torch runtime every process carries
    assert 0.5 * min(baselines) < predictor.workspace_bytes < 2 * max(baselines)
    assert max(calibration.memory_errors()) < 0.2
    # the headroom covers the largest shortfall of the fitted prediction on these runs
    shortfalls = [r.peak_bytes - calibration.predicted_bytes[r.task.id] for r in calibration.report.records]
    assert predictor.headroom_bytes == max(0, max(shortfalls))
    assert predictor.time_model.fitted == "proportional"  # three runs: too few for slopes
    assert all(r.ok and r.peak_bytes > r.baseline_bytes and r.train_seconds > 0
               for r in calibration.report.records)


class Greedy:
    """Starts every waiting task whatever the memory: a policy the executor must refuse."""

    def choose(self, waiting: Sequence[EvolutionTask], running, free_bytes, now) -> list[EvolutionTask]:
        return list(waiting)


@pytest.mark.slow  # trains in real processes
def test_dp_runs_the_tasks_within_the_budget_and_a_corrupt_task_fails_alone(calibration, tmp_path):
    predictor = calibration.predictor
    state = state_arrays(build_network(TINY))
    corrupt = {name: np.full_like(value, np.nan) for name, value in state.items()}
    jobs = [_job("short", TINY, 32, 1, 10), _job("long", PRUNED, 320, 3, 11),
            _job("medium", PRUNED, 96, 1, 12, output=str(tmp_path / "medium.npz")),
            _job("corrupt", TINY, 32, 1, 13, state=corrupt),
            _job("late", TINY, 32, 1, 14, arrival=1.0, state=state)]
    reserved = sorted(predictor.reserved_bytes(job) for job in jobs)
    budget = reserved[-1] + reserved[-2]  # the two biggest just fit together
    report = EvolutionExecutor(budget, work_dir=tmp_path / "work").run(jobs, DpPolicy(), predictor)
    records = {r.task.id: r for r in report.records}

    assert report.failed == ["corrupt"]
    assert records["corrupt"].exit_code == 1 and "NaN" in records["corrupt"].error
    assert records["corrupt"].peak_bytes is not None  # it measured itself before giving up
    for name in ("short", "long", "medium", "late"):
        record = records[name]
        assert record.ok and record.error is None
        assert record.peak_bytes > record.baseline_bytes > 0
        assert record.finish > record.start >= record.task.arrival
    assert records["late"].start >= 1.0
    assert records["short"].finish < records["long"].finish  # shortest first, and ten times less work
    # the memory reserved for (and so the memory predicted for) the tasks running together never
    # exceeded the budget
    assert report.reserved_peak_bytes <= budget
    for record in report.records:
        assert record.task.memory_bytes == record.predicted_bytes + predictor.headroom_bytes
        running = [r for r in report.records if r.start <= record.start < r.finish]
        assert sum(r.predicted_bytes for r in running) <= sum(r.task.memory_bytes for r in running) <= budget
    assert np.median(report.memory_errors()) < 0.2
    assert (tmp_path / "work").exists() and not list((tmp_path / "work").iterdir())  # temporary files removed
    trained = build_network(PRUNED)
    load_state_arrays(trained, read_arrays(tmp_path / "medium.npz", max_bytes=64 * MB))


@pytest.mark.slow  # trains in real processes
def test_serial_runs_one_at_a_time_and_a_bad_policy_is_refused(calibration):
    predictor = calibration.predictor
    jobs = [_job("first", TINY, 32, 1, 20), _job("second", TINY, 32, 1, 21, arrival=0.5),
            _job("third", TINY, 32, 1, 22)]
    report = EvolutionExecutor(10**10).run(jobs, SerialPolicy(), predictor)
    order = [r.task.id for r in sorted(report.records, key=lambda r: r.start)]
    assert order == ["first", "third", "second"]  # arrival order: "second" arrives last
    starts = sorted(report.records, key=lambda r: r.start)
    assert all(later.start >= earlier.finish for earlier, later in itertools.pairwise(starts))
    assert report.budget_violations == 0 and report.failed == []
    one = max(predictor.reserved_bytes(job) for job in jobs)
    with pytest.raises(ExecutorError, match="only"):
        EvolutionExecutor(one + one // 2).run(jobs, Greedy(), predictor)
    with pytest.raises(InvalidArgumentError, match="more than the budget"):
        EvolutionExecutor(one - 1).run(jobs, SerialPolicy(), predictor)


def test_the_predictor_orders_tasks_by_size_before_any_run():
    predictor = TaskPredictor(workspace_bytes=100 * MB, headroom_bytes=5 * MB)
    small, big = _job("s", TINY, 32, 1, 0), _job("b", PRUNED, 32, 1, 0)
    more = dataclasses.replace(big, options=TrainOptions(epochs=4, batch_size=16))
    assert predictor.memory_bytes(small) < predictor.memory_bytes(big)
    assert predictor.estimate(big).workspace == 100 * MB
    assert predictor.seconds(small) < predictor.seconds(big) < predictor.seconds(more)
    task = predictor.task(big)
    assert (task.id, task.device, task.memory_bytes) == ("b", "cam-b", predictor.memory_bytes(big) + 5 * MB)
    with pytest.raises(InvalidArgumentError, match="headroom_bytes"):
        TaskPredictor(headroom_bytes=-1)
