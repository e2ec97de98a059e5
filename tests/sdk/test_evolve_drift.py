"""Class-wise drift (NestEvo eq. 11) and the device-only / co-evolution decision (eqs. 12-13)."""

import math

import numpy as np
import pytest

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.drift import DriftPolicy, DriftReport, class_drift


def _standardised(rng, frames, dims):
    """Features whose per-dimension mean is exactly 0 and population std exactly 1."""
    x = rng.standard_normal((frames, dims))
    x -= x.mean(axis=0)
    return x / x.std(axis=0)


def _one_class(frames):
    return np.ones((frames, 1), dtype=bool)


def test_identical_data_has_no_drift_and_a_fresh_sample_of_it_little():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((500, 8))
    labels = rng.random((500, 3)) < 0.4
    same = class_drift(features, labels, features, labels)
    assert same.delta == 0.0 and same.per_class == (0.0, 0.0, 0.0, 0.0)
    # Two independent samples of N(0, I) with n frames per side: each normalised mean difference
    # is about N(0, 2/n) per dimension, so a class's distance is about sqrt(2 * dims / n).
    n = 4000
    train, live = rng.standard_normal((n, 8)), rng.standard_normal((n, 8))
    sampled = class_drift(train, _one_class(n), live, _one_class(n), background=False)
    assert sampled.delta == pytest.approx(math.sqrt(2 * 8 / n), rel=0.5)


@pytest.mark.parametrize(("k", "dims", "train_frames", "live_frames"),
                         [(1.0, 4, 100, 100), (3.0, 16, 100, 100), (2.0, 9, 60, 180), (0.5, 1, 300, 50)])
def test_a_mean_shift_of_k_sigma_gives_the_exact_expected_distance(k, dims, train_frames, live_frames):
    # Both sides have within-class mean 0 (train) or k (live) and std 1 in every dimension. The
    # union's variance is then 1 + p (1 - p) k^2 with p the train share (the mixture's between-
    # group term), so each dimension contributes k / sqrt(1 + p (1 - p) k^2) and the class's
    # distance is sqrt(dims) times that: k * sqrt(dims) only for small k, since the shift itself
    # widens the pooled spread.
    rng = np.random.default_rng(int(k * 10) + dims)
    train = _standardised(rng, train_frames, dims)
    live = _standardised(rng, live_frames, dims) + k
    p = train_frames / (train_frames + live_frames)
    expected = math.sqrt(dims) * k / math.sqrt(1 + p * (1 - p) * k * k)
    report = class_drift(train, _one_class(train_frames), live, _one_class(live_frames), background=False)
    assert report.delta == pytest.approx(expected, rel=1e-9)


def test_drift_does_not_depend_on_the_units_of_the_features():
    rng = np.random.default_rng(1)
    train, live = rng.standard_normal((200, 5)), rng.standard_normal((150, 5)) * 1.5 + 0.3
    train_labels, live_labels = rng.random((200, 2)) < 0.5, rng.random((150, 2)) < 0.5
    scale, offset = rng.uniform(0.01, 100, 5), rng.uniform(-50, 50, 5)
    plain = class_drift(train, train_labels, live, live_labels)
    rescaled = class_drift(train * scale + offset, train_labels, live * scale + offset, live_labels)
    assert rescaled.delta == pytest.approx(plain.delta, rel=1e-9)
    assert rescaled.per_class == pytest.approx(plain.per_class, rel=1e-9)
    assert plain.delta > 0.5


def test_classes_are_scored_separately_and_multi_label_frames_count_for_each():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((300, 3))
    live = rng.standard_normal((300, 3))
    train_labels = np.zeros((300, 2), dtype=bool)
    live_labels = np.zeros((300, 2), dtype=bool)
    train_labels[:200, 0] = live_labels[:200, 0] = True    # class 0: both sides
    train_labels[100:, 1] = live_labels[100:, 1] = True    # class 1: overlaps class 0 on 100:200
    live[200:] += 4.0                                      # only frames of class 1 alone moved
    report = class_drift(train, train_labels, live, live_labels, background=False)
    drift_0, drift_1 = report.per_class
    assert drift_0 < 0.3 < 1.5 < drift_1
    assert report.delta == pytest.approx(drift_0 + drift_1)
    # The same per-class numbers computed by hand for class 1 (frames 100:300 on both sides).
    both = np.concatenate([train[100:], live[100:]])
    by_hand = np.linalg.norm((train[100:].mean(0) - live[100:].mean(0)) / both.std(0))
    assert drift_1 == pytest.approx(by_hand)


