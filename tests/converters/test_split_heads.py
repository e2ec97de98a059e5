"""Split heads as TFLite: the device side's ONNX head becomes ``head.tflite`` (float32 or int8),
the edge side of the same export serves it, the device client runs it on LiteRT (also where
tensorflow and torch cannot be imported), and on EfficientNet-Lite0 the float32 head matches
ONNX Runtime while the int8 head keeps the top-1 class of real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from coinfer.converters.export import ExportError
from coinfer.converters.split_heads import export_split_tflite, export_tflite_head
from coinfer.device.split import SplitClient
from coinfer.edge.split import SplitServer, SplitServiceOptions
from coinfer.sdk.artifact import Manifest, save_artifact
from coinfer.sdk.cli.main import main
from coinfer.sdk.split.bundle import (
    DEVICE_DIR,
    EDGE_DIR,
    HEAD_FILE,
    HEAD_TFLITE_FILE,
    SplitBundleError,
    export_split,
    load_side,
    load_split,
)
from coinfer.sdk.split.graph import SplitGraph

TOKEN = "tflite-head-token"
RNG = np.random.default_rng(0)


def tiny_graph() -> SplitGraph:
    """A residual CNN block and a classifier: conv (stride 2, "same" pads) -> relu6 -> depthwise ->
    add -> pool -> gemm. Cut ``cut_after("d")`` leaves the block open: two tensors cross."""

    def w(*shape):
        return numpy_helper.from_array((RNG.standard_normal(shape) * 0.4).astype(np.float32), f"w{len(shape)}"
                                       f"{'x'.join(map(str, shape))}")

    stem, depth, head = w(8, 3, 3, 3), w(8, 1, 3, 3), w(5, 8)
    six = numpy_helper.from_array(np.float32(6), "six")
    zero = numpy_helper.from_array(np.float32(0), "zero")
    nodes = [helper.make_node("Conv", ["x", stem.name], ["a"], pads=[0, 0, 1, 1], strides=[2, 2]),
             helper.make_node("Clip", ["a", "zero", "six"], ["b"]),
             helper.make_node("Conv", ["b", depth.name], ["d"], group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["d", "b"], ["e"]),
             helper.make_node("GlobalAveragePool", ["e"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", head.name], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [stem, depth, head, six, zero])
    return SplitGraph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, object]:
    """The tiny graph's ONNX export at the open-block cut and its TFLite device sides."""
    root = tmp_path_factory.mktemp("tiny")
    graph = tiny_graph()
    cut = graph.cut_after("d")
    assert sorted(cut.tensors) == ["b", "d"]
    device, edge = export_split(graph, cut, root / "onnx", "float16")
    calibration = RNG.standard_normal((32, 3, 16, 16)).astype(np.float32)
    heads = {"float32": export_tflite_head(device, root / "float32"),
             "int8": export_tflite_head(device, root / "int8", "int8", calibration=calibration)}
    return {"graph": graph, "cut": cut, "device": device, "edge": edge, "heads": heads, "root": root,
            "calibration": calibration}


def test_a_tflite_head_is_a_device_side_of_the_same_export(tiny):
    for quantization, head in tiny["heads"].items():
        device, edge = load_split(head.side.artifact.path, tiny["edge"].artifact.path)
        assert device.spec == tiny["device"].spec == edge.spec
        assert sorted(device.artifact.manifest.files) == [HEAD_TFLITE_FILE, "split.json"]
        assert device.model is not None and device.model.name == HEAD_TFLITE_FILE
        metadata = device.artifact.manifest.metadata
        assert metadata["head_format"] == f"tflite-{quantization}"
        assert metadata["head_parity"]["max_abs_err"] == head.max_abs_err
        assert device.head_tensors == ({"x": "x"}, {"b": "b", "d": "d"})
        assert (device.artifact.file("split.json").read_bytes()
                == tiny["device"].artifact.file("split.json").read_bytes())
    float32, int8 = tiny["heads"]["float32"], tiny["heads"]["int8"]
    assert float32.max_abs_err < 1e-5 and float32.samples == 4  # random inputs without calibration
    assert int8.samples == 32 and 1e-4 < int8.max_abs_err <= int8.limit and int8.relative_rms < 0.1
    print(f"\ntiny head: float32 {float32.max_abs_err:.2g} ({float32.model_bytes} B), int8 "
          f"{int8.max_abs_err:.2g} of outputs up to {int8.output_scale:.2g} ({int8.model_bytes} B)")


