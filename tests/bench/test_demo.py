"""`coinfer demo`: the three real-model checks of the export and device-runtime path (the export
stages; the capability stages of the tour are tested in test_demo_tour.py)."""

import json

import pytest

from coinfer.sdk.artifact import load_artifact
from coinfer.sdk.cli.main import main

EXPORT_STAGES = "minilm,ocr,digits"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--stages", EXPORT_STAGES, "--json", str(root / "demo.json"), "--out",
                 str(root / "artifacts"), "--report", str(root / "demo.html")]) == 0
    return json.loads((root / "demo.json").read_text()), root / "artifacts"


@pytest.mark.slow
def test_minilm_onnx_matches_pytorch(demo_run):
    metrics, _ = demo_run
    assert metrics["minilm_onnx_max_abs_err"] <= 1e-4
    assert metrics["minilm_onnx_min_cosine"] >= 0.9999
    # The embeddings are meaningful, not just equal: a paraphrase is closer than an unrelated sentence.
    assert metrics["minilm_paraphrase_cosine"] > metrics["minilm_unrelated_cosine"] + 0.3


@pytest.mark.slow
def test_ocr_detector_finds_the_rendered_lines(demo_run):
    metrics, _ = demo_run
    assert metrics["ocr_lines_found"] == metrics["ocr_lines_expected"] == 4
    assert metrics["ocr_lines_matched"] == 4
    assert metrics["ocr_min_line_iou"] >= 0.5


@pytest.mark.slow
def test_digits_int8_agrees_with_keras(demo_run):
    metrics, _ = demo_run
    assert metrics["digits_keras_test_accuracy"] >= 0.95
    assert metrics["digits_float32_top1_agreement"] == 1.0
    assert metrics["digits_int8_top1_agreement"] >= 0.98
    assert metrics["digits_int8_bytes"] < metrics["digits_float32_bytes"] / 2


@pytest.mark.slow
def test_demo_json_and_artifacts(demo_run):
    metrics, artifacts = demo_run
    assert {"coinfer_version", "machine", "stage_seconds"} <= set(metrics)
    assert set(metrics["stage_seconds"]) == {"minilm", "ocr", "digits"}
    # each export stage also has its entry in "stages", with its checks passed
    assert {name: entry["ok"] for name, entry in metrics["stages"].items()} == dict.fromkeys(
        ("minilm", "ocr", "digits"), True)
    assert metrics["stages"]["ocr"]["ocr_lines_matched"] == metrics["ocr_lines_matched"]
    for name in ("minilm-onnx", "digits-float32", "digits-int8"):
        assert load_artifact(artifacts / name, capability="demo").manifest.metadata["parity"]["samples"] > 0
