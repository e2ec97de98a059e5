"""ONNX -> Keras (Keras 3, TensorFlow backend), for the CNN graphs split heads are made of.

Why: a split head is an ONNX subgraph (:meth:`coinfer.sdk.split.graph.SplitGraph.extract`),
and a phone or a Raspberry Pi runs TFLite. No ONNX -> TFLite converter fits this project
(onnx2tf pins an old stack and downloads at run time), but TensorFlow's own converter takes
Keras models; so the graph is rebuilt here as a Keras model with the ONNX weights, and
:func:`~coinfer.converters.keras_tflite.keras_to_tflite` does the rest.

The model keeps the ONNX graph's interface (same input and output names, NCHW in, NCHW out,
batch axis free) so that whatever reads the ONNX model's tensors reads the Keras model's
unchanged; inside, 4-D tensors are kept NHWC, the layout TensorFlow's convolutions take, and
transposed only at the boundaries (and where an op needs ONNX's layout: a ``Reshape`` or
``Flatten`` of a tensor whose spatial size is not 1). Weights are transposed exactly; ONNX's
explicit convolution padding becomes TensorFlow's ``same`` where the two agree for the
tensor's size (``same`` pads ``floor(total / 2)`` before, as PyTorch's "same"-style padding
does) and ``ZeroPadding2D`` + ``valid`` where they do not.

Supported ops (default ONNX domain): Conv (2-D; grouped, depthwise, strided or dilated),
Clip, Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid, HardSwish, Add, Sub, Mul, Div, Pad
(constant or reflect), BatchNormalization (inference), GlobalAveragePool, GlobalMaxPool,
MaxPool, AveragePool, Flatten, Reshape, Gemm, MatMul, Concat, Softmax, Transpose, Identity,
Dropout, Round (a bottleneck's latent); nodes computed from constants only are evaluated
once (ONNX's reference evaluator).
Anything else is refused with one line naming the op and the node. Example::

    from coinfer.converters.onnx_keras import onnx_to_keras
    converted = onnx_to_keras("head.onnx")
    outputs = converted.model(images)          # {"/_blocks.3/Add_output_0": ..., ...}, NCHW

TensorFlow and Keras are imported when a graph is converted, not with this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.converters.export import ExportError
from coinfer.sdk.frameworks import import_tensorflow

#: ONNX layout -> NHWC and back, as ``Permute`` dimensions (batch excluded).
_TO_NHWC, _TO_NCHW = (2, 3, 1), (3, 1, 2)
#: ONNX axis of a 4-D tensor -> the same axis in NHWC.
_NHWC_AXIS = (0, 3, 1, 2)
_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class KerasGraph:
    """A converted graph: ``model`` takes the ONNX inputs (positionally, in ``inputs`` order)
    and returns a dict of the ONNX outputs by name. ``input_names`` maps each ONNX input name
    to the Keras input's (the same unless the ONNX name holds characters Keras refuses)."""

    model: Any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_names: dict[str, str]


@dataclass
class _Value:
    """A Keras tensor and its layout: ``nhwc`` (a 4-D tensor transposed) or ``onnx`` (as in the graph)."""

    tensor: Any
    layout: str

    @property
    def rank(self) -> int:
        return len(self.tensor.shape)


def onnx_to_keras(model: Any, *, name: str = "onnx_graph") -> KerasGraph:
    """Rebuild the ONNX ``model`` (a ``ModelProto`` or a path) as a Keras model with its weights.

    Every graph input must be float32 with fixed dimensions after the batch axis; an op
    outside the supported set raises :class:`~coinfer.converters.export.ExportError`
    (``unsupported graph: op X in node Y``).
    """
    import onnx

    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.is_file():
            raise ExportError(f"{path}: no such ONNX file")
        try:
            model = onnx.load(str(path))
        except Exception as error:  # protobuf raises its own DecodeError
            raise ExportError(f"{path}: not a readable ONNX model: {error}") from error
    import_tensorflow()
    import keras

    return _Builder(model, keras).build(name)


