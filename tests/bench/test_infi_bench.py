"""The InFi benchmark end to end at a tiny scale: every task, the device stage, the deployments."""

from __future__ import annotations

import pytest

from coinfer.bench.infi.bench import BenchScale, run_configuration

pytestmark = pytest.mark.slow
TINY = BenchScale(cameras=3, seconds=6.0, frame_size=(320, 180), filter_size=(48, 28),
                  clips=40, messages=60, epochs=1, reuse_epochs=1, pairs_per_input=2,
                  int8_modalities=("image",), drift_period=45)
SKIP_TASKS = {"faces", "text", "text-featuremap", "face-clips", "speech", "topics", "topic-confidence"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_configuration(TINY, tmp_path_factory.mktemp("infi-bench"), seed=0)


def test_every_task_is_scored_against_its_optimum(report) -> None:
    tasks = report["tasks"]
    assert set(tasks) == SKIP_TASKS | {"face-count"}
    modalities = {task["modality"] for task in tasks.values()}
    assert {"image", "video", "audio", "text"} <= modalities
    for name in SKIP_TASKS:
        task = tasks[name]
        assert 0.0 <= task["filter_rate_at_90"] <= task["optimal_at_90"] + 1e-9, name
        assert task["ratio_to_optimal"] == pytest.approx(task["filter_rate_at_90"] / task["optimal_at_90"],
                                                         abs=1e-3)
        assert task["baselines"] and all(0.0 <= rate <= 1.0 for rate in task["baselines"].values())
        assert task["tflite_float32_agreement"] >= 0.95, name
        assert task["filter_ms"] > 0 and task["model_ms"] > 0
    assert "reducto" in tasks["faces"]["baselines"] and "filterforward" in tasks["faces"]["baselines"]
    assert "filterforward" in tasks["topics"]["baselines"]


def test_the_analysis_tells_the_filterable_from_the_not_filterable(report) -> None:
    assert report["tasks"]["topics"]["analysis"]["filterable"] is True
    assert report["tasks"]["topic-confidence"]["analysis"]["filterable"] is False


def test_the_device_stage_runs_without_tensorflow_and_reports_the_deployments(report) -> None:
    assert report["device_without_tensorflow"] is True
    assert 0.0 <= report["tflite_decision_agreement"] <= 1.0 and report["filter_cost_ratio"] > 0
    deployments = report["deployments"]
    assert deployments["offload_bytes_with_filter"] <= deployments["offload_bytes_without_filter"]
    assert 0.0 <= report["offload_bytes_saved"] <= 1.0
    partition = report["partition"]
    assert partition["partition_bytes_saved"] == partition["skipped_fraction"]
    sent = partition["sent_frames"] * partition["feature_bytes_per_frame"]
    assert partition["partition_bytes_with_filter"] == sent


def test_reuse_and_active_update_are_reported(report) -> None:
    assert 0.0 <= report["reuse_filter_rate_at_90"] <= 1.0
    assert report["foggycache_rate_at_90"] is not None
    drift = report["drift"]
    assert drift["active_labelled"] == drift["periodic_labelled"] > 0
    for key in ("offline_accuracy", "periodic_accuracy", "active_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert 0.0 < drift["stream_night_fraction"] < 1.0
