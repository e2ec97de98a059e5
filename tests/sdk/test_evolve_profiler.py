"""The task profiler: predicted training memory (five parts) and training time (log power law)."""

import json
import math

import numpy as np
import pytest

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.memory import (
    LayerCost,
    MemoryEstimate,
    MemoryModel,
    calibrate_workspace,
    predict_training_memory,
)
from coinfer.sdk.evolve.timing import MeasuredRun, TaskFeatures, TrainingTimeModel

MB = 10**6


def _small_cnn():
    """conv 3->16, 3x3, padding 1 on 32x32 (+ bias), then a linear 16*32*32 -> 10 (+ bias)."""
    conv = LayerCost("conv", params=3 * 16 * 3 * 3 + 16, activation_elements=16 * 32 * 32)
    fc = LayerCost("fc", params=16 * 32 * 32 * 10 + 10, activation_elements=10)
    return [conv, fc]


def test_a_hand_computed_memory_estimate():
    model = MemoryModel(optimizer="adam", workspace_bytes=850 * MB)
    estimate = predict_training_memory(_small_cnn(), 4, model)
    # params: 448 + 163,850 = 164,298 values x 4 bytes
    assert estimate.params == 657_192
    # activations: (16,384 + 10) per sample x 4 samples x 4 bytes
    assert estimate.activations == 262_304
    # gradients: one per stored activation and one per parameter
    assert estimate.gradients == 262_304 + 657_192
    # Adam keeps two moments per parameter
    assert estimate.optimizer == 2 * 657_192
    assert estimate.workspace == 850 * MB
    assert estimate.total == 657_192 + 262_304 + 919_496 + 1_314_384 + 850 * MB
    assert estimate.without_workspace == estimate.total - 850 * MB


def test_optimizer_state_and_precision_scale_as_documented():
    layers = _small_cnn()
    by_optimizer = {name: predict_training_memory(layers, 8, MemoryModel(optimizer=name))
                    for name in ("sgd", "momentum", "adam")}
    params = by_optimizer["sgd"].params
    assert [by_optimizer[name].optimizer for name in ("sgd", "momentum", "adam")] == [0, params, 2 * params]
    # The paper's m_g + m_opt (m_g = m_f; m_opt = m_p without momentum, 2 m_p with it) is kept.
    for name, paper_copies in (("sgd", 1), ("momentum", 2)):
        estimate = by_optimizer[name]
        assert estimate.gradients + estimate.optimizer == estimate.activations + paper_copies * params
    half = predict_training_memory(layers, 8, MemoryModel(bytes_per_value=2))
    assert half.total * 2 == by_optimizer["sgd"].total
    double_batch = predict_training_memory(layers, 16)
    assert double_batch.activations == 2 * by_optimizer["sgd"].activations
    assert double_batch.params == params


def test_calibration_recovers_the_workspace_constant():
    rng = np.random.default_rng(0)
    workspace = 850 * MB
    estimates = [predict_training_memory(_small_cnn(), int(batch)) for batch in rng.integers(1, 256, 9)]
    peaks = [e.without_workspace + workspace + int(rng.integers(-2 * MB, 2 * MB)) for e in estimates]
    peaks[3] += 900 * MB  # one run hit fragmentation: the median ignores it
    fitted = calibrate_workspace(peaks, estimates)
    assert abs(fitted - workspace) <= 2 * MB
    as_bytes = calibrate_workspace(peaks, [e.without_workspace for e in estimates])
    assert as_bytes == fitted
    assert calibrate_workspace([100], [150]) == 0   # the model overestimates: no negative workspace


def test_memory_inputs_are_validated():
    with pytest.raises(InvalidArgumentError, match="optimizer"):
        MemoryModel(optimizer="rmsprop")
    with pytest.raises(InvalidArgumentError, match=r"'conv'.*params"):
        LayerCost("conv", -1, 10)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        predict_training_memory(_small_cnn(), 0)
    with pytest.raises(InvalidArgumentError, match="no layers"):
        predict_training_memory([], 1)
    with pytest.raises(InvalidArgumentError, match="one estimate per measured peak"):
        calibrate_workspace([1, 2], [1])
    with pytest.raises(InvalidArgumentError, match="run 0"):
        calibrate_workspace([math.nan], [MemoryEstimate(1, 1, 1, 1, 0)])


