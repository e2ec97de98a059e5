"""`coinfer demo`, the tour: every capability stage end to end, its JSON and its HTML report.

The export stages run in test_demo.py; here five capability stages run once together (a
reduced tour, on the embedded defaults: real models, real server processes on loopback), and
each test reads what that run wrote. The ``stip`` stage (SmolLM2 loaded twice, about 45 s) is
left to ``coinfer demo`` itself: the same path, the real SmolLM2 generating through STIP
exactly as the plain model, runs in tests/cloud/test_stip_smollm2.py, and a server process
in tests/cloud/test_stip_cli.py. A stage that fails is reported, the others still run,
and the command exits 1 naming it.
"""

from __future__ import annotations

import html
import json
import re

import pytest

from coinfer.bench.demo import STAGES, Stage
from coinfer.bench.demo.gate import BUDGET_SLACK
from coinfer.sdk.artifact import load_artifact
from coinfer.sdk.cli.main import main

CAPABILITIES = ("gate", "infi", "mlink", "split", "evolve")


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """``coinfer demo --stages gate,infi,mlink,split,evolve``: (exit status, JSON, HTML, work dir)."""
    root = tmp_path_factory.mktemp("tour")
    status = main(["demo", "--stages", ",".join(CAPABILITIES), "--json", str(root / "D.json"),
                   "--report", str(root / "D.html"), "--out", str(root / "work")])
    return status, json.loads((root / "D.json").read_text()), (root / "D.html").read_text(), root / "work"


@pytest.mark.slow
def test_every_capability_stage_ran_and_passed_its_checks(tour):
    status, report, _, _ = tour
    failed = {name: entry.get("error") for name, entry in report["stages"].items() if not entry["ok"]}
    assert status == 0 and not failed, failed
    assert set(report["stages"]) == set(CAPABILITIES)
    assert set(report["stage_seconds"]) == set(CAPABILITIES)
    assert {"coinfer_version", "machine"} <= set(report)
    assert not any(key.startswith(("minilm_", "ocr_", "digits_")) for key in report)  # not run here


@pytest.mark.slow
def test_gate_decodes_within_its_budget_and_reports_every_stream(tour):
    gate = tour[1]["stages"]["gate"]
    assert gate["cost_fraction"] <= gate["budget_fraction"] + BUDGET_SLACK
    assert gate["decoded"] + gate["skipped"] == gate["packets"] > 0 and gate["skipped"] > 0
    assert gate["decode_saved"] == pytest.approx(1 - gate["cost_fraction"], abs=1e-3)
    assert gate["corrupt_frames"] == gate["decoder_errors"] == gate["failed_sources"] == 0
    assert 0 < gate["accuracy_vs_decode_all"] <= 1


@pytest.mark.slow
def test_infi_filter_runs_as_tflite_and_skips_held_out_frames(tour):
    infi = tour[1]["stages"]["infi"]
    skipped = round(infi["filter_rate"] * infi["held_out_frames"])
    assert skipped > 0 and infi["false_skips"] <= skipped
    assert infi["accuracy"] == pytest.approx(1 - infi["false_skips"] / infi["held_out_frames"], abs=1e-3)
    assert infi["tflite_max_abs_err"] <= 1e-4
    manifest = load_artifact(tour[3] / "infi" / "skip-float32", capability="infi").manifest
    assert manifest.metadata["tasks"] == ["faces", "cats"]


@pytest.mark.slow
def test_mlink_serves_under_its_budget(tour):
    mlink = tour[1]["stages"]["mlink"]
    assert mlink["time_saved"] > 0 and mlink["plan"] != "nothing" and mlink["predicted"] != "nothing"
    every = mlink["all_models_ms_per_step"]
    assert mlink["budget_ms_per_step"] == pytest.approx(mlink["budget_fraction"] * every, abs=1e-2)
    assert 0 < mlink["achieved_accuracy"] <= 1 and 0 < mlink["expected_accuracy"] <= 1
    runs = {key: value for key, value in mlink.items() if key.startswith("runs.")}
    assert len(runs) == mlink["models"] and min(runs.values()) < mlink["held_out_steps"]


@pytest.mark.slow
def test_split_tail_process_agrees_with_the_unsplit_model(tour):
    split = tour[1]["stages"]["split"]
    assert split["top1_agreement"] >= 0.75
    assert 0 < split["served_cut"] < split["nodes"]
    assert split["bytes_per_photo_across_cut"] < split["input_bytes_per_photo"]
    assert {"chosen_cut@1Mbps", "chosen_cut@10Mbps", "chosen_cut@100Mbps"} <= set(split)


@pytest.mark.slow
def test_evolve_round_follows_the_drift_policy(tour):
    evolve = tour[1]["stages"]["evolve"]
    assert evolve["mode"] in ("co-evolution", "device-only")
    assert evolve["drift.D"] > 0 and evolve["drift.E"] > 0
    assert (evolve["published"] == "nothing") == (evolve["drifted"] == "none")
    for key in ("accuracy_before.D", "accuracy_after.D", "accuracy_before.E", "accuracy_after.E"):
        assert 0 <= evolve[key] <= 1


@pytest.mark.slow
def test_report_names_every_stage_and_embeds_its_plots(tour):
    page = tour[2]
    for name in CAPABILITIES:
        section = page.split(f'<h2 id="{name}">', 1)[1].split("<section>", 1)[0]
        assert html.escape(STAGES[name].title) in section
        assert "data:image/png;base64," in section, name
    assert len(re.findall(r"data:image/png;base64,[A-Za-z0-9+/]{100}", page)) >= len(CAPABILITIES)
    assert not re.search(r"""(src|href)=["']?https?:""", page)  # self-contained: it fetches nothing


def test_a_failing_stage_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    broken = Stage("broken", "a stage whose code is missing", "export:no_such_stage")
    monkeypatch.setitem(STAGES, "broken", broken)
    status = main(["demo", "--stages", "broken,ocr", "--json", str(tmp_path / "D.json"), "--report",
                   str(tmp_path / "D.html")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert error.startswith("coinfer demo: error: 1 of 2 stage(s) failed: broken"), error
    stages = json.loads((tmp_path / "D.json").read_text())["stages"]
    assert stages["broken"] == {"ok": False, "error": stages["broken"]["error"]}
    assert stages["broken"]["error"].startswith("AttributeError: ")
    assert stages["ocr"]["ok"] is True and stages["ocr"]["ocr_lines_matched"] == 4
    page = (tmp_path / "D.html").read_text()
    assert '<h2 id="broken">' in page and '<h2 id="ocr">' in page and "failed: AttributeError" in page
