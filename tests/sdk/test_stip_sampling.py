import numpy as np
import pytest

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.stip.sampling import SamplingOptions, TokenSampler

LOGITS = np.log(np.array([0.05, 0.5, 0.2, 0.15, 0.1]))


def test_greedy_and_degenerate_filters_pick_the_argmax():
    assert TokenSampler()(LOGITS) == 1
    assert TokenSampler(SamplingOptions(temperature=1.0, top_k=1, seed=0))(LOGITS) == 1
    assert TokenSampler(SamplingOptions(temperature=1.0, top_p=0.3, seed=0))(LOGITS) == 1


def test_temperature_sampling_follows_the_softmax():
    sampler = TokenSampler(SamplingOptions(temperature=1.0, seed=3))
    counts = np.bincount([sampler(LOGITS) for _ in range(4000)], minlength=5) / 4000
    np.testing.assert_allclose(counts, np.exp(LOGITS), atol=0.03)


def test_top_k_and_top_p_remove_the_tail():
    top_k = TokenSampler(SamplingOptions(temperature=1.0, top_k=2, seed=1))
    assert {top_k(LOGITS) for _ in range(500)} == {1, 2}
    top_p = TokenSampler(SamplingOptions(temperature=1.0, top_p=0.8, seed=1))  # 0.5 + 0.2 + 0.15 >= 0.8
    assert {top_p(LOGITS) for _ in range(500)} == {1, 2, 3}


def test_sampling_is_order_independent_so_the_device_can_pick_in_permuted_space():
    permutation = np.random.default_rng(0).permutation(5)
    greedy = TokenSampler()
    assert permutation[greedy(LOGITS[permutation])] == greedy(LOGITS)


@pytest.mark.parametrize("options", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5)])
def test_bad_options_are_refused(options):
    with pytest.raises(CoinferError):
        SamplingOptions(**options)
