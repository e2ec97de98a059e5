"""STIP transform: exact on every supported architecture, and refuses what it does not know."""

import os
from dataclasses import replace

import numpy as np
import pytest

from coinfer.sdk.stip import (
    DeveloperKeys,
    ModelLayout,
    StipKeyError,
    UnsupportedModelError,
    UserKeys,
    compare,
    generate_keys,
    transform_model,
)

VOCAB = 97


def build(kind: str):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    if kind == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                 n_positions=160, bos_token_id=0, eos_token_id=0))
    elif kind == "bert":
        model = tf.BertModel(tf.BertConfig(**small, num_attention_heads=4), add_pooling_layer=True)
    elif kind == "bert-classifier":
        model = tf.BertForSequenceClassification(tf.BertConfig(**small, num_attention_heads=4, num_labels=5))
    elif kind == "llama-gqa":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**small, num_attention_heads=8, num_key_value_heads=2))
    elif kind == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**small, num_attention_heads=4, num_key_value_heads=4))
    elif kind == "mixtral":
        model = tf.MixtralForCausalLM(tf.MixtralConfig(**small, num_attention_heads=4, num_key_value_heads=2,
                                                       num_local_experts=4, num_experts_per_tok=2))
    elif kind.startswith("vit"):
        config = tf.ViTConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8, num_labels=6)
        model = tf.ViTForImageClassification(config) if kind == "vit-classifier" else tf.ViTModel(config)
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**small, num_attention_heads=4, num_key_value_heads=2))
    else:
        raise ValueError(kind)
    # Move every parameter off its initial value: a transform that forgets the norm
    # gains/biases would still pass at gamma=1, beta=0.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def output_size(model) -> int | None:
    name = type(model).__name__
    if name.endswith(("ForSequenceClassification", "ForImageClassification")):
        return model.config.num_labels
    return model.config.hidden_size if name in ("BertModel", "ViTModel") else None


ARCHITECTURES = ["gpt2", "bert", "bert-classifier", "llama-gqa", "mistral", "qwen2", "mixtral", "vit",
                 "vit-classifier"]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_transformed_model_is_equivalent(kind):
    model = build(kind)
    keys = generate_keys(ModelLayout.from_config(model.config, output_size(model)), seed=11)
    cloud = transform_model(model, keys)
    rng = np.random.default_rng(0)
    # >= 1,000 compared positions everywhere; a classifier has one output per input.
    classifier = kind.endswith("classifier")
    if kind.startswith("vit"):
        images = rng.standard_normal((1024 if classifier else 64, 3, 32, 32)).astype(np.float32)
        report = compare(model, cloud, keys.user, images)
    else:
        ids = rng.integers(0, VOCAB, size=(1024, 12) if classifier else (8, 128))
        mask = np.ones_like(ids)
        mask[1, ids.shape[1] // 2:] = 0  # padding must not break anything
        report = compare(model, cloud, keys.user, ids, mask)
    assert report.positions >= 1000
    assert report.rel_err <= 1e-4, report
    assert report.top1_agreement == 1.0
    # The cloud weights really differ from the originals.
    original = dict(model.named_parameters())
    changed = [name for name, p in cloud.named_parameters() if name in original
               and p.shape == original[name].shape and not p.equal(original[name])]
    assert len(changed) > 0.8 * len(original)


def test_keys_that_move_rotary_dimensions_break_equivalence():
    model = build("llama-gqa")
    keys = generate_keys(ModelLayout.from_config(model.config), seed=3)
    layer = keys.layers[0]
    broken_within = layer.qk_within.copy()
    broken_within[:, [0, 1]] = broken_within[:, [1, 0]]
    broken = replace(keys, layers=(replace(layer, qk_within=broken_within), *keys.layers[1:]))
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(2, 64))
    assert compare(model, transform_model(model, broken), broken.user, ids).rel_err > 1e-3
    assert compare(model, transform_model(model, keys), keys.user, ids).rel_err <= 1e-4


def test_refuses_unknown_architectures_and_modules():
    import torch
    import transformers as tf

    opt = tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       ffn_dim=64)
    with pytest.raises(UnsupportedModelError, match=r"model_type 'opt'; supported: bert, gpt2, llama"):
        ModelLayout.from_config(opt)
    model = build("llama-gqa")
    keys = generate_keys(ModelLayout.from_config(model.config), seed=0)
    model.model.layers[0].adapter = torch.nn.Linear(64, 64)
    unknown = r"does not recognise parameter\(s\) model\.layers\.0\.adapter"
    with pytest.raises(UnsupportedModelError, match=unknown):
        transform_model(model, keys)
    relative = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=48, position_embedding_type="relative_key")
    with pytest.raises(UnsupportedModelError, match="relative_key"):
        ModelLayout.from_config(relative)