def test_the_client_runs_a_tflite_head_against_the_unchanged_edge(tiny):
    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)
    with SplitServer(tiny["edge"], TOKEN, SplitServiceOptions(max_batch=4)) as server:
        results = {}
        for name, side in [("onnx", tiny["device"])] + [(q, h.side) for q, h in tiny["heads"].items()]:
            client = SplitClient.create_from_bundle(side.artifact.path, server.url, TOKEN, max_batch=4)
            results[name] = client.infer(x)["logits"]
            assert client.infer(x[:1])["logits"].shape == (1, 5)  # another batch size: the runner resizes
    whole = tiny["graph"]
    import onnxruntime as ort

    want = ort.InferenceSession(whole.model.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(results["onnx"] - want).max() < 0.05  # float16 on the wire
    assert np.abs(results["float32"] - results["onnx"]).max() < 1e-5
    assert (results["int8"].argmax(1) == want.argmax(1)).mean() >= 2 / 3


def test_the_device_runs_a_tflite_head_without_heavy_frameworks(tiny, run_blocked, tmp_path):
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    head = tiny["heads"]["int8"].side.artifact.path
    with SplitServer(tiny["edge"], TOKEN, SplitServiceOptions(max_batch=4)) as server:
        out = run_blocked(f"""
import json, sys
import numpy as np
from coinfer.device.split import SplitClient
client = SplitClient.create_from_bundle({str(head)!r}, {server.url!r}, {TOKEN!r})
np.save({str(tmp_path / 'logits.npy')!r}, client.infer(np.load({str(tmp_path / 'x.npy')!r}))["logits"])
print(json.dumps({{"backend": client._runner.backend, "loaded": sorted(m for m in sys.modules
      if m.split(".")[0] in {{"tensorflow", "torch", "transformers", "keras", "onnxruntime"}})}}))
""")
        here = SplitClient.create_from_bundle(head, server.url, TOKEN).infer(x)["logits"]
    assert json.loads(out.strip().splitlines()[-1]) == {"backend": "ai_edge_litert.interpreter", "loaded": []}
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), here)


def test_what_cannot_become_a_tflite_head_is_refused_and_nothing_is_written(tiny, tmp_path):
    device, graph = tiny["device"], tiny["graph"]
    with pytest.raises(ExportError, match="needs calibration"):
        export_tflite_head(device, tmp_path / "a", "int8")
    with pytest.raises(ExportError, match="unknown head quantization 'float16'"):
        export_tflite_head(device, tmp_path / "a", "float16")
    with pytest.raises(ExportError, match=r"calibration for 'x' must be numbers of shape \(n, 3, 16, 16\)"):
        export_tflite_head(device, tmp_path / "a", "int8", calibration=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(ExportError, match=r"is head\.tflite already"):
        export_tflite_head(tiny["heads"]["float32"].side, tmp_path / "a")
    all_edge, _ = export_split(graph, graph.cuts()[0], tmp_path / "edge-only", "float32")
    with pytest.raises(ExportError, match="no node to run"):
        export_tflite_head(all_edge, tmp_path / "a")
    with pytest.raises(ExportError, match="off the ONNX head"):
        export_tflite_head(device, tmp_path / "a", "int8", calibration=tiny["calibration"], tolerance=1e-9)
    with pytest.raises(ExportError, match="needs calibration"):
        export_split_tflite(graph, tiny["cut"], tmp_path / "a", "int8", "int8")
    assert not (tmp_path / "a").exists()


def test_a_device_side_with_two_heads_or_unnamed_tensors_is_refused(tiny, tmp_path):
    head = tiny["heads"]["float32"].side
    files = {name: head.artifact.file(name) for name in head.artifact.manifest.files}
    manifest = head.artifact.manifest

    def side(name, metadata, extra=None):
        save_artifact(tmp_path / name, Manifest(manifest.capability, manifest.kind, manifest.inputs,
                                                manifest.outputs, metadata=metadata),
                      {**files, **(extra or {})})
        return tmp_path / name

    both = side("both", manifest.metadata, {HEAD_FILE: tiny["device"].model})
    with pytest.raises(SplitBundleError, match=r"holds both head\.onnx and head\.tflite"):
        load_side(both, "head")
    unnamed = side("unnamed", {key: value for key, value in manifest.metadata.items()
                               if key != "head_tensors"})
    with pytest.raises(SplitBundleError, match="must map 'inputs'"):
        load_side(unnamed, "head")
    names = {"inputs": {"x": "x"}, "outputs": {"b": "b"}}
    wrong = side("wrong", {**manifest.metadata, "head_tensors": names})
    with pytest.raises(SplitBundleError, match=r"outputs \['b'\] are not the crossing tensors the head"):
        load_side(wrong, "head")


def test_split_export_writes_a_tflite_head(tiny, tmp_path, capsys):
    import onnx

    onnx.save(tiny["graph"].model, tmp_path / "tiny.onnx")
    np.save(tmp_path / "calibration.npy", tiny["calibration"][:8])
    assert main(["split", "export", "--model", str(tmp_path / "tiny.onnx"), "--cut", "3",
                 "--encoding", "int8", "--head-format", "tflite-int8",
                 "--calibration", str(tmp_path / "calibration.npy"), "--out", str(tmp_path / "out")]) == 0
    assert "head: tflite-int8" in capsys.readouterr().out
    device, edge = load_split(tmp_path / "out" / DEVICE_DIR, tmp_path / "out" / EDGE_DIR)
    assert device.model is not None and device.model.name == HEAD_TFLITE_FILE and edge.spec.encoding == "int8"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [DEVICE_DIR, EDGE_DIR]


# --- EfficientNet-Lite0 --------------------------------------------------------------------------

#: Photos the int8 heads calibrate on; the two the tests classify are not among them.
CALIBRATION_PHOTOS = ("astronaut", "brick", "camera", "clock", "coins", "colorwheel", "grass", "gravel",
                      "horse", "rocket", "stereo_motorcycle", "text")


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory) -> dict[str, object]:
    from coinfer.bench.models.efficientnet_lite import export_onnx, preprocess
    from coinfer.bench.split.images import photo

    path = export_onnx(tmp_path_factory.mktemp("effnet") / "efficientnet-lite0.onnx")
    graph = SplitGraph.load(path)
    import onnxruntime as ort

    photos = preprocess([photo("chelsea"), photo("coffee")])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    whole = session.run(None, {"image": photos})[0]
    assert whole.argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso
    return {"graph": graph, "photos": photos, "whole": whole, "root": tmp_path_factory.mktemp("heads"),
            "calibration": preprocess([photo(name) for name in CALIBRATION_PHOTOS])}


