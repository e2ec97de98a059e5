"""InFi's framework pieces that need no training: inputs, measurements, curves, cache, analysis."""

import threading

import numpy as np
import pytest

from coinfer.sdk.infi import (
    CacheOptions,
    InputError,
    MeasurementError,
    ModalitySpec,
    ReuseCache,
    SkipFilter,
    analyze,
    break_even_rate,
    create_measurement,
    log_mel_spectrogram,
    optimal_rate,
    repeated_fraction,
    reuse_curve,
)
from coinfer.sdk.infi.curves import FilterCurve


def test_modality_checks_name_what_is_wrong():
    image = ModalitySpec.image(8, 8)
    assert image.check(np.zeros((2, 8, 8, 3), dtype=np.uint8)).dtype == np.float32
    with pytest.raises(InputError, match=r"shape \(batch, 8, 8, 3\)"):
        image.check(np.zeros((2, 8, 8)))
    bad = np.zeros((1, 8, 8, 3))
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        image.check(bad)
    with pytest.raises(InputError, match="numeric"):
        image.check(np.array([["a"]], dtype=object))
    text = ModalitySpec.text(4, vocabulary=10)
    with pytest.raises(InputError, match="integers"):
        text.check(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        text.check(np.array([[1, 2, 3, 10]]))
    with pytest.raises(InputError, match="unknown modality"):
        ModalitySpec("smell", (3,))
    with pytest.raises(InputError, match="3 axes"):
        ModalitySpec("image", (8, 8))
    assert ModalitySpec.from_dict(image.to_dict()) == image


def test_log_mel_spectrogram_shape_range_and_errors():
    rng = np.random.default_rng(0)
    features = log_mel_spectrogram(rng.normal(0, 0.1, (3, 16000)).astype(np.float32))
    assert features.shape == (3, 98, 40)
    assert features.min() >= 0.0 and features.max() <= 1.0
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    silence = np.zeros(16000)
    assert log_mel_spectrogram(tone).mean() > log_mel_spectrogram(silence).mean() + 0.05
    with pytest.raises(InputError, match="fewer than one"):
        log_mel_spectrogram(np.zeros(100))
    with pytest.raises(InputError, match="NaN"):
        log_mel_spectrogram(np.full(16000, np.nan))


def test_skip_measurements_and_their_verdicts():
    empty = create_measurement("empty")
    assert empty.redundant_many([np.zeros((0, 4)), np.ones((2, 4)), 0, 3, None]).tolist() == [
        True, False, True, False, True]
    subset = create_measurement("class-subset", keep=["sports"])
    assert subset.redundant_many(["sports", "weather", {"label": "sports"}]).tolist() == [False, True, False]
    confidence = create_measurement("confidence-below", threshold=0.8)
    assert confidence.redundant_many([[0.9, 0.1], [0.6, 0.4]]).tolist() == [False, True]
    regression = create_measurement("bounded-regression", threshold=3, bounds=(0, 10))
    assert regression.redundant_many([1, 5]).tolist() == [True, False]
    assert empty.filterable and subset.filterable and regression.filterable
    assert not confidence.filterable
    with pytest.raises(MeasurementError, match="outside"):
        regression.redundant(11)
    with pytest.raises(MeasurementError, match="probability vector"):
        confidence.redundant("cat")
    with pytest.raises(MeasurementError, match="unknown measurement"):
        create_measurement("vibes")
    with pytest.raises(MeasurementError, match="bad options"):
        create_measurement("empty", threshold=2)


def test_reuse_measurements_compare_and_key_outputs():
    count = create_measurement("count")
    assert count.kind == "reuse"
    assert count.same(np.ones((2, 4)), 2) and not count.same(1, 2)
    assert count.keys([np.ones((3, 4)), 0]) == [3, 0]
    label = create_measurement("label")
    assert label.same("a", "a") and not label.same("a", "b")
    assert label.key(np.array([0.1, 0.7, 0.2])) == 1


def test_filter_curve_matches_a_hand_count():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    redundant = np.array([True, True, False, True, False])
    curve = FilterCurve.from_scores(scores, redundant)
    # thresholds: inf, 0.9, 0.8 (ties skip together), 0.3, 0.1
    assert curve.rates.tolist() == [0.0, 0.2, 0.6, 0.8, 1.0]
    assert np.allclose(curve.accuracies, [1.0, 1.0, 0.8, 0.8, 0.6])
    assert curve.rate_at(0.8) == 0.8 and curve.threshold_for(0.8) == 0.3
    assert curve.rate_at(0.9) == 0.2 and curve.threshold_for(0.9) == 0.9
    assert curve.accuracy_at_threshold(0.85) == 1.0
    assert optimal_rate(0.6, 0.9) == pytest.approx(0.7)
    assert optimal_rate(0.95, 0.9) == 1.0
    # a perfect filter ranks every redundant input first (distinct scores: no ties to split)
    perfect = FilterCurve.from_scores(redundant + np.linspace(0.0, 0.1, 5), redundant)
    assert perfect.rate_at(0.8) == pytest.approx(optimal_rate(redundant.mean(), 0.8))
    with pytest.raises(ValueError, match="NaN"):
        FilterCurve.from_scores([np.nan], [True])


def _identity_cache(options: CacheOptions) -> ReuseCache:
    # distance = sigmoid(10 * sum |e1 - e2| - 5): near 0 for equal keys, near 1 for far ones
    return ReuseCache(lambda x: np.asarray(x, dtype=np.float32), np.full(2, 10.0), -5.0, options)


def test_reuse_cache_hits_on_homogeneous_neighbours_and_misses_otherwise():
    cache = _identity_cache(CacheOptions(capacity=10, k=3))
    assert not cache.lookup_embedding(np.zeros(2)).hit  # fewer than K entries
    for x in ([0, 0], [0.01, 0], [0, 0.01]):
        cache.insert_embedding(np.array(x), result=2, label=2)
    answer = cache.lookup_embedding(np.array([0.005, 0.005]))
    assert answer.hit and answer.result == 2 and answer.homogeneity > 0.9
    far = cache.lookup_embedding(np.array([5.0, 5.0]))
    assert not far.hit and far.homogeneity < 0.1
    calls = []
    outputs, hits = cache.run(np.array([[0.0, 0.0], [4.0, 4.0]]), model=lambda x: calls.append(x) or 7,
                              key=lambda y: y)
    assert outputs == [2, 7] and hits.tolist() == [True, False] and len(calls) == 1
    assert len(cache) == 4 and cache.stats.filtered == 2
    with pytest.raises(ValueError, match="3 values"):
        cache.lookup_embedding(np.zeros(3))


def test_reuse_cache_replacement_is_bounded_lfu_or_lru():
    for policy, survivor in (("lfu", [0.0, 0.0]), ("lru", [2.0, 2.0])):
        cache = _identity_cache(CacheOptions(capacity=3, k=1, replacement=policy))
        for i in range(3):
            cache.insert_embedding(np.full(2, float(i)), result=i, label=i)
        for _ in range(3):
            assert cache.lookup_embedding(np.zeros(2)).hit  # entry 0 is used often
        cache.lookup_embedding(np.full(2, 2.0))  # entry 2 is used last
        cache.insert_embedding(np.full(2, 9.0), result=9, label=9)
        assert len(cache) == 3
        assert cache.lookup_embedding(np.array(survivor)).hit
        # LFU evicted 1 (never used), LRU evicted the least recently touched entry
        assert not cache.lookup_embedding(np.full(2, 1.0)).hit


def test_reuse_cache_is_thread_safe():
    cache = _identity_cache(CacheOptions(capacity=50, k=1))

    def worker(offset: int) -> None:
        for i in range(200):
            cache.insert_embedding(np.array([offset, i % 7], dtype=np.float32), result=i, label=i % 7)
            cache.lookup_embedding(np.array([offset, i % 7], dtype=np.float32))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50 and cache.stats.seen == 800


def test_reuse_curve_and_repeated_fraction():
    assert repeated_fraction([1, 1, 2, 1, 2, 3]) == pytest.approx(3 / 6)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    embeddings = np.stack([labels * 3.0, np.zeros(200)], axis=1) + rng.normal(0, 0.01, (200, 2))
    measurement = create_measurement("count")
    curve = reuse_curve(embeddings, list(labels), measurement.same, measurement.key, np.full(2, 10.0), -5.0,
                        CacheOptions(capacity=50, k=3))
    assert curve.optimal_at_90 == 1.0
    assert curve.rate_at(0.9) > 0.9  # separable embeddings: nearly everything is reused, correctly


def test_skip_filter_thresholds_every_task_and_counts():
    scores = np.array([[0.9, 0.9], [0.9, 0.1], [0.1, 0.1]])
    skip = SkipFilter(lambda arrays: scores[arrays[0][:, 0].astype(int)], {"x": ModalitySpec.vector(1)},
                      [0.5, 0.5], ("a", "b"))
    inputs = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    assert skip.skip(inputs).tolist() == [True, False, False]
    assert skip.run(inputs, model=lambda x: int(x[0]), default=-1) == [-1, 1, 2]
    assert skip.stats.seen == 6 and skip.stats.filter_rate == pytest.approx(2 / 6)
    skip.swap(lambda arrays: np.ones((len(arrays[0]), 2)))
    assert skip.skip(inputs).all()
    with pytest.raises(InputError):
        skip.skip(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="2 tasks"):
        SkipFilter(lambda a: a, {"x": ModalitySpec.vector(1)}, [0.5], ("a", "b"))


def test_analyze_break_even_and_verdicts():
    assert break_even_rate(1.0, 9.0, 1.0) == pytest.approx(0.125)
    assert break_even_rate(1.0, 1.0) == 1.0
    assert break_even_rate(1.0, 1.0, 2.0) == float("inf")
    report = analyze(create_measurement("empty"), filter_ms=1.0, model_ms=10.0, filter_rate=0.5)
    assert report.pays_off and report.break_even_rate == pytest.approx(0.1)
    assert "pays off" in report.verdict
    blocked = analyze(create_measurement("confidence-below"), filter_ms=1.0, model_ms=10.0, filter_rate=0.5)
    assert not blocked.filterable and blocked.pays_off is False and "not filterable" in blocked.verdict
    assert analyze(create_measurement("count")).to_dict()["verdict"] == "filterable"
    with pytest.raises(ValueError, match="both"):
        analyze(create_measurement("empty"), filter_ms=1.0)
