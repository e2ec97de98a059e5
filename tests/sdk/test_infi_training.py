"""Training, saving, exporting and updating InFi filters with TensorFlow on small synthetic tasks."""

import json
import subprocess
import sys

import numpy as np
import pytest

from coinfer.converters.filters import export_filter
from coinfer.device.infi import load_reuse_cache, load_skip_filter
from coinfer.sdk.artifact import ArtifactError
from coinfer.sdk.infi import (
    ActiveOptions,
    ActiveUpdater,
    CacheOptions,
    FilterCurve,
    FilterOptions,
    InputError,
    ModalitySpec,
    SkipFilter,
    TrainedFilter,
    create_measurement,
    optimal_rate,
    redundancy_labels,
    reuse_curve,
    train_reuse_filter,
    train_skip_filter,
)

pytest.importorskip("tensorflow")

# Every test trains a TensorFlow filter (a few seconds to tens of seconds each).
pytestmark = pytest.mark.slow

SIZE = 16
IMAGE = {"frame": ModalitySpec.image(SIZE, SIZE)}


def squares(count: np.ndarray, seed: int, night: bool = False) -> np.ndarray:
    """Noisy frames with ``count[i]`` bright squares; at night: grey, inverted, dim and noisy."""
    rng = np.random.default_rng(seed)
    frames = rng.random((count.size, SIZE, SIZE, 3)).astype(np.float32) * 0.3
    for i, k in enumerate(count):
        for _ in range(k):
            r, c = rng.integers(0, SIZE - 4, 2)
            frames[i, r:r + 4, c:c + 4] = 1.0
    if night:
        grey = frames.mean(axis=3, keepdims=True).repeat(3, axis=3)
        frames = np.clip(0.05 + 0.25 * (1.0 - grey) + rng.normal(0.0, 0.05, grey.shape), 0.0, 1.0)
    return frames.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    count = np.random.default_rng(1).integers(0, 3, 500)
    return squares(count, seed=2), count


@pytest.fixture(scope="module")
def skip_filter(data):
    frames, count = data
    measurements = {"squares": create_measurement("empty")}
    labels = redundancy_labels({"squares": list(count[:350])}, measurements)
    return train_skip_filter(frames[:350], labels, IMAGE, ("squares",), measurements,
                             FilterOptions(epochs=8, seed=0))


def test_skip_filter_learns_close_to_the_optimal_rate(skip_filter, data):
    frames, count = data
    scores = skip_filter.scores(frames[350:])
    redundant = count[350:] == 0
    curve = FilterCurve.from_scores(scores[:, 0], redundant)
    assert curve.rate_at(0.9) >= 0.7 * optimal_rate(redundant.mean(), 0.9)
    skip = SkipFilter.create_from_trained(skip_filter)
    skipped = skip.skip(frames[350:])
    assert 1.0 - np.mean(skipped & ~redundant) >= 0.85  # the validation-chosen threshold holds
    assert skip.stats.filter_rate > 0.15


def test_saved_filter_reloads_exactly_and_corruption_is_rejected(skip_filter, data, tmp_path):
    frames, _ = data
    path = skip_filter.save(tmp_path / "filter")
    loaded = TrainedFilter.load(path)
    assert loaded.tasks == ("squares",) and loaded.measurements["squares"].name == "empty"
    np.testing.assert_allclose(loaded.scores(frames[:20]), skip_filter.scores(frames[:20]), atol=1e-6)
    assert np.array_equal(loaded.thresholds, skip_filter.thresholds)
    weights = path / "weights.npz"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=r"weights\.npz"):
        TrainedFilter.load(path)
    manifest = json.loads((tmp_path / "filter" / "manifest.json").read_text())
    manifest["metadata"]["filter"] = "mystery"
    (tmp_path / "filter" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError):
        TrainedFilter.load(path)


