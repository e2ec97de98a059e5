"""The InFi baselines (Reducto, low-level KNN, FilterForward, FoggyCache) on small synthetic data."""

import numpy as np
import pytest

from coinfer.bench.infi.baselines import (
    FRAME_FEATURES,
    SKIP_BASELINES,
    FilterForwardSkip,
    FoggyCacheReuse,
    FoggyOptions,
    LowLevelKNN,
    ReductoSkip,
    SkipBaseline,
    foggycache_curve,
    frame_differences,
    image_features,
    mfcc_features,
    sift_features,
    sift_vocabulary,
    token_histogram,
)
from coinfer.sdk.infi import InputError, optimal_rate, repeated_fraction
from coinfer.sdk.infi.curves import FilterCurve


def _video(seed, n=200, size=16):
    """Static noisy background (redundant) alternating with segments where a bright square moves."""
    rng = np.random.default_rng(seed)
    frames = np.clip(0.2 + rng.normal(0, 0.02, (n, size, size, 3)), 0, 1).astype(np.float32)
    redundant = np.ones(n, dtype=bool)
    start, active = 0, False
    while start < n:
        length = int(rng.integers(10, 30))
        if active:
            y, x = rng.integers(0, size - 4, 2)
            for i in range(start, min(n, start + length)):
                y = int(np.clip(y + rng.integers(-2, 3), 0, size - 4))
                x = int(np.clip(x + rng.integers(-2, 3), 0, size - 4))
                frames[i, y:y + 4, x:x + 4] = 1.0
                redundant[i] = False
        start, active = start + length, not active
    return frames, redundant


def _squares(seed, n=200, size=16):
    """Independent frames: empty (redundant) or with a bright square somewhere."""
    rng = np.random.default_rng(seed)
    frames = np.clip(0.2 + rng.normal(0, 0.02, (n, size, size, 3)), 0, 1).astype(np.float32)
    redundant = rng.random(n) < 0.5
    for i in np.flatnonzero(~redundant):
        y, x = rng.integers(0, size - 4, 2)
        frames[i, y:y + 4, x:x + 4] = 1.0
    return frames, redundant


def _audio(seed, n=120, samples=4000):
    """Tones (useful) against quiet noise (redundant), 0.25 s at 16 kHz."""
    rng = np.random.default_rng(seed)
    redundant = rng.random(n) < 0.5
    t = np.arange(samples) / 16000
    waves = rng.normal(0, 0.01, (n, samples))
    for i in np.flatnonzero(~redundant):
        waves[i] += 0.3 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t)
    return waves.astype(np.float32), redundant


def _text(seed, n=200, length=12, vocabulary=60):
    """Padded messages; the redundant ones lack token 7."""
    rng = np.random.default_rng(seed)
    redundant = rng.random(n) < 0.5
    tokens = rng.integers(8, vocabulary, (n, length))
    lengths = rng.integers(4, length + 1, n)
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
    for i in np.flatnonzero(~redundant):
        tokens[i, rng.integers(0, lengths[i])] = 7
    return tokens.astype(np.int32), redundant


