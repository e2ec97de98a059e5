"""``coinfer stip publish``: key and transform a model; write the server and user bundles.

    coinfer stip publish --model ./my-llama --out ./published --instances 3
    coinfer stip serve --bundle ./published/server          # on the cloud
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
    parser.add_argument("--instances", type=positive(int), default=1, help="independently keyed copies")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from coinfer.cloud.stip.publish import publish

    check_output(args)  # before minutes of keying and transforming
    with Console(stderr=True).status("keying and transforming the model..."):
        instances = publish(args.model, args.out, instances=args.instances, overwrite=args.overwrite,
                            gguf_file=args.gguf)
    for instance in instances:
        print(f"server bundle:  {instance.server}   (give to the model server)")
        print(f"user bundle:    {instance.user}   (give to registered data owners)")
        print(f"developer keys: {instance.developer_keys}   (keep; never share)")
    return 0
