"""How long each half of every cut takes, measured on the runtime that runs it, and predicted.

Why measure prefixes rather than add per-layer times: ONNX Runtime fuses kernels (a Conv
with its Clip and the residual Add, in a blocked memory layout), and each half of a cut is
its own session with its own layout conversions and call overhead, so the time of a head
is not the sum of its layers' times in the whole network. :func:`measure_cuts` therefore
builds both halves of every cut as ONNX Runtime sessions and times them, feeding each tail
its head's real outputs. A caller runs it twice: in the quota-limited device process (the
head times, ``device_ms``) and on the edge server (the tail times, ``edge_ms``), then joins
the two with :func:`merge_sides`; in one process it measures both sides on one machine.

Measuring every cut takes minutes on a slow device. Neurosurgeon's answer is a regression
per operator type: :func:`profile_nodes` reads ONNX Runtime's own profiler trace of one
whole-model run (per-kernel microseconds), :func:`fit_operator_model` fits
``ms = a + b * flops + c * bytes`` per operator type from it, and the fitted
:class:`OperatorModel` predicts every cut of this graph (or another one) on that machine,
plus a fixed per-session overhead taken from measured prefix times when there are some.

Only ONNX Runtime on the CPU is measured so far (``runtime`` records it, for LiteRT
profiles to come). Profiles are artifacts (capability ``split``, kind ``profile``) holding
JSON only, tied to their graph by :func:`graph_fingerprint`. Only numpy is imported with this module;
``onnx`` and ``onnxruntime`` when something is measured. On ``y = relu(x) + sigmoid(x)``:

>>> import tempfile
>>> from pathlib import Path
>>> from onnx import TensorProto, helper
>>> from coinfer.sdk.split.graph import SplitGraph
>>> nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
...          helper.make_node("Sigmoid", ["x"], ["b"], name="sigmoid"),
...          helper.make_node("Add", ["a", "b"], ["y"], name="add")]
>>> value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 64])
>>> graph = SplitGraph(helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")])))
>>> feeds = {"x": np.ones((1, 64), np.float32)}
>>> times = measure_cuts(graph, feeds, repeats=3)
>>> times.cuts, times.device_ms[0], times.edge_ms[-1]
((0, 1, 2, 3), 0.0, 0.0)
>>> all(ms > 0 for ms in times.device_ms[1:] + times.edge_ms[:-1]) and times.whole_ms > 0
True
>>> profiled = profile_nodes(graph, feeds, repeats=3)
>>> sorted(graph.nodes[index].name for index in profiled.node_ms)
['add', 'relu', 'sigmoid']
>>> operators = fit_operator_model(graph, profiled, times)
>>> device_ms, edge_ms = operators.predict_cut(graph, graph.cuts()[1])
>>> device_ms > 0 and edge_ms > 0
True
>>> work = tempfile.TemporaryDirectory()
>>> saved = save_profile(Path(work.name) / "profile", times, operators)
>>> load_profile(saved, graph) == Profile(times, operators)
True
>>> work.cleanup()
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.artifact import ArtifactError, Manifest, load_artifact, save_artifact
from coinfer.sdk.errors import InvalidArgumentError, one_line
from coinfer.sdk.frameworks import import_onnxruntime
from coinfer.sdk.split.graph import Cut, SplitGraph, SplitGraphError

RUNTIME = "onnxruntime"
#: How a :class:`CutTimes` came to be: both sides timed in one process, a device's heads
#: joined with an edge's tails, or an operator model's prediction.
METHODS = ("measured", "merged", "predicted")
#: Which halves a :class:`CutTimes` timed: the heads (on the device), the tails (on the
#: edge), or both; the halves not timed hold 0 and must come from another profile.
SIDES = ("both", "device", "edge")
CAPABILITY, KIND, PROFILE_FILE = "split", "profile", "profile.json"
#: Bounds on the work one call may ask for (each cut builds two sessions and runs each
#: ``warmup + repeats`` times).
MAX_REPEATS, MAX_WARMUP, MAX_THREADS, MAX_CUTS = 1000, 100, 256, 2048
#: An operator type seen in fewer kernels than this shares the all-types fallback fit: three
#: coefficients need at least three observations.
MIN_SAMPLES = 3
#: A profile file is small; refuse to parse anything larger.
MAX_PROFILE_BYTES = 16 * 1024 * 1024
#: Operators that cost one multiply-add per output element per weight of a filter.
_FILTERED = ("Conv", "ConvTranspose")
_WINDOWED = ("MaxPool", "AveragePool", "LpPool")
_GLOBAL = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@dataclass(frozen=True)
class CutTimes:
    """Median milliseconds of the head (``device_ms``) and the tail (``edge_ms``) of each
    measured cut; ``cuts`` are indices into :meth:`SplitGraph.cuts`, and an empty side costs 0.

    ``whole_ms`` is the whole model, timed where ``device_ms`` was. ``threads`` and
    ``edge_threads`` are the intra-op threads of each side (equal unless merged); ``batch``
    is the leading size of the first input the times were taken with; ``repeats`` is 0 for
    a prediction. ``graph_sha256`` is :func:`graph_fingerprint` of the graph measured.
    ``side`` says which halves were timed (:data:`SIDES`): a device profiles only its heads
    and an edge only its tails, and :func:`merge_sides` refuses to take a half from a
    profile that did not time it (its zeros are not times).
    """

    graph_sha256: str
    cuts: tuple[int, ...]
    device_ms: tuple[float, ...]
    edge_ms: tuple[float, ...]
    whole_ms: float
    threads: int
    edge_threads: int
    batch: int
    repeats: int
    runtime: str = RUNTIME
    method: str = "measured"
    side: str = "both"

    def __post_init__(self) -> None:
        if not len(self.cuts) == len(self.device_ms) == len(self.edge_ms) > 0:
            raise InvalidArgumentError(f"cuts, device_ms and edge_ms must be non-empty and of one length, "
                                       f"got {len(self.cuts)}, {len(self.device_ms)} and {len(self.edge_ms)}")
        if any(b <= a for a, b in zip(self.cuts, self.cuts[1:], strict=False)) or self.cuts[0] < 0:
            raise InvalidArgumentError(f"cuts must be increasing indices >= 0, got {_short(list(self.cuts))}")
        for ms in (*self.device_ms, *self.edge_ms, self.whole_ms):
            if not math.isfinite(ms) or ms < 0:
                raise InvalidArgumentError(f"times must be finite milliseconds >= 0, got {ms}")
        if self.method not in METHODS:
            raise InvalidArgumentError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.side not in SIDES:
            raise InvalidArgumentError(f"unknown side {self.side!r}; known: {', '.join(SIDES)}")
        if min(self.threads, self.edge_threads, self.batch) < 1 or self.repeats < 0:
            raise InvalidArgumentError(f"threads, edge_threads and batch must be >= 1 and repeats >= 0, got "
                                       f"{self.threads}, {self.edge_threads}, {self.batch}, {self.repeats}")

    def at(self, index: int) -> tuple[float, float]:
        """``(device_ms, edge_ms)`` of cut ``index`` of :meth:`SplitGraph.cuts`."""
        if index not in self.cuts:
            raise InvalidArgumentError(f"cut {index} was not measured; measured: {_span(self.cuts)}")
        position = self.cuts.index(index)
        return self.device_ms[position], self.edge_ms[position]

    def to_dict(self) -> dict[str, Any]:
        return {"graph_sha256": self.graph_sha256, "runtime": self.runtime, "method": self.method,
                "threads": self.threads, "edge_threads": self.edge_threads, "batch": self.batch,
                "repeats": self.repeats, "whole_ms": self.whole_ms, "cuts": list(self.cuts),
                "device_ms": list(self.device_ms), "edge_ms": list(self.edge_ms), "side": self.side}

    @classmethod
    def from_dict(cls, data: Any) -> CutTimes:
        record = _Record(data, "cut times")
        return cls(graph_sha256=record.text("graph_sha256"), cuts=tuple(record.integers("cuts")),
                   device_ms=tuple(record.numbers("device_ms")), edge_ms=tuple(record.numbers("edge_ms")),
                   whole_ms=record.number("whole_ms"), threads=record.integer("threads"),
                   edge_threads=record.integer("edge_threads"), batch=record.integer("batch"),
                   repeats=record.integer("repeats"), runtime=record.text("runtime"),
                   method=record.text("method"),
                   side=record.text("side") if "side" in record.data else "both")  # older profiles


@dataclass(frozen=True)
class NodeTimes:
    """Per-kernel medians from ONNX Runtime's profiler on one whole-model run.

    ``node_ms`` maps an index into :attr:`SplitGraph.nodes` to the milliseconds of the
    kernel that makes its output: a fused kernel (Conv + Clip) lands on the last node it
    covers and the nodes it absorbed have no entry. ``other_ms`` is kernels of no graph node
    (layout reorders); ``run_ms`` is ONNX Runtime's own time for the whole run.
    """

    graph_sha256: str
    node_ms: dict[int, float]
    other_ms: float
    run_ms: float
    threads: int
    batch: int
    repeats: int
    runtime: str = RUNTIME


@dataclass(frozen=True)
class OperatorModel:
    """Neurosurgeon's per-operator-type regression ``ms = a + b * flops + c * bytes``
    (coefficients >= 0; flops and bytes per sample, times for ``batch`` samples), fitted on
    one machine with ``threads`` intra-op threads.

    ``coefficients`` maps an operator type to ``(a, b, c)``; a type seen in fewer than
    :data:`MIN_SAMPLES` kernels, or never seen, uses ``fallback`` (one fit over every
    kernel). ``session_ms`` is the fixed cost of running one session (a call, its layout
    conversions), added once per non-empty side.
    """

    coefficients: dict[str, tuple[float, float, float]]
    fallback: tuple[float, float, float]
    session_ms: float
    threads: int
    batch: int
    runtime: str = RUNTIME
    samples: dict[str, int] = field(default_factory=dict)

    def node_ms(self, graph: SplitGraph) -> np.ndarray:
        """Predicted milliseconds of each node of ``graph.nodes`` (without ``session_ms``)."""
        types, features = node_features(graph)
        coefficients = np.array([self.coefficients.get(op_type, self.fallback) for op_type in types])
        return np.asarray(coefficients[:, 0] + (coefficients[:, 1:] * features).sum(axis=1), dtype=np.float64)

    def predict_cut(self, graph: SplitGraph, cut: Cut) -> tuple[float, float]:
        """``(head_ms, tail_ms)`` of ``cut`` on the machine this model was fitted on; an
        empty side costs 0. Pair a device's model with an edge's in :func:`predict_cuts`."""
        per_node = self.node_ms(graph)
        return _predict(self, self, per_node, per_node, graph, cut)

    def predict_whole(self, graph: SplitGraph) -> float:
        """The whole model as one session."""
        return float(self.node_ms(graph).sum()) + self.session_ms

    def to_dict(self) -> dict[str, Any]:
        return {"coefficients": {op_type: list(abc) for op_type, abc in sorted(self.coefficients.items())},
                "fallback": list(self.fallback), "session_ms": self.session_ms, "threads": self.threads,
                "batch": self.batch, "runtime": self.runtime, "samples": dict(sorted(self.samples.items()))}

    @classmethod
    def from_dict(cls, data: Any) -> OperatorModel:
        record = _Record(data, "operator model")
        table = record.mapping("coefficients")
        coefficients = {str(op_type): _Record(table, "coefficients").triple(op_type) for op_type in table}
        counts = record.mapping("samples")
        return cls(coefficients=coefficients, fallback=record.triple("fallback"),
                   session_ms=record.number("session_ms"), threads=record.integer("threads"),
                   batch=record.integer("batch"), runtime=record.text("runtime"),
                   samples={str(op_type): _Record(counts, "samples").integer(op_type) for op_type in counts})


@dataclass(frozen=True)
class Profile:
    """What a profile artifact holds: the cut times, and the operator model if one was saved."""

    times: CutTimes
    operators: OperatorModel | None = None


def graph_fingerprint(graph: SplitGraph) -> str:
    """sha256 of the graph's nodes, weights, inputs, outputs and opsets: what a profile is of.

    Inferred shapes are left out, so another ONNX version's shape inference does not change it.
    """
    import onnx

    body = onnx.GraphProto()
    body.CopyFrom(graph.model.graph)
    del body.value_info[:]
    digest = hashlib.sha256(body.SerializeToString(deterministic=True))
    for opset in graph.model.opset_import:
        digest.update(f"\0{opset.domain}:{opset.version}".encode())
    return digest.hexdigest()


def measure_cuts(graph: SplitGraph, inputs: Mapping[str, np.ndarray], *, threads: int = 1, repeats: int = 5,
                 warmup: int = 1, cuts: Iterable[int] | None = None,
                 progress: Callable[[int, int], None] | None = None, side: str = "both") -> CutTimes:
    """Time the head and the tail of every prefix cut (or the cut indices ``cuts``) and the
    whole model, each as its own ONNX Runtime session on the CPU with ``threads`` intra-op
    threads and the default (all) graph optimisations, as deployed; the median of
    ``repeats`` runs after ``warmup`` unrecorded ones.

    ``progress(done, total)`` is called after each cut. Run it in the device process for the
    heads (``side="device"``: tails are not run) and on the edge for the tails
    (``side="edge"``: each head runs once, untimed, to make its tail's inputs), and join the
    two with :func:`merge_sides`; the halves not timed are 0.
    """
    _check_counts(threads, repeats, warmup)
    if side not in SIDES:
        raise InvalidArgumentError(f"unknown side {side!r}; known: {', '.join(SIDES)}")
    feeds, batch = _check_inputs(graph, inputs)
    every = graph.cuts()
    chosen = _check_cuts(cuts, len(every))
    whole_ms, _ = _time(_session(graph.model, threads, "the whole graph"), feeds, repeats, warmup)
    device_ms, edge_ms = [], []
    for done, index in enumerate(chosen, 1):
        head, tail = graph.extract(every[index])
        available = dict(feeds)
        head_ms = tail_ms = 0.0
        if head is not None:
            session = _session(head, threads, f"the head of cut {index}")
            if side == "edge":
                _, made = _time(session, available, 1, 0)
            else:
                head_ms, made = _time(session, available, repeats, warmup)
            available.update(made)
        if tail is not None and side != "device":
            session = _session(tail, threads, f"the tail of cut {index}")
            tail_ms, _ = _time(session, available, repeats, warmup)
        device_ms.append(head_ms)
        edge_ms.append(tail_ms)
        if progress is not None:
            progress(done, len(chosen))
    return CutTimes(graph_fingerprint(graph), tuple(chosen), tuple(device_ms), tuple(edge_ms), whole_ms,
                    threads, threads, batch, repeats, side=side)


def merge_sides(device: CutTimes, edge: CutTimes) -> CutTimes:
    """The heads as the device timed them and the tails as the edge timed them: one profile.

    Both must be of one graph, the same cuts and batch, and each must have timed its half
    (``side``); ``whole_ms`` stays the device's.
    """
    for times, wanted in ((device, "device"), (edge, "edge")):
        if times.side not in (wanted, "both"):
            raise InvalidArgumentError(f"the {wanted} times were taken on the {times.side} side only; "
                                       f"profile the {wanted} side (side={wanted!r} or 'both')")
    for name in ("graph_sha256", "cuts", "batch", "runtime"):
        ours, theirs = getattr(device, name), getattr(edge, name)
        if ours != theirs:
            raise InvalidArgumentError(f"the device and edge times differ in {name} ({_short(ours)} vs "
                                       f"{_short(theirs)}); measure the same graph and cuts on both")
    return CutTimes(device.graph_sha256, device.cuts, device.device_ms, edge.edge_ms, device.whole_ms,
                    device.threads, edge.edge_threads, device.batch, min(device.repeats, edge.repeats),
                    device.runtime, "merged", "both")


def profile_nodes(graph: SplitGraph, inputs: Mapping[str, np.ndarray], *, threads: int = 1, repeats: int = 5,
                  warmup: int = 1) -> NodeTimes:
    """Run the whole model under ONNX Runtime's profiler and take each kernel's median time.

    A kernel is matched to the graph node whose name, or whose output tensor's name, its
    own name is or starts with (ONNX Runtime names a fused kernel after its output).
    """
    _check_counts(threads, repeats, warmup)
    feeds, batch = _check_inputs(graph, inputs)
    with tempfile.TemporaryDirectory(prefix="coinfer-profile-") as work:
        session = _session(graph.model, threads, "the whole graph", profile_prefix=str(Path(work) / "ort"))
        _time(session, feeds, repeats, warmup)
        trace = Path(session.end_profiling())
        try:
            events = json.loads(trace.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SplitGraphError(f"{trace}: unreadable ONNX Runtime trace: {one_line(error)}") from error
    runs: list[float] = []
    kernels: dict[str, list[float]] = {}
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or not isinstance(event.get("dur"), int | float):
            continue
        name, ms = str(event.get("name", "")), event["dur"] / 1e3  # the trace is in microseconds
        if event.get("cat") == "Session" and name == "model_run":
            runs.append(ms)
        elif event.get("cat") == "Node" and name.endswith("_kernel_time"):
            kernels.setdefault(name.removesuffix("_kernel_time"), []).append(ms)
    if len(runs) != warmup + repeats:
        raise SplitGraphError(f"ONNX Runtime's trace holds {len(runs)} runs, expected {warmup + repeats}")
    owners = {name: index for index, node in enumerate(graph.nodes) for name in node.output if name}
    owners.update({node.name: index for index, node in enumerate(graph.nodes) if node.name})
    node_ms: dict[int, float] = {}
    other_ms = 0.0
    for name, values in kernels.items():
        # Once a run: the median of the recorded runs; inside a loop: its mean total a run.
        ms = float(np.median(values[warmup:])) if len(values) == len(runs) else sum(values) / len(runs)
        owner = _owner(name, owners)
        if owner is None:
            other_ms += ms
        else:
            node_ms[owner] = node_ms.get(owner, 0.0) + ms
    return NodeTimes(graph_fingerprint(graph), dict(sorted(node_ms.items())), other_ms,
                     float(np.median(runs[warmup:])), threads, batch, repeats)


def node_features(graph: SplitGraph) -> tuple[list[str], np.ndarray]:
    """Each node's operator type, and its (flops, bytes) per sample: ``2 x`` multiply-adds
    for Conv, ConvTranspose, Gemm and MatMul, elements read for pools and reductions,
    elements written for everything else; bytes of every input (weights too) and output,
    since memory-bound kernels (depthwise convolutions, element-wise ops) cost what they move.
    """
    import onnx

    shapes = _shapes(graph)

    def shape(name: str) -> tuple[tuple[int, ...], int]:
        if name not in shapes:
            raise SplitGraphError(f"shape inference gave no shape for {name!r}; fix the input shapes "
                                  "(SplitGraph.load(path, input_shapes=...))")
        return shapes[name]

    types, rows = [], []
    for node in graph.nodes:
        inputs = [shape(name) for name in node.input if name]
        outputs = [shape(name) for name in node.output if name]
        written = sum(math.prod(dims) for dims, _ in outputs)
        attributes = {item.name: onnx.helper.get_attribute_value(item) for item in node.attribute}
        if node.op_type in _FILTERED:  # weights (M, C/group, k...): each output reads C/group * k... of them
            sites = written if node.op_type == "Conv" else math.prod(inputs[0][0])  # transposed: per input
            flops = 2 * sites * math.prod(inputs[1][0][1:])
        elif node.op_type in ("Gemm", "MatMul"):
            first = inputs[0][0]
            depth = first[0] if attributes.get("transA", 0) else (first[-1] if first else 1)
            flops = 2 * written * depth
        elif node.op_type in _WINDOWED:
            flops = written * math.prod(attributes.get("kernel_shape", [1]))
        elif node.op_type in _GLOBAL or node.op_type.startswith("Reduce"):
            flops = math.prod(inputs[0][0])
        else:
            flops = written
        moved = sum(math.prod(dims) * itemsize for dims, itemsize in (*inputs, *outputs))
        types.append(node.op_type)
        rows.append((float(flops), float(moved)))
    return types, np.array(rows, dtype=np.float64).reshape(-1, 2)


def fit_operator_model(graph: SplitGraph, nodes: NodeTimes, times: CutTimes | None = None) -> OperatorModel:
    """Fit the per-operator-type regression to ``nodes``; with ``times`` measured on the same
    machine, the per-session overhead is the median gap between measured and predicted heads
    (tails, when only the tails were timed; else ONNX Runtime's run time less its kernels').

    A fused kernel's time is one observation of the sum over the nodes it covers, so fusion
    shows as a cheap absorbed type (Clip) rather than as noise in the other types' fits.
    """
    fingerprint = graph_fingerprint(graph)
    if nodes.graph_sha256 != fingerprint:
        raise InvalidArgumentError("the node times are of another graph; run profile_nodes on this one")
    if not nodes.node_ms:
        raise InvalidArgumentError("no kernel of the trace matched a node of the graph; nothing to fit")
    if times is not None:
        if times.graph_sha256 != fingerprint:
            raise InvalidArgumentError("the cut times are of another graph; run measure_cuts on this one")
        if times.method == "predicted" or (times.threads, times.batch) != (nodes.threads, nodes.batch):
            raise InvalidArgumentError(f"the cut times ({times.method}, {times.threads} threads, batch "
                                       f"{times.batch}) were not measured like the node times "
                                       f"({nodes.threads} threads, batch {nodes.batch})")
    types, features = node_features(graph)
    groups = _kernel_groups(graph, nodes.node_ms)
    target = np.array([ms for _, ms in groups])
    seen: dict[str, int] = {}
    for members, _ in groups:
        for op_type in {types[index] for index in members}:
            seen[op_type] = seen.get(op_type, 0) + 1
    own = sorted(op_type for op_type, count in seen.items() if count >= MIN_SAMPLES)

    # Per kernel, per own type (the last slot: every rarer type together): count, flops, bytes.
    sums = np.zeros((len(groups), len(own) + 1, 3))
    for row, (members, _) in enumerate(groups):
        for index in members:
            slot = own.index(types[index]) if types[index] in own else len(own)
            sums[row, slot] += (1.0, *features[index])
    fallback = _nonnegative_lstsq(sums.sum(axis=1), target)
    rest = target - sums[:, -1] @ fallback  # what the own types have to explain
    solution = _nonnegative_lstsq(sums[:, :-1].reshape(len(groups), -1), rest).reshape(-1, 3)
    coefficients = {op_type: _triple(abc) for op_type, abc in zip(own, solution, strict=True)}
    model = OperatorModel(coefficients, _triple(fallback), 0.0, nodes.threads, nodes.batch, nodes.runtime,
                          dict(sorted(seen.items())))
    predicted = model.node_ms(graph)
    every = graph.cuts()
    gaps: list[float] = []
    if times is not None and times.side != "edge":
        gaps = [ms - float(predicted[sorted(every[index].head)].sum())
                for index, ms in zip(times.cuts, times.device_ms, strict=True) if every[index].head]
    elif times is not None:  # only the tails were timed: the gaps of the tails that ran
        gaps = [ms - float(predicted[sorted(set(range(len(graph.nodes))) - every[index].head)].sum())
                for index, ms in zip(times.cuts, times.edge_ms, strict=True) if ms > 0]
    overhead = float(np.median(gaps)) if gaps else nodes.run_ms - sum(nodes.node_ms.values())
    return replace(model, session_ms=max(overhead, 0.0))


def predict_cuts(graph: SplitGraph, device: OperatorModel, edge: OperatorModel | None = None, *,
                 cuts: Iterable[int] | None = None) -> CutTimes:
    """Predicted cut times: heads by ``device``'s model, tails by ``edge``'s (``device``'s if
    None), for every prefix cut or the indices ``cuts``: a profile of a machine that was only
    profiled once (:func:`profile_nodes`)."""
    edge = edge if edge is not None else device
    if device.batch != edge.batch:
        raise InvalidArgumentError(f"the device model is for batch {device.batch}, the edge's {edge.batch}")
    every = graph.cuts()
    chosen = _check_cuts(cuts, len(every))
    on_device, on_edge = device.node_ms(graph), edge.node_ms(graph)
    pairs = [_predict(device, edge, on_device, on_edge, graph, every[index]) for index in chosen]
    return CutTimes(graph_fingerprint(graph), tuple(chosen), tuple(head for head, _ in pairs),
                    tuple(tail for _, tail in pairs), device.predict_whole(graph), device.threads,
                    edge.threads, device.batch, 0, device.runtime, "predicted")


def save_profile(path: str | os.PathLike, times: CutTimes, operators: OperatorModel | None = None, *,
                 overwrite: bool = False) -> Path:
    """Write ``times`` (and ``operators``) as a profile artifact at ``path``; JSON only."""
    document = {"times": times.to_dict(), "operators": operators.to_dict() if operators is not None else None}
    manifest = Manifest(capability=CAPABILITY, kind=KIND,
                        metadata={"graph_sha256": times.graph_sha256, "runtime": times.runtime,
                                  "method": times.method, "cuts": len(times.cuts)})
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    return save_artifact(path, manifest, {PROFILE_FILE: text.encode("utf-8")}, overwrite=overwrite).path


def load_profile(path: str | os.PathLike, graph: SplitGraph | None = None) -> Profile:
    """Read a profile artifact; with ``graph``, refuse a profile of any other graph."""
    artifact = load_artifact(path, capability=CAPABILITY, kind=KIND)
    where = artifact.file(PROFILE_FILE)
    if where.stat().st_size > MAX_PROFILE_BYTES:
        raise ArtifactError(f"{where}: over the {MAX_PROFILE_BYTES} byte limit of a profile")
    try:
        document = json.loads(where.read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise InvalidArgumentError(f"expected a JSON object, got {type(document).__name__}")
        times = CutTimes.from_dict(document.get("times"))
        operators = document.get("operators")
        profile = Profile(times, OperatorModel.from_dict(operators) if operators is not None else None)
    except (ValueError, RecursionError) as error:  # InvalidArgumentError is a ValueError
        raise ArtifactError(f"{where}: not a profile: {one_line(error)}") from error
    if graph is not None and times.graph_sha256 != (actual := graph_fingerprint(graph)):
        raise ArtifactError(f"{artifact.path}: a profile of another graph (sha256 "
                            f"{times.graph_sha256[:12]}..., this one {actual[:12]}...); measure this graph")
    return profile


def _predict(device: OperatorModel, edge: OperatorModel, on_device: np.ndarray, on_edge: np.ndarray,
             graph: SplitGraph, cut: Cut) -> tuple[float, float]:
    head = sorted(cut.head)
    tail = sorted(set(range(len(graph.nodes))) - cut.head)
    device_ms = float(on_device[head].sum()) + device.session_ms if head else 0.0
    runs_tail = any(name not in cut.tensors for name in graph.outputs)
    edge_ms = float(on_edge[tail].sum()) + edge.session_ms if runs_tail else 0.0
    return device_ms, edge_ms


def _kernel_groups(graph: SplitGraph, node_ms: Mapping[int, float]) -> list[tuple[list[int], float]]:
    """Each profiled kernel with the nodes it covers: its own, and the nodes without a kernel
    of their own whose outputs reach it only through such nodes (what ONNX Runtime fused in)."""
    producer = {name: index for index, node in enumerate(graph.nodes) for name in node.output if name}
    claimed = set(node_ms)
    groups = []
    for anchor in sorted(node_ms):
        if not 0 <= anchor < len(graph.nodes):
            raise InvalidArgumentError(f"node {anchor} is not in the graph (it has {len(graph.nodes)} nodes)")
        members = [anchor]
        stack = [producer[name] for name in graph.nodes[anchor].input if name in producer]
        while stack:
            index = stack.pop()
            if index not in claimed:
                claimed.add(index)
                members.append(index)
                stack.extend(producer[name] for name in graph.nodes[index].input if name in producer)
        groups.append((sorted(members), node_ms[anchor]))
    return groups


def _nonnegative_lstsq(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: solve, drop the most negative column, repeat.

    Columns are scaled to unit norm first, since flops (1e8) and counts (1) differ by orders.
    """
    scale = np.linalg.norm(matrix, axis=0)
    active = scale > 0
    solution = np.zeros(matrix.shape[1])
    while active.any():
        columns = np.flatnonzero(active)
        fitted = np.linalg.lstsq(matrix[:, columns] / scale[columns], target, rcond=None)[0]
        if (fitted >= 0).all():
            solution[columns] = fitted / scale[columns]
            break
        active[columns[np.argmin(fitted)]] = False
    return solution


def _triple(values: Iterable[float]) -> tuple[float, float, float]:
    a, b, c = (float(value) for value in values)
    return a, b, c


def _shapes(graph: SplitGraph) -> dict[str, tuple[tuple[int, ...], int]]:
    """Per tensor: its dimensions per sample (a symbolic batch axis counts 1) and item size."""
    from onnx.helper import tensor_dtype_to_np_dtype

    found: dict[str, tuple[tuple[int, ...], int]] = {}
    body = graph.model.graph
    for init in body.initializer:
        itemsize = np.dtype(tensor_dtype_to_np_dtype(init.data_type)).itemsize
        found[init.name] = (tuple(int(size) for size in init.dims), itemsize)
    for value in (*body.value_info, *body.input, *body.output):
        tensor_type = value.type.tensor_type
        if value.name in found or not tensor_type.HasField("shape"):
            continue
        dims = []
        for position, dim in enumerate(tensor_type.shape.dim):
            if not dim.HasField("dim_value") and position > 0:
                raise SplitGraphError(f"{value.name!r} has a symbolic dimension {dim.dim_param!r} past the "
                                      "batch axis; fix the input shapes: SplitGraph.load(path, input_shapes)")
            dims.append(int(dim.dim_value) if dim.HasField("dim_value") else 1)
        found[value.name] = (tuple(dims), np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type)).itemsize)
    return found


