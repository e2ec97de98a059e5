"""DADS: the best cut of a DAG-shaped network by one s-t minimum cut.

Why: in a network with long skips (an FPN neck reading every backbone stage) the best
device/edge partition need not be a prefix of any one node order, and there are far too
many down-sets to try. DADS (INFOCOM'19) builds a flow graph whose minimum s-t cut is
exactly ``sum of device times of device nodes + sum of edge times of edge nodes + the
transfer time of every tensor sent``, then reads the partition off the residual graph:

- source -> node with the node's edge time (paid when the node runs on the edge),
  node -> sink with its device time (paid when it runs on the device);
- a tensor made on one side and read on the other goes through an auxiliary node:
  producer -> aux with the tensor's transfer time, aux -> every consumer unbounded, so a
  tensor read by several edge nodes is sent (and paid) once;
- consumer -> producer unbounded, so no node on the device waits for the edge;
- graph outputs made on the device are sent too (the results go to the edge, as in the
  prefix cuts); the graph input is made on the device.

Capacities are integers for scipy's max-flow (the ``split`` extra), which holds them in 32
bits: time is counted in the finest unit (down to nanoseconds) that keeps every capacity,
and their sum, below 2**30; the latency returned is recomputed from the partition itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.split.graph import Cut, SplitGraph
from coinfer.sdk.split.planner import Link

#: The finest time unit of a capacity: a nanosecond.
UNITS_PER_MS = 1_000_000
#: scipy's max-flow keeps capacities and flows in 32-bit integers.
MAX_TOTAL_CAPACITY = 2 ** 30


def min_cut(graph: SplitGraph, device_ms: Sequence[float], edge_ms: Sequence[float], link: Link,
            encoding: str = "float32") -> tuple[Cut, float]:
    """The cut of least ``device + transfer + edge`` time over every down-set of ``graph``'s
    nodes, for per-node times ``device_ms`` and ``edge_ms`` (aligned with ``graph.nodes``),
    and its latency in milliseconds (one round trip included).

    Example: ``y = relu(x) + sigmoid(x)`` with an expensive sigmoid that the edge runs fast.

    >>> from onnx import TensorProto, helper
    >>> nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
    ...          helper.make_node("Add", ["a", "b"], ["y"])]
    >>> value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1000])
    >>> graph = SplitGraph(helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")])))
    >>> cut, ms = min_cut(graph, [1.0, 50.0, 1.0], [0.5, 1.0, 0.5], Link(bandwidth_mbps=8))
    >>> cut.tensors, round(ms, 3)
    (('x',), 6.0)
    """
    import scipy.sparse
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    count = len(graph.nodes)
    if not len(device_ms) == len(edge_ms) == count:
        raise InvalidArgumentError(f"the graph has {count} nodes but {len(device_ms)} device and "
                                   f"{len(edge_ms)} edge times were given")
    if min(*device_ms, *edge_ms, 0.0) < 0:
        raise InvalidArgumentError("node times must be >= 0")
    source, sink = 0, 1
    tensors = sorted({name for node in graph.nodes for name in node.input if name
                      and (graph.producer(name) is not None or name in graph.inputs)} | set(graph.outputs))
    aux = {name: 2 + count + k for k, name in enumerate(tensors)}
    rows: list[int] = []
    cols: list[int] = []
    caps: list[float] = []

    def edge(start: int, end: int, ms: float) -> None:
        rows.append(start)
        cols.append(end)
        caps.append(ms)

    for index in range(count):
        edge(source, 2 + index, edge_ms[index])
        edge(2 + index, sink, device_ms[index])
    unbounded = -1.0
    for name in tensors:
        producer = graph.producer(name)
        start = source if producer is None else 2 + producer
        edge(start, aux[name], link.transfer_ms(graph.tensor_nbytes(name, encoding)) - link.rtt_ms)
        for consumer in graph.consumers(name):
            edge(aux[name], 2 + consumer, unbounded)
            if producer is not None:
                edge(2 + consumer, 2 + producer, unbounded)
        if name in graph.outputs:
            edge(aux[name], sink, unbounded)
    # Running everything on the edge is a cut; "unbounded" only has to exceed what it costs.
    sent = sum(graph.tensor_nbytes(name, encoding) for name in graph.inputs)
    all_edge = float(np.sum(edge_ms)) + link.transfer_ms(sent) - link.rtt_ms
    big = all_edge + 1.0
    units = min(UNITS_PER_MS, MAX_TOTAL_CAPACITY / (len(caps) * big))
    capacity = np.rint(np.where(np.array(caps) < 0, big, np.array(caps)) * units).astype(np.int32)
    size = 2 + count + len(tensors)
    matrix = scipy.sparse.csr_array((capacity, (rows, cols)), shape=(size, size))
    flow = maximum_flow(matrix, source, sink)
    residual = matrix.toarray() - flow.flow.toarray()
    reachable = breadth_first_order(scipy.sparse.csr_array(residual > 0), source, return_predecessors=False)
    head = frozenset(int(v) - 2 for v in reachable if 2 <= v < 2 + count)
    cut = graph.cut_of(head)
    tail = [i for i in range(count) if i not in head]
    latency = (float(np.sum(np.asarray(device_ms)[sorted(head)])) + float(np.sum(np.asarray(edge_ms)[tail]))
               + link.transfer_ms(cut.nbytes(encoding)))
    return cut, latency
