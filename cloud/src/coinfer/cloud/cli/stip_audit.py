"""``coinfer stip audit``: what a server, or a user holding pi, can learn; measured on a model.

    coinfer data corpus --out corpus --messages 400
    coinfer stip audit --model ./my-llama --provenance private --corpus corpus --json audit.json

The token-recovery attacks run against bundles really published for each ``--settings``
entry: plain STIP, a secret residual rotation (``rotate``), the first K blocks on the
device (``local-K``), or both. With ``--provenance public-base`` the server is assumed to
hold the same public weights (and a lightly fine-tuned copy is attacked too); with
``private`` only the attacks that need no weights run.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_json, count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")
    parser.add_argument("--provenance", choices=("private", "public-base"), required=True,
                        help="whether a server could download these weights (public-base) or not")
    parser.add_argument("--corpus", type=Path, required=True, metavar="DIR",
                        help="messages to send, from: coinfer data corpus --out DIR")
    parser.add_argument("--settings", type=_settings, default="plain,rotate,local-1,local-1+rotate",
                        help="comma-separated: plain, rotate, local-K, local-K+rotate")
    parser.add_argument("--messages", type=count(5000), default=200,
                        help="messages the data owner sends; as many more give the attacker's statistics")
    parser.add_argument("--attack-tokens", type=count(10000), default=48,
                        help="tokens the sequential attack tries the whole vocabulary for")
    parser.add_argument("--fine-tune-steps", type=count(1000), default=8,
                        help="AdamW steps of the lightly fine-tuned copy (public-base)")
    parser.add_argument("--prompt", default="The weather today is")
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from coinfer.cloud.stip.attack_run import attack_settings, lightly_fine_tuned, read_corpus_texts
    from coinfer.cloud.stip.audit_run import run_audit
    from coinfer.cloud.stip.publish import Protection, load_pretrained, output_kind
    from coinfer.sdk.cli.report import report
    from coinfer.sdk.errors import InvalidArgumentError

    settings = args.settings
    texts = read_corpus_texts(args.corpus, 2 * args.messages)
    tokenizer, encoded = _encode(args, texts)

    def check(config: Any) -> None:  # before the weights are read
        for protection in settings.values():
            protection.check(config)

    model = load_pretrained(args.model, args.gguf, check)
    kind, size = output_kind(model)
    if kind != "logits":
        raise InvalidArgumentError(f"{args.model}: the token attacks need a language model head")
    reference, observed = encoded[len(encoded) // 2:], encoded[:len(encoded) // 2]
    counts = Counter(token for message in reference for token in message)
    public = model if args.provenance == "public-base" else None
    console = Console(stderr=True)
    found: dict[str, Any] = {"provenance": args.provenance, **run_audit(model, size, tokenizer, args.prompt)}
    with console.status("attacking...") as status:
        def progress(name: str) -> None:
            status.update(f"publishing and attacking setting '{name}'...")

        found["settings"] = attack_settings(model, settings, observed, counts, public=public,
                                            attack_tokens=args.attack_tokens, progress=progress)
        if public is not None:
            status.update(f"fine-tuning a copy for {args.fine_tune_steps} steps and attacking it...")
            tuned = lightly_fine_tuned(model, reference, steps=args.fine_tune_steps)
            found["fine_tuned"] = attack_settings(tuned, {"plain": Protection("private")}, observed, counts,
                                                  public=public, attack_tokens=args.attack_tokens)["plain"]
    report(f"STIP audit of {args.model}", _flat(found), None)
    if args.json is not None:
        from coinfer.sdk.fsutil import atomic_write_json

        atomic_write_json(args.json, found)
    return 0


def _settings(text: str) -> Any:
    from coinfer.cloud.stip.attack_run import parse_settings
    from coinfer.sdk.errors import InvalidArgumentError

    try:
        return parse_settings(text)
    except InvalidArgumentError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _encode(args: argparse.Namespace, texts: list[str]) -> tuple[Any, list[list[int]]]:
    """The model's tokenizer and the corpus messages it encodes to at least one token."""
    from coinfer.sdk.errors import InvalidArgumentError

    tokenizer = _tokenizer(args.model, args.gguf)
    if tokenizer is None:
        raise InvalidArgumentError(f"{args.model}: the token attacks need the model's tokenizer")
    encoded = [ids for ids in (tokenizer(text)["input_ids"] for text in texts) if ids]
    if len(encoded) < 2 or not tokenizer(args.prompt)["input_ids"]:
        raise InvalidArgumentError(f"{args.model}: its tokenizer gives no tokens for the prompt or for "
                                   "at least two corpus messages")
    return tokenizer, encoded


def _flat(found: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in found.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _tokenizer(model_dir: Path, gguf_file: str | None) -> Any:
    """The model's tokenizer when the directory has one (text output is skipped otherwise)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file, local_files_only=True)
    except (OSError, ValueError):
        return None