def _owner(kernel: str, owners: Mapping[str, int]) -> int | None:
    """The node a kernel name belongs to: the longest node or tensor name it is, or starts
    with followed by ``_`` (ONNX Runtime's suffixes: ``_nchwc``, fusion tags)."""
    end = len(kernel)
    while end > 0:
        if kernel[:end] in owners:
            return owners[kernel[:end]]
        end = kernel.rfind("_", 0, end)
    return None


def _session(model: Any, threads: int, what: str, *, profile_prefix: str | None = None) -> Any:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime's errors (Fail, InvalidGraph, ...) derive from Exception only
        raise SplitGraphError(f"ONNX Runtime cannot load {what}: {one_line(error)}") from error


def _time(session: Any, available: Mapping[str, np.ndarray], repeats: int,
          warmup: int) -> tuple[float, dict[str, np.ndarray]]:
    """The median milliseconds of ``session.run`` and the outputs of the last run."""
    feeds = {value.name: available[value.name] for value in session.get_inputs()}
    names = [value.name for value in session.get_outputs()]
    elapsed = []
    try:
        for attempt in range(warmup + repeats):
            start = time.perf_counter()
            outputs = session.run(names, feeds)
            if attempt >= warmup:
                elapsed.append((time.perf_counter() - start) * 1e3)
    except Exception as error:  # as in _session
        raise SplitGraphError(f"ONNX Runtime failed to run {', '.join(names)}: {one_line(error)}") from error
    return float(np.median(elapsed)), dict(zip(names, outputs, strict=True))


