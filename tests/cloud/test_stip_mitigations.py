"""STIP's device-side mitigations (local blocks, residual rotation) and the attacks that measure them.

Each mitigation must keep STIP exact; each attack must break what it claims to break, on
bundles really published and rows really encoded as the device client encodes them.
"""

from collections import Counter

import numpy as np
import pytest

from coinfer.cloud.stip.attack_run import SETTINGS, attack_settings, parse_settings
from coinfer.cloud.stip.publish import (
    Protection,
    PublishRefusedError,
    load_cloud_model,
    publish,
    publish_model,
)
from coinfer.cloud.stip.server import BackgroundServer, StipModelServer
from coinfer.device.stip import STIPClient
from coinfer.sdk.artifact import load_artifact
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.stip.architectures import UnsupportedModelError
from coinfer.sdk.stip.owner import OwnerEncoder

VOCAB = 400
TOKEN = "mitigation-token"


@pytest.fixture(scope="module")
def llama():
    """A tiny LLaMA with tied embeddings and non-trivial norm gains (so folding them matters)."""
    import torch
    import transformers as tf

    torch.manual_seed(3)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def messages():
    """Zipf-distributed token messages: the first half the attacker's statistics, the rest sent."""
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, VOCAB + 1)
    weights /= weights.sum()
    found = [rng.choice(VOCAB, size=int(rng.integers(6, 14)), p=weights).tolist() for _ in range(80)]
    return Counter(t for m in found[:40] for t in m), found[40:]


def _plain_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.numpy()


@pytest.mark.parametrize("setting", ["plain", "rotate", "local-1", "local-2+rotate"])
def test_every_mitigation_keeps_stip_exact(llama, setting, tmp_path):
    import torch

    (protection,) = parse_settings(setting).values()
    instance = publish_model(llama, tmp_path / "pub", protection)
    encoder = OwnerEncoder.create_from_bundle(load_artifact(instance.user))
    cloud, info = load_cloud_model(instance.server)
    assert cloud.config.num_hidden_layers == 3 - protection.local_blocks
    assert info["local_blocks"] == protection.local_blocks and info["rotated"] == protection.rotate
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 11))
    plain = _plain_logits(llama, ids)
    with torch.no_grad():
        served = cloud(inputs_embeds=torch.from_numpy(encoder.encode(ids))).logits.numpy()
    recovered = encoder.keys.unpermute_output(served)
    assert np.abs(recovered - plain).max() / np.abs(plain).max() <= 1e-4
    assert np.array_equal(recovered.argmax(-1), plain.argmax(-1))
    # What is sent step by step with the cache equals what is sent for the whole prompt.
    cache = encoder.new_cache()
    first, second = encoder.encode(ids[:1, :7], cache), encoder.encode(ids[:1, 7:8], cache)
    stepwise = np.concatenate([first, second], axis=1)
    assert np.abs(stepwise - encoder.encode(ids[:1, :8])).max() <= 1e-5


def test_the_device_client_generates_the_plain_text_with_local_blocks_and_rotation(llama, tmp_path):
    instance = publish_model(llama, tmp_path / "pub", Protection("private", local_blocks=2, rotate=True))
    cloud, info = load_cloud_model(instance.server)
    prompt = [5, 17, 42, 8]
    expected = []
    ids = list(prompt)
    for _ in range(10):
        token = int(_plain_logits(llama, np.asarray([ids]))[0, -1].argmax())
        expected.append(token)
        ids.append(token)
    with BackgroundServer(StipModelServer(cloud, info), TOKEN) as running:
        client = STIPClient.create_from_bundle(instance.user, running.url, TOKEN)
        assert client.generate(prompt, max_new_tokens=10) == expected
        logits = client.forward(np.asarray([ids[:6]]))
    assert np.array_equal(logits.argmax(-1), _plain_logits(llama, np.asarray([ids[:6]])).argmax(-1))


def test_attacks_break_plain_stip_and_each_mitigation_against_public_weights(llama, messages):
    reference, observed = messages
    found = attack_settings(llama, SETTINGS, observed, reference, public=llama, attack_tokens=30)
    plain, rotate, local, both = (found[name] for name in ("plain", "rotate", "local-1", "local-1+rotate"))
    for setting in found.values():
        assert setting["rel_err"] <= 1e-4 and setting["top1_agreement"] == 1.0
    # Sorting names every embedding row; the same token always sends the same row.
    assert plain["vocab_match_recovery"] == 1.0 and plain["repeat_leak"] == 1.0
    assert plain["frequency_recovery"] > 0.1
    # A rotation defeats sorting but not norms (what sorting still "recovers" is chance matches
    # of the most frequent tokens, 0.105 in one run of random keys); local blocks defeat both
    # one-shot matches...
    assert rotate["vocab_match_recovery"] < 0.2 and rotate["norm_match_recovery"] > 0.9
    assert local["vocab_match_recovery"] < 0.1 and local["norm_match_recovery"] < 0.1
    # ...but not the sequential attack, which pushes every token through the public blocks.
    assert local["sequential_recovery_permutation"] > 0.9
    assert both["sequential_recovery_permutation"] < 0.1 and both["sequential_recovery_rotation"] > 0.9
    assert all(setting["recovery_best"] > 0.9 for setting in found.values())
    assert local["device_ms_per_token"] > plain["device_ms_per_token"]


def test_without_public_weights_only_the_weightless_attacks_run(llama, messages):
    reference, observed = messages
    found = attack_settings(llama, {"plain": Protection("private")}, observed, reference)["plain"]
    assert "vocab_match_recovery" not in found and "sequential_recovery_permutation" not in found
    assert found["repeat_leak"] == 1.0 and 0.0 < found["frequency_recovery"] < 1.0


def test_public_base_weights_are_refused_before_loading(tmp_path):
    with pytest.raises(PublishRefusedError, match="sorts each row it receives"):
        publish(tmp_path / "no-model-needed", tmp_path / "out", protection=Protection("public-base"))
    assert not (tmp_path / "out").exists()


def test_protection_refuses_what_a_model_cannot_carry(llama):
    import transformers as tf

    gpt2 = tf.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    with pytest.raises(UnsupportedModelError, match="LLaMA-family"):
        Protection("private", rotate=True).check(gpt2)
    with pytest.raises(InvalidArgumentError, match="leaves nothing for the server"):
        Protection("private", local_blocks=3).check(llama.config)
    with pytest.raises(InvalidArgumentError, match="provenance"):
        Protection("mine")
    with pytest.raises(InvalidArgumentError, match="unknown setting"):
        parse_settings("plain,local-1+secret")
