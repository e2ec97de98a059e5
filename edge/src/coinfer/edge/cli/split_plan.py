"""``coinfer split plan``: where to cut a graph and how to send what crosses, for a link.

    coinfer split plan --model efficientnet-lite0.onnx --device-profile profiles/pi \\
        --edge-profile profiles/edge --bandwidth 1,10,100 --rtt 20
    coinfer split plan --model efficientnet-lite0.onnx --device-profile p --edge-profile p \\
        --bandwidth 10 --min-cut --json plan.json

The heads' times come from ``--device-profile`` and the tails' from ``--edge-profile``
(``coinfer split profile --side device`` on the device, ``--side edge`` on the edge; one
``--side both`` profile may be given as both), over the prefix cuts both timed. For each
``--bandwidth`` the command prints the option (cut and encoding) of least ``device +
transfer + edge`` time (weighted by ``--device-weight`` and ``--edge-weight``, with
``--edge-queue`` added to the edge) and the best alternatives at other cuts; give
``coinfer split export --cut`` the chosen cut. ``--min-cut`` also runs the DADS min-cut over
every down-set of the graph, which needs per-node times: the operator models of both
profiles (``split profile --operator-model``); it is compared with the best prefix cut
priced by the same per-node model, since measured and predicted times differ.

Why an edge command: the edge holds the model to cut and exports the halves, it receives the
device's profile anyway, and the min-cut needs scipy, which a device install does not bring.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_input_shapes, add_json, count

ENCODINGS = ("float32", "float16", "int8")


def _nonnegative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _bandwidths(text: str) -> list[float]:
    """``--bandwidth 10`` or ``--bandwidth 1,10,100``: megabits per second, each > 0."""
    try:
        values = [float(word) for word in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Mbit/s such as 10 or 1,10,100, got {text!r}") from None
    if not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"bandwidths must be > 0 Mbit/s, got {text}")
    return values


def _encodings(text: str) -> tuple[str, ...]:
    words = tuple(dict.fromkeys(word.strip() for word in text.split(",")))
    unknown = [word for word in words if word not in ENCODINGS]
    if unknown or not words:
        raise argparse.ArgumentTypeError(f"unknown encoding {unknown[0] if unknown else text!r}; "
                                         f"known: {', '.join(ENCODINGS)}")
    return words


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="FILE", help="the ONNX model to cut")
    add_input_shapes(parser)
    parser.add_argument("--device-profile", type=Path, required=True, metavar="DIR",
                        help="the heads' times: coinfer split profile --side device (or both) on the device")
    parser.add_argument("--edge-profile", type=Path, required=True, metavar="DIR",
                        help="the tails' times: coinfer split profile --side edge (or both) on the edge")
    parser.add_argument("--bandwidth", type=_bandwidths, action="append", required=True, metavar="MBPS",
                        help="link bandwidth in Mbit/s; a comma list or repeated for a table over bandwidths")
    parser.add_argument("--rtt", type=_nonnegative, default=0.0, metavar="MS",
                        help="round-trip time added to every request (default 0)")
    parser.add_argument("--encodings", type=_encodings, default=ENCODINGS, metavar="E1,E2,...",
                        help="how the crossing tensors may be sent (default float32,float16,int8)")
    parser.add_argument("--device-weight", type=_nonnegative, default=1.0, metavar="W",
                        help="what a ms of device time (battery) counts against a ms of waiting (default 1)")
    parser.add_argument("--edge-weight", type=_nonnegative, default=1.0, metavar="W",
                        help="what a ms of edge time (a shared server) counts (default 1)")
    parser.add_argument("--edge-queue", type=_nonnegative, default=0.0, metavar="MS",
                        help="the edge's current queueing delay, added when the edge runs a tail (default 0)")
    parser.add_argument("--min-cut", action="store_true",
                        help="also find the best cut over all down-sets (DADS; needs both profiles' operator "
                             "models) and compare it with the best prefix cut")
    parser.add_argument("--top", type=count(100), default=3, metavar="N",
                        help="alternatives shown at other cuts (default 3)")
    add_json(parser, "the plans")


@dataclass(frozen=True)
class _Priced:
    """An option's cut, what crosses it, and its latency on one link."""

    cut: int
    encoding: str
    tensors: tuple[str, ...]
    nbytes: int
    device_ms: float
    transfer_ms: float
    edge_ms: float
    cost: float

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.transfer_ms + self.edge_ms

    def to_dict(self) -> dict[str, Any]:
        return {"cut": self.cut, "encoding": self.encoding, "tensors": list(self.tensors),
                "nbytes": self.nbytes, "device_ms": self.device_ms, "transfer_ms": self.transfer_ms,
                "edge_ms": self.edge_ms, "total_ms": self.total_ms, "cost": self.cost}


