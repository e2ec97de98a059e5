"""The latency half of the split bench: the testbed (CPU quota, shaped link, fallbacks), its
workers, and a small real run on a tiny graph. No test asserts a wall-clock time."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coinfer.bench.split import latency, testbed
from coinfer.bench.split.testbed import (
    CGROUP_CPU_ROOT,
    PACKET_BYTES,
    PacedLink,
    paced_delay_s,
    probe_support,
    quota_period_us,
    tbf_parameters,
)
from coinfer.sdk.errors import InvalidArgumentError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _privileged_reason() -> str | None:
    """Why the real testbed cannot run here, or None."""
    support = probe_support()
    return support.quota or support.shaping


needs_root = pytest.mark.skipif(_privileged_reason() is not None,
                                reason=f"the real testbed needs root, cgroup v1 cpu and iproute2: "
                                       f"{_privileged_reason()}")


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.split()}


def _tiny_graph(path: Path) -> Path:
    """x (batch, 3, 16, 16) -> Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=[weight("w1", 8, 3, 3, 3), weight("w2", 4, 8, 3, 3), weight("w3", 4, 10)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tiny_workload(tmp_path: Path) -> latency.Workload:
    from coinfer.sdk.split.graph import SplitGraph

    path = _tiny_graph(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(1)
    return latency.Workload("tiny", path, SplitGraph.load(path),
                            {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)},
                            {"x": rng.standard_normal((3, 3, 16, 16)).astype(np.float32)})


def _tiny_settings() -> latency.Settings:
    return latency.Settings(quick=True, bandwidths=(2.0, 20.0), reference_mbps=20.0, head_repeats=2,
                            tail_repeats=2, requests=2, top_k=2, transfer_sizes=2, transfer_max_s=0.5,
                            pause_ms=5.0)


# --- pure functions: no processes ----------------------------------------------------------


def test_pacing_is_bits_over_rate() -> None:
    assert paced_delay_s(125_000, 1.0) == pytest.approx(1.0)
    assert paced_delay_s(62_500, 0.5) == pytest.approx(1.0)
    assert paced_delay_s(0, 50.0) == 0.0
    assert paced_delay_s(1_000_000, 50.0) == pytest.approx(0.16)
    with pytest.raises(InvalidArgumentError, match="rate > 0"):
        paced_delay_s(10, 0.0)
    link = PacedLink(2.0)
    assert link.wrap(["python", "-V"]) == ["python", "-V"] and link.pace_mbit() == 2.0
    link.set_rate(0.5)
    assert link.delay_s(62_500) == pytest.approx(1.0)


def test_token_bucket_holds_one_packet_at_low_rates() -> None:
    for rate in (0.5, 2.0, 10.0):
        burst, limit = tbf_parameters(rate)
        assert burst == PACKET_BYTES and limit >= 1 << 20
    burst, _ = tbf_parameters(50.0)
    assert PACKET_BYTES <= burst <= 50e6 / 8 * 0.001  # at most a millisecond's worth
    with pytest.raises(InvalidArgumentError):
        tbf_parameters(-1.0)


def test_quota_period_is_the_shortest_the_kernel_accepts() -> None:
    assert quota_period_us(0.25) == 4000  # the quota, 1 ms, is the kernel's least
    assert quota_period_us(0.5) == 2000
    assert quota_period_us(2.0) == 1000
    for fraction in (0.1, 0.25, 0.3, 1.0):
        assert round(fraction * quota_period_us(fraction)) >= 1000
    with pytest.raises(InvalidArgumentError):
        quota_period_us(0.0)


def test_unprivileged_testbed_falls_back_and_says_so(tmp_path: Path) -> None:
    support = probe_support(privileged=False)
    assert support.quota and support.shaping and "not root" in support.quota
    with testbed.testbed(0.5, 0.25, work_dir=tmp_path, privileged=False) as bed:
        described = bed.describe()
        assert bed.link.pace_mbit() == 0.5
        bed.set_rate(10.0)
        assert bed.link.pace_mbit() == 10.0
    assert described["shaping"] == "paced" and "not root" in described["shaping_reason"]
    assert described["device_quota"] is None and "not root" in described["device_quota_reason"]


def test_select_cuts_keeps_the_ends_and_the_shrinking_cuts(tmp_path: Path) -> None:
    graph = _tiny_workload(tmp_path).graph
    every, rule = latency.select_cuts(graph, None)
    assert every == list(range(len(graph.cuts()))) and rule == "every prefix cut"
    chosen, rule = latency.select_cuts(graph, 3)
    assert chosen[0] == 0 and chosen[-1] == len(graph.cuts()) - 1 and "of" in rule
    sizes = [graph.cuts()[i].nbytes("int8") for i in range(len(graph.cuts()))]
    record_lows = [i for i, size in enumerate(sizes) if size < min(sizes[:i], default=math.inf)]
    assert set(record_lows) <= set(chosen)


def test_point_summary_computes_error_regret_and_speedup() -> None:
    from coinfer.sdk.split.planner import Link

    rows = [{"option": "cut-3/int8", "predicted_ms": 50.0, "measured_ms": 55.0},
            {"option": "cut-2/int8", "predicted_ms": 60.0, "measured_ms": 50.0},
            {"option": "all-device/float32", "predicted_ms": 90.0, "measured_ms": 110.0},
            {"option": "all-edge/jpeg", "predicted_ms": 80.0, "measured_ms": 88.0}]
    point = latency.summarise_point(2.0, {"goodput_mbps": 1.9, "rtt_ms": 2.0, "request_ms": 5.0},
                                    Link(1.9, 6.0), rows, "cut-3/int8")
    assert point["plan"]["error"] == pytest.approx(5 / 55, abs=1e-4)
    assert point["regret"] == pytest.approx(1.1)
    assert point["speedup_vs_best_single_tier"] == pytest.approx(88 / 55, abs=1e-4)
    assert point["best_measured"]["option"] == "cut-2/int8"


def test_link_model_adds_the_answer_at_the_goodput() -> None:
    link = latency.link_model(1.0, 5.0, answer=1250)
    assert link.bandwidth_mbps == 1.0 and link.rtt_ms == pytest.approx(15.0)
    assert link.transfer_ms(125) == pytest.approx(16.0)


# --- the real testbed ------------------------------------------------------------------------


@needs_root
@pytest.mark.slow
def test_namespace_cgroup_and_workers_are_removed_after_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), \
            testbed.testbed(2.0, 0.25, work_dir=tmp_path) as bed:
        described = bed.describe()
        worker = bed.start_device([sys.executable, "-m", "coinfer.bench.split.device_worker"])
        assert bed.quota is not None and worker.pid in bed.quota.pids()
        name, group = described["namespace"], bed.quota.path
        assert name in _namespaces() and group.is_dir()
        raise RuntimeError("boom")
    assert described["shaping"] == "tbf" and described["device_quota"] == 0.25
    assert worker.process.poll() is not None
    assert name not in _namespaces() and not group.exists()


