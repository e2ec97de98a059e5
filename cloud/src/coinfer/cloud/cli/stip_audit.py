"""``coinfer stip audit``: what a server, or a user holding pi, can learn; measured on a model.

    coinfer stip audit --model ./my-llama --json audit.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")
    parser.add_argument("--prompt", default="The weather today is")
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    from coinfer.cloud.stip.audit_run import run_audit
    from coinfer.cloud.stip.publish import load_pretrained, output_kind
    from coinfer.sdk.cli.report import report

    model = load_pretrained(args.model, args.gguf)
    kind, size = output_kind(model)
    tokenizer = _tokenizer(args.model, args.gguf) if kind == "logits" else None
    report(f"STIP audit of {args.model}", run_audit(model, size, tokenizer, args.prompt), args.json)
    return 0


def _tokenizer(model_dir: Path, gguf_file: str | None) -> Any:
    """The model's tokenizer when the directory has one (text output is skipped otherwise)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file, local_files_only=True)
    except (OSError, ValueError):
        return None
