"""ONNX -> Keras: every supported op, alone in a tiny graph, gives ONNX Runtime's outputs to 1e-5;
a graph of many of them does so through TFLite too; what is not supported is one clear line."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from coinfer.converters.export import ExportError
from coinfer.converters.onnx_keras import onnx_to_keras

SHAPE = (2, 4, 9, 9)  # odd spatial size: TensorFlow's "same" pads differ before and after at stride 2
RNG = np.random.default_rng(0)


def weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def model(nodes, constants=None, shape=SHAPE, opset=17, outputs=("y",)):
    """``nodes`` on input ``x`` of ``shape`` (batch symbolic) -> ``outputs``, constants as initializers."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape[1:]])]
    results = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    initializers = [numpy_helper.from_array(np.asarray(value), name)
                    for name, value in (constants or {}).items()]
    graph = helper.make_graph(nodes, "tiny", inputs, results, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def node(op, inputs, output="y", **attrs):
    name = f"{op.lower()}_node" if output == "y" else f"{op.lower()}_{output}"
    return helper.make_node(op, inputs, [output], name=name, **attrs)


def conv(name="y", source="x", channels=4, out=6, kernel=3, group=1, **attrs):
    constants = {f"{name}_w": weights(out, channels // group, kernel, kernel), f"{name}_b": weights(out)}
    return node("Conv", [source, f"{name}_w", f"{name}_b"], name, group=group, **attrs), constants


def single(op_node, constants=None, **kwargs):
    return model([op_node], constants, **kwargs)


def chain(*parts, **kwargs):
    nodes, constants = [], {}
    for part in parts:
        part_node, part_constants = part if isinstance(part, tuple) else (part, {})
        nodes.append(part_node)
        constants.update(part_constants)
    return model(nodes, constants, **kwargs)


def pooled_matrix(then):
    """x -> GlobalAveragePool -> Flatten -> ``then`` (a node reading ``f``): for matrix ops."""
    return chain(node("GlobalAveragePool", ["x"], "p"), node("Flatten", ["p"], "f"), then)


CASES = {
    "conv asymmetric pads stride 2": chain(conv(pads=[0, 0, 1, 1], strides=[2, 2])),
    "conv tf-same pads stride 2": chain(conv(pads=[1, 1, 1, 1], strides=[2, 2])),
    "conv same stride 1": chain(conv(pads=[1, 1, 1, 1])),
    "conv auto_pad SAME_UPPER stride 2": chain(conv(auto_pad="SAME_UPPER", strides=[2, 2])),
    "conv auto_pad VALID, no bias": single(node("Conv", ["x", "w"], auto_pad="VALID"),
                                           {"w": weights(3, 4, 2, 2)}),
    "conv dilated": chain(conv(pads=[2, 2, 2, 2], dilations=[2, 2])),
    "conv 1x1 rectangular stride": chain(conv(kernel=1, strides=[2, 1])),
    "conv grouped": chain(conv(group=2, pads=[1, 1, 1, 1])),
    "conv depthwise stride 2": chain(conv(out=4, group=4, pads=[0, 0, 1, 1], strides=[2, 2])),
    "conv depthwise multiplier 2": chain(conv(out=8, group=4, pads=[1, 1, 1, 1])),
    "clip relu6": single(node("Clip", ["x", "lo", "hi"]), {"lo": np.float32(0), "hi": np.float32(6)}),
    "clip any range": single(node("Clip", ["x", "lo", "hi"]),
                             {"lo": np.float32(-0.5), "hi": np.float32(0.7)}),
    "clip max only": single(node("Clip", ["x", "", "hi"]), {"hi": np.float32(0.3)}),
    "clip opset 6 attributes": single(node("Clip", ["x"], min=0.0, max=6.0), opset=6),
    "relu": single(node("Relu", ["x"])),
    "leaky relu": single(node("LeakyRelu", ["x"], alpha=0.1)),
    "sigmoid": single(node("Sigmoid", ["x"])),
    "tanh": single(node("Tanh", ["x"])),
    "round": single(node("Round", ["x"])),
    "hard sigmoid": single(node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)),
    "hard swish": single(node("HardSwish", ["x"])),
    "add two tensors": chain(conv("a", out=4, pads=[1, 1, 1, 1]), node("Add", ["a", "x"])),
    "add per-channel constant": single(node("Add", ["x", "c"]), {"c": weights(4, 1, 1)}),
    "sub constant first": single(node("Sub", ["c", "x"]), {"c": weights(1, 4, 1, 1)}),
    "mul full constant": single(node("Mul", ["x", "c"]), {"c": weights(1, 4, 9, 9)}),
    "mul row constant": single(node("Mul", ["x", "c"]), {"c": weights(9)}),
    "div scalar": single(node("Div", ["x", "c"]), {"c": np.float32(3.0)}),
    "pad zeros before a valid conv": chain((node("Pad", ["x", "pads"], "p"),
                                            {"pads": np.array([0, 0, 0, 1, 0, 0, 2, 1])}),
                                           conv(source="p", strides=[2, 2])),
    "pad a value": single(node("Pad", ["x", "pads", "v"]), {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]),
                                                           "v": np.float32(1.5)}),
    "pad reflect": single(node("Pad", ["x", "pads"], mode="reflect"),
                          {"pads": np.array([0, 0, 2, 1, 0, 0, 1, 2])}),
    "pad channels": single(node("Pad", ["x", "pads"]), {"pads": np.array([0, 1, 0, 0, 0, 2, 0, 0])}),
    "batch normalization": single(node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3),
                                  {"s": weights(4), "b": weights(4), "m": weights(4),
                                   "v": np.abs(weights(4)) + 0.5}),
    "global average pool": single(node("GlobalAveragePool", ["x"])),
    "global max pool": single(node("GlobalMaxPool", ["x"])),
    "max pool same stride 2": single(node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1])),
    "max pool explicit pads": single(node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2],
                                          pads=[1, 0, 0, 1])),
    "average pool valid": single(node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2])),
    "average pool same, pads left out": single(node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                                    pads=[1, 1, 1, 1])),
    "average pool pads counted": single(node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                             count_include_pad=1)),
    "flatten of a feature map": chain(conv("a", pads=[1, 1, 1, 1]), node("Flatten", ["a"])),
    "reshape of a feature map": chain((node("Relu", ["x"], "r"), {}),
                                      (node("Reshape", ["r", "s"]), {"s": np.array([0, 36, -1])})),
    "gemm transB": pooled_matrix((node("Gemm", ["f", "w", "b"], transB=1, alpha=0.5, beta=2.0),
                                  {"w": weights(5, 4), "b": weights(5)})),
    "gemm no bias": pooled_matrix((node("Gemm", ["f", "w"]), {"w": weights(4, 5)})),
    "matmul constant": pooled_matrix((node("MatMul", ["f", "w"]), {"w": weights(4, 3)})),
    "concat channels": chain(conv("a", out=3, pads=[1, 1, 1, 1]), node("Concat", ["a", "x"], axis=1)),
    "softmax": pooled_matrix((node("Softmax", ["f"], axis=-1), {})),
    "transpose": single(node("Transpose", ["x"], perm=[0, 3, 1, 2])),
    "identity and dropout": chain(node("Identity", ["x"], "i"), node("Dropout", ["i"])),
    "folded constants": chain((helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        np.array([0, -1], np.int64))), {}), node("Reshape", ["x", "c"])),
}