def test_a_class_missing_on_one_side_contributes_nothing_and_is_reported():
    rng = np.random.default_rng(3)
    train, live = rng.standard_normal((50, 2)), rng.standard_normal((40, 2)) + 3
    train_labels = np.column_stack([np.ones(50, bool), np.zeros(50, bool), np.ones(50, bool)])
    live_labels = np.column_stack([np.ones(40, bool), np.ones(40, bool), np.zeros(40, bool)])
    report = class_drift(train, train_labels, live, live_labels, background=False)
    assert report.per_class[1] is None and report.per_class[2] is None
    assert report.unmeasured == (1, 2)
    assert report.delta == report.per_class[0] > 1.0


def test_the_background_class_catches_drift_on_empty_scenes():
    rng = np.random.default_rng(4)
    train = rng.standard_normal((200, 4))
    live = rng.standard_normal((200, 4))
    labels = np.zeros((200, 2), dtype=bool)
    labels[:50, 0] = True                 # a quarter of frames show an object, the rest are empty
    live[50:] += 2.0                      # day turned to night: only the empty frames changed
    scored = class_drift(train, labels, live, labels)
    objects_only = class_drift(train, labels, live, labels, background=False)
    assert len(scored.per_class) == 3 and len(objects_only.per_class) == 2
    assert scored.per_class[:2] == objects_only.per_class
    assert objects_only.per_class[1] is None        # class 1 never appears
    assert objects_only.delta < 0.6
    assert scored.per_class[2] > 2.0
    assert scored.delta == pytest.approx(objects_only.delta + scored.per_class[2])


def test_constant_dimensions_do_not_create_drift():
    train = np.column_stack([np.zeros(10), np.arange(10.0)])
    report = class_drift(train, _one_class(10), train.copy(), _one_class(10), background=False)
    assert report.delta == 0.0


def test_bad_inputs_are_rejected_with_a_clear_message():
    x = np.zeros((4, 3))
    labels = np.ones((4, 2), dtype=bool)
    with pytest.raises(InvalidArgumentError, match="different dims"):
        class_drift(x, labels, np.zeros((4, 2)), labels)
    with pytest.raises(InvalidArgumentError, match="class counts"):
        class_drift(x, labels, x, np.ones((4, 3), dtype=bool))
    with pytest.raises(InvalidArgumentError, match="live_labels"):
        class_drift(x, labels, x, labels[:3])
    with pytest.raises(InvalidArgumentError, match="boolean"):
        class_drift(x, labels.astype(float), x, labels)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        class_drift(np.full((4, 3), np.nan), labels, x, labels)
    with pytest.raises(InvalidArgumentError, match="sigma_floor"):
        class_drift(x, labels, x, labels, sigma_floor=0)
    assert class_drift(x, labels.astype(int), x, labels).delta == 0.0


def test_the_decision_flips_to_co_evolution_at_epsilon_drifted_devices():
    policy = DriftPolicy(gamma=2.0, epsilon=3)
    deltas = {"cam-1": 2.5, "cam-2": 0.4, "cam-3": 2.0, "cam-4": 9.0}
    below = policy.decide(deltas)
    assert below.drifted == ("cam-1", "cam-4")   # 2.0 equals gamma: not drifted (eq. 12 is strict)
    assert below.delta_global == 2 and below.mode == "device-only"
    at = policy.decide({**deltas, "cam-2": 2.01})
    assert at.drifted == ("cam-1", "cam-2", "cam-4")
    assert at.delta_global == 3 and at.mode == "co-evolution"
    assert policy.decide({**deltas, "cam-2": 3.0, "cam-3": 3.0}).mode == "co-evolution"
    assert policy.decide({}).mode == "device-only"
    assert DriftPolicy(gamma=1.0, epsilon=0).decide({"cam-1": 0.1}).mode == "co-evolution"


def test_the_policy_accepts_reports_and_rejects_bad_settings():
    report = DriftReport(3.0, (3.0,))
    assert DriftPolicy(1.0, 1).decide({"cam": report}).drifted == ("cam",)
    bad = [(-1.0, 1), (math.inf, 1), ("x", 1), (10**400, 1), (1.0, -1), (1.0, 1.5), (1.0, True)]
    for gamma, epsilon in bad:
        with pytest.raises(InvalidArgumentError):
            DriftPolicy(gamma, epsilon)
    with pytest.raises(InvalidArgumentError, match="cam-x"):
        DriftPolicy(1.0, 1).decide({"cam-x": math.nan})
