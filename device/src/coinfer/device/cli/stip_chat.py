"""``coinfer stip chat``: generate text through a STIP server as the data owner.

    COINFER_TOKEN=... coinfer stip chat --bundle ./published/user --url http://127.0.0.1:8000

Prompts come from ``--prompt`` or, one a line, from standard input. The prompt is
tokenised, embedded and permuted here; the server only sees permuted features.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from coinfer.sdk.cli.flags import positive
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.service import TOKEN_ENV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR",
                        help="the user bundle (OUT/user of coinfer stip publish)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the STIP server")
    parser.add_argument("--prompt", help="one prompt; without it, read prompts from standard input")
    parser.add_argument("--max-new-tokens", type=positive(int), default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="seed of the sampler (default: fresh entropy)")


def run(args: argparse.Namespace) -> int:
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
