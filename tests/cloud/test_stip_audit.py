import numpy as np
import pytest

from coinfer.sdk.stip.audit import distance_correlation, known_plaintext_attack, random_projection


def test_distance_correlation_detects_dependence_and_independence():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(768)
    assert distance_correlation(x, x) == pytest.approx(1.0)
    assert distance_correlation(x, 3 * x + 1) == pytest.approx(1.0)
    assert distance_correlation(x, x ** 2) > 0.3  # non-linear dependence is seen too
    assert distance_correlation(x, x[rng.permutation(768)]) < 0.15
    assert distance_correlation(x, random_projection(x[None])[0]) < 0.15
    with pytest.raises(ValueError):
        distance_correlation(x, x[:10])


def test_known_plaintext_attack_recovers_pi_from_a_few_pairs():
    rng = np.random.default_rng(1)
    plain = rng.standard_normal((8, 256))
    pi = rng.permutation(256)
    assert np.array_equal(known_plaintext_attack(plain, plain[:, pi]), pi)


@pytest.mark.slow
def test_audit_shows_per_layer_keys_protect_weights_even_when_pi_leaks():
    import torch
    import transformers as tf

    from coinfer.cloud.stip.audit_run import run_audit

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2)).eval()
    found = run_audit(model, output_size=300)
    assert found["kpa_pi_recovered"] == 1.0
    # pi and pi_c alone leave the per-layer-keyed weights scrambled (Q/K of this tiny RoPE
    # model have only 2 x 2 x 2 head arrangements, so allow those to come back whole).
    assert found["kpa_layer_weight_entries_recovered"] < 0.35
    assert found["weights_dcor_stip"] < 0.3 and found["embedding_dcor_stip"] < 0.4
