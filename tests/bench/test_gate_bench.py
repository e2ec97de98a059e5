"""The gate benchmark and `coinfer gate train` end to end on a tiny generated scene set."""

from __future__ import annotations

import json

import pytest

from coinfer.bench.data.scenes import SceneOptions, generate_scenes
from coinfer.bench.gate.bench import HEADLINE, PREDICTOR_SEEDS, BenchScale, run_configuration
from coinfer.sdk.cli.main import main

pytestmark = pytest.mark.slow
TINY = BenchScale(cameras=6, train_cameras=2, seconds=4, fps=5, width=160, height=96, gop=10,
                  exactness_cameras=2, day_start="07:00", day_end="19:00")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    options = SceneOptions(cameras=TINY.cameras + TINY.train_cameras, seconds=TINY.seconds, fps=TINY.fps,
                           width=TINY.width, height=TINY.height, gop=TINY.gop, tasks=("faces",),
                           day_start=TINY.day_start, day_end=TINY.day_end, seed=3)
    return generate_scenes(tmp_path_factory.mktemp("scenes") / "tiny", options, workers=1, progress=False)


def test_bench_reports_every_metric_and_exact_decoding(scenes, tmp_path) -> None:
    report = run_configuration(TINY, tmp_path, ("faces",), 0, scenes_dir=scenes.root)
    assert set(HEADLINE) <= set(report)
    assert report["parser_type_accuracy"] == 1.0
    assert report["corrupt_frames"] == 0 and report["exactness"]["frames_checked"] > 0
    assert set(report["savings_at_90"]) == {"packetgame", "contextual", "temporal", "round-robin", "random"}
    assert all(0.0 <= value <= 1.0 for value in report["savings_at_90"].values())
    assert report["oracle_savings_at_90"] >= max(report["savings_at_90"].values()) - 0.05
    savings, per_seed = report["savings_at_90"], report["savings_at_90_per_seed"]
    assert report["view_gains"]["size_views"] == round(savings["packetgame"] - savings["temporal"], 4)
    assert len(per_seed["packetgame"]) == PREDICTOR_SEEDS and 0.0 <= report["empty_accuracy"] < 1.0
    assert savings["packetgame"] == pytest.approx(sum(per_seed["packetgame"]) / PREDICTOR_SEEDS, abs=1e-3)
    assert report["concurrency"]["decode_all_streams"] >= 1 and report["concurrency_ratio"] >= 0.0
    assert report["gate_us_per_packet"] > 0 and report["decode_us_per_packet"] > 0
    curve = report["accuracy_vs_budget"]
    assert curve["oracle"][-1] >= 0.99 and len(curve["packetgame"]) == len(curve["fractions"])


def test_gate_train_cli_writes_predictor_and_tflite(scenes, tmp_path) -> None:
    out, tflite = tmp_path / "predictor", tmp_path / "tflite"
    code = main(["gate", "train", "--scenes", str(scenes.root), "--out", str(out), "--tflite", str(tflite),
                 "--epochs", "3"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "contextual-predictor"
    assert manifest["metadata"]["options"]["tasks"] == ["faces"]
    assert (tflite / "model.tflite").is_file()
    assert main(["gate", "train", "--scenes", str(scenes.root), "--out", str(out), "--tasks", "people"]) != 0