def test_int8_export_decides_like_keras_and_runs_on_the_device_tier(skip_filter, data, tmp_path):
    frames, _ = data
    export_filter(skip_filter, tmp_path / "int8", quantization="int8", calibration=frames[:100],
                              samples=frames[350:])
    device = load_skip_filter(tmp_path / "int8")
    edge = SkipFilter.create_from_trained(skip_filter)
    agreement = np.mean(device.skip(frames[350:]) == edge.skip(frames[350:]))
    assert agreement >= 0.97
    np.save(tmp_path / "frames.npy", frames[350:382])
    script = f"""
import importlib.abc, sys, json
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"tensorflow", "torch", "transformers", "keras"}}:
            raise ImportError(name + " is blocked")
import numpy as np
sys.meta_path.insert(0, Blocker())
from coinfer.device.infi import load_skip_filter
skip = load_skip_filter({str(tmp_path / 'int8')!r})
print(json.dumps(skip.skip(np.load({str(tmp_path / 'frames.npy')!r})).tolist()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == device.skip(frames[350:382]).tolist()
    with pytest.raises(InputError, match="shape"):
        device.skip(frames[:2, :8])


def test_text_filters_train_on_token_ids_and_refuse_int8(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, (300, 12)).astype(np.int32)
    tokens[:150, rng.integers(0, 12)] = 7  # topic word present: not redundant
    labels = (~np.any(tokens == 7, axis=1)).astype(np.float32)
    spec = {"text": ModalitySpec.text(12, vocabulary=50)}
    trained = train_skip_filter(tokens, labels, spec, options=FilterOptions(epochs=10, seed=0))
    curve = FilterCurve.from_scores(trained.scores(tokens)[:, 0], labels > 0.5)
    assert curve.rate_at(0.9) >= 0.4
    from coinfer.converters.export import ExportError

    with pytest.raises(ExportError, match="token ids"):
        export_filter(trained, tmp_path / "t", quantization="int8", calibration=tokens[:10])
    with pytest.raises(InputError, match="integers"):
        trained.scores(tokens.astype(np.float32))


def test_single_channel_spectrogram_filters_train(tmp_path):
    # oneDNN's depthwise gradient crashed the process on one-channel inputs (issue 5 bench)
    rng = np.random.default_rng(1)
    spectra = rng.uniform(0.0, 0.3, (160, 98, 40)).astype(np.float32)
    speech = np.arange(160) % 2 == 0
    spectra[speech, :, 10:16] += 0.6  # a formant band: speech
    spec = {"clip": ModalitySpec.audio(98, 40)}
    trained = train_skip_filter(spectra, (~speech).astype(np.float32), spec,
                                options=FilterOptions(epochs=6, seed=0))
    curve = FilterCurve.from_scores(trained.scores(spectra)[:, 0], ~speech)
    assert curve.rate_at(0.9) >= 0.3


def test_reuse_filter_learns_a_distance_the_cache_can_use(data, tmp_path):
    frames, count = data
    measurement = create_measurement("count")
    trained = train_reuse_filter(frames[:300], list(count[:300]), IMAGE, measurement,
                                 FilterOptions(epochs=12, seed=0))
    weights, bias = trained.pair_head()
    embeddings = trained.embed(frames[300:])
    options = CacheOptions(capacity=100, k=5)
    curve = reuse_curve(embeddings, list(count[300:]), measurement.same, measurement.key, weights, bias,
                        options)
    # an untrained distance reuses about 0.2 at 90% accuracy (counts 0..2 by luck)
    assert curve.rate_at(0.9) >= 0.6
    export_filter(trained, tmp_path / "reuse", calibration=frames[:50])
    cache = load_reuse_cache(tmp_path / "reuse", CacheOptions(capacity=100, k=5))
    _, hits = cache.run(frames[300:400], model=lambda x: -1, key=int)
    assert hits.sum() > 10 and len(cache) == 100 - hits.sum()


def test_active_update_beats_an_offline_filter_after_the_night_falls(skip_filter):
    count = np.random.default_rng(5).integers(0, 3, 400)
    night = squares(count, seed=6, night=True)
    assert not np.any(np.all(night[:, None] == night[None, :], axis=(2, 3, 4)) & ~np.eye(400, dtype=bool))
    redundant = count == 0

    def label(arrays):
        index = [int(np.flatnonzero((night == row).all(axis=(1, 2, 3)))[0]) for row in arrays[0]]
        return redundant[index].astype(np.float32)

    def accuracy(updater_or_filter) -> float:
        decisions = []
        for start in range(0, 400, 50):
            batch = night[start:start + 50]
            decisions.append(updater_or_filter(batch))
        return float(np.mean(np.concatenate(decisions) == redundant))

    offline = accuracy(SkipFilter.create_from_trained(skip_filter).skip)
    updater = ActiveUpdater(skip_filter, SkipFilter.create_from_trained(skip_filter), label,
                            ActiveOptions(period=100, budget=0.2, epochs=6))
    active = accuracy(updater.observe)
    assert updater.updates == 4 and updater.labelled == 80
    assert offline < 0.5  # the day filter is lost at night
    assert active >= offline + 0.2
