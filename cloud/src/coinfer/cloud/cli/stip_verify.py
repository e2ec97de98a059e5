"""``coinfer stip verify``: check F'(x pi) pi_c^T == F(x) on random inputs, in process.

    coinfer stip verify --model ./my-llama --json verify.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.sdk.cli.flags import add_json, add_seed, positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")
    parser.add_argument("--batch", type=positive(int), default=4)
    parser.add_argument("--tokens", type=positive(int), default=64)
    add_seed(parser, "the random token ids")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest acceptable rel_err")
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from coinfer.cloud.stip.publish import load_pretrained, output_kind
    from coinfer.sdk.cli.report import report
    from coinfer.sdk.stip import ModelLayout, compare, generate_keys, transform_model

    model = load_pretrained(args.model, args.gguf)
    _, size = output_kind(model)
    keys = generate_keys(ModelLayout.from_config(model.config, size))
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = np.random.default_rng(args.seed).integers(0, vocab, size=(args.batch, args.tokens))
    found = compare(model, transform_model(model, keys), keys.user, ids)
    metrics = {**found.to_dict(), "model_type": model.config.model_type,
               "equivalent": found.equivalent(args.tolerance)}
    report(f"STIP equivalence of {args.model}", metrics, args.json)
    return 0 if metrics["equivalent"] else 1
