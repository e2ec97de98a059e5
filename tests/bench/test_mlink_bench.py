"""``coinfer mlink bench`` end to end at a tiny scale: real models, real service, every key."""

import json

import pytest

from coinfer.bench.mlink import bench

pytest.importorskip("torch")

TINY = bench.BenchScale(cameras=4, seconds=6.0, epochs=5, period=20, profile_fraction=0.05,
                        federated_rounds=1, federated_epochs=1, crowd_train_cameras=8, crowd_epochs=2)


@pytest.mark.slow
def test_bench_runs_every_experiment_and_reports_consistent_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK", TINY)
    code = bench.run(bench_args(tmp_path))
    assert code == 0
    report = json.loads((tmp_path / "mlink.json").read_text())
    models = set(report["models"])
    assert models == {"faces", "cats", "people", "text", "words", "speech", "crowd"}
    assert len(report["links"]) == 42 and all(0 <= value <= 1 for value in report["links"].values())
    assert 0 <= report["ensemble_beats_best_single"] <= 7
    budget = report["budget"]
    every_model_ms = sum(model["ms"] for model in report["models"].values())
    assert budget["budget_ms"] == pytest.approx(0.5 * every_model_ms, rel=1e-3)
    assert 0 < report["budget_time_saved"] < 1 and 0 <= report["budget_accuracy"] <= 1
    assert budget["baselines"]["optimum"]["accuracy"] >= budget["baselines"]["random"]["accuracy"] - 1e-9
    assert set(budget["baselines"]) == {"links_only", "standalone", "random", "reducto", "optimum"}
    assert set(budget["runs_per_model"]) == models and budget["runs_per_model"]["crowd"] > 0
    assert report["optimal_gap"] == pytest.approx(budget["baselines"]["optimum"]["accuracy"]
                                                  - report["budget_accuracy"], abs=1e-3)
    memory = report["memory_budget"]
    every_model_mib = sum(model["mib"] for model in report["models"].values())
    assert memory["budget_mib"] == pytest.approx(0.5 * every_model_mib, abs=0.5)
    assert memory["loaded_peak_mib"] <= memory["budget_mib"] + 0.1 and memory["memory_saved"] >= 0.5 - 1e-3
    assert memory["loaded_peak_mib"] < memory["profiling_peak_mib"] <= every_model_mib + 0.5
    assert set(memory["baselines"]) == {"standalone", "random", "optimum"}
    assert memory["baselines"]["optimum"]["accuracy"] >= memory["baselines"]["random"]["accuracy"] - 1e-9
    assert memory["optimal_gap"] == pytest.approx(memory["baselines"]["optimum"]["accuracy"]
                                                  - memory["accuracy"], abs=1e-3)
    online = report["online"]
    assert online["offline_init_labelled"] == 0
    assert online["periodic_labelled"] == online["uncertainty_labelled"] > 0
    assert online["silent_from"] == bench.SILENT_FROM and online["stream_steps"] == report["steps"]
    assert 0 < online["after_drift_steps"] < online["stream_steps"]
    assert online["offline_steps"] < report["steps"]
    assert (tmp_path / "work" / "drift-outputs.npz").is_file()
    federated = report["federated"]
    assert federated["bytes_per_round"] > federated["update_bytes_per_client"] * 3
    assert 0 <= federated["global_accuracy"] <= 1
    domain = report["domain_adaptation"]
    assert domain["labelled"] + domain["evaluated"] == report["steps"]
    assert (tmp_path / "work" / "outputs.npz").is_file()


def bench_args(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(["--quick", "--json", str(tmp_path / "mlink.json"),
                              "--workdir", str(tmp_path / "work")])
