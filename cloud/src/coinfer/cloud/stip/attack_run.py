"""``coinfer stip audit``'s token-recovery part: publish, encode as the data owner, attack as the server.

For each protection setting the model is really published (server and user bundles in a
scratch folder), the user bundle encodes the messages exactly as the device client does
(:class:`coinfer.sdk.stip.owner.OwnerEncoder`), and the attacks of
:mod:`coinfer.sdk.stip.attacks` run on those rows. The server bundle is loaded as the
server would load it to check that the setting stays exact, and the encoder is timed to
give the device's cost per token. Example::

    found = attack_settings(model, SETTINGS, observed, reference, public=model)
    found["local-1"]["sequential_recovery"]       # share of tokens the server reads back
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.cloud.stip.publish import (
    Protection,
    block_shape,
    block_weights,
    load_cloud_model,
    publish_model,
)
from coinfer.sdk.artifact import load_artifact
from coinfer.sdk.datadir import read_index, sha256_file
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.stip.attacks import (
    Invariant,
    SequentialAttack,
    frequency_recovery,
    norm_match,
    recovery_rate,
    repeat_leak,
    vocab_match,
)
from coinfer.sdk.stip.local_blocks import LocalBlocks
from coinfer.sdk.stip.owner import OwnerEncoder

#: The settings the audit compares: plain STIP and the device-side mitigations.
SETTINGS: dict[str, Protection] = {
    "plain": Protection("private"),
    "rotate": Protection("private", rotate=True),
    "local-1": Protection("private", local_blocks=1),
    "local-1+rotate": Protection("private", local_blocks=1, rotate=True),
}


def parse_settings(text: str) -> dict[str, Protection]:
    """``"plain,local-2+rotate"`` -> settings; ``local-K`` runs K blocks on the device."""
    found: dict[str, Protection] = {}
    for name in filter(None, (part.strip() for part in text.split(","))):
        parts = name.split("+")
        rotate = "rotate" in parts
        blocks = [part for part in parts if part.startswith("local-")]
        rest = [part for part in parts if part not in ("rotate", "plain") and not part.startswith("local-")]
        if rest or len(blocks) > 1 or (name != "plain" and "plain" in parts) or not name:
            raise InvalidArgumentError(f"unknown setting '{name}': use plain, rotate, local-K or "
                                       "local-K+rotate")
        count = blocks[0][len("local-"):] if blocks else "0"
        if not count.isdigit() or (blocks and int(count) < 1):
            raise InvalidArgumentError(f"'{name}': K in local-K must be a whole number >= 1")
        found[name] = Protection("private", local_blocks=int(count), rotate=rotate)
    if not found:
        raise InvalidArgumentError("no settings given")
    return found


def attack_settings(model: Any, settings: Mapping[str, Protection], observed: Sequence[Sequence[int]],
                    reference: Counter[int], *, public: Any = None, attack_tokens: int = 48,
                    progress: Any = None) -> dict[str, dict[str, Any]]:
    """Recovery rates, exactness and device cost of every setting.

    ``observed``: the messages (token ids) the data owner sends; ``reference``: token counts
    of public text of the same kind (the attacker's statistics for frequency analysis);
    ``public``: the model the attacker can download (``None`` when the weights are private:
    then only the attacks that need no weights run). ``attack_tokens`` bounds the tokens
    the sequential attack tries every vocabulary token for (it costs a vocabulary-sized
    batch through the local blocks per token).
    """
    found = {}
    for name, protection in settings.items():
        if progress is not None:
            progress(name)
        with tempfile.TemporaryDirectory(prefix="coinfer-stip-audit-") as scratch:
            instance = publish_model(model, Path(scratch) / "published", protection)
            encoder = OwnerEncoder.create_from_bundle(load_artifact(instance.user))
            cloud, _ = load_cloud_model(instance.server)
            found[name] = {
                "local_blocks": protection.local_blocks,
                "rotated": protection.rotate,
                **_exactness(model, cloud, encoder, observed),
                "device_ms_per_token": _device_cost(encoder, observed),
                **_attack(encoder, observed, reference, public, protection, attack_tokens),
            }
    return found


def _attack(encoder: OwnerEncoder, observed: Sequence[Sequence[int]], reference: Counter[int], public: Any,
            protection: Protection, attack_tokens: int) -> dict[str, Any]:
    sent = [encoder.encode(np.asarray([message]))[0] for message in observed]
    rows, tokens = np.concatenate(sent), np.concatenate([np.asarray(m) for m in observed])
    share, threshold = frequency_recovery(rows, tokens, reference)
    found: dict[str, Any] = {"tokens_observed": len(tokens), "repeat_leak": repeat_leak(rows, tokens),
                             "frequency_recovery": share, "frequency_threshold": threshold}
    if public is None:
        return found
    table = public.get_input_embeddings().weight.detach().float().numpy()
    found["vocab_match_recovery"] = recovery_rate(vocab_match(rows, table), tokens)
    found["norm_match_recovery"] = recovery_rate(norm_match(rows, table), tokens)
    blocks = (LocalBlocks(block_shape(public), block_weights(public, protection.local_blocks))
              if protection.local_blocks else None)
    budget, attacked = attack_tokens, []
    recovered: dict[Invariant, list[np.ndarray]] = {"permutation": [], "rotation": []}
    for message, rows_sent in zip(observed, sent, strict=True):
        if budget <= 0:
            break
        take = min(budget, len(message))
        attacked.append(np.asarray(message[:take]))
        for invariant, found_ids in recovered.items():
            found_ids.append(SequentialAttack(table, blocks, invariant).recover(rows_sent[:take]))
        budget -= take
    truth = np.concatenate(attacked)
    rates = {invariant: recovery_rate(np.concatenate(ids), truth) for invariant, ids in recovered.items()}
    found |= {"sequential_tokens": len(truth),
              "sequential_recovery_permutation": rates["permutation"],
              "sequential_recovery_rotation": rates["rotation"]}
    found["recovery_best"] = max(found["vocab_match_recovery"], found["norm_match_recovery"], *rates.values())
    return found


def _exactness(model: Any, cloud: Any, encoder: OwnerEncoder,
               observed: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The published pair against the plain model on the first messages (one batch each)."""
    import torch

    errors, agreements = [], []
    for message in list(observed)[:4]:
        ids = np.asarray([message])
        with torch.no_grad():
            plain = model(input_ids=torch.from_numpy(ids)).logits.numpy()
            served = cloud(inputs_embeds=torch.from_numpy(encoder.encode(ids))).logits.numpy()
        recovered = encoder.keys.unpermute_output(served)
        errors.append(float(np.abs(recovered - plain).max() / (np.abs(plain).max() or 1.0)))
        agreements.append(float(np.mean(recovered.argmax(-1) == plain.argmax(-1))))
    return {"rel_err": max(errors), "top1_agreement": min(agreements)}


def _device_cost(encoder: OwnerEncoder, observed: Sequence[Sequence[int]], steps: int = 32) -> float:
    """Milliseconds per generated token of what the device computes before sending (median of
    ``steps`` one-token steps after a prompt; the embedding lookup alone without local blocks)."""
    prompt = np.asarray([list(observed[0])])
    cache = encoder.new_cache()
    encoder.encode(prompt, cache)
    times = []
    for step in range(steps):
        started = time.perf_counter()
        encoder.encode(np.asarray([[int(prompt[0, step % prompt.shape[1]])]]), cache)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def lightly_fine_tuned(model: Any, messages: Sequence[Sequence[int]], steps: int = 8,
                       learning_rate: float = 1e-4, batch: int = 4) -> Any:
    """A copy of ``model`` after ``steps`` AdamW steps of language modelling on ``messages``: the
    developer's private fine-tune of a public base, which the attacker matches by nearest signature."""
    import copy

    import torch

    tuned = copy.deepcopy(model).train()
    optimiser = torch.optim.AdamW(tuned.parameters(), lr=learning_rate)
    for step in range(steps):
        chosen = [list(messages[(step * batch + k) % len(messages)]) for k in range(batch)]
        width = min(len(m) for m in chosen)
        ids = torch.tensor([m[:width] for m in chosen])
        loss = tuned(input_ids=ids, labels=ids).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return tuned.eval()


class CorpusError(CoinferError):
    """A --corpus folder that is not a readable ``coinfer data corpus`` output."""


def read_corpus_texts(folder: Path, limit: int) -> list[str]:
    """The first ``limit`` message texts of a ``coinfer data corpus`` folder (checked by sha256)."""
    index = read_index(folder / "corpus.json", "coinfer-corpus", 1, CorpusError, "a message corpus",
                       "make one with: coinfer data corpus --out DIR")
    messages = folder / "messages.jsonl"
    expected = dict(index.get("files") or {}).get("messages.jsonl")
    if not messages.is_file() or sha256_file(messages) != expected:
        raise CorpusError(f"{messages}: missing or does not match the sha256 in corpus.json")
    texts: list[str] = []
    with messages.open(encoding="utf-8") as handle:
        for line in handle:
            if len(texts) == limit:
                break
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise CorpusError(f"{messages}: line {len(texts) + 1} is not a message: {error}") from error
    return texts