@needs_root
def test_quota_and_link_alone_are_removed_after_an_error() -> None:
    with pytest.raises(RuntimeError), testbed.cpu_quota(0.5) as quota:
        path = quota.path
        assert (path / "cpu.cfs_quota_us").read_text().strip() == str(quota.quota_us)
        raise RuntimeError("boom")
    assert not path.exists()
    with pytest.raises(RuntimeError), testbed.shaped_link(1.0) as link:
        name = link.name
        link.set_rate(5.0)
        shown = subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "show", "dev", "lo"],
                               capture_output=True, text=True).stdout
        assert "tbf" in shown and "5Mbit" in shown
        raise RuntimeError("boom")
    assert name not in _namespaces()


@needs_root
@pytest.mark.slow
def test_small_real_run_through_the_shaped_link(tmp_path: Path) -> None:
    before = set(os.listdir(CGROUP_CPU_ROOT)), _namespaces()
    lines: list[str] = []
    result = latency.run_workloads([_tiny_workload(tmp_path)], _tiny_settings(), tmp_path / "work",
                                   lines.append)
    assert result["shaping"] == "tbf" and result["device_quota"] == 0.25
    assert result["shaping_reason"] is None and result["device_quota_reason"] is None
    _check_result(result)
    assert any("Mbit/s" in line for line in lines)
    assert (set(os.listdir(CGROUP_CPU_ROOT)), _namespaces()) == before


@pytest.mark.slow
def test_small_real_run_paced_when_unprivileged(tmp_path: Path) -> None:
    result = latency.run_workloads([_tiny_workload(tmp_path)], _tiny_settings(), tmp_path / "work",
                                   lambda line: None, privileged=False)
    assert result["shaping"] == "paced" and result["device_quota"] is None
    assert "not root" in result["shaping_reason"]
    _check_result(result)


def _check_result(result: dict) -> None:
    """The keys the bench promises, with values that are measurements (not their sizes)."""
    table = result["cuts"]["tiny"]
    assert table["count"] == table["profiled"] == len(table["entries"])
    for entry in table["entries"]:
        assert entry["device_ms"]["measured"] is not None and entry["edge_ms"]["measured"] is not None
        assert set(entry["bytes"]) == {"float32", "float16", "int8"}
    points = result["sweep"]["tiny"]
    assert [point["bandwidth_mbps"] for point in points] == [2.0, 20.0]
    for point in points:
        names = [row["option"] for row in point["candidates"]]
        assert point["plan"]["option"] in names and "all-device/float32" in names
        assert point["regret"] >= 1.0 and point["goodput_mbps"] > 0
        assert all(len(row["requests_ms"]) == 2 and row["measured_ms"] > 0 for row in point["candidates"])
    assert math.isfinite(result["plan_error"]) and result["plan_regret"] >= 1.0
    assert set(result["speedup_vs_best_single_tier"]) == {"2", "20"}
    assert set(result["rtt_ms"]["tiny"]) == {"2", "20"}
    assert result["regret_candidates"]["count"] == {"2": len(points[0]["candidates"]),
                                                    "20": len(points[1]["candidates"])}


def test_needs_iproute2_for_shaping() -> None:
    support = probe_support(privileged=True)
    if shutil.which("ip") is None or shutil.which("tc") is None:
        assert support.shaping is not None and "not found" in support.shaping
    else:
        assert support.shaping is None
