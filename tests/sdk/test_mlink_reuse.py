"""Frame-difference reuse: the schedule, the live gate and the calibration."""

import numpy as np
import pytest

from coinfer.sdk.mlink import OutputSpec
from coinfer.sdk.mlink.reuse import (
    ReuseError,
    ReuseGate,
    calibrate_reuse,
    carry_forward,
    change_schedule,
    replay_with_reuse,
)
from coinfer.sdk.mlink.serving import RecordedRunner
from coinfer.sdk.mlink.table import OutputTable


def stream(count: int = 12) -> tuple[OutputTable, np.ndarray]:
    """Two cameras taking turns; camera 0's picture jumps at step 6, camera 1's never moves.
    The model's output is the step number (as a one-hot of 12 classes) and a word list."""
    cameras = np.arange(count) % 2
    thumbs = np.zeros((count, 4, 4), np.uint8)
    thumbs[(cameras == 0) & (np.arange(count) >= 6)] = 200
    outputs = {"step": np.eye(count, dtype=np.float32)[np.arange(count)],
               "words": [(int(row),) for row in range(count)]}
    specs = {"step": OutputSpec.classes(count), "words": OutputSpec.sequence(max_length=4)}
    costs = {"step": {"ms": 2.0}, "words": {"ms": 3.0}}
    return OutputTable(specs, outputs, {"camera": cameras}, costs), thumbs


def test_schedule_runs_each_cameras_first_step_and_each_change():
    table, thumbs = stream()
    run = change_schedule(thumbs, table.context["camera"], threshold=10.0)
    assert np.flatnonzero(run).tolist() == [0, 1, 6]
    served = replay_with_reuse(RecordedRunner(table), "step", run, table.context["camera"])
    assert np.argmax(served, axis=1).tolist() == [0, 1, 0, 1, 0, 1, 6, 1, 6, 1, 6, 1]
    assert change_schedule(thumbs, table.context["camera"], threshold=-1.0).all()


def test_gate_across_periods_serves_what_one_pass_over_the_stream_does():
    table, thumbs = stream()
    cameras = table.context["camera"]
    runner = RecordedRunner(table)
    gate = ReuseGate(threshold=10.0)
    parts, ran = [], 0
    for steps in (np.arange(0, 5), np.arange(5, 12)):
        served, count = gate.serve(runner, "words", steps, thumbs[steps], cameras[steps])
        parts.extend(served)
        ran += count
    whole = change_schedule(thumbs, cameras, 10.0)
    assert ran == whole.sum() == 3
    assert parts == carry_forward([table.outputs["words"][i] for i in (0, 1, 6)],
                                  whole, cameras)


def test_calibration_measures_rates_and_reused_accuracy():
    table, thumbs = stream()
    calibration = calibrate_reuse(table, thumbs, thresholds=(-1.0, 10.0))
    assert calibration.rates == (1.0, 0.25)
    assert calibration.accuracy["step"] == (1.0, 0.25)  # reused outputs are right only where it ran
    modes = calibration.modes(rates=(0.5, 0.0))
    assert [mode.rate for mode in modes["words"]] == [0.5, 1e-3]  # a rate of 0 would make a mode free
    assert calibration.threshold_of(modes["step"][1].label) == 10.0
    with pytest.raises(ReuseError, match="no reuse mode"):
        calibration.threshold_of("on change > 99")


def test_frames_that_do_not_match_the_steps_are_refused():
    table, thumbs = stream()
    with pytest.raises(ReuseError, match="one thumbnail per camera entry"):
        change_schedule(thumbs[:-1], table.context["camera"], 1.0)
    with pytest.raises(ReuseError, match="one thumbnail per stream step"):
        ReuseGate(1.0).serve(RecordedRunner(table), "step", np.arange(3), thumbs[:2],
                             table.context["camera"][:2])
    with pytest.raises(ReuseError, match="no earlier run"):
        carry_forward(table.outputs["step"][:1], np.array([False, True]), np.array([0, 0]))