def _power_law(task):
    """A host where time grows as params^0.3 * samples * epochs * work^0.8 / batch^0.25."""
    return (4e-9 * task.trainable_params ** 0.3 * task.samples * task.epochs * task.work_per_sample ** 0.8
            / task.batch_size ** 0.25)


def _random_tasks(rng, count):
    return [TaskFeatures(trainable_params=float(rng.uniform(1e5, 5e6)), samples=int(rng.integers(100, 5000)),
                         epochs=int(rng.integers(1, 10)), batch_size=int(rng.choice([8, 16, 32, 64, 128])),
                         work_per_sample=float(rng.uniform(1e7, 1e9)))
            for _ in range(count)]


def test_the_fitted_model_recovers_a_power_law():
    rng = np.random.default_rng(1)
    runs = [MeasuredRun(task, _power_law(task) * float(rng.lognormal(0, 0.01)))
            for task in _random_tasks(rng, 20)]
    model = TrainingTimeModel().fit(runs)
    assert model.fitted == "regression" and model.uses_work
    held_out = _random_tasks(rng, 30)
    errors = [abs(model.predict(task) / _power_law(task) - 1) for task in held_out]
    assert max(errors) < 0.04
    # The proportional fallback, which ignores the exponents, is much worse on the same tasks.
    proportional = TrainingTimeModel(min_runs=100).fit(runs)
    assert proportional.fitted == "proportional"
    assert max(abs(proportional.predict(task) / _power_law(task) - 1) for task in held_out) > 0.3


def test_the_model_survives_a_json_round_trip():
    rng = np.random.default_rng(2)
    model = TrainingTimeModel().fit([MeasuredRun(task, _power_law(task)) for task in _random_tasks(rng, 12)])
    restored = TrainingTimeModel.from_dict(json.loads(json.dumps(model.to_dict())))
    for task in _random_tasks(rng, 5):
        assert restored.predict(task) == pytest.approx(model.predict(task), rel=1e-12)
    for broken in ({**model.to_dict(), "format": "pickle"}, {**model.to_dict(), "slopes": [1.0]},
                   {key: value for key, value in model.to_dict().items() if key != "mean"}):
        with pytest.raises(InvalidArgumentError, match="training-time model"):
            TrainingTimeModel.from_dict(broken)


def test_before_enough_runs_time_is_proportional_to_the_work():
    task = TaskFeatures(trainable_params=1e6, samples=1000, epochs=2, batch_size=32)
    guess = TrainingTimeModel(seconds_per_unit=1e-9)
    assert guess.predict(task) == pytest.approx(1e-9 * 1e6 * 1000 * 2)
    twice = TaskFeatures(trainable_params=1e6, samples=2000, epochs=2, batch_size=32)
    assert guess.predict(twice) == pytest.approx(2 * guess.predict(task))
    one_run = TrainingTimeModel().fit([MeasuredRun(task, 50.0)])
    assert one_run.fitted == "proportional"
    assert one_run.predict(task) == pytest.approx(50.0)
    assert one_run.predict(twice) == pytest.approx(100.0)
    restored = TrainingTimeModel.from_dict(json.loads(json.dumps(one_run.to_dict())))
    assert restored.predict(twice) == pytest.approx(100.0)


def test_a_model_fitted_with_work_needs_it_and_inputs_are_validated():
    rng = np.random.default_rng(3)
    model = TrainingTimeModel().fit([MeasuredRun(task, _power_law(task)) for task in _random_tasks(rng, 10)])
    with pytest.raises(InvalidArgumentError, match="work_per_sample"):
        model.predict(TaskFeatures(trainable_params=1e6, samples=10, epochs=1, batch_size=8))
    for bad in [dict(trainable_params=0), dict(samples=-5), dict(epochs=math.inf), dict(batch_size=math.nan),
                dict(work_per_sample=0.0)]:
        fields = {"trainable_params": 1e6, "samples": 100, "epochs": 1, "batch_size": 8, **bad}
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            TaskFeatures(**fields)
    with pytest.raises(InvalidArgumentError, match="seconds"):
        MeasuredRun(TaskFeatures(1e6, 100, 1, 8), 0.0)
    with pytest.raises(InvalidArgumentError, match="no measured runs"):
        TrainingTimeModel().fit([])
    with pytest.raises(InvalidArgumentError, match="ridge"):
        TrainingTimeModel(ridge=-1)
