"""`coinfer split export | serve | run` as a user runs them: three commands, two processes."""

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from coinfer.sdk.cli.main import main

TOKEN = "split-cli-token"


def test_export_serve_and_run_as_separate_processes(tmp_path, command_server, capsys):
    import onnxruntime as ort
    from skimage import data

    from coinfer.bench.models.efficientnet_lite import export_onnx, preprocess

    model = export_onnx(tmp_path / "effnet.onnx")
    batch = preprocess([data.chelsea(), data.coffee()])
    np.save(tmp_path / "batch.npy", batch)
    assert main(["split", "export", "--model", str(model), "--cut", "43", "--encoding", "float16",
                 "--out", str(tmp_path / "split")]) == 0
    assert "(62720 bytes per sample as float16)" in capsys.readouterr().out  # two tensors cross

    def info(port: int) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/split/info",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    with command_server(["split", "serve", "--bundle", str(tmp_path / "split" / "edge")], TOKEN,
                        info) as (port, answer):
        assert answer["spec"]["encoding"] == "float16"
        result = subprocess.run(
            [sys.executable, "-m", "coinfer.sdk.cli", "split", "run", "--bundle",
             str(tmp_path / "split" / "device"), "--url", f"http://127.0.0.1:{port}",
             "--inputs", str(tmp_path / "batch.npy"), "--json", str(tmp_path / "run.json")],
            env=dict(os.environ, COINFER_TOKEN=TOKEN), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "run.json").read_text())
    whole = ort.InferenceSession(str(model)).run(None, {"image": batch})[0]
    assert found["logits"] == whole.argmax(1).tolist() == [285, 967]
    assert found["batch"] == 2 and found["bytes_sent"] > 2 * 62_720


