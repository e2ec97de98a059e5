"""``coinfer stip``: publish a keyed model, verify equivalence, chat as a data owner.

Examples::

    coinfer stip verify --model ./my-llama --json verify.json
    coinfer stip publish --model ./my-llama --out ./published --instances 3
    coinfer cloud serve stip --artifact ./published/server          # on the cloud
    COINFER_TOKEN=... coinfer stip chat --bundle ./published/user --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.service import TOKEN_ENV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    publish = sub.add_parser("publish", help="key and transform a model; write server and user bundles")
    publish.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    publish.add_argument("--out", type=Path, required=True)
    publish.add_argument("--instances", type=int, default=1, help="independently keyed copies")
    publish.add_argument("--overwrite", action="store_true")
    publish.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")

    verify = sub.add_parser("verify", help="check F'(x pi) pi_c^T == F(x) on random inputs, in process")
    verify.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    verify.add_argument("--batch", type=int, default=4)
    verify.add_argument("--tokens", type=int, default=64)
    verify.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    verify.add_argument("--tolerance", type=float, default=1e-4, help="largest acceptable rel_err")
    verify.add_argument("--json", type=Path, metavar="PATH")
    verify.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")

    chat = sub.add_parser("chat", help="generate text through a STIP server as the data owner")
    chat.add_argument("--bundle", type=Path, required=True, help="the user bundle (OUT/user)")
    chat.add_argument("--url", default="http://127.0.0.1:8000")
    chat.add_argument("--prompt", help="one prompt; without it, read prompts from standard input")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--top-k", type=int, default=0)
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int)

    bench = sub.add_parser("bench", help="STIP vs plain cloud inference, same run")
    bench.add_argument("--quick", action="store_true", help="small model, under 60 s on 2 cores")
    bench.add_argument("--json", type=Path, metavar="PATH")

    audit = sub.add_parser("audit", help="distance correlation, known-plaintext attack, text without keys")
    audit.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    audit.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")
    audit.add_argument("--prompt", default="The weather today is")
    audit.add_argument("--json", type=Path, metavar="PATH")


def run(args: argparse.Namespace) -> int:
    actions = {"publish": _publish, "verify": _verify, "chat": _chat, "bench": _bench, "audit": _audit}
    return actions[args.action](args)


def _audit(args: argparse.Namespace) -> int:
    from coinfer.cloud.stip.audit_run import run_audit
    from coinfer.cloud.stip.publish import load_pretrained, output_kind
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json

    model = load_pretrained(args.model, args.gguf)
    kind, size = output_kind(model)
    tokenizer = _tokenizer(args.model, args.gguf) if kind == "logits" else None
    found = run_audit(model, size, tokenizer, args.prompt)
    print_metrics(f"STIP audit of {args.model}", found)
    if args.json:
        atomic_write_json(args.json, found)
    return 0


def _tokenizer(model_dir: Path, gguf_file: str | None):
    """The model's tokenizer when the directory has one (text output is skipped otherwise)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file, local_files_only=True)
    except (OSError, ValueError):
        return None


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from coinfer.cloud.stip.bench import run_bench, run_sweeps, write_plots
    from coinfer.sdk.cli.demo import machine_description
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


def _publish(args: argparse.Namespace) -> int:
    from rich.console import Console

    from coinfer.cloud.stip.publish import publish

    with Console(stderr=True).status("keying and transforming the model..."):
        instances = publish(args.model, args.out, instances=args.instances, overwrite=args.overwrite,
                            gguf_file=args.gguf)
    for instance in instances:
        print(f"server bundle:  {instance.server}   (give to the model server)")
        print(f"user bundle:    {instance.user}   (give to registered data owners)")
        print(f"developer keys: {instance.developer_keys}   (keep; never share)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import numpy as np

    from coinfer.cloud.stip.publish import load_pretrained, output_kind
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json
    from coinfer.sdk.stip import ModelLayout, compare, generate_keys, transform_model

    model = load_pretrained(args.model, args.gguf)
    _, size = output_kind(model)
    keys = generate_keys(ModelLayout.from_config(model.config, size))
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = np.random.default_rng(args.seed).integers(0, vocab, size=(args.batch, args.tokens))
    report = compare(model, transform_model(model, keys), keys.user, ids)
    found = {**report.to_dict(), "model_type": model.config.model_type,
             "equivalent": report.equivalent(args.tolerance)}
    print_metrics(f"STIP equivalence of {args.model}", found)
    if args.json:
        atomic_write_json(args.json, found)
    return 0 if found["equivalent"] else 1


def _chat(args: argparse.Namespace) -> int:
    from coinfer.device.stip import STIPClient
    from coinfer.sdk.stip.sampling import SamplingOptions

    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise CoinferError(f"set {TOKEN_ENV} to the server's bearer token")
    client = STIPClient.create_from_bundle(args.bundle, args.url, token)
    sampling = SamplingOptions(args.temperature, args.top_k, args.top_p, args.seed)
    prompts = [args.prompt] if args.prompt is not None else (line.rstrip("\n") for line in sys.stdin)
    for prompt in prompts:
        if prompt:
            print(client.generate_text(prompt, args.max_new_tokens, sampling), flush=True)
    return 0
