"""``coinfer stip bench``: STIP against plain cloud inference, measured in one run.

Model: GPT-2 with random weights (vocab 50,257, hidden 768, 12 heads); 2 layers in quick
mode, 12 (GPT-2 small) in full mode. Metrics:

- ``rel_err``, ``top1_agreement``: STIP path vs plain model on the same token ids;
- ``cloud_throughput_ratio``: transformed / plain forward throughput, same batch, same
  process, best of interleaved repetitions;
- ``device_overhead_ms``: what STIP adds on the device per request at n=128 tokens:
  permuting the (128, 768) embeddings and mapping the chosen next token through pi_c;
  ``device_full_unpermute_ms`` is un-permuting all (128, 50257) logits, for callers that
  want every row;
- ``bytes_per_request``: request + response frames of one (1, 128) forward;
- ``gen_ms_per_token_stip`` / ``gen_ms_per_token_plain``: greedy decoding through the same
  server over loopback with its KV cache; STIP sends one permuted embedding row per step,
  plain sends the token id in clear. Both receive the logits row.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from coinfer.sdk import wire
from coinfer.sdk.cli.flags import add_json
from coinfer.sdk.metrics import median_latency_ms
from coinfer.sdk.stip import protocol

VOCAB, HIDDEN, HEADS, TOKENS = 50257, 768, 12, 128


def _forward_ms(model: Any, cloud: Any, keys: Any, table: np.ndarray, ids: np.ndarray,
                repeats: int) -> tuple[float, float]:
    """Best-of-N forward times (ms) of the plain and the transformed model, interleaved.

    Both graphs have the same size, so the fastest run of each is the fairest estimate of
    its cost; medians drift with whatever else the machine runs.
    """
    import torch

    plain_x = torch.from_numpy(table[ids])
    stip_x = torch.from_numpy(keys.user.permute_input(table[ids]))
    plain_ms, stip_ms = [], []
    with torch.no_grad():
        cloud(inputs_embeds=stip_x)
        model(inputs_embeds=plain_x)
        for _ in range(repeats):  # interleaved so drift affects both alike
            plain_ms.append(median_latency_ms(lambda: model(inputs_embeds=plain_x), 1, 0))
            stip_ms.append(median_latency_ms(lambda: cloud(inputs_embeds=stip_x), 1, 0))
    return min(plain_ms), min(stip_ms)


def run_sweeps(layer_counts: tuple[int, ...] = (2, 6, 12), batches: tuple[int, ...] = (1, 2, 4, 8),
               repeats: int = 5, depth_batch: int = 4) -> dict[str, Any]:
    """Throughput ratio against batch size (deepest model) and against depth (``depth_batch``)."""
    from coinfer.sdk.stip import ModelLayout, device_embedding_table, generate_keys, transform_model

    rng = np.random.default_rng(1)
    sweeps: dict[str, Any] = {"by_batch": [], "by_layers": []}
    for layers in layer_counts:
        model = _gpt2(layers)
        keys = generate_keys(ModelLayout.from_config(model.config))
        cloud = transform_model(model, keys)
        table = device_embedding_table(model)
        deepest = layers == max(layer_counts)
        for batch in sorted({*batches, depth_batch}) if deepest else (depth_batch,):
            ids = rng.integers(0, VOCAB, (batch, TOKENS))
            plain, stip = _forward_ms(model, cloud, keys, table, ids, repeats)
            row = {"layers": layers, "batch": batch, "tokens_per_s_plain": batch * TOKENS / plain * 1e3,
                   "tokens_per_s_stip": batch * TOKENS / stip * 1e3, "throughput_ratio": plain / stip}
            if deepest and batch in batches:
                sweeps["by_batch"].append(row)
            if batch == depth_batch:
                sweeps["by_layers"].append(row)
    return sweeps


def write_plots(sweeps: dict[str, Any], directory: Any) -> list[str]:
    """Two PNGs: tokens/s against batch size and against depth, plain vs STIP."""
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    Path(directory).mkdir(parents=True, exist_ok=True)  # --json's folder is made only when it is written
    written = []
    for key, axis, label in (("by_batch", "batch", "batch size"), ("by_layers", "layers", "layers")):
        rows = sweeps[key]
        figure, ax = plt.subplots(figsize=(5, 3.5))
        xs = [row[axis] for row in rows]
        ax.plot(xs, [row["tokens_per_s_plain"] for row in rows], "o-", label="plain")
        ax.plot(xs, [row["tokens_per_s_stip"] for row in rows], "s--", label="STIP")
        ax.set_xlabel(label)
        ax.set_ylabel("cloud tokens / s")
        ax.set_title(f"GPT-2 forward throughput by {label}")
        ax.legend()
        figure.tight_layout()
        path = Path(directory) / f"stip_throughput_{key}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(str(path))
    return written


def _gpt2(layers: int) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_head=HEADS, n_layer=layers,
                                     n_positions=1024)
    return transformers.GPT2LMHeadModel(config).eval()


def _plain_generate_ms(url: str, prompt: list[int], new_tokens: int) -> float:
    """Greedy decoding against a plain server: token ids in clear, logits back."""
    import json
    import urllib.request

    headers = {"Authorization": "Bearer bench", "Content-Type": protocol.CONTENT_TYPE}

    def call(method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(url + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    session = json.loads(call("POST", protocol.SESSIONS_PATH))["session"]
    step_ids = np.asarray([prompt], dtype=np.int64)
    start = time.perf_counter()
    for _ in range(new_tokens):
        frame = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, {protocol.TOKEN_IDS: step_ids}))
        reply = wire.decode(call("POST", f"{protocol.SESSIONS_PATH}/{session}/step", frame),
                            protocol.RESPONSE_LIMITS)
        step_ids = np.asarray([[int(np.argmax(reply.arrays[protocol.OUTPUT][0]))]], dtype=np.int64)
    elapsed = (time.perf_counter() - start) * 1e3 / new_tokens
    call("DELETE", f"{protocol.SESSIONS_PATH}/{session}")
    return elapsed


def run_bench(quick: bool = True) -> dict[str, Any]:
    import torch

    from coinfer.cloud.stip.server import BackgroundServer, ServerOptions, StipModelServer
    from coinfer.device.stip import STIPClient
    from coinfer.sdk.stip import ModelLayout, compare, device_embedding_table, generate_keys, transform_model

    layers, batch, repeats, new_tokens = (2, 2, 15, 24) if quick else (12, 8, 21, 64)
    model = _gpt2(layers)
    start = time.perf_counter()
    keys = generate_keys(ModelLayout.from_config(model.config))
    cloud = transform_model(model, keys)
    transform_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    report = compare(model, cloud, keys.user, rng.integers(0, VOCAB, size=(4, TOKENS)))

    table = device_embedding_table(model)
    ids = rng.integers(0, VOCAB, size=(batch, TOKENS))
    stip_x = torch.from_numpy(keys.user.permute_input(table[ids]))
    plain_median, stip_median = _forward_ms(model, cloud, keys, table, ids, repeats)

    embeddings = table[ids[0]]
    logits = rng.standard_normal((TOKENS, VOCAB)).astype(np.float32)
    device_ms = median_latency_ms(lambda: (keys.user.permute_input(embeddings),
                                    int(keys.user.output[int(np.argmax(logits[-1]))])), 50)
    full_unpermute_ms = median_latency_ms(lambda: keys.user.unpermute_output(logits), 10)
    request = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, {protocol.INPUTS: stip_x[:1].numpy()}))
    response = wire.encode(wire.Message(wire.MessageType.RESPONSE, {}, {protocol.OUTPUT: logits[None]}),
                           protocol.RESPONSE_LIMITS)

    info = {"hidden_size": HIDDEN, "output_kind": "logits", "output_size": VOCAB, "max_positions": 1024}
    prompt = [int(t) for t in rng.integers(0, VOCAB, size=16)]
    with (BackgroundServer(StipModelServer(cloud, info), "bench") as stip_server,
          BackgroundServer(StipModelServer(model, info, ServerOptions(accept_token_ids=True)),
                           "bench") as plain_server):
        client = STIPClient(table, keys.user, stip_server.url, "bench", info=info)
        client.generate(prompt, 2)  # warm-up
        _plain_generate_ms(plain_server.url, prompt, 2)
        begin = time.perf_counter()
        client.generate(prompt, new_tokens)
        gen_stip = (time.perf_counter() - begin) * 1e3 / new_tokens
        gen_plain = _plain_generate_ms(plain_server.url, prompt, new_tokens)

    return {
        "mode": "quick" if quick else "full",
        "model": f"gpt2 random, {layers} layers, hidden {HIDDEN}, vocab {VOCAB}",
        "rel_err": report.rel_err,
        "max_abs_err": report.max_abs_err,
        "top1_agreement": report.top1_agreement,
        "positions": report.positions,
        "transform_seconds": transform_seconds,
        "cloud_ms_plain_best": plain_median,
        "cloud_ms_stip_best": stip_median,
        "cloud_throughput_ratio": plain_median / stip_median,
        "cloud_tokens_per_s_stip": batch * TOKENS / (stip_median / 1e3),
        "device_overhead_ms": device_ms,
        "device_full_unpermute_ms": full_unpermute_ms,
        "bytes_per_request": len(request) + len(response),
        "request_bytes": len(request),
        "response_bytes": len(response),
        "gen_ms_per_token_stip": gen_stip,
        "gen_ms_per_token_plain": gen_plain,
        "gen_ratio": gen_stip / gen_plain,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small model, under 60 s on 2 cores")
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """``coinfer stip bench``: the metrics table, and with ``--json`` the metrics, the machine
    and (without ``--quick``) the sweeps and their plots next to the JSON."""
    from rich.console import Console

    from coinfer.bench.machine import machine_description
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json

    with Console(stderr=True).status("benchmarking STIP against plain inference..."):
        found = run_bench(quick=args.quick)
        sweeps = None if args.quick else run_sweeps()
    print_metrics("coinfer stip bench", found)
    if sweeps is not None:
        found["sweeps"] = sweeps
        if args.json:
            found["plots"] = write_plots(sweeps, args.json.parent)
    if args.json:
        atomic_write_json(args.json, {**found, "machine": machine_description()})
    return 0