def _conv_net(path):
    """x (1, 3, 32, 32) -> three 3x3 convolutions -> global pool -> 2 logits: an output smaller
    than any tensor inside, so a slow enough link keeps everything on the device."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights, nodes, last = [], [], "x"
    for index, (cin, cout, stride) in enumerate([(3, 16, 1), (16, 32, 2), (32, 8, 1)]):
        weights.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32), f"w{index}"))
        nodes += [helper.make_node("Conv", [last, f"w{index}"], [f"c{index}"], name=f"conv{index}",
                                   pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{index}"], [f"r{index}"], name=f"relu{index}")]
        last = f"r{index}"
    weights.append(numpy_helper.from_array(rng.standard_normal((8, 2)).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [last], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="fc")]
    graph = helper.make_graph(nodes, "convnet",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _profile(model, out, *flags):
    assert main(["split", "profile", "--model", str(model), "--repeats", "3", "--quiet", *flags,
                 "--out", str(out)]) == 0
    return out


def test_profile_times_each_side_and_plan_joins_them(tmp_path, capsys):
    from coinfer.sdk.split.graph import SplitGraph
    from coinfer.sdk.split.profile import load_profile

    model = _conv_net(tmp_path / "convnet.onnx")
    graph = SplitGraph.load(model)
    count = len(graph.nodes)
    both = load_profile(_profile(model, tmp_path / "both", "--operator-model"), graph)
    times = both.times
    assert times.side == "both" and times.cuts == tuple(range(count + 1)) and times.batch == 1
    assert times.device_ms[0] == 0 and times.edge_ms[-1] == 0 and times.whole_ms > 0
    assert all(ms > 0 for ms in times.device_ms[1:] + times.edge_ms[:-1])
    assert both.operators is not None and both.operators.predict_whole(graph) > 0
    assert "whole model ms" in capsys.readouterr().out
    assert main(["split", "profile", "--model", str(model), "--out", str(tmp_path / "both")]) == 1
    assert "already exists" in capsys.readouterr().err

    heads = load_profile(_profile(model, tmp_path / "heads", "--side", "device", "--cuts", "0,2,4,6,8,9"))
    tails = load_profile(_profile(model, tmp_path / "tails", "--side", "edge", "--cuts", "single"))
    assert heads.times.cuts == (0, 2, 4, 6, 8, 9) and not any(heads.times.edge_ms)
    assert all(ms > 0 for ms in heads.times.device_ms[1:])
    assert not any(tails.times.device_ms) and all(ms > 0 for ms in tails.times.edge_ms[:-1])
    capsys.readouterr()

    # Joined over the cuts both timed; 1 kbit/s: the 8-byte result is the least to send.
    assert main(["split", "plan", "--model", str(model), "--device-profile", str(tmp_path / "heads"),
                 "--edge-profile", str(tmp_path / "tails"), "--bandwidth", "0.001",
                 "--json", str(tmp_path / "slow.json")]) == 0
    slow = json.loads((tmp_path / "slow.json").read_text())
    assert slow["cuts"] == [0, 2, 4, 6, 8, 9]
    chosen = slow["plans"][0]["chosen"]
    assert (chosen["cut"], chosen["encoding"], chosen["tensors"], chosen["nbytes"]) == (count, "float32",
                                                                                     ["logits"], 8)
    assert chosen["transfer_ms"] == pytest.approx(8 * 8 / 1.0) and chosen["edge_ms"] == 0
    assert chosen["device_ms"] == pytest.approx(heads.times.at(count)[0])
    out = capsys.readouterr().out
    assert f"cut {count} (everything on the device), float32: sends logits, 8 bytes" in out

    # A fast link and a device whose milliseconds count ten times: send the input (as int8, the
    # fewest bytes: the planner prices no encoding time).
    assert main(["split", "plan", "--model", str(model), "--device-profile", str(tmp_path / "both"),
                 "--edge-profile", str(tmp_path / "both"), "--bandwidth", "1000000",
                 "--bandwidth", "0.001,10", "--rtt", "5", "--device-weight", "10", "--min-cut", "--top", "2",
                 "--json", str(tmp_path / "plans.json")]) == 0
    plans = json.loads((tmp_path / "plans.json").read_text())["plans"]
    assert [plan["bandwidth_mbps"] for plan in plans] == [1e6, 0.001, 10]
    fast = plans[0]["chosen"]
    assert (fast["cut"], fast["encoding"], fast["tensors"], fast["device_ms"]) == (0, "int8", ["x"], 0)
    assert fast["edge_ms"] == pytest.approx(times.edge_ms[0])
    for plan in plans:
        for option in (plan["chosen"], *plan["alternatives"]):
            link = plan["rtt_ms"] + option["nbytes"] * 8 / (plan["bandwidth_mbps"] * 1e3)
            assert option["transfer_ms"] == pytest.approx(link)
            assert option["total_ms"] == pytest.approx(option["device_ms"] + link + option["edge_ms"])
            assert option["cost"] >= plan["chosen"]["cost"]
        assert len(plan["alternatives"]) == 2 and plan["chosen"]["cut"] not in {
            option["cut"] for option in plan["alternatives"]}
        # A chain has only prefix cuts: DADS finds the best one by the same per-node times.
        found, best = plan["min_cut"], plan["min_cut_best_prefix"]
        assert found["prefix_cut"] == len(found["device_nodes"]) and found["cost"] > 0
        assert found["cost"] == pytest.approx(best["cost"], abs=1e-3)
    out = capsys.readouterr().out
    assert "min-cut by per-node times" in out and "  Mbit/s" in out and "cost" in out


@pytest.mark.slow
def test_profile_and_plan_efficientnet_lite0(tmp_path, capsys):
    from coinfer.bench.models.efficientnet_lite import export_onnx

    model = export_onnx(tmp_path / "effnet.onnx")
    _profile(model, tmp_path / "profile", "--cuts", "0,24,43,72,94", "--operator-model")
    assert main(["split", "plan", "--model", str(model), "--device-profile", str(tmp_path / "profile"),
                 "--edge-profile", str(tmp_path / "profile"), "--bandwidth", "0.01,10000", "--device-weight",
                 "10", "--min-cut", "--json", str(tmp_path / "plan.json")]) == 0
    slow, fast = json.loads((tmp_path / "plan.json").read_text())["plans"]
    # 1,000 logits as float32 are fewer bytes than any profiled cut's tensors even as int8.
    assert (slow["chosen"]["cut"], slow["chosen"]["nbytes"]) == (94, 4000)
    assert (fast["chosen"]["cut"], fast["chosen"]["tensors"]) == (0, ["image"])
    for plan in (slow, fast):  # over every down-set, never worse than the best prefix cut
        assert plan["min_cut"]["cost"] <= plan["min_cut_best_prefix"]["cost"] + 1e-3
    assert "everything on the device" in capsys.readouterr().out