def _scene(rng, size=64):
    grid = np.kron(rng.random((8, 8)), np.ones((size // 8, size // 8)))
    return (grid[..., None] * rng.uniform(0.5, 1.0, 3)).astype(np.float32)


def _repeats(seed, n=100, scenes=6, novel=16, noise=0.02):
    """A stream of noisy repeats of a few scenes (result = scene id) and novel scenes (unique result)."""
    rng = np.random.default_rng(seed)
    bases = [_scene(rng) for _ in range(scenes)]
    ids = rng.permutation(np.r_[rng.integers(0, scenes, n - novel), np.full(novel, -1)])
    images, outputs = [], []
    for row, scene in enumerate(ids):
        base = bases[scene] if scene >= 0 else _scene(rng)
        images.append(np.clip(base + rng.normal(0, noise, base.shape), 0, 1))
        outputs.append(int(scene) if scene >= 0 else 100 + row)
    return np.array(images, dtype=np.float32), outputs, ids < 0


def _same(a, b):
    return a == b


def _identity(output):
    return output


def test_frame_differences_mark_the_first_frame_changed_and_static_frames_unchanged():
    frames, _ = _video(0, n=40)
    static = np.repeat(frames[:1], 5, axis=0)
    for name, change in frame_differences(static).items():
        assert change[0] == np.inf, name
        assert np.all(change[1:] == 0.0), name
    changes = frame_differences(frames)
    assert set(changes) == set(FRAME_FEATURES)
    assert all(change.shape == (40,) for change in changes.values())
    assert set(frame_differences(frames, ("pixel",))) == {"pixel"}


def test_reducto_skips_unchanged_frames_at_90_percent_accuracy():
    train, train_redundant = _video(0)
    test, test_redundant = _video(1)
    reducto = ReductoSkip().fit(train, train_redundant)
    assert reducto.feature == "pixel"
    assert reducto.training_rates[reducto.feature] == max(reducto.training_rates.values()) > 0.5
    scores = reducto.scores(test)
    assert scores[0] == scores.min()
    assert scores[test_redundant].mean() > scores[~test_redundant].mean()
    rate = reducto.curve(test, test_redundant).rate_at(0.9)
    assert 0.5 < rate <= optimal_rate(test_redundant.mean(), 0.9) + 1e-9
    for feature in FRAME_FEATURES:
        single = ReductoSkip((feature,)).fit(train, train_redundant)
        assert single.feature == feature
        assert single.curve(test, test_redundant).rate_at(0.9) > 0.45, feature
    clips = np.stack([np.zeros_like(test), test], axis=1)
    video = ReductoSkip(modality="video").fit(np.stack([train, train], axis=1), train_redundant)
    np.testing.assert_array_equal(video.scores(clips), scores)


def test_low_level_knn_filters_every_modality():
    rates = {}
    for modality, make in (("image", _squares), ("audio", _audio), ("text", _text)):
        train, train_redundant = make(0)
        test, test_redundant = make(1)
        knn = LowLevelKNN(modality).fit(train, train_redundant)
        scores = knn.scores(test)
        assert scores.min() >= 0.0 and scores.max() <= 1.0
        rates[modality] = FilterCurve.from_scores(scores, test_redundant).rate_at(0.9)
    assert rates["image"] > 0.4 and rates["audio"] > 0.4 and rates["text"] > 0.25, rates

    rng = np.random.default_rng(3)
    vectors = rng.normal(0, 1, (300, 20, 20)).astype(np.float32)
    redundant = rng.random(300) < 0.5
    vectors[redundant] += 0.5
    knn = LowLevelKNN("vector", seed=1).fit(vectors[:200], redundant[:200])
    assert knn.features(vectors[:3]).shape == (3, 256)
    scores = knn.scores(vectors[200:])
    assert np.unique(scores).size > 20
    assert knn.curve(vectors[200:], redundant[200:]).rate_at(0.9) > 0.4
    again = LowLevelKNN("vector", seed=1).fit(vectors[:200], redundant[:200]).scores(vectors[200:])
    np.testing.assert_array_equal(again, scores)

    clips = np.stack([_squares(0, n=20)[0]] * 2, axis=1)
    assert LowLevelKNN("video").features(clips).shape == (20, 2 * (64 + 24))


def test_feature_functions_shapes_and_signal():
    frames, redundant = _squares(0, n=20)
    features = image_features(frames)
    assert features.shape == (20, 64 + 24)
    np.testing.assert_allclose(features[:, 64:].sum(axis=1), 3.0, rtol=1e-5)
    assert features[~redundant, 64 + 7].min() > features[redundant, 64 + 7].max()
    waves, quiet = _audio(0, n=10)
    mfcc = mfcc_features(waves)
    assert mfcc.shape == (10, 26)
    assert mfcc[~quiet, 0].min() > mfcc[quiet, 0].max() + 0.1
    histogram = token_histogram(np.array([[7, 7, 9, 0], [0, 0, 0, 0]], dtype=np.int32))
    assert histogram.shape == (2, 256)
    np.testing.assert_allclose(sorted(histogram[0][histogram[0] > 0]), [1 / 3, 2 / 3])
    assert histogram[1].sum() == 0.0


def test_filterforward_trains_a_micro_classifier_on_supplied_features():
    train, train_redundant = _squares(0)
    test, test_redundant = _squares(1)

    def backbone(images):
        """A stand-in frozen extractor: per-channel spatial max and mean."""
        return np.concatenate([images.max(axis=(1, 2)), images.mean(axis=(1, 2))], axis=1)

    skip = FilterForwardSkip(backbone).fit(train, train_redundant)
    scores = skip.scores(test)
    assert skip.curve(test, test_redundant).rate_at(0.9) > 0.45
    precomputed = FilterForwardSkip().fit_features(backbone(train), train_redundant)
    np.testing.assert_allclose(precomputed.scores_from_features(backbone(test)), scores)
    mlp = [FilterForwardSkip(backbone, classifier="mlp", hidden=8, seed=2).fit(train[:80],
                                                                               train_redundant[:80])
           for _ in range(2)]
    np.testing.assert_array_equal(mlp[0].scores(test), mlp[1].scores(test))
    assert FilterCurve.from_scores(mlp[0].scores(test), test_redundant).rate_at(0.9) > 0.4
    constant = FilterForwardSkip().fit_features(backbone(train[:5]), np.ones(5, dtype=bool))
    assert constant.scores_from_features(backbone(test[:3])).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(InputError, match="no feature extractor"):
        FilterForwardSkip().fit(train, train_redundant)
    with pytest.raises(InputError, match="trained on 6"):
        skip.scores_from_features(np.zeros((2, 5)))


def test_skip_baseline_registry():
    assert sorted(SKIP_BASELINES) == ["filterforward", "low-level-knn", "reducto"]
    assert [SKIP_BASELINES[name] for name in ("filterforward", "low-level-knn", "reducto")] == [
        FilterForwardSkip, LowLevelKNN, ReductoSkip]
    assert all(issubclass(cls, SkipBaseline) for cls in SKIP_BASELINES.values())


@pytest.mark.slow  # SIFT keypoints and a k-means vocabulary on 200 images: seconds
def test_foggycache_reuses_repeated_images_and_misses_novel_ones():
    train, train_outputs, _ = _repeats(0)
    test, test_outputs, novel = _repeats(1)
    cache = FoggyCacheReuse("image").fit(train, train_outputs)
    assert cache.vocabulary is not None and cache.vocabulary.shape == (32, 128)
    assert cache.radius > 0.0
    vectors = cache.vectors(test)
    answers, hits = cache.replay(vectors, test_outputs, _identity)
    assert hits[novel].sum() == 0
    assert hits[~novel].mean() > 0.4
    assert all(answer == output for answer, output in zip(answers, test_outputs, strict=True))
    curve = cache.curve(vectors, test_outputs, _same, _identity)
    assert curve.optimal_at_90 == optimal_rate(repeated_fraction(test_outputs), 0.9)
    assert curve.rate_at(0.9) > 0.5
    assert np.all(np.diff(curve.rates) <= 1e-12)
    again = foggycache_curve(test, test_outputs, _same, _identity, modality="image",
                             train_inputs=train, train_outputs=train_outputs)
    np.testing.assert_array_equal(again.rates, curve.rates)
    np.testing.assert_array_equal(again.accuracies, curve.accuracies)


def test_foggycache_on_audio_and_vectors_with_a_bounded_cache():
    rng = np.random.default_rng(5)
    t = np.arange(4000) / 16000
    tones = rng.choice(np.geomspace(300, 4000, 8), 120)
    waves = (np.sin(2 * np.pi * tones[:, None] * t) + rng.normal(0, 0.05, (120, 4000))).astype(np.float32)
    outputs = [int(tone) for tone in tones]
    curve = foggycache_curve(waves, outputs, _same, _identity, modality="audio")
    assert curve.rate_at(0.9) > 0.8

    keys = mfcc_features(waves)
    small = foggycache_curve(keys, outputs, _same, _identity, options=FoggyOptions(capacity=5, k=5))
    assert small.rate_at(0.9) < curve.rate_at(0.9)


def test_sift_features_fall_back_to_low_level_features_without_keypoints():
    images, _, _ = _repeats(0, n=12, novel=2)
    flat = np.full((2, 64, 64, 3), 0.5, dtype=np.float32)
    batch = np.concatenate([images, flat])
    pooled = sift_features(batch)
    assert pooled.shape == (14, 256 + 88)
    assert np.all(pooled[:12, 256:] == 0.0) and np.all(pooled[:12, :256].any(axis=1))
    assert np.all(pooled[12:, :256] == 0.0)
    np.testing.assert_allclose(pooled[12:, 256:], image_features(flat))
    vocabulary = sift_vocabulary(images, words=8)
    assert vocabulary is not None and vocabulary.shape == (8, 128)
    words = sift_features(batch, vocabulary)
    np.testing.assert_allclose(words[:12, :8].sum(axis=1), 1.0, rtol=1e-5)
    assert sift_vocabulary(flat, words=8) is None
    np.testing.assert_array_equal(sift_vocabulary(images, words=8), vocabulary)


def test_bad_inputs_raise_clear_errors():
    frames, redundant = _squares(0, n=10)
    with pytest.raises(InputError, match="image or video"):
        ReductoSkip(modality="audio")
    with pytest.raises(InputError, match="subset"):
        ReductoSkip(("pixel", "motion"))
    with pytest.raises(InputError, match=r"shape \(batch, height, width, channels\)"):
        ReductoSkip().fit(frames[:, :, :, 0], redundant)
    with pytest.raises(InputError, match="not fitted"):
        ReductoSkip().scores(frames)
    with pytest.raises(InputError, match="at least two frames"):
        ReductoSkip().fit(frames[:1], redundant[:1])
    bad = frames.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        LowLevelKNN("image").fit(bad, redundant)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        image_features(frames * 255)
    with pytest.raises(InputError, match="one redundancy label per input"):
        LowLevelKNN("image").fit(frames, redundant[:5])
    with pytest.raises(InputError, match="integers"):
        token_histogram(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(InputError, match="unknown modality"):
        LowLevelKNN("smell")
    with pytest.raises(InputError, match="fitted on 300"):
        LowLevelKNN("vector").fit(np.zeros((4, 300)), np.array([0, 1, 0, 1])).scores(np.zeros((2, 30)))
    with pytest.raises(InputError, match="shape"):
        mfcc_features(np.zeros((2, 3, 4000), dtype=np.float32))
    with pytest.raises(InputError, match="not 'text'"):
        FoggyCacheReuse("text")
    with pytest.raises(InputError, match="capacity"):
        FoggyOptions(capacity=2, k=5)
    with pytest.raises(InputError, match="not fitted"):
        FoggyCacheReuse().vectors(np.zeros((2, 4)))
    with pytest.raises(InputError, match="both"):
        foggycache_curve(np.zeros((4, 2)), [0, 1, 0, 1], _same, _identity, train_inputs=np.zeros((4, 2)))
