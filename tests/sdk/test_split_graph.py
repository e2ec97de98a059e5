"""Cuts of real ONNX graphs: EfficientNet-Lite0 (a chain with residual adds) and the PP-OCRv4
text detector (an FPN whose neck reads every backbone stage)."""

import numpy as np
import pytest

from coinfer.sdk.split.graph import SplitGraph, SplitGraphError


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    from coinfer.bench.models.efficientnet_lite import export_onnx

    return SplitGraph.load(export_onnx(tmp_path_factory.mktemp("effnet") / "efficientnet-lite0.onnx"))


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    from coinfer.bench.models.efficientnet_lite import preprocess

    return preprocess([data.chelsea(), data.coffee()])


def _run(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {n: feeds[n] for n in names}),
                    strict=True))


def test_every_prefix_cut_of_efficientnet_is_listed_with_its_bytes(efficientnet):
    cuts = efficientnet.cuts()
    assert len(cuts) == len(efficientnet.nodes) + 1 and len(efficientnet.nodes) > 80
    assert cuts[0].tensors == ("image",) and cuts[0].nbytes() == 3 * 224 * 224 * 4
    assert cuts[-1].tensors == ("logits",) and cuts[-1].nbytes("float16") == 1000 * 2
    # Inside a residual block the skip is open: two tensors cross.
    assert max(len(cut.tensors) for cut in cuts) == 2
    assert all(cut.nbytes("int8") < cut.nbytes("float16") < cut.nbytes("float32") for cut in cuts)
    singles = efficientnet.single_tensor_cuts()
    assert len(singles) > 30 and all(len(cut.tensors) == 1 for cut in singles)


def test_head_then_tail_equals_the_whole_network_at_every_cut(efficientnet, photos):
    import onnx

    whole = _run(efficientnet.model, {"image": photos})["logits"]
    assert whole.argmax(-1).tolist() == [285, 967]  # Egyptian cat, espresso
    for cut in efficientnet.cuts()[::9]:
        head, tail = efficientnet.extract(cut)
        sent = {"image": photos} | (_run(head, {"image": photos}) if head is not None else {})
        assert set(cut.tensors) <= set(sent)
        for name, count in zip(cut.tensors, cut.elements, strict=True):
            assert sent[name][0].size == count
        out = _run(tail, sent)["logits"] if tail is not None else sent["logits"]
        np.testing.assert_allclose(out, whole, rtol=0, atol=1e-4)
    assert isinstance(efficientnet.model, onnx.ModelProto)


def test_the_text_detectors_neck_makes_multi_tensor_cuts():
    from coinfer.bench.models import ocr_split

    graph = SplitGraph(ocr_split.load_detector())
    widest = max(len(cut.tensors) for cut in graph.cuts())
    assert widest >= 4  # the FPN neck reads all four backbone stages
    stride4 = graph.cut_after(ocr_split.DEFAULT_CUT)
    assert stride4.tensors == (ocr_split.DEFAULT_CUT,) and stride4.nbytes() == 48 * 56 * 96 * 4
    assert len(graph.cut_after("p2o.Add.147").tensors) == 3


def test_bad_graphs_and_cuts_get_clear_errors(efficientnet, tmp_path):
    with pytest.raises(SplitGraphError, match="no such ONNX file"):
        SplitGraph.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk" * 100)
    with pytest.raises(SplitGraphError, match="not a readable ONNX model"):
        SplitGraph.load(tmp_path / "junk.onnx")
    with pytest.raises(SplitGraphError, match="is a graph input"):
        efficientnet.cut_after("image")
    with pytest.raises(SplitGraphError, match="no tensor computed from the input"):
        efficientnet.cut_after("no-such-tensor")
    with pytest.raises(SplitGraphError, match="unknown tensor encoding"):
        efficientnet.cuts()[3].nbytes("bfloat8")


def test_a_symbolic_spatial_size_must_be_fixed_before_bytes_are_known(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])],
                              "g", [value("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                              [value("y", TensorProto.FLOAT, ["batch", 3, "h", "w"])])
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    with pytest.raises(SplitGraphError, match="symbolic dimension 'h'"):
        SplitGraph.load(tmp_path / "g.onnx").cuts()
    cut = SplitGraph.load(tmp_path / "g.onnx", {"x": ["batch", 3, 8, 8]}).cut_after("a")
    assert cut.tensors == ("a",) and cut.nbytes() == 3 * 8 * 8 * 4
    with pytest.raises(SplitGraphError, match="has 4 dimensions"):
        SplitGraph.load(tmp_path / "g.onnx", {"x": [3, 8, 8]})
