"""DADS min-cut: optimal over every down-set of small random DAGs, never worse than the best
prefix cut on the real text detector."""

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.split.graph import SplitGraph, SplitGraphError
from coinfer.sdk.split.mincut import min_cut
from coinfer.sdk.split.planner import Link


def random_dag(rng: np.random.Generator, nodes: int) -> SplitGraph:
    """Relu of one earlier tensor, or Concat of two (widths add up); the last node joins the
    newest tensor with one from the middle, so branches stay open across many cuts."""
    width = {"x": int(rng.integers(1, 64))}
    graph_nodes = []
    for k in range(nodes):
        made = list(width)
        name = f"t{k}"
        if len(made) > 1 and rng.random() < 0.5:
            first, second = (str(v) for v in rng.choice(made, size=2, replace=False))
            graph_nodes.append(helper.make_node("Concat", [first, second], [name], axis=1))
            width[name] = width[first] + width[second]
        else:
            source = str(rng.choice(made))
            graph_nodes.append(helper.make_node("Relu", [source], [name]))
            width[name] = width[source]
    last, middle = f"t{nodes - 1}", f"t{nodes // 2}"
    graph_nodes.append(helper.make_node("Concat", [last, middle], ["y"], axis=1))
    value = lambda name, size: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, size])  # noqa: E731
    graph = helper.make_graph(graph_nodes, "dag", [value("x", width["x"])],
                              [value("y", width[last] + width[middle])])
    return SplitGraph(helper.make_model(graph))


def latency(graph: SplitGraph, device, edge, link: Link, cut) -> float:
    """What a cut costs: its head on the device, the rest on the edge, what crosses sent."""
    tail = [i for i in range(len(graph.nodes)) if i not in cut.head]
    return float(np.sum(np.asarray(device)[list(cut.head)]) + np.sum(np.asarray(edge)[tail])
                 + link.transfer_ms(cut.nbytes()))


def brute_force(graph: SplitGraph, device, edge, link: Link) -> float:
    best = float("inf")
    for mask in itertools.product([False, True], repeat=len(graph.nodes)):
        try:
            cut = graph.cut_of(frozenset(i for i, on in enumerate(mask) if on))
        except SplitGraphError:
            continue
        best = min(best, latency(graph, device, edge, link, cut))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_min_cut_is_optimal_over_every_down_set(seed):
    rng = np.random.default_rng(seed)
    graph = random_dag(rng, int(rng.integers(4, 9)))
    device = rng.uniform(0, 5, len(graph.nodes)).tolist()
    edge = (np.asarray(device) * rng.uniform(0.1, 1.5)).tolist()
    link = Link(float(rng.uniform(0.01, 2)), float(rng.uniform(0, 5)))
    cut, ms = min_cut(graph, device, edge, link)
    assert ms == pytest.approx(latency(graph, device, edge, link, cut), abs=1e-4)
    assert ms == pytest.approx(brute_force(graph, device, edge, link), abs=1e-4)


def test_on_the_text_detector_min_cut_beats_or_ties_every_prefix_cut():
    from coinfer.bench.models import ocr_split

    graph = SplitGraph(ocr_split.load_detector())
    rng = np.random.default_rng(0)
    device = rng.uniform(0.1, 2.0, len(graph.nodes))
    edge = device / 6
    strictly_better = 0
    for bandwidth in (0.5, 5, 20, 50, 500):
        link = Link(bandwidth, 10)
        cut, ms = min_cut(graph, device, edge, link)
        # Seconds of capacity overflowed scipy's 32-bit flows once: the cut must cost what it says.
        assert ms == pytest.approx(latency(graph, device, edge, link, cut), abs=0.1)
        best_prefix = min(latency(graph, device, edge, link, prefix) for prefix in graph.cuts())
        assert ms <= best_prefix + 0.1
        strictly_better += ms < best_prefix - 1
    assert strictly_better >= 1  # the FPN's long skips make some down-set beat every prefix


def test_mismatched_times_are_refused():
    graph = random_dag(np.random.default_rng(0), 4)
    with pytest.raises(InvalidArgumentError, match="nodes but 2 device"):
        min_cut(graph, [1.0, 1.0], [1.0] * len(graph.nodes), Link(1))
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        min_cut(graph, [-1.0] * len(graph.nodes), [1.0] * len(graph.nodes), Link(1))