class _Builder:
    """Walks the graph in order, making Keras tensors for every ONNX tensor."""

    def __init__(self, model: Any, keras: Any) -> None:
        from onnx import numpy_helper

        self.keras = keras
        self.graph = model.graph
        self.opset = next((item.version for item in model.opset_import if item.domain in ("", "ai.onnx")), 13)
        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        self.values: dict[str, _Value] = {}
        self.batch_of_one = False
        self._handlers: dict[str, Callable[[Any, dict[str, Any]], None]] = {
            "Conv": self._conv, "Clip": self._clip, "Relu": self._relu, "LeakyRelu": self._leaky_relu,
            "Sigmoid": self._activation, "Tanh": self._activation, "HardSigmoid": self._hard_sigmoid,
            "HardSwish": self._hard_swish, "Add": self._binary, "Sub": self._binary, "Mul": self._binary,
            "Div": self._binary, "Pad": self._pad, "BatchNormalization": self._batch_norm,
            "GlobalAveragePool": self._global_pool, "GlobalMaxPool": self._global_pool,
            "MaxPool": self._pool, "AveragePool": self._pool, "Flatten": self._flatten,
            "Reshape": self._reshape, "Gemm": self._gemm, "MatMul": self._matmul, "Concat": self._concat,
            "Softmax": self._softmax, "Transpose": self._transpose, "Identity": self._identity,
            "Dropout": self._identity, "Round": self._round}

    # --- the walk ---------------------------------------------------------------------------

    def build(self, name: str) -> KerasGraph:
        keras = self.keras
        inputs: list[str] = []
        input_names: dict[str, str] = {}
        keras_inputs: list[Any] = []
        batches: set[int | None] = set()
        for value in self.graph.input:
            if value.name in self.constants:
                continue
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type != 1:  # TensorProto.FLOAT
                raise ExportError(f"unsupported graph: input {value.name!r} is not float32")
            dims = list(tensor_type.shape.dim)
            if not dims or not all(dim.HasField("dim_value") for dim in dims[1:]):
                raise ExportError(f"unsupported graph: input {value.name!r} needs fixed dimensions after the "
                                  "batch axis")
            batches.add(int(dims[0].dim_value) if dims[0].HasField("dim_value") else None)
            keras_name = _NAME.sub("_", value.name).strip("_.-") or f"input_{len(inputs)}"
            tensor = keras.Input(tuple(int(dim.dim_value) for dim in dims[1:]), name=keras_name)
            inputs.append(value.name)
            input_names[value.name] = keras_name
            keras_inputs.append(tensor)
            self.values[value.name] = _Value(tensor, "onnx")
        # A graph made for one sample at a time may reshape to (1, ...): that 1 is the batch axis.
        self.batch_of_one = batches == {1}
        for node in self.graph.node:
            self._convert(node)
        outputs = {}
        for value in self.graph.output:
            if value.name not in self.values:
                raise ExportError(f"unsupported graph: output {value.name!r} does not depend on an input")
            outputs[value.name] = self.as_onnx(value.name)
        # One input as a tensor, not a list of one: callers pass one array (keras_to_tflite does).
        model = keras.Model(keras_inputs[0] if len(keras_inputs) == 1 else keras_inputs, outputs, name=name)
        return KerasGraph(model, tuple(inputs), tuple(outputs), input_names)

    def _convert(self, node: Any) -> None:
        from onnx import helper

        where = f"op {node.op_type} in node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            raise ExportError(f"unsupported graph: {where} (domain {node.domain!r})")
        data = [name for name in node.input if name and name not in self.constants]
        if not data:
            self._fold(node, where)
            return
        handler = self._handlers.get(node.op_type)
        if handler is None:
            raise ExportError(f"unsupported graph: {where}")
        missing = [name for name in data if name not in self.values]
        if missing:
            raise ExportError(f"unsupported graph: {where} reads {missing[0]!r}, which no earlier node makes")
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        try:
            handler(node, attrs)
        except _Unsupported as error:
            raise ExportError(f"unsupported graph: {where}: {error}") from None

    def _fold(self, node: Any, where: str) -> None:
        """A node of constants only (shape arithmetic, a Constant): evaluate it now."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        inputs = [name for name in node.input if name]
        try:
            outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
            graph = helper.make_graph([node], "fold", [], outputs,
                                      [_initializer(name, self.constants[name]) for name in inputs])
            opsets = [helper.make_opsetid("", self.opset)]
            results = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, {})
        except Exception as error:  # the reference evaluator raises whatever its op raises
            raise ExportError(f"unsupported graph: {where}: cannot evaluate it on its constants: "
                              f"{error}") from error
        for name, result in zip([name for name in node.output if name], results, strict=True):
            self.constants[name] = np.asarray(result)

    # --- tensors and layouts ----------------------------------------------------------------

    def as_nhwc(self, name: str) -> Any:
        value = self.values[name]
        if value.rank != 4:
            raise _Unsupported(f"{name!r} has rank {value.rank}, expected a 4-D (NCHW) tensor")
        if value.layout == "nhwc":
            return value.tensor
        return self.keras.layers.Permute(_TO_NHWC)(value.tensor)

    def as_onnx(self, name: str) -> Any:
        value = self.values[name]
        if value.layout == "onnx":
            return value.tensor
        _, height, width, channels = value.tensor.shape
        if height * width == 1 or channels == 1:  # same element order either way: a free reshape
            return self.keras.layers.Reshape((channels, height, width))(value.tensor)
        return self.keras.layers.Permute(_TO_NCHW)(value.tensor)

    def constant(self, node: Any, index: int, default: Any = None) -> Any:
        """Input ``index`` of ``node``, which must be a constant (``default`` when absent)."""
        if index >= len(node.input) or not node.input[index]:
            return default
        name = node.input[index]
        if name not in self.constants:
            raise _Unsupported(f"input {index} ({name!r}) must be a constant")
        return self.constants[name]

    def put(self, node: Any, tensor: Any, layout: str) -> None:
        self.values[node.output[0]] = _Value(tensor, layout)

    def _same_input(self, node: Any) -> tuple[Any, str]:
        """The node's data input as it is (layout kept): for elementwise ops."""
        value = self.values[node.input[0]]
        return value.tensor, value.layout

    # --- ops ----------------------------------------------------------------------------------

    def _conv(self, node: Any, attrs: dict[str, Any]) -> None:
        layers = self.keras.layers
        weight = self.constant(node, 1)
        bias = self.constant(node, 2)
        if weight.ndim != 4:
            raise _Unsupported(f"only 2-D convolutions (a {weight.ndim - 2}-D one)")
        x = self.as_nhwc(node.input[0])
        out_channels, per_group, kernel_h, kernel_w = weight.shape
        channels = int(x.shape[-1])
        groups = int(attrs.get("group", 1))
        strides = tuple(attrs.get("strides", (1, 1)))
        dilations = tuple(attrs.get("dilations", (1, 1)))
        if max(strides) > 1 and max(dilations) > 1:
            raise _Unsupported("strides and dilations both above 1")
        if per_group * groups != channels:
            raise _Unsupported(f"weights for {per_group * groups} input channels, the input has {channels}")
        padding, x = self._spatial_padding(node, attrs, x, (kernel_h, kernel_w), strides, dilations, 0.0)
        common = {"strides": strides, "padding": padding, "dilation_rate": dilations,
                  "use_bias": bias is not None}
        if groups == 1:
            layer = layers.Conv2D(out_channels, (kernel_h, kernel_w), **common)
            kernel = weight.transpose(2, 3, 1, 0)
        elif groups == channels and per_group == 1:
            multiplier = out_channels // channels
            layer = layers.DepthwiseConv2D((kernel_h, kernel_w), depth_multiplier=multiplier, **common)
            kernel = weight.reshape(channels, multiplier, kernel_h, kernel_w).transpose(2, 3, 0, 1)
        else:
            layer = layers.Conv2D(out_channels, (kernel_h, kernel_w), groups=groups, **common)
            kernel = weight.transpose(2, 3, 1, 0)
        y = layer(x)
        layer.set_weights([kernel.astype(np.float32)] + ([] if bias is None else [bias.astype(np.float32)]))
        self.put(node, y, "nhwc")

    def _spatial_padding(self, node: Any, attrs: dict[str, Any], x: Any, kernel: tuple[int, ...],
                         strides: tuple[int, ...], dilations: tuple[int, ...],
                         fill: float) -> tuple[str, Any]:
        """``("same" | "valid", x)``: the ONNX padding as TensorFlow's where they agree, else
        ``x`` padded with ``fill`` explicitly and ``valid``."""
        pads, same = self._pads(attrs, x, kernel, strides, dilations)
        if pads == [(0, 0), (0, 0)]:
            return "valid", x
        if pads == same:
            return "same", x
        if fill == 0.0:
            return "valid", self.keras.layers.ZeroPadding2D(tuple(pads))(x)
        return "valid", self.keras.ops.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)

    def _pads(self, attrs: dict[str, Any], x: Any, kernel: tuple[int, ...], strides: tuple[int, ...],
              dilations: tuple[int, ...]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The node's (before, after) pads of H and W, and what TensorFlow's ``same`` would add."""
        size = (int(x.shape[1]), int(x.shape[2]))
        same = [_tf_same_pads(size[axis], kernel[axis], strides[axis], dilations[axis]) for axis in (0, 1)]
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [pad[::-1] if auto_pad == "SAME_LOWER" else pad for pad in same]
        elif auto_pad == "VALID":
            pads = [(0, 0), (0, 0)]
        else:
            flat = [int(pad) for pad in attrs.get("pads", (0, 0, 0, 0))]
            pads = [(flat[0], flat[2]), (flat[1], flat[3])]
        if any(pad < 0 for pair in pads for pad in pair):
            raise _Unsupported("negative pads")
        return pads, same

    def _clip(self, node: Any, attrs: dict[str, Any]) -> None:
        ops = self.keras.ops
        if self.opset < 11:
            low, high = attrs.get("min"), attrs.get("max")
        else:
            low, high = self.constant(node, 1), self.constant(node, 2)
        low = None if low is None else float(np.asarray(low))
        high = None if high is None else float(np.asarray(high))
        x, layout = self._same_input(node)
        if low == 0.0:
            y = self.keras.layers.ReLU(max_value=high)(x)
        elif low is None and high is None:
            y = x
        else:
            y = ops.clip(x, -np.inf if low is None else low, np.inf if high is None else high)
        self.put(node, y, layout)

    def _relu(self, node: Any, attrs: dict[str, Any]) -> None:
        x, layout = self._same_input(node)
        self.put(node, self.keras.layers.ReLU()(x), layout)

    def _leaky_relu(self, node: Any, attrs: dict[str, Any]) -> None:
        x, layout = self._same_input(node)
        self.put(node, self.keras.layers.LeakyReLU(negative_slope=float(attrs.get("alpha", 0.01)))(x), layout)

    def _activation(self, node: Any, attrs: dict[str, Any]) -> None:
        x, layout = self._same_input(node)
        self.put(node, self.keras.layers.Activation(node.op_type.lower())(x), layout)

    def _round(self, node: Any, attrs: dict[str, Any]) -> None:
        """Halves to even, as ONNX's Round (and PyTorch's): a bottleneck's latent on the device."""
        x, layout = self._same_input(node)
        self.put(node, self.keras.ops.round(x), layout)

    def _hard_sigmoid(self, node: Any, attrs: dict[str, Any]) -> None:
        x, layout = self._same_input(node)
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        self.put(node, self.keras.ops.clip(x * alpha + beta, 0.0, 1.0), layout)

    def _hard_swish(self, node: Any, attrs: dict[str, Any]) -> None:
        x, layout = self._same_input(node)
        self.put(node, x * self.keras.layers.ReLU(max_value=6.0)(x + 3.0) * (1.0 / 6.0), layout)

    def _binary(self, node: Any, attrs: dict[str, Any]) -> None:
        ops = self.keras.ops
        operations = {"Add": ops.add, "Sub": ops.subtract, "Mul": ops.multiply, "Div": ops.divide}
        operation = operations[node.op_type]
        first, second = node.input[0], node.input[1]
        if first in self.values and second in self.values:
            a, b = self.values[first], self.values[second]
            if a.rank == b.rank == 4 and "nhwc" in (a.layout, b.layout):
                self.put(node, operation(self.as_nhwc(first), self.as_nhwc(second)), "nhwc")
            else:
                self.put(node, operation(self.as_onnx(first), self.as_onnx(second)), "onnx")
            return
        data_first = first in self.values
        data = self.values[first if data_first else second]
        constant = self.constants[second if data_first else first].astype(np.float32)
        if data.layout == "nhwc" and constant.ndim > 4:
            x, layout = self.as_onnx(first if data_first else second), "onnx"
        else:
            x, layout = data.tensor, data.layout
        if layout == "nhwc":
            constant = constant.reshape((1,) * (4 - constant.ndim) + constant.shape).transpose(0, 2, 3, 1)
        y = operation(x, constant) if data_first else operation(constant, x)
        self.put(node, y, layout)

    def _pad(self, node: Any, attrs: dict[str, Any]) -> None:
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect"):
            raise _Unsupported(f"mode {mode!r} (constant and reflect are)")
        if self.opset < 11:
            pads, fill = list(attrs.get("pads", ())), float(attrs.get("value", 0.0))
        else:
            pads = [int(pad) for pad in self.constant(node, 1)]
            fill_value = self.constant(node, 2)
            empty = fill_value is None or np.asarray(fill_value).size == 0
            fill = 0.0 if empty else float(np.asarray(fill_value))
        value = self.values[node.input[0]]
        rank = value.rank
        axes = self.constant(node, 3)
        if axes is not None:
            full = [0] * (2 * rank)
            for position, axis in enumerate(int(axis) % rank for axis in axes):
                full[axis], full[axis + rank] = pads[position], pads[position + len(axes)]
            pads = full
        if len(pads) != 2 * rank or any(pad < 0 for pad in pads):
            raise _Unsupported(f"pads {pads} (non-negative, two per axis)")
        pairs = list(zip(pads[:rank], pads[rank:], strict=True))
        if rank == 4 and pairs[0] == pairs[1] == (0, 0):
            x = self.as_nhwc(node.input[0])
            if mode == "constant" and fill == 0.0:
                y = self.keras.layers.ZeroPadding2D((pairs[2], pairs[3]))(x)
            else:
                y = self.keras.ops.pad(x, [(0, 0), pairs[2], pairs[3], (0, 0)], mode=mode,
                                       constant_values=fill if mode == "constant" else None)
            self.put(node, y, "nhwc")
            return
        if pairs[0] != (0, 0):
            raise _Unsupported("padding of the batch axis")
        x = self.as_onnx(node.input[0])
        self.put(node, self.keras.ops.pad(x, pairs, mode=mode, constant_values=fill if mode == "constant"
                                          else None), "onnx")

    def _batch_norm(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("training_mode", 0):
            raise _Unsupported("training mode")
        scale, offset, mean, variance = (self.constant(node, index) for index in (1, 2, 3, 4))
        value = self.values[node.input[0]]
        if value.rank == 4:
            x, axis, layout = self.as_nhwc(node.input[0]), -1, "nhwc"
        else:
            x, axis, layout = self.as_onnx(node.input[0]), 1, "onnx"
        layer = self.keras.layers.BatchNormalization(axis=axis, epsilon=float(attrs.get("epsilon", 1e-5)))
        y = layer(x, training=False)
        layer.set_weights([array.astype(np.float32) for array in (scale, offset, mean, variance)])
        self.put(node, y, layout)

    def _global_pool(self, node: Any, attrs: dict[str, Any]) -> None:
        layers = self.keras.layers
        average = node.op_type == "GlobalAveragePool"
        layer = layers.GlobalAveragePooling2D if average else layers.GlobalMaxPooling2D
        self.put(node, layer(keepdims=True)(self.as_nhwc(node.input[0])), "nhwc")

    def _pool(self, node: Any, attrs: dict[str, Any]) -> None:
        if len([name for name in node.output if name]) > 1:
            raise _Unsupported("the indices output")
        if attrs.get("ceil_mode", 0):
            raise _Unsupported("ceil_mode 1")
        kernel = tuple(attrs["kernel_shape"])
        if len(kernel) != 2:
            raise _Unsupported(f"only 2-D pooling (a {len(kernel)}-D one)")
        strides = tuple(attrs.get("strides", (1, 1)))
        dilations = tuple(attrs.get("dilations", (1, 1)))
        if max(dilations) > 1:
            raise _Unsupported("dilations above 1")
        x = self.as_nhwc(node.input[0])
        layers = self.keras.layers
        if node.op_type == "MaxPool":
            padding, x = self._spatial_padding(node, attrs, x, kernel, strides, dilations,
                                               float(np.finfo(np.float32).min))
            self.put(node, layers.MaxPooling2D(kernel, strides, padding=padding)(x), "nhwc")
            return
        pads, same = self._pads(attrs, x, kernel, strides, dilations)
        if pads == [(0, 0), (0, 0)]:
            padding = "valid"
        elif attrs.get("count_include_pad", 0):
            padding, x = "valid", layers.ZeroPadding2D(tuple(pads))(x)
        elif pads == same:
            padding = "same"  # TensorFlow's average leaves its "same" pads out, as count_include_pad 0 does
        else:
            raise _Unsupported("pads other than TensorFlow's 'same' left out of the average")
        self.put(node, layers.AveragePooling2D(kernel, strides, padding=padding)(x), "nhwc")

    def _flatten(self, node: Any, attrs: dict[str, Any]) -> None:
        axis = int(attrs.get("axis", 1))
        value = self.values[node.input[0]]
        if axis % max(value.rank, 1) != 1:
            raise _Unsupported(f"axis {axis} (only 1: the batch axis is kept)")
        self.put(node, self.keras.layers.Flatten()(self.as_onnx(node.input[0])), "onnx")

    def _reshape(self, node: Any, attrs: dict[str, Any]) -> None:
        shape = [int(dim) for dim in self.constant(node, 1)]
        x = self.as_onnx(node.input[0])
        dims = [int(dim) for dim in x.shape[1:]]
        if not shape or shape[0] not in (0, -1, *((1,) if self.batch_of_one else ())):
            raise _Unsupported(f"shape {shape}: the first axis must stay the batch axis (0 or -1"
                               f"{', or 1 in a graph of batch 1' if not self.batch_of_one else ''})")
        allow_zero = bool(attrs.get("allowzero", 0))
        rest = [dims[index - 1] if dim == 0 and not allow_zero and index - 1 < len(dims) else dim
                for index, dim in enumerate(shape[1:], start=1)]
        total = int(np.prod(dims))
        if -1 in rest:
            known = int(np.prod([dim for dim in rest if dim != -1]))
            rest[rest.index(-1)] = total // known if known else 0
        if int(np.prod(rest)) != total:
            raise _Unsupported(f"shape {shape} does not keep the batch axis of an input of shape "
                               f"(batch, {', '.join(map(str, dims))})")
        self.put(node, self.keras.layers.Reshape(tuple(rest))(x), "onnx")

    def _gemm(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("transA", 0):
            raise _Unsupported("transA 1")
        weight = self.constant(node, 1).astype(np.float32)
        bias = self.constant(node, 2)
        x = self.as_onnx(node.input[0])
        if len(x.shape) != 2:
            raise _Unsupported(f"input of rank {len(x.shape)} (Gemm takes a matrix)")
        kernel = (weight.T if attrs.get("transB", 0) else weight) * float(attrs.get("alpha", 1.0))
        units = kernel.shape[1]
        layer = self.keras.layers.Dense(units, use_bias=bias is not None)
        y = layer(x)
        weights = [kernel]
        if bias is not None:
            bias = np.asarray(bias, np.float32) * float(attrs.get("beta", 1.0))
            if bias.size not in (1, units) or (bias.ndim == 2 and bias.shape[0] != 1):
                raise _Unsupported(f"a bias of shape {bias.shape} (one value per output, or one in all)")
            weights.append(np.broadcast_to(bias.reshape(-1), (units,)).copy())
        layer.set_weights(weights)
        self.put(node, y, "onnx")

    def _matmul(self, node: Any, attrs: dict[str, Any]) -> None:
        second = node.input[1]
        if second in self.constants and self.constants[second].ndim == 2 and node.input[0] in self.values:
            weight = self.constants[second].astype(np.float32)
            layer = self.keras.layers.Dense(weight.shape[1], use_bias=False)
            y = layer(self.as_onnx(node.input[0]))
            layer.set_weights([weight])
            self.put(node, y, "onnx")
            return
        operands = [self.as_onnx(name) if name in self.values else self.constants[name].astype(np.float32)
                    for name in node.input[:2]]
        self.put(node, self.keras.ops.matmul(*operands), "onnx")

    def _concat(self, node: Any, attrs: dict[str, Any]) -> None:
        names = [name for name in node.input if name]
        if any(name not in self.values for name in names):
            raise _Unsupported("a constant operand")
        axis = int(attrs["axis"])
        values = [self.values[name] for name in names]
        if all(value.rank == 4 for value in values) and any(value.layout == "nhwc" for value in values):
            tensors = [self.as_nhwc(name) for name in names]
            self.put(node, self.keras.layers.Concatenate(axis=_NHWC_AXIS[axis % 4])(tensors), "nhwc")
        else:
            if axis % values[0].rank == 0:
                raise _Unsupported("concatenation along the batch axis")
            tensors = [self.as_onnx(name) for name in names]
            self.put(node, self.keras.layers.Concatenate(axis=axis)(tensors), "onnx")

    def _softmax(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        axis = int(attrs.get("axis", -1 if self.opset >= 13 else 1)) % value.rank
        if self.opset < 13 and axis != value.rank - 1:
            raise _Unsupported(f"axis {axis} before opset 13 (a flattened softmax) unless it is the last")
        if value.layout == "nhwc":
            x, axis = value.tensor, _NHWC_AXIS[axis]
        else:
            x = value.tensor
        if axis == 0:
            raise _Unsupported("softmax along the batch axis")
        self.put(node, self.keras.layers.Softmax(axis=axis)(x), value.layout)

    def _transpose(self, node: Any, attrs: dict[str, Any]) -> None:
        x = self.as_onnx(node.input[0])
        perm = list(attrs.get("perm", range(len(x.shape))[::-1]))
        if perm[0] != 0:
            raise _Unsupported(f"perm {perm} moves the batch axis")
        self.put(node, self.keras.layers.Permute(tuple(perm[1:]))(x), "onnx")

    def _identity(self, node: Any, attrs: dict[str, Any]) -> None:
        if len([name for name in node.output if name]) > 1:
            raise _Unsupported("the mask output")
        self.values[node.output[0]] = self.values[node.input[0]]


class _Unsupported(Exception):
    """A supported op with attributes or operands the conversion does not cover."""


def _tf_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """What TensorFlow's ``same`` padding adds before and after an axis of ``size``."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _initializer(name: str, value: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


__all__ = ["KerasGraph", "onnx_to_keras"]
