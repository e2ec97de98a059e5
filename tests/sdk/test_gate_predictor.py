"""The contextual predictor: trained with TensorFlow, run by numpy, exported to TFLite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coinfer.converters.filters import export_predictor
from coinfer.sdk.artifact import ArtifactError
from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.policies import PredictorPolicy, TemporalPolicy
from coinfer.sdk.gate.predictor import ContextualPredictor, PredictorOptions, train_predictor
from coinfer.sdk.gate.redundancy import CountChanged
from coinfer.sdk.gate.replay import collect_training_rows, replay

# Every test uses the predictor trained with TensorFlow (the trained fixture); the numpy
# forward, saving and loading also run as the doctest of coinfer.sdk.gate.predictor.
pytestmark = pytest.mark.slow

COSTS = DecodeCostModel(i_seconds=3.0, p_seconds=1.0, b_seconds=0.5)
MEASURES = {"count": CountChanged()}


@pytest.fixture(scope="module")
def trained(synthetic_traces) -> tuple[ContextualPredictor, object]:
    traces = synthetic_traces(16, 120, seed=1)
    budget = 0.3 * 16 * 1.2
    rows = collect_training_rows(traces, TemporalPolicy(16), COSTS, budget, MEASURES)
    predictor = train_predictor(rows, PredictorOptions(tasks=("count",), epochs=40, batch_size=256))
    return predictor, rows


def test_training_rows_label_necessity(trained) -> None:
    _, rows = trained
    assert rows.i_view.shape[1:] == (5, 4) and rows.labels.shape[1] == 1
    assert 0.02 < rows.labels.mean() < 0.6


def test_numpy_forward_equals_keras(trained) -> None:
    predictor, rows = trained
    inputs = [rows.i_view[:500], rows.p_view[:500], rows.temporal[:500].reshape(-1, 1)]
    keras_out = np.asarray(predictor.keras_model()(inputs, training=False))
    numpy_out = predictor.predict(*inputs)
    assert np.max(np.abs(keras_out - numpy_out)) < 1e-5


def test_predictor_beats_temporal_alone_on_synthetic_streams(trained, synthetic_traces) -> None:
    predictor, _ = trained
    traces = synthetic_traces(16, 120, seed=2)
    budget = 0.3 * 16 * 1.2
    learned = replay(traces, PredictorPolicy(16, predictor), COSTS, budget, MEASURES)
    temporal = replay(traces, TemporalPolicy(16), COSTS, budget, MEASURES)
    assert learned.accuracy > temporal.accuracy


def test_save_load_round_trip_and_tampering(trained, tmp_path) -> None:
    predictor, rows = trained
    path = predictor.save(tmp_path / "predictor")
    loaded = ContextualPredictor.load(path)
    args = (rows.i_view[:64], rows.p_view[:64], rows.temporal[:64])
    assert np.array_equal(loaded.predict(*args), predictor.predict(*args))
    (path / "weights.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ArtifactError, match=r"weights\.npz"):
        ContextualPredictor.load(path)


def test_wrong_view_shape_is_named(trained) -> None:
    predictor, rows = trained
    with pytest.raises(ValueError, match="p_view"):
        predictor.predict(rows.i_view[:4], rows.p_view[:4, :3], rows.temporal[:4])


def test_tflite_export_matches(trained, tmp_path) -> None:
    from coinfer.device.runtime import create_runner

    predictor, rows = trained
    samples = [rows.i_view[:256], rows.p_view[:256], rows.temporal[:256].reshape(-1, 1)]
    result = export_predictor(predictor, tmp_path / "tflite", samples)
    assert result.parity.max_abs_err < 1e-5
    manifest = json.loads((tmp_path / "tflite" / "manifest.json").read_text())
    assert manifest["capability"] == "gate"
    runner = create_runner(tmp_path / "tflite" / "model.tflite")
    out = runner.run({"i_view": samples[0][:8], "p_view": samples[1][:8], "temporal": samples[2][:8]})
    first = next(iter(out.values())) if isinstance(out, dict) else out[0]
    assert np.max(np.abs(np.asarray(first) - predictor.predict(*[s[:8] for s in samples]))) < 1e-5


def test_streaming_forward_equals_stateless_forward(trained) -> None:
    from coinfer.sdk.gate.features import SizeWindows

    predictor, _ = trained
    rng = np.random.default_rng(3)
    windows, forward = SizeWindows(12, 5), predictor.streaming(12)
    for _ in range(80):
        pictures = rng.choice([1, 2, 3], 12, p=[0.1, 0.6, 0.3])
        i_view, p_view = windows.push(rng.integers(200, 9000, 12), pictures, rng.random(12) < 0.9)
        mu = rng.random(12)
        streamed = forward.predict(i_view, p_view, mu)
        assert np.max(np.abs(streamed - predictor.predict(i_view, p_view, mu))) < 1e-6
        windows.mark_decoded(rng.random(12) < 0.3)
    with pytest.raises(ValueError, match="serves 12 streams"):
        forward.predict(i_view[:4], p_view[:4], mu[:4])


def test_contextual_only_is_blind_to_the_temporal_view(trained) -> None:
    from coinfer.sdk.gate.features import FEEDBACK_CHANNELS

    _, rows = trained
    blind = train_predictor(rows, PredictorOptions(tasks=("count",), use_temporal=False, epochs=2))
    i_view, p_view = rows.i_view[:200].copy(), rows.p_view[:200].copy()
    before = blind.predict(i_view, p_view, rows.temporal[:200])
    for view in (i_view, p_view):
        view[:, :, list(FEEDBACK_CHANNELS)] += 3.0
    after = blind.predict(i_view, p_view, rows.temporal[:200] + 5.0)
    assert np.array_equal(before, after) and before.std() > 0
