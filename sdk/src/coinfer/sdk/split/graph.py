"""Where an ONNX graph can be cut between a device (head) and an edge server (tail).

Why: fused kernels and multi-branch networks make "cut after layer k" too coarse. A cut is
a set of *head* nodes closed under "is needed by": every node the head runs has all its
data inputs made on the device. What crosses is every tensor the head side makes (or the
graph input) that the tail side or the caller still reads. Constants, and nodes computed
from constants only (shape arithmetic, padding amounts), belong to neither side: each
half gets its own copy, and they never cross.

- :meth:`SplitGraph.cuts` lists the prefix cuts of the graph's (topological) node order,
  from all-edge (the input crosses) to all-device (the outputs cross): Neurosurgeon's
  candidates, with several crossing tensors where branches are open;
- :meth:`SplitGraph.cut_after` is the smallest cut that makes one tensor (its ancestors),
  the cut a multi-branch network (an FPN's long skips) needs for a single crossing tensor;
- :meth:`SplitGraph.extract` writes the head and tail as runnable ONNX models.

Only numpy is imported with this module; ``onnx`` (the ``split`` extra) when a graph is
read. Example on a two-branch graph, ``y = relu(x) + sigmoid(x)``:

>>> import onnx
>>> from onnx import TensorProto, helper
>>> nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
...          helper.make_node("Add", ["a", "b"], ["y"])]
>>> value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])
>>> model = helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")]))
>>> graph = SplitGraph(model)
>>> [cut.tensors for cut in graph.cuts()]
[('x',), ('x', 'a'), ('a', 'b'), ('y',)]
>>> cut = graph.cut_after("a")
>>> cut.tensors, cut.nbytes("float32"), cut.nbytes("int8")
(('x', 'a'), 32, 24)
>>> head, tail = graph.extract(cut)
>>> [o.name for o in head.graph.output], [i.name for i in tail.graph.input]
(['a'], ['x', 'a'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError

#: Bytes per element of a float tensor sent in each encoding (int8: linear quantisation).
ENCODING_BYTES = {"float32": 4, "float16": 2, "int8": 1}
#: What an int8 tensor carries besides its elements: a float32 scale and zero point.
INT8_OVERHEAD = 8


class SplitGraphError(CoinferError):
    """A graph that cannot be cut: unreadable, shapes that are not fixed, or a cut that is no cut."""


@dataclass(frozen=True)
class Cut:
    """The head's nodes (indices into :attr:`SplitGraph.nodes`) and what crosses to the tail.

    ``tensors`` are in a stable order (graph order of their producers, graph inputs first);
    ``elements`` and ``itemsizes`` are per sample (the batch axis counts as 1).
    """

    head: frozenset[int]
    tensors: tuple[str, ...]
    elements: tuple[int, ...]
    itemsizes: tuple[int, ...]
    floating: tuple[bool, ...]

    def nbytes(self, encoding: str = "float32") -> int:
        """Bytes crossing per sample when float tensors are sent as ``encoding``; other
        tensors (integer indices, masks) always at their own width. Only the fixed-size
        encodings (:data:`ENCODING_BYTES`): an entropy-coded latent's size depends on its
        values, so it is measured (``SplitClient``'s ``CallStats.bytes_sent``), not computed."""
        if encoding == "entropy":
            raise SplitGraphError("entropy-coded sizes depend on the values: measure them (the split "
                                  "client's bytes_sent); nbytes knows float32, float16 and int8")
        if encoding not in ENCODING_BYTES:
            raise SplitGraphError(f"unknown tensor encoding {encoding!r}; known: {', '.join(ENCODING_BYTES)}")
        total = 0
        for count, itemsize, is_float in zip(self.elements, self.itemsizes, self.floating, strict=True):
            if is_float:
                total += count * ENCODING_BYTES[encoding] + (INT8_OVERHEAD if encoding == "int8" else 0)
            else:
                total += count * itemsize
        return total


class SplitGraph:
    """An ONNX model with fixed shapes, and the cuts through it."""

    def __init__(self, model: Any) -> None:
        import onnx

        try:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as error:
            raise SplitGraphError(f"shape inference failed on the graph: {error}") from error
        self.model = model
        graph = model.graph
        initializers = {init.name for init in graph.initializer}
        self.inputs = [value.name for value in graph.input if value.name not in initializers]
        self.outputs = [value.name for value in graph.output]
        if not self.inputs or not self.outputs:
            raise SplitGraphError("the graph needs at least one input and one output to be cut")
        # Nodes that depend on an input, in graph order (ONNX keeps nodes topologically sorted).
        data = set(self.inputs)
        self.nodes: list[Any] = []
        for node in graph.node:
            if any(name in data for name in node.input if name):
                self.nodes.append(node)
                data.update(name for name in node.output if name)
        self._data = data
        self._producer = {name: i for i, node in enumerate(self.nodes) for name in node.output if name}
        self._types = {value.name: value.type.tensor_type
                       for value in (*graph.value_info, *graph.input, *graph.output)}
        for name in self.outputs:
            if name not in data:
                raise SplitGraphError(f"graph output {name!r} does not depend on any input")

    @classmethod
    def load(cls, path: str | Path,
             input_shapes: Mapping[str, Sequence[int | str]] | None = None) -> SplitGraph:
        """Read an ONNX file; ``input_shapes`` fixes symbolic input dimensions (a name keeps
        a dimension symbolic: a symbolic batch dimension counts as 1)."""
        import onnx
        from google.protobuf.message import DecodeError

        path = Path(path)
        if not path.is_file():
            raise SplitGraphError(f"{path}: no such ONNX file")
        try:
            model = onnx.load(str(path))
        except (OSError, ValueError, DecodeError) as error:
            raise SplitGraphError(f"{path}: not a readable ONNX model: {error}") from error
        for value in model.graph.input:
            if input_shapes and value.name in input_shapes:
                dims = value.type.tensor_type.shape.dim
                shape = list(input_shapes[value.name])
                if len(shape) != len(dims):
                    raise SplitGraphError(f"{path}: input {value.name!r} has {len(dims)} dimensions, "
                                          f"the given shape {shape} has {len(shape)}")
                for dim, size in zip(dims, shape, strict=True):
                    if isinstance(size, str):
                        dim.dim_param = size
                    else:
                        dim.dim_value = int(size)
        return cls(model)

    def cuts(self) -> list[Cut]:
        """Every prefix of the node order as a cut: ``len(nodes) + 1`` of them."""
        return [self._cut(frozenset(range(count))) for count in range(len(self.nodes) + 1)]

    def cut_after(self, tensor: str) -> Cut:
        """The smallest cut whose head makes ``tensor``: its producer and everything that needs."""
        if tensor not in self._producer:
            what = "a graph input" if tensor in self.inputs else "no tensor computed from the input"
            raise SplitGraphError(f"{tensor!r} is {what}; cut after a node output such as "
                                  f"{self.nodes[len(self.nodes) // 2].output[0]!r}")
        head: set[int] = set()
        stack = [self._producer[tensor]]
        while stack:
            index = stack.pop()
            if index in head:
                continue
            head.add(index)
            stack.extend(self._producer[name] for name in self.nodes[index].input if name in self._producer)
        return self._cut(frozenset(head))

    def single_tensor_cuts(self) -> list[Cut]:
        """The cuts after each node output that alone crosses: where one tensor is all a
        device sends (graph order)."""
        found = []
        for node in self.nodes:
            name = node.output[0]
            if name in self.outputs:
                continue
            cut = self.cut_after(name)
            if cut.tensors == (name,):
                found.append(cut)
        return found

    def extract(self, cut: Cut) -> tuple[Any | None, Any | None]:
        """The head (graph inputs -> crossing tensors it makes) and the tail (crossing tensors
        -> graph outputs) as checked ONNX models; ``None`` for an empty side."""
        import onnx
        import onnx.utils

        extractor = onnx.utils.Extractor(self.model)
        made = [name for name in cut.tensors if name not in self.inputs]
        head = extractor.extract_model(self.inputs, made) if cut.head else None
        tail_outputs = [name for name in self.outputs if name not in cut.tensors]
        tail = extractor.extract_model(list(cut.tensors), tail_outputs) if tail_outputs else None
        for part in (head, tail):
            if part is not None:
                onnx.checker.check_model(part)
        return head, tail

    def cut_of(self, head: frozenset[int]) -> Cut:
        """The cut whose head runs the nodes ``head`` (indices into :attr:`nodes`); refused
        unless every head node's data inputs are made in the head or are graph inputs."""
        for index in head:
            if not 0 <= index < len(self.nodes):
                raise SplitGraphError(f"node index {index} is outside the graph's {len(self.nodes)} nodes")
            missing = [name for name in self.nodes[index].input
                       if name in self._producer and self._producer[name] not in head]
            if missing:
                name = self.nodes[index].name or index
                raise SplitGraphError(f"node {name!r} runs on the device but reads {missing[0]!r}, which "
                                      "would be made on the edge")
        return self._cut(head)

    def consumers(self, tensor: str) -> list[int]:
        """The nodes (indices) that read ``tensor``."""
        return [i for i, node in enumerate(self.nodes) if tensor in node.input]

    def producer(self, tensor: str) -> int | None:
        """The node (index) that makes ``tensor``; ``None`` for a graph input."""
        return self._producer.get(tensor)

    def tensor_nbytes(self, tensor: str, encoding: str = "float32") -> int:
        """Bytes of one crossing ``tensor`` per sample in ``encoding`` (see :meth:`Cut.nbytes`)."""
        count, itemsize, is_float = self._describe(tensor)
        return Cut(frozenset(), (tensor,), (count,), (itemsize,), (is_float,)).nbytes(encoding)

    def _cut(self, head: frozenset[int]) -> Cut:
        made = set(self.inputs) | {name for i in head for name in self.nodes[i].output if name}
        read = {name for i, node in enumerate(self.nodes) if i not in head for name in node.input if name}
        crossing = [name for name in made if name in read or name in self.outputs]
        order = {name: (-1 if name in self.inputs else self._producer[name]) for name in crossing}
        crossing.sort(key=lambda name: (order[name], name))
        elements, itemsizes, floating = [], [], []
        for name in crossing:
            count, itemsize, is_float = self._describe(name)
            elements.append(count)
            itemsizes.append(itemsize)
            floating.append(is_float)
        return Cut(head, tuple(crossing), tuple(elements), tuple(itemsizes), tuple(floating))

    def _describe(self, name: str) -> tuple[int, int, bool]:
        from onnx.helper import tensor_dtype_to_np_dtype

        tensor_type = self._types.get(name)
        if tensor_type is None or not tensor_type.HasField("shape"):
            raise SplitGraphError(f"shape inference gave no shape for {name!r}; fix the input shapes "
                                  "(SplitGraph.load(path, input_shapes=...))")
        dims = list(tensor_type.shape.dim)
        sizes = []
        for position, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                sizes.append(int(dim.dim_value))
            elif position == 0:
                sizes.append(1)  # a symbolic batch axis: bytes are per sample
            else:
                raise SplitGraphError(f"{name!r} has a symbolic dimension {dim.dim_param!r} past the batch "
                                      "axis; fix the input shapes (SplitGraph.load(path, input_shapes=...))")
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type))
        return int(np.prod(sizes, dtype=np.int64)), dtype.itemsize, dtype.kind == "f"
