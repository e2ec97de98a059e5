"""``coinfer split run``: run a split's head here and its tail on the edge, for a batch of inputs.

    coinfer split run --bundle out/split/device --url http://127.0.0.1:8400 --inputs batch.npy

``--inputs`` is a ``.npy`` array (never unpickled) holding the model's input batch, already
preprocessed; the command prints each sample's top output and what the call cost.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.sdk.cli.flags import add_json, count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR",
                        help="the device side of coinfer split export (OUT/device)")
    parser.add_argument("--url", default="http://127.0.0.1:8400", help="the edge's split service")
    parser.add_argument("--inputs", type=Path, required=True, metavar="FILE", help="the input batch (.npy)")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="file holding the service's bearer token (default: $COINFER_TOKEN)")
    parser.add_argument("--threads", type=count(256), default=1, help="ONNX Runtime threads for the head")
    add_json(parser, "the outputs' top classes and the call's costs")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from coinfer.device.split import SplitClient
    from coinfer.sdk.cli.report import report
    from coinfer.sdk.errors import InputNotFoundError, InvalidArgumentError
    from coinfer.sdk.service import client_token

    if not args.inputs.is_file():
        raise InputNotFoundError(f"{args.inputs}: no such input file")
    try:
        inputs = np.load(args.inputs, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(f"{args.inputs}: not a readable .npy array: {error}") from error
    client = SplitClient.create_from_bundle(args.bundle, args.url, client_token(args.token_file),
                                            threads=args.threads)
    outputs = client.infer(inputs)
    found: dict[str, object] = {name: np.asarray(value).reshape(len(value), -1).argmax(1).tolist()
                                for name, value in outputs.items()}
    stats = client.last
    assert stats is not None  # set by every infer()
    found |= {"batch": stats.batch, "head_ms": stats.head_ms, "tail_ms": stats.tail_ms,
              "round_trip_ms": stats.round_trip_ms, "bytes_sent": stats.bytes_sent,
              "bytes_received": stats.bytes_received}
    if client.spec.encoding == "entropy":  # latent values beyond the tables, sent as their ends
        found["clipped"] = stats.clipped
    report(f"split run of {args.bundle}", found, args.json)
    return 0