@pytest.mark.slow  # converts EfficientNet-Lite0's heads to TFLite twice per cut: ~20 s
@pytest.mark.parametrize("index", [24, 43])
def test_efficientnet_heads_as_tflite(efficientnet, index):
    import onnxruntime as ort

    graph, photos = efficientnet["graph"], efficientnet["photos"]
    out = Path(efficientnet["root"]) / f"cut{index}"
    device, edge = export_split(graph, graph.cuts()[index], out / "onnx", "float32")
    float32 = export_tflite_head(device, out / "float32", samples=photos)
    int8 = export_tflite_head(device, out / "int8", "int8", calibration=efficientnet["calibration"],
                              samples=photos)
    assert float32.max_abs_err <= 1e-5 * float32.output_scale  # outputs up to ~40 here
    assert float32.relative_rms < 1e-5 and int8.relative_rms < 0.2
    tail = ort.InferenceSession(str(edge.model), providers=["CPUExecutionProvider"])
    from coinfer.device.runtime.tflite import TFLiteRunner

    runner = TFLiteRunner.create_from_file(int8.side.model)
    crossing = runner.run({"image": photos})
    logits = tail.run(["logits"], crossing)[0]
    assert logits.argmax(1).tolist() == [285, 967]
    print(f"\ncut {index}: float32 head {float32.model_bytes} B, max|err| {float32.max_abs_err:.2g}; "
          f"int8 head {int8.model_bytes} B, max|err| {int8.max_abs_err:.2g} of outputs up to "
          f"{int8.output_scale:.3g}, relative RMS error {int8.relative_rms:.2g}, "
          f"logits off by {np.abs(logits - efficientnet['whole']).max():.3g}")


@pytest.mark.slow  # converts a head, starts the tail service
def test_efficientnet_split_with_an_int8_tflite_head_gives_the_whole_networks_top1(efficientnet):
    graph, photos = efficientnet["graph"], efficientnet["photos"]
    out = Path(efficientnet["root"]) / "served"
    _, edge, head = export_split_tflite(graph, graph.cuts()[43], out, "int8", "int8",
                                        efficientnet["calibration"])
    with SplitServer(edge, TOKEN, SplitServiceOptions(max_batch=4)) as server:
        client = SplitClient.create_from_bundle(out / DEVICE_DIR, server.url, TOKEN, threads=1, max_batch=4)
        logits = client.infer(photos)["logits"]
    assert client.last is not None and client.last.head_ms > 0
    assert logits.argmax(1).tolist() == efficientnet["whole"].argmax(1).tolist() == [285, 967]
    print(f"\ncut 43, int8 head ({head.model_bytes} B) and int8 on the wire: logits off by "
          f"{np.abs(logits - efficientnet['whole']).max():.3g}, head {client.last.head_ms:.1f} ms")
