"""``coinfer stip publish``: key and transform a model; write the server and user bundles.

    coinfer stip publish --model ./my-llama --provenance private --out ./published --instances 3
    coinfer stip serve --bundle ./published/server          # on the cloud

``--provenance`` is required: weights a server can download (``public-base``) are refused,
because the server reads the tokens back by matching against them (``coinfer stip audit``
measures it). ``--local-blocks K`` and ``--rotate`` are device-side mitigations for private
weights (LLaMA family); the audit reports what each still leaks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.sdk.cli.flags import check_output, positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--gguf", metavar="FILE", help="load this GGUF file inside --model")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where to write the bundles (one folder per instance when --instances > 1)")
    parser.add_argument("--provenance", choices=("private", "public-base"), required=True,
                        help="private: weights no server can obtain; public-base: weights anyone can "
                             "download, or a light fine-tune of them (refused: see docs/stip.md)")
    parser.add_argument("--local-blocks", type=_block_count, default=0, metavar="K",
                        help="decoder blocks the data owner runs before sending (LLaMA family)")
    parser.add_argument("--rotate", action="store_true",
                        help="rotate the residual stream by a secret orthogonal matrix (RMSNorm models)")
    parser.add_argument("--instances", type=positive(int), default=1, help="independently keyed copies")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _block_count(text: str) -> int:
    """``--local-blocks``: 0 (none) up to 64, more than any supported model has."""
    value = int(text)
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be in [0, 64], got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from coinfer.cloud.stip.publish import Protection, publish

    protection = Protection(args.provenance, local_blocks=args.local_blocks, rotate=args.rotate)
    check_output(args)  # before minutes of keying and transforming
    with Console(stderr=True).status("keying and transforming the model..."):
        instances = publish(args.model, args.out, protection=protection, instances=args.instances,
                            overwrite=args.overwrite, gguf_file=args.gguf)
    for instance in instances:
        print(f"server bundle:  {instance.server}   (give to the model server)")
        print(f"user bundle:    {instance.user}   (give to registered data owners)")
        print(f"developer keys: {instance.developer_keys}   (keep; never share)")
    return 0
