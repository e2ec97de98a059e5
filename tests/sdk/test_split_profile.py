"""Latency profiles of the real EfficientNet-Lite0 graph on ONNX Runtime: every 4th prefix cut
measured (head and tail sessions), the per-operator regression fitted from one profiled run,
and profiles as artifacts.

Timings on a shared machine are noisy, so every assertion compares times with each other
(ratios with wide bounds), never with a wall-clock threshold.
"""

import dataclasses
import json

import numpy as np
import pytest

from coinfer.sdk.artifact import ArtifactError
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.split.graph import SplitGraph
from coinfer.sdk.split.profile import (
    CutTimes,
    OperatorModel,
    Profile,
    fit_operator_model,
    graph_fingerprint,
    load_profile,
    measure_cuts,
    merge_sides,
    predict_cuts,
    profile_nodes,
    save_profile,
)


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    from coinfer.bench.models.efficientnet_lite import export_onnx

    return SplitGraph.load(export_onnx(tmp_path_factory.mktemp("effnet") / "efficientnet-lite0.onnx"))


@pytest.fixture(scope="module")
def feeds():
    from skimage import data

    from coinfer.bench.models.efficientnet_lite import preprocess

    return {"image": preprocess([data.chelsea()])}


@pytest.fixture(scope="module")
def every_fourth(efficientnet):
    count = len(efficientnet.cuts())
    return sorted(set(range(0, count, 4)) | {count - 1})


@pytest.fixture(scope="module")
def measured(efficientnet, feeds, every_fourth):
    seen = []
    times = measure_cuts(efficientnet, feeds, repeats=3, cuts=every_fourth,
                         progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(every_fourth), len(every_fourth)) and len(seen) == len(every_fourth)
    return times


@pytest.fixture(scope="module")
def operators(efficientnet, feeds, measured):
    return fit_operator_model(efficientnet, profile_nodes(efficientnet, feeds, repeats=3), measured)


