"""The evolve bench's scheduler section at a tiny scale: real processes, every key, numbers that agree."""

import json

import pytest

from coinfer.bench.evolve.scheduling import SchedulerWorkload, run_scheduler_bench
from coinfer.sdk.errors import InvalidArgumentError

pytest.importorskip("torch")

TINY = SchedulerWorkload(cameras=2, rounds=1, frames=(16, 48), epochs=(1,), calibration=((32, 1),),
                         architectures=(("M3", 0.3), ("tiny", 1.0)), input_size=64)
KEYS = {"dp_mean_latency_s", "serial_mean_latency_s", "random_mean_latency_s", "dp_over_serial",
        "dp_over_random", "budget_violations", "budget_violations_per_policy", "memory_prediction_error",
        "budget_bytes", "workspace_bytes", "tasks", "rounds", "devices", "time_model", "policies",
        "failed_tasks", "simulated_dp_over_serial", "calibration_runs", "budget_rule"}


def test_the_workloads_are_checked():
    with pytest.raises(InvalidArgumentError, match="frames"):
        SchedulerWorkload(cameras=2, rounds=1, frames=(48, 16), epochs=(1,), calibration=((32, 1),))
    with pytest.raises(InvalidArgumentError, match="distinct"):
        SchedulerWorkload(cameras=2, rounds=1, frames=(16, 48), epochs=(1,), calibration=((32, 1),),
                          architectures=(("M3", 0.3), ("M3", 0.5)))
    full, quick = SchedulerWorkload.for_mode(False), SchedulerWorkload.for_mode(True)
    assert quick.cameras >= 4 and full.cameras >= 4 and full.rounds >= 3
    assert {spec.id for _, _, spec in quick.devices()} == {spec.id for _, spec in quick.named_architectures()}


@pytest.mark.slow  # loads the pretrained network and trains in real processes (about 20 s)
def test_a_tiny_run_reports_every_key(tmp_path):
    lines: list[str] = []
    report = run_scheduler_bench(True, lines.append, workload=TINY, work_dir=tmp_path)
    assert set(report) >= KEYS
    json.dumps(report)  # JSON-able as the bench writes it
    assert report["tasks"] == 2 and report["rounds"] == 1 and report["calibration_runs"] == 2
    assert set(report["devices"]) == {"cam0", "cam1"}
    assert report["failed_tasks"] == 0
    ratio = report["dp_mean_latency_s"] / report["serial_mean_latency_s"]
    assert report["dp_over_serial"] == pytest.approx(ratio)
    per_policy = report["budget_violations_per_policy"]
    assert set(per_policy) == {"dp", "serial", "random-0"}
    assert report["budget_violations"] == sum(per_policy.values())
    assert report["budget_bytes"] >= report["predicted_task_bytes"]["max"]
    for summary in report["policies"].values():
        assert summary["reserved_peak_bytes"] <= report["budget_bytes"]
    assert 0 <= report["memory_prediction_error"] < 1
    assert report["workspace_bytes"] > 0 and report["headroom_bytes"] >= 0
    assert report["time_model"]["model"]["format"] == "coinfer.evolve.training-time/1"
    assert report["time_model"]["median_relative_error"] >= 0
    assert any("budget" in line for line in lines)
    assert not list(tmp_path.iterdir())  # every run's temporary files removed
    assert all(len(summary["latencies_s"]) == 2 for summary in report["policies"].values())
    from coinfer.bench.evolve.plots import write_plots

    (plot,) = write_plots({"scheduler": report}, tmp_path / "bench", 600.0)
    assert plot.name == "bench-latency.png" and plot.read_bytes().startswith(b"\x89PNG")
