"""The real SmolLM2-135M through STIP: data owner -> model server over loopback -> data owner."""

import numpy as np
import pytest

from coinfer.sdk.stip import ModelLayout, compare, device_embedding_table, generate_keys, transform_model

PROMPTS = ["The capital of France is", "Edge computing helps cameras because", "def fibonacci(n):"]
NEW_TOKENS = 32
NEAR_TIE = 1e-4


@pytest.fixture(scope="module")
def smollm2():
    from coinfer.bench.models.smollm2 import load_smollm2

    return load_smollm2()


def plain_greedy(model, prompt_ids):
    """Greedy decoding with the plain model and its KV cache; also returns each step's top-2 gap."""
    import torch

    tokens, gaps, cache = [], [], None
    step = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            out = model(input_ids=step, cache=cache, use_cache=True)
            cache = out.cache
            logits = out.logits[0, -1].numpy()
            top2 = np.sort(logits)[-2:]
            gaps.append(float(top2[1] - top2[0]))
            tokens.append(int(np.argmax(logits)))
            step = torch.tensor([[tokens[-1]]])
    return tokens, gaps


@pytest.mark.slow
def test_smollm2_generation_through_stip_over_loopback(smollm2):
    from coinfer.cloud.stip.publish import output_kind
    from coinfer.cloud.stip.server import BackgroundServer, StipModelServer
    from coinfer.device.stip import STIPClient

    model, tokenizer = smollm2
    config = model.config
    assert config.tie_word_embeddings and config.num_key_value_heads < config.num_attention_heads  # GQA
    _, vocab = output_kind(model)
    keys = generate_keys(ModelLayout.from_config(model.config, vocab))
    cloud = transform_model(model, keys)
    ids = np.random.default_rng(0).integers(0, vocab, size=(2, 512))
    report = compare(model, cloud, keys.user, ids)
    assert report.positions >= 1000 and report.rel_err <= 1e-4 and report.top1_agreement == 1.0

    info = {"hidden_size": keys.layout.hidden_size, "output_kind": "logits", "output_size": vocab,
            "max_positions": model.config.max_position_embeddings}
    with BackgroundServer(StipModelServer(cloud, info), "t") as running:
        client = STIPClient(device_embedding_table(model), keys.user, running.url, "t", info=info)
        for prompt in PROMPTS:
            prompt_ids = tokenizer(prompt)["input_ids"]
            expected, gaps = plain_greedy(model, prompt_ids)
            got = client.generate(prompt_ids, NEW_TOKENS)
            diverged = next((i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b), None)
            # Exact, unless the plain model itself stood at a float near-tie where they part.
            assert diverged is None or gaps[diverged] < NEAR_TIE, (prompt, diverged, gaps[diverged])


@pytest.mark.slow
def test_smollm2_with_local_blocks_and_rotation_generates_the_plain_text(smollm2, tmp_path):
    from coinfer.cloud.stip.publish import Protection, load_cloud_model, publish_model
    from coinfer.cloud.stip.server import BackgroundServer, StipModelServer
    from coinfer.device.stip import STIPClient

    model, tokenizer = smollm2
    instance = publish_model(model, tmp_path / "pub", Protection("private", local_blocks=2, rotate=True))
    cloud, info = load_cloud_model(instance.server)
    assert cloud.config.num_hidden_layers == model.config.num_hidden_layers - 2
    with BackgroundServer(StipModelServer(cloud, info), "t") as running:
        client = STIPClient.create_from_bundle(instance.user, running.url, "t")
        prompt_ids = tokenizer(PROMPTS[1])["input_ids"]
        expected, gaps = plain_greedy(model, prompt_ids)
        got = client.generate(prompt_ids, NEW_TOKENS)
    diverged = next((i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b), None)
    assert diverged is None or gaps[diverged] < NEAR_TIE, (diverged, gaps[diverged])