def onnx_runtime(onnx_model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x}), strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_each_supported_op_matches_onnx_runtime(case):
    onnx_model = CASES[case]
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    converted = onnx_to_keras(onnx_model)
    got = {name: np.asarray(value) for name, value in converted.model(x, training=False).items()}
    want = onnx_runtime(onnx_model, x)
    assert sorted(got) == sorted(want) == ["y"]
    assert got["y"].shape == want["y"].shape
    np.testing.assert_allclose(got["y"], want["y"], rtol=0, atol=1e-5)


def test_a_graph_of_many_ops_matches_through_tflite(tmp_path):
    from coinfer.converters.keras_tflite import keras_to_tflite
    from coinfer.device.runtime.tflite import TFLiteRunner

    onnx_model = chain(
        (node("Pad", ["x", "pads"], "p"), {"pads": np.array([0, 0, 0, 0, 0, 0, 1, 1])}),
        conv("a", source="p", out=8, strides=[2, 2]), node("Clip", ["a", "lo", "hi"], "b"),
        conv("c", source="b", channels=8, out=8, group=8, pads=[1, 1, 1, 1]), node("Relu", ["c"], "d"),
        (node("Add", ["d", "b"], "e"), {"lo": np.float32(0), "hi": np.float32(6)}),
        node("GlobalAveragePool", ["e"], "g"), node("Reshape", ["g", "shape"], "h"),
        (node("Gemm", ["h", "w", "wb"], "y", transB=1), {"shape": np.array([-1, 8]), "w": weights(3, 8),
                                                           "wb": weights(3)}),
        outputs=("y", "e"))
    x = RNG.standard_normal((5, *SHAPE[1:])).astype(np.float32)
    converted = onnx_to_keras(onnx_model)
    result = keras_to_tflite(converted.model, tmp_path / "tflite", samples=x)
    runner = TFLiteRunner.create_from_file(result.artifact.file("model.tflite"))
    assert sorted(spec.name for spec in runner.output_specs) == ["e", "y"]
    assert runner.input_specs[0].shape == (None, *SHAPE[1:])
    got, want = runner.run(x), onnx_runtime(onnx_model, x)
    for name in ("y", "e"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("graph", "message"), [
    (single(node("Erf", ["x"])), "unsupported graph: op Erf in node 'erf_node'"),
    (single(helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")),
     "unsupported graph: op Gelu in node 'g' (domain 'com.microsoft')"),
    (single(node("Conv", ["x", "w"]), {"w": weights(2, 4, 3)}, shape=(2, 4, 9)),
     "unsupported graph: op Conv in node 'conv_node': only 2-D convolutions"),
    (single(node("Pad", ["x", "pads"], mode="edge"), {"pads": np.zeros(8, np.int64)}),
     "unsupported graph: op Pad in node 'pad_node': mode 'edge'"),
    (single(node("Reshape", ["x", "s"]), {"s": np.array([4, -1])}),
     "unsupported graph: op Reshape in node 'reshape_node': shape [4, -1]: the first axis must stay"),
    (single(node("Reshape", ["x", "s"]), {"s": np.array([1, -1])}),
     "unsupported graph: op Reshape in node 'reshape_node': shape [1, -1]: the first axis must stay"),
    (single(node("Reshape", ["x", "s"]), {"s": np.array([-1, 5, 7])}),
     "unsupported graph: op Reshape in node 'reshape_node': shape [-1, 5, 7] does not keep the batch axis"),
    (chain(node("Relu", ["x"], "r"), node("Mul", ["r", "x2"])),
     "unsupported graph: op Mul in node 'mul_node' reads 'x2', which no earlier node makes"),
])
def test_what_is_not_supported_is_named_in_one_line(graph, message):
    with pytest.raises(ExportError) as raised:
        onnx_to_keras(graph)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_missing_or_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(ExportError, match="no such ONNX file"):
        onnx_to_keras(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx" * 10)
    with pytest.raises(ExportError, match="not a readable ONNX model"):
        onnx_to_keras(tmp_path / "junk.onnx")
