"""``coinfer split profile``: time both halves of a graph's prefix cuts here, on ONNX Runtime.

    coinfer split profile --model efficientnet-lite0.onnx --side device --out profiles/pi
    coinfer split profile --model efficientnet-lite0.onnx --side edge --operator-model --out profiles/edge
    coinfer split profile --model detector.onnx --input-shape x=1,3,224,384 --cuts single --out profiles/ocr

Why a command of the device distribution: the heads must be timed on the device that will
run them (Neurosurgeon's point), and a device install has no edge distribution; the edge
distribution depends on this one, so the edge times its tails with the same command. The
device side (``--side device``) times every head and runs no tail; the edge side
(``--side edge``) runs each head once, untimed, to feed its tail, and times the tails;
``--side both`` times both here. ``coinfer split plan`` joins a device's profile with an
edge's. ``--operator-model`` also fits Neurosurgeon's per-operator regression on ONNX
Runtime's kernel trace of the whole model, which gives the per-node times ``split plan
--min-cut`` needs. The inputs are random (timing does not depend on the values); fix
symbolic dimensions with ``--input-shape`` (a symbolic leading batch dimension is 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_input_shapes, add_output, add_quiet, check_output, count

#: The cut selections ``--cuts`` names besides a list of indices.
CUT_SETS = ("all", "single")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coinfer.sdk.split.profile import MAX_REPEATS, MAX_THREADS

    parser.add_argument("--model", type=Path, required=True, metavar="FILE", help="the ONNX model to profile")
    add_input_shapes(parser)
    parser.add_argument("--side", choices=("device", "edge", "both"), default="both",
                        help="which halves to time here: the heads (run this on the device), the tails "
                             "(on the edge) or both (default both)")
    parser.add_argument("--threads", type=count(MAX_THREADS), default=1,
                        help="ONNX Runtime intra-op threads, as the side will run (default 1)")
    parser.add_argument("--repeats", type=count(MAX_REPEATS), default=5,
                        help="timed runs per half; the median is kept (default 5)")
    parser.add_argument("--cuts", default="all", metavar="all|single|I,J,...",
                        help="the prefix cuts to time: all, single (those where one tensor crosses) or "
                             "a list of indices (default all)")
    parser.add_argument("--operator-model", action="store_true",
                        help="also fit the per-operator regression (needed by split plan --min-cut)")
    add_quiet(parser)
    add_output(parser, "the profile (an artifact directory: manifest.json and profile.json)")


def chosen_cuts(text: str, cuts: list[Any]) -> list[int] | None:
    """The indices ``--cuts`` names (None: all of them)."""
    from coinfer.sdk.errors import InvalidArgumentError

    if text == "all":
        return None
    if text == "single":
        return [index for index, cut in enumerate(cuts) if len(cut.tensors) == 1]
    try:
        indices = [int(word) for word in text.split(",")]
    except ValueError:
        raise InvalidArgumentError(f"--cuts {text!r}: expected {' or '.join(CUT_SETS)} or indices such as "
                                   "0,10,20") from None
    bad = [index for index in indices if not 0 <= index < len(cuts)]
    if bad:
        raise InvalidArgumentError(f"--cuts {text}: the graph has prefix cuts 0 to {len(cuts) - 1}, "
                                   f"not {bad[0]}")
    return indices


def random_inputs(graph: Any) -> dict[str, Any]:
    """One random sample per graph input, of its declared shape and type: what a prefix
    takes does not depend on the values. A symbolic leading (batch) dimension is 1."""
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    from coinfer.sdk.errors import InvalidArgumentError

    rng = np.random.default_rng(0)
    feeds = {}
    for value in graph.model.graph.input:
        if value.name not in graph.inputs:
            continue
        tensor_type = value.type.tensor_type
        shape = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif axis == 0:
                shape.append(1)
            else:
                raise InvalidArgumentError(f"input {value.name!r} has a symbolic dimension "
                                           f"{dim.dim_param!r} at axis {axis}; fix it with --input-shape "
                                           f"{value.name}=D0,D1,...")
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype)
    return feeds


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from coinfer.sdk.cli.flags import input_shapes
    from coinfer.sdk.cli.report import report
    from coinfer.sdk.split.graph import SplitGraph
    from coinfer.sdk.split.profile import fit_operator_model, measure_cuts, profile_nodes, save_profile

    check_output(args)
    graph = SplitGraph.load(args.model, input_shapes(args.input_shape))
    feeds = random_inputs(graph)  # first: it names the flag that fixes a symbolic dimension
    every = graph.cuts()
    indices = chosen_cuts(args.cuts, every)
    total = len(every) if indices is None else len(indices)
    with tqdm(total=total, desc=f"split profile ({args.side})", unit="cut", disable=args.quiet) as bar:
        times = measure_cuts(graph, feeds, threads=args.threads, repeats=args.repeats, cuts=indices,
                             side=args.side, progress=lambda done, _: bar.update(done - bar.n))
    operators = None
    if args.operator_model:
        nodes = profile_nodes(graph, feeds, threads=args.threads, repeats=args.repeats)
        operators = fit_operator_model(graph, nodes, times)
    saved = save_profile(args.out, times, operators, overwrite=args.overwrite)

    metrics: dict[str, object] = {"nodes": len(graph.nodes), "cuts timed": len(times.cuts),
                                  "side": times.side, "threads": times.threads, "repeats": times.repeats,
                                  "whole model ms": round(times.whole_ms, 4)}
    for side, values in (("device", times.device_ms), ("edge", times.edge_ms)):
        if times.side in (side, "both"):
            ran = [ms for ms in values if ms > 0]
            if ran:
                label = "head" if side == "device" else "tail"
                metrics[f"{label} ms (min / max)"] = f"{min(ran):.4g} / {max(ran):.4g}"
    if operators is not None:
        predicted = operators.predict_whole(graph)
        metrics["operator types fitted"] = len(operators.coefficients)
        metrics["session overhead ms"] = round(operators.session_ms, 4)
        metrics["whole model ms, predicted"] = round(predicted, 4)
    metrics["profile"] = str(saved)
    report(f"coinfer split profile of {args.model.name}", metrics)
    return 0