def _load_times(args: argparse.Namespace, graph: Any) -> tuple[Any, Any, Any, list[int]]:
    """Both profiles, each checked to hold its side, merged over the cuts both timed."""
    from coinfer.sdk.errors import InvalidArgumentError
    from coinfer.sdk.split.profile import graph_fingerprint, load_profile, merge_sides

    fingerprint = graph_fingerprint(graph)
    device = load_profile(args.device_profile)
    edge = device if args.edge_profile == args.device_profile else load_profile(args.edge_profile)
    for flag, profile, side in (("--device-profile", device, "device"), ("--edge-profile", edge, "edge")):
        path = getattr(args, flag[2:].replace("-", "_"))
        if profile.times.graph_sha256 != fingerprint:
            raise InvalidArgumentError(f"{flag} {path}: a profile of another graph (sha256 "
                                       f"{profile.times.graph_sha256[:12]}..., {args.model.name} "
                                       f"{fingerprint[:12]}...); profile this --model with the same "
                                       "--input-shape")
        if profile.times.side not in (side, "both"):
            raise InvalidArgumentError(f"{flag} {path}: timed the {profile.times.side} side only; "
                                       f"profile with --side {side} or both")
    common = sorted(set(device.times.cuts) & set(edge.times.cuts))
    if not common:
        raise InvalidArgumentError("the device and edge profiles timed no cut in common; profile the same "
                                   "--cuts")

    def only(times: Any) -> Any:
        keep = [times.cuts.index(index) for index in common]
        return replace(times, cuts=tuple(common), device_ms=tuple(times.device_ms[k] for k in keep),
                       edge_ms=tuple(times.edge_ms[k] for k in keep))

    return merge_sides(only(device.times), only(edge.times)), device.operators, edge.operators, common


def _rank(options: Sequence[Any], cuts: Sequence[Any], link: Any, weights: Any,
          edge_queue_ms: float) -> list[_Priced]:
    """Every option priced on ``link``, cheapest first (ties: the earlier cut)."""
    from coinfer.sdk.split.planner import evaluate

    priced = []
    for option in options:
        plan = evaluate(option, link, weights, edge_queue_ms)
        priced.append(_Priced(option.cut, option.encoding, cuts[option.cut].tensors, option.nbytes,
                              plan.device_ms, plan.transfer_ms, plan.edge_ms, plan.cost))
    return sorted(priced, key=lambda p: (p.cost, p.cut))


def _alternatives(ranked: list[_Priced], top: int) -> list[_Priced]:
    """The cheapest option at each of the ``top`` next-cheapest other cuts."""
    seen = {ranked[0].cut}
    found: list[_Priced] = []
    for priced in ranked[1:]:
        if priced.cut not in seen and len(found) < top:
            seen.add(priced.cut)
            found.append(priced)
    return found


class _NodeModel:
    """The cost of any down-set of nodes by the profiles' per-node (operator-model) times, as
    the min-cut counts it: weighted node times plus the transfer of what crosses (the results
    too, in the same encoding, when everything runs on the device). Per-session overheads and
    edge queueing are constant for every cut with two non-empty sides and are left out, so
    the min-cut is never worse than the best prefix cut by this yardstick."""

    def __init__(self, graph: Any, device: Any, edge: Any, weights: Any) -> None:
        self.graph, self.weights = graph, weights
        self.device_ms, self.edge_ms = device.node_ms(graph), edge.node_ms(graph)

    def price(self, cut: Any, encoding: str, link: Any) -> _Priced:
        import numpy as np

        tail = sorted(set(range(len(self.graph.nodes))) - cut.head)
        device = float(np.sum(self.device_ms[sorted(cut.head)]))
        edge = float(np.sum(self.edge_ms[tail]))
        transfer = link.transfer_ms(cut.nbytes(encoding))
        cost = self.weights.device * device + transfer + self.weights.edge * edge
        return _Priced(-1, encoding, cut.tensors, cut.nbytes(encoding), device, transfer, edge, cost)

    def min_cut(self, encodings: Sequence[str], link: Any) -> tuple[_Priced, frozenset[int]]:
        """DADS's cut of least weighted cost over ``encodings`` (``cut``: the prefix cut it is, -1
        if none) and the nodes it runs on the device."""
        from coinfer.sdk.split.mincut import min_cut

        found: list[tuple[_Priced, frozenset[int]]] = []
        for encoding in encodings:
            cut, _ = min_cut(self.graph, self.weights.device * self.device_ms,
                             self.weights.edge * self.edge_ms, link, encoding)
            found.append((self.price(cut, encoding, link), cut.head))
        best, head = min(found, key=lambda pair: pair[0].cost)
        return replace(best, cut=len(head) if head == frozenset(range(len(head))) else -1), head

    def best_prefix(self, cuts: Sequence[Any], encodings: Sequence[str], link: Any) -> _Priced:
        priced = [replace(self.price(cut, encoding, link), cut=index)
                  for index, cut in enumerate(cuts) for encoding in encodings]
        return min(priced, key=lambda p: (p.cost, p.cut))


def _header(weighted: bool) -> str:
    return (f"{'cut':>5} {'encoding':>8} {'bytes':>11} {'device ms':>10} {'transfer ms':>11} {'edge ms':>9} "
            f"{'total ms':>10}" + (f" {'cost':>10}" if weighted else ""))