def test_keys_must_match_the_model():
    model = build("gpt2")
    other = generate_keys(ModelLayout.from_config(build("mistral").config), seed=0)
    with pytest.raises(StipKeyError, match="keys were made for"):
        transform_model(model, other)


def test_transform_leaves_the_original_untouched():
    model = build("gpt2")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    transform_model(model, generate_keys(ModelLayout.from_config(model.config), seed=0))
    assert all(p.equal(before[name]) for name, p in model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def test_key_files_are_private_and_round_trip(tmp_path):
    model = build("llama-gqa")
    keys = generate_keys(ModelLayout.from_config(model.config))
    keys.save(tmp_path / "dev.npz")
    keys.user.save(tmp_path / "user.npz")
    assert os.stat(tmp_path / "dev.npz").st_mode & 0o777 == 0o600
    loaded = DeveloperKeys.load(tmp_path / "dev.npz")
    assert loaded.layout == keys.layout
    assert all(np.array_equal(a.q_out, b.q_out) for a, b in zip(loaded.layers, keys.layers, strict=True))
    user = UserKeys.load(tmp_path / "user.npz")
    assert np.array_equal(user.hidden, keys.user.hidden)
    with pytest.raises(StipKeyError, match="expected developer keys"):
        DeveloperKeys.load(tmp_path / "user.npz")
    os.chmod(tmp_path / "user.npz", 0o644)
    with pytest.raises(StipKeyError, match="readable by others"):
        UserKeys.load(tmp_path / "user.npz")


def test_generated_keys_are_structured_and_fresh():
    model = build("llama-gqa")
    layout = ModelLayout.from_config(model.config)
    a, b = generate_keys(layout), generate_keys(layout)
    assert not np.array_equal(a.user.hidden, b.user.hidden)  # os.urandom: fresh each time
    layer = a.layers[0]
    group = layout.num_heads // layout.num_kv_heads
    # Query heads stay with their kv group; rotary dimensions stay in place.
    assert np.array_equal(layer.query_heads // group, np.repeat(layer.kv_heads, group))
    assert (layer.qk_within == np.arange(layout.head_dim)).all()
    assert sorted(layer.q_out) == list(range(layout.num_heads * layout.head_dim))


def test_mixtral_experts_get_their_own_permutations():
    model = build("mixtral")
    keys = generate_keys(ModelLayout.from_config(model.config), seed=5)
    assert keys.layers[0].mlp.shape == (4, 96)
    assert len({tuple(row) for row in keys.layers[0].mlp}) == 4
    cloud = transform_model(model, keys)
    original = model.model.layers[0].mlp.experts.down_proj
    transformed = cloud.model.layers[0].mlp.experts.down_proj
    for expert, row in enumerate(keys.layers[0].mlp):
        expected = original[expert][keys.user.hidden][:, row]
        assert transformed[expert].equal(expected)


@pytest.mark.slow
def test_real_minilm_sentence_embeddings_through_stip():
    import torch
    from transformers import AutoModel

    from coinfer.bench.models import minilm
    from coinfer.sdk.stip import device_embedding_table

    model = AutoModel.from_pretrained(str(minilm.model_dir())).eval()
    keys = generate_keys(ModelLayout.from_config(model.config, model.config.hidden_size))
    cloud = transform_model(model, keys)
    sentences = ["The device permutes its embeddings.", "The cloud never sees plaintext features.", "Short."]
    feeds = minilm.tokenize(sentences)
    report = compare(model, cloud, keys.user, feeds["input_ids"], feeds["attention_mask"])
    assert report.rel_err <= 1e-4, report
    wide = compare(model, cloud, keys.user, np.random.default_rng(0).integers(0, 30522, size=(8, 128)))
    assert wide.positions >= 1000 and wide.rel_err <= 1e-4 and wide.top1_agreement == 1.0, wide
    # The data owner's whole path: numpy lookup + permute, server forward, un-permute, pool.
    permuted = keys.user.permute_input(device_embedding_table(model)[feeds["input_ids"]])
    with torch.no_grad():
        served = cloud(inputs_embeds=torch.from_numpy(permuted),
                       attention_mask=torch.from_numpy(feeds["attention_mask"])).last_hidden_state.numpy()
        plain = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    stip_embeddings = minilm.mean_pool(keys.user.unpermute_hidden(served), feeds["attention_mask"])
    plain_embeddings = minilm.mean_pool(plain, feeds["attention_mask"])
    assert np.max(np.abs(stip_embeddings - plain_embeddings)) <= 1e-4
