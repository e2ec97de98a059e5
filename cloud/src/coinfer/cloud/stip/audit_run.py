"""``coinfer stip audit``: what a server, or a user holding pi, can learn; measured on a model."""

from __future__ import annotations

from typing import Any

import numpy as np

from coinfer.sdk.stip import ModelLayout, generate_keys, transform_model
from coinfer.sdk.stip.architectures import architecture_for
from coinfer.sdk.stip.audit import distance_correlation, known_plaintext_attack, random_projection

#: Weight matrices compared per audit (the first ones the model names, 2-D only).
AUDITED_MATRICES = 6


def run_audit(model: Any, output_size: int, tokenizer: Any = None, prompt: str = "The weather today is",
              new_tokens: int = 16) -> dict[str, Any]:
    import torch

    keys = generate_keys(ModelLayout.from_config(model.config, output_size))
    cloud = transform_model(model, keys)
    original = dict(model.named_parameters())
    weights_stip: list[float] = []
    weights_projection: list[float] = []
    for name, param in cloud.named_parameters():
        if param.ndim != 2 or name not in original or original[name].shape != param.shape:
            continue
        if len(weights_stip) == AUDITED_MATRICES:
            break
        plain = original[name].detach().numpy()
        weights_stip.append(distance_correlation(plain, param.detach().numpy()))
        weights_projection.append(distance_correlation(plain, random_projection(plain)))

    table = model.get_input_embeddings().weight.detach().numpy()
    rows = table[np.random.default_rng(0).choice(len(table), 16, replace=False)]
    embedding_stip = [distance_correlation(row, keys.user.permute_input(row)) for row in rows]
    embedding_projection = [distance_correlation(row, random_projection(row[None])[0]) for row in rows]

    recovered = known_plaintext_attack(rows, keys.user.permute_input(rows))
    found: dict[str, Any] = {
        "weights_dcor_stip": float(np.mean(weights_stip)),
        "weights_dcor_random_projection": float(np.mean(weights_projection)),
        "embedding_dcor_stip": float(np.mean(embedding_stip)),
        "embedding_dcor_random_projection": float(np.mean(embedding_projection)),
        "kpa_pairs": len(rows),
        "kpa_pi_recovered": float(np.mean(recovered == keys.user.hidden)),
        **_recovery_with_user_keys(model, cloud, keys),
    }
    if tokenizer is not None:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        found["prompt"] = prompt
        found["text_plain"] = _greedy_text(model, tokenizer, ids, new_tokens, torch)
        found["text_without_keys"] = _greedy_text(cloud, tokenizer, ids, new_tokens, torch,
                                                  embeddings=model.get_input_embeddings())
    return found


def _recovery_with_user_keys(model: Any, cloud: Any, keys: Any) -> dict[str, float]:
    """What an attacker holding pi and pi_c restores exactly from the cloud weights.

    The attacker undoes every axis those keys permute. Parameters with an axis under a
    per-layer key (attention, MLP) stay scrambled except where that key happens to fix
    entries; with rotary embeddings Q/K only have head permutations, so with few heads a
    projection can come back whole. Parameters under user keys alone (norm gains, the
    output head, position tables) are restorable by design.
    """
    arch = architecture_for(model.config)
    original = dict(model.named_parameters())
    inverse = {"hidden": np.argsort(keys.user.hidden), "output": np.argsort(keys.user.output)}
    counts = {"layer_keyed": [0, 0], "user_keyed": [0, 0]}
    for name, param in cloud.named_parameters():
        found = arch.match(name)
        if found is None or name not in original:
            continue
        guess = param.detach().numpy()
        for axis, symbol in enumerate(found[0]):
            if symbol in inverse:
                guess = np.take(guess, inverse[symbol], axis=axis)
        group = "layer_keyed" if any(s not in (None, *inverse) for s in found[0]) else "user_keyed"
        counts[group][0] += int(np.sum(guess == original[name].detach().numpy()))
        counts[group][1] += guess.size
    layer_restored, layer_total = counts["layer_keyed"]
    user_total = counts["user_keyed"][1]
    return {
        "kpa_layer_weight_entries_recovered": layer_restored / max(layer_total, 1),
        "user_keyed_weight_fraction": user_total / max(user_total + layer_total, 1),
    }


def _greedy_text(model: Any, tokenizer: Any, ids: Any, new_tokens: int, torch: Any,
                 embeddings: Any = None) -> str:
    """Greedy decoding; with ``embeddings`` the (transformed) model is fed plain embeddings, no keys."""
    tokens = ids
    with torch.no_grad():
        for _ in range(new_tokens):
            if embeddings is None:
                logits = model(input_ids=tokens).logits
            else:
                logits = model(inputs_embeds=embeddings(tokens)).logits
            tokens = torch.cat([tokens, logits[:, -1:].argmax(-1)], dim=1)
    return tokenizer.decode(tokens[0, ids.shape[1]:])