def tiny_graph():
    from onnx import TensorProto, helper

    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8])  # noqa: E731
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Neg", ["a"], ["y"], name="neg")]
    return SplitGraph(helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")])))


def test_heads_grow_tails_shrink_and_empty_sides_cost_nothing(efficientnet, measured, every_fourth):
    assert measured.cuts == tuple(every_fourth) and measured.runtime == "onnxruntime"
    assert (measured.threads, measured.edge_threads, measured.batch, measured.repeats) == (1, 1, 1, 3)
    assert measured.graph_sha256 == graph_fingerprint(efficientnet)
    device, edge = np.array(measured.device_ms), np.array(measured.edge_ms)
    assert device[0] == 0 and edge[-1] == 0 and (device[1:] > 0).all() and (edge[:-1] > 0).all()
    # The whole network as a head costs several times its first block; the other way round as a tail.
    assert device[-1] > 2 * device[1] and edge[0] > 2 * edge[-2]
    # Non-decreasing up to noise: no head is under a third of a smaller one.
    assert all(device[k] > device[1:k].max() / 3 for k in range(2, len(device)))
    assert measured.at(every_fourth[1]) == (device[1], edge[1])


def test_head_plus_tail_is_about_the_whole_network(measured):
    middle = len(measured.cuts) // 2
    for position in (1, middle, len(measured.cuts) - 2):
        ratio = (measured.device_ms[position] + measured.edge_ms[position]) / measured.whole_ms
        assert 0.5 < ratio < 3, (measured.cuts[position], ratio)
    # All-device and all-edge each run the whole network as one session.
    assert 0.5 < measured.device_ms[-1] / measured.whole_ms < 2
    assert 0.5 < measured.edge_ms[0] / measured.whole_ms < 2


def test_the_operator_model_predicts_the_network_from_one_profiled_run(efficientnet, measured, operators):
    assert operators.samples["Conv"] == 49 and {"Conv", "Clip"} <= set(operators.coefficients)
    assert "Gemm" not in operators.coefficients  # one Gemm: it takes the all-types fallback
    assert all(value >= 0 for abc in (*operators.coefficients.values(), operators.fallback) for value in abc)
    assert 0.5 < operators.predict_whole(efficientnet) / measured.whole_ms < 2
    predicted = predict_cuts(efficientnet, operators, cuts=measured.cuts)
    assert predicted.method == "predicted" and predicted.cuts == measured.cuts and predicted.repeats == 0
    device = np.array(predicted.device_ms)
    assert device[0] == 0 and (np.diff(device) >= 0).all() and device[-1] > 2 * device[1]
    assert predicted.edge_ms[-1] == 0 and (np.diff(predicted.edge_ms) <= 0).all()
    # Over the cuts, the typical prediction is within a factor of 2 of the measurement on either side.
    for measured_ms, predicted_ms in ((measured.device_ms[1:], device[1:]),
                                      (measured.edge_ms[:-1], predicted.edge_ms[:-1])):
        ratios = np.array(predicted_ms) / np.array(measured_ms)
        assert 0.5 < np.median(ratios) < 2, ratios.round(2)
    head, tail = operators.predict_cut(efficientnet, efficientnet.cuts()[measured.cuts[1]])
    assert (head, tail) == (device[1], predicted.edge_ms[1])


def test_device_heads_and_edge_tails_merge_into_one_profile(measured):
    edge_side = dataclasses.replace(measured, edge_ms=tuple(ms / 3 for ms in measured.edge_ms),
                                    edge_threads=4, threads=4)
    merged = merge_sides(measured, edge_side)
    assert merged.method == "merged" and merged.device_ms == measured.device_ms
    assert merged.edge_ms == edge_side.edge_ms and (merged.threads, merged.edge_threads) == (1, 4)
    with pytest.raises(InvalidArgumentError, match="differ in cuts"):
        merge_sides(measured, dataclasses.replace(edge_side, cuts=(*measured.cuts[:-1], 999)))


def test_a_saved_profile_loads_back_equal_and_only_for_its_graph(efficientnet, measured, operators, tmp_path):
    path = save_profile(tmp_path / "profile", measured, operators)
    assert load_profile(path, efficientnet) == Profile(measured, operators)
    document = json.loads((path / "profile.json").read_text())
    assert document["times"]["cuts"] == list(measured.cuts)  # plain JSON, nothing pickled
    assert load_profile(save_profile(tmp_path / "times-only", measured)).operators is None
    with pytest.raises(ArtifactError, match="a profile of another graph"):
        load_profile(path, tiny_graph())
    (path / "profile.json").write_text(json.dumps({"times": {"cuts": [1]}, "operators": None}))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_profile(path)


def test_a_malformed_profile_is_refused_naming_the_field(measured, tmp_path):
    from coinfer.sdk.artifact import Manifest, save_artifact

    document = {"times": measured.to_dict() | {"device_ms": ["fast"] * len(measured.cuts)}, "operators": None}
    files = {"profile.json": json.dumps(document).encode()}
    save_artifact(tmp_path / "bad", Manifest("split", "profile"), files)
    with pytest.raises(ArtifactError, match="'device_ms' must be a list of finite numbers"):
        load_profile(tmp_path / "bad")
    with pytest.raises(InvalidArgumentError, match="operator model: missing field 'fallback'"):
        OperatorModel.from_dict({"coefficients": {}, "samples": {}})
    with pytest.raises(InvalidArgumentError, match=r"'fallback' must be three numbers"):
        OperatorModel.from_dict({"coefficients": {}, "samples": {}, "fallback": [1.0]})


def test_bad_arguments_get_clear_errors(efficientnet, feeds, measured, operators):
    image = feeds["image"]
    cases = [
        (dict(repeats=0), "repeats must be an integer from 1 to 1000, got 0"),
        (dict(repeats=10**6), "repeats must be an integer from 1 to 1000"),
        (dict(warmup=-1), "warmup must be an integer from 0 to 100"),
        (dict(threads=0), "threads must be an integer from 1 to 256"),
        (dict(threads=True), "threads must be an integer"),
        (dict(cuts=[95]), r"cuts are indices 0 to 94 of graph.cuts\(\), not \[95\]"),
        (dict(cuts=["middle"]), "cuts are indices"),
        (dict(cuts=[]), "1 to 2048 cuts at a time, got 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            measure_cuts(efficientnet, feeds, **kwargs)
    bad_inputs = [
        ({}, r"missing \['image'\]"),
        ({"image": image, "extra": image}, r"unknown \['extra'\]"),
        ({"image": image.astype(np.float64)}, "'image' is float64; the graph takes float32"),
        ({"image": image[:, :, :100]}, r"shape \(1, 3, 100, 224\); the graph takes \['\?', 3, 224, 224\]"),
        ({"image": image[:0]}, "'image' is empty"),
    ]
    for inputs, message in bad_inputs:
        with pytest.raises(InvalidArgumentError, match=message):
            profile_nodes(efficientnet, inputs)
    tiny = tiny_graph()
    tiny_nodes = profile_nodes(tiny, {"x": np.ones((1, 8), np.float32)}, repeats=1)
    with pytest.raises(InvalidArgumentError, match="node times are of another graph"):
        fit_operator_model(efficientnet, tiny_nodes)
    with pytest.raises(InvalidArgumentError, match="cut times are of another graph"):
        fit_operator_model(tiny, tiny_nodes, measured)
    with pytest.raises(InvalidArgumentError, match="cut 5 was not measured"):
        measured.at(5)
    with pytest.raises(InvalidArgumentError, match="increasing indices"):
        dataclasses.replace(measured, cuts=tuple(reversed(measured.cuts)))
    with pytest.raises(InvalidArgumentError, match="the edge's 4"):
        predict_cuts(efficientnet, operators, dataclasses.replace(operators, batch=4))


def test_a_tiny_graph_fits_with_every_type_on_the_fallback():
    graph = tiny_graph()
    feeds = {"x": np.ones((1, 8), np.float32)}
    nodes = profile_nodes(graph, feeds, repeats=2)
    assert sorted(graph.nodes[index].name for index in nodes.node_ms) == ["neg", "relu"]
    model = fit_operator_model(graph, nodes)  # no cut times: the overhead comes from the trace
    assert model.coefficients == {} and model.samples == {"Neg": 1, "Relu": 1} and model.session_ms >= 0
    assert isinstance(model, OperatorModel) and OperatorModel.from_dict(model.to_dict()) == model
    times = measure_cuts(graph, feeds, repeats=1, warmup=0)
    assert isinstance(times, CutTimes) and CutTimes.from_dict(times.to_dict()) == times


def test_each_side_times_only_its_halves_and_merges_only_them():
    graph = tiny_graph()
    feeds = {"x": np.ones((1, 8), np.float32)}
    heads = measure_cuts(graph, feeds, repeats=2, side="device")
    tails = measure_cuts(graph, feeds, repeats=2, side="edge")
    assert heads.side == "device" and not any(heads.edge_ms) and all(heads.device_ms[1:])
    assert tails.side == "edge" and not any(tails.device_ms) and all(tails.edge_ms[:-1])
    merged = merge_sides(heads, tails)
    assert (merged.side, merged.device_ms, merged.edge_ms) == ("both", heads.device_ms, tails.edge_ms)
    with pytest.raises(InvalidArgumentError, match="edge times were taken on the device side only"):
        merge_sides(heads, heads)
    record = tails.to_dict()
    assert CutTimes.from_dict(record) == tails
    del record["side"]  # a profile written before sides were recorded timed both
    assert CutTimes.from_dict(record).side == "both"
    nodes = profile_nodes(graph, feeds, repeats=2)
    assert fit_operator_model(graph, nodes, tails).session_ms >= 0  # the overhead from the tails
    with pytest.raises(InvalidArgumentError, match="unknown side"):
        measure_cuts(graph, feeds, side="cloud")
