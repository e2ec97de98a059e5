"""``coinfer stip verify``: check F'(x pi) pi_c^T == F(x) on random inputs, in process.

    coinfer stip verify --model ./my-llama --json verify.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.sdk.cli.flags import add_json, add_seed, count, positive

#: Random sequences compared at once: both models' outputs for all of them are held in memory.
MAX_BATCH = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")
    parser.add_argument("--batch", type=count(MAX_BATCH), default=4,
                        help=f"random sequences compared (default 4, at most {MAX_BATCH})")
    parser.add_argument("--tokens", type=positive(int), default=64,
                        help="tokens per sequence (default 64, at most the model's positions)")
    add_seed(parser, "the random token ids")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest acceptable rel_err")
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from coinfer.cloud.stip.publish import load_pretrained, output_kind
    from coinfer.sdk.cli.report import report
    from coinfer.sdk.errors import InvalidArgumentError
    from coinfer.sdk.stip import ModelLayout, compare, generate_keys, transform_model

    positions = _positions(args.model, args.gguf)
    if positions and args.tokens > positions:
        raise InvalidArgumentError(f"--tokens {args.tokens} is more than the {positions} positions "
                                   f"{args.model} takes")
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


def _positions(model_dir: Path, gguf_file: str | None) -> int:
    """The most tokens the model takes (0 when its config names no limit), read from the config
    alone so that a too long ``--tokens`` is refused before the weights load."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, gguf_file=gguf_file,
                                                         local_files_only=True)
    except (OSError, ValueError):  # load_pretrained reports an unreadable model, naming the file
        return 0
    return int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0))