def _check_counts(threads: int, repeats: int, warmup: int) -> None:
    for name, value, low, high in (("threads", threads, 1, MAX_THREADS), ("repeats", repeats, 1, MAX_REPEATS),
                                   ("warmup", warmup, 0, MAX_WARMUP)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidArgumentError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _check_cuts(cuts: Iterable[int] | None, count: int) -> list[int]:
    if cuts is None:
        chosen = list(range(count))
    else:
        given = list(cuts)
        bad = [index for index in given if not isinstance(index, int | np.integer) or isinstance(index, bool)
               or not 0 <= index < count]
        if bad:
            raise InvalidArgumentError(f"cuts are indices 0 to {count - 1} of graph.cuts(), not {bad[:5]}")
        chosen = sorted({int(index) for index in given})
    if not 1 <= len(chosen) <= MAX_CUTS:
        raise InvalidArgumentError(f"1 to {MAX_CUTS} cuts at a time, got {len(chosen)}; choose with cuts=")
    return chosen


def _check_inputs(graph: SplitGraph, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """The feeds, checked against the graph's declared inputs, and the batch they make."""
    from onnx.helper import tensor_dtype_to_np_dtype

    if not isinstance(inputs, Mapping):
        raise InvalidArgumentError(f"inputs must map input names to arrays, got {type(inputs).__name__}")
    unknown = sorted(set(inputs) - set(graph.inputs))
    missing = [name for name in graph.inputs if name not in inputs]
    if unknown or missing:
        raise InvalidArgumentError(f"inputs must be {graph.inputs}; missing {missing}, unknown {unknown}")
    declared = {value.name: value.type.tensor_type for value in graph.model.graph.input}
    feeds = {}
    for name in graph.inputs:
        array, tensor_type = np.asarray(inputs[name]), declared[name]
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if array.size == 0:
            raise InvalidArgumentError(f"input {name!r} is empty (shape {array.shape}); give a sample")
        if array.dtype != dtype:
            raise InvalidArgumentError(f"input {name!r} is {array.dtype}; the graph takes {dtype}")
        if tensor_type.HasField("shape"):
            wanted = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
            if array.ndim != len(wanted) or any(size not in (None, got)
                                                for size, got in zip(wanted, array.shape, strict=True)):
                shown = ["?" if size is None else size for size in wanted]
                raise InvalidArgumentError(f"input {name!r} has shape {array.shape}; the graph takes {shown}")
        feeds[name] = np.ascontiguousarray(array)
    first = feeds[graph.inputs[0]]
    return feeds, int(first.shape[0]) if first.ndim else 1


class _Record:
    """Typed fields of a JSON object, each failure an InvalidArgumentError naming the field."""

    def __init__(self, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"{what}: expected a JSON object, got {type(data).__name__}")
        self.data, self.what = data, what

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise InvalidArgumentError(f"{self.what}: missing field {key!r}")
        return self.data[key]

    def _fail(self, key: str, kind: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{self.what}: field {key!r} must be {kind}, got {self.data[key]!r:.60}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def integer(self, key: str) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(key, "an integer")
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise self._fail(key, "a finite number")
        return float(value)

    def integers(self, key: str) -> list[int]:
        values = self._get(key)
        if not isinstance(values, list) or not all(isinstance(value, int) and not isinstance(value, bool)
                                                   for value in values):
            raise self._fail(key, "a list of integers")
        return values

    def numbers(self, key: str) -> list[float]:
        values = self._get(key)
        if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                   and math.isfinite(v) for v in values):
            raise self._fail(key, "a list of finite numbers")
        return [float(v) for v in values]

    def triple(self, key: str) -> tuple[float, float, float]:
        values = self.numbers(key)
        if len(values) != 3:
            raise self._fail(key, "three numbers (a, b, c)")
        return _triple(values)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._fail(key, "a JSON object")
        return value


def _span(cuts: tuple[int, ...]) -> str:
    return f"{len(cuts)} cuts from {cuts[0]} to {cuts[-1]}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