def _line(priced: _Priced, weighted: bool) -> str:
    return (f"{priced.cut:>5} {priced.encoding:>8} {priced.nbytes:>11,} {priced.device_ms:>10.3f} "
            f"{priced.transfer_ms:>11.3f} {priced.edge_ms:>9.3f} {priced.total_ms:>10.3f}"
            + (f" {priced.cost:>10.3f}" if weighted else ""))


def _tensors(tensors: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(tensors[:limit])
    return shown + (f" and {len(tensors) - limit} more" if len(tensors) > limit else "")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.cli.flags import input_shapes
    from coinfer.sdk.errors import InvalidArgumentError
    from coinfer.sdk.fsutil import atomic_write_json
    from coinfer.sdk.split.graph import SplitGraph
    from coinfer.sdk.split.planner import Link, Weights, cut_options

    graph = SplitGraph.load(args.model, input_shapes(args.input_shape))
    times, device_model, edge_model, common = _load_times(args, graph)
    if args.min_cut and (device_model is None or edge_model is None):
        missing = "--device-profile" if device_model is None else "--edge-profile"
        raise InvalidArgumentError(f"--min-cut needs per-node times: {missing} holds no operator model "
                                   "(coinfer split profile --operator-model)")
    every = graph.cuts()
    options = [replace(option, cut=common[int(option.cut)])
               for option in cut_options([every[i] for i in common], times.device_ms, times.edge_ms,
                                         args.encodings)]
    weights = Weights(device=args.device_weight, edge=args.edge_weight)
    nodes = _NodeModel(graph, device_model, edge_model, weights) if args.min_cut else None
    weighted = (args.device_weight, args.edge_weight) != (1.0, 1.0)  # then the cost is not the total
    bandwidths = list(dict.fromkeys(value for values in args.bandwidth for value in values))

    print(f"{args.model.name}: {len(graph.nodes)} nodes, {len(common)} of {len(every)} prefix cuts profiled; "
          f"heads by {args.device_profile} ({times.threads} thread(s)), tails by {args.edge_profile} "
          f"({times.edge_threads}); rtt {args.rtt:g} ms")
    plans, chosen_at = [], []
    for bandwidth in bandwidths:
        link = Link(bandwidth, args.rtt)
        ranked = _rank(options, every, link, weights, args.edge_queue)
        chosen, others = ranked[0], _alternatives(ranked, args.top)
        chosen_at.append(chosen)
        entry: dict[str, Any] = {"bandwidth_mbps": bandwidth, "rtt_ms": args.rtt, "chosen": chosen.to_dict(),
                                 "alternatives": [other.to_dict() for other in others]}
        where = ("everything on the edge" if chosen.cut == 0 else "everything on the device"
                 if chosen.cut == len(graph.nodes) else
                 f"{chosen.cut} of {len(graph.nodes)} nodes on the device")
        print(f"\nat {bandwidth:g} Mbit/s: cut {chosen.cut} ({where}), {chosen.encoding}: sends "
              f"{_tensors(chosen.tensors)}, {chosen.nbytes:,} bytes per sample")
        print(f"  predicted: device {chosen.device_ms:.3f} + transfer {chosen.transfer_ms:.3f} + edge "
              f"{chosen.edge_ms:.3f} = {chosen.total_ms:.3f} ms")
        print(f"  {_header(weighted)}")
        for priced in (chosen, *others):
            print(f"  {_line(priced, weighted)}")
        if nodes is not None:
            found, head = nodes.min_cut(args.encodings, link)
            best = nodes.best_prefix(every, args.encodings, link)
            gain = 1 - found.cost / best.cost if best.cost > 0 else 0.0
            kind = f"prefix cut {found.cut}" if found.cut >= 0 else "not a prefix cut"
            cost = (lambda p: f", cost {p.cost:.3f}") if weighted else (lambda p: "")
            print(f"  min-cut by per-node times (no session overheads): {len(head)} of {len(graph.nodes)} "
                  f"nodes on the device ({kind}), {found.encoding}, sends {_tensors(found.tensors)}, "
                  f"{found.nbytes:,} bytes: {found.total_ms:.3f} ms{cost(found)}; the best prefix cut by the "
                  f"same times: cut {best.cut} ({best.encoding}) {best.total_ms:.3f} ms{cost(best)}; "
                  f"the min-cut saves {gain:.1%}")
            entry["min_cut"] = found.to_dict() | {"prefix_cut": found.cut if found.cut >= 0 else None,
                                                  "device_nodes": sorted(head)}
            entry["min_cut_best_prefix"] = best.to_dict()
        plans.append(entry)
    if len(bandwidths) > 1:
        print(f"\n{'Mbit/s':>8} {_header(weighted)}")
        for bandwidth, chosen in zip(bandwidths, chosen_at, strict=True):
            print(f"{bandwidth:>8g} {_line(chosen, weighted)}")
    if args.json is not None:
        atomic_write_json(args.json, {
            "model": str(args.model), "device_profile": str(args.device_profile),
            "edge_profile": str(args.edge_profile), "cuts": common, "encodings": list(args.encodings),
            "weights": {"device": args.device_weight, "edge": args.edge_weight},
            "edge_queue_ms": args.edge_queue, "graph_sha256": times.graph_sha256, "plans": plans})
    return 0
