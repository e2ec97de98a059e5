"""``coinfer split export``: cut an ONNX model and write its device and edge halves.

    coinfer split export --model efficientnet-lite0.onnx --cut 43 --encoding int8 --out out/split
    coinfer split export --model detector.onnx --cut p2o.Add.43 --input-shape x=1,3,224,384 --out out/ocr

``--cut`` is a prefix cut's index (0 runs everything on the edge, the number of nodes
everything on the device), or a tensor name: the smallest cut whose head makes it.
``OUT/device`` goes to the device (``coinfer split run``), ``OUT/edge`` to the edge
(``coinfer split serve``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coinfer.sdk.cli.flags import add_output, check_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="FILE", help="the ONNX model to cut")
    parser.add_argument("--cut", required=True,
                        help="a prefix cut's index, or a tensor name (the smallest cut that makes it)")
    parser.add_argument("--encoding", choices=("float32", "float16", "int8"), default="float32",
                        help="how the tensors crossing the cut are sent (default float32)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="fix a symbolic input dimension (a name keeps it symbolic); repeatable")
    add_output(parser, "the device and edge bundles")


def _shapes(values: list[str]) -> dict[str, list[int | str]]:
    from coinfer.sdk.errors import InvalidArgumentError

    shapes: dict[str, list[int | str]] = {}
    for value in values:
        name, _, dims = value.partition("=")
        if not name or not dims:
            raise InvalidArgumentError(f"--input-shape {value!r}: expected NAME=D0,D1,...")
        shapes[name] = [int(d) if d.isdigit() else d for d in dims.split(",")]
    return shapes


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.errors import InvalidArgumentError
    from coinfer.sdk.split.bundle import export_split
    from coinfer.sdk.split.graph import SplitGraph

    check_output(args)
    graph = SplitGraph.load(args.model, _shapes(args.input_shape) or None)
    if args.cut.isdigit():
        cuts = graph.cuts()
        if int(args.cut) >= len(cuts):
            raise InvalidArgumentError(f"--cut {args.cut}: {args.model} has prefix cuts 0 to {len(cuts) - 1}")
        cut = cuts[int(args.cut)]
    else:
        cut = graph.cut_after(args.cut)
    device, edge = export_split(graph, cut, args.out, args.encoding, overwrite=args.overwrite)
    print(f"cut: {len(cut.head)} of {len(graph.nodes)} nodes on the device; {', '.join(cut.tensors)} cross "
          f"({cut.nbytes(args.encoding)} bytes per sample as {args.encoding})")
    print(f"device bundle: {device.artifact.path}   (coinfer split run --bundle ...)")
    print(f"edge bundle:   {edge.artifact.path}   (coinfer split serve --bundle ...)")
    return 0
