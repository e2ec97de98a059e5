"""``coinfer infi analyze`` end to end (the bench has its own test)."""

import json

import pytest

from coinfer.sdk.cli.main import main


def test_analyze_reports_verdict_and_break_even(tmp_path, capsys):
    out = tmp_path / "a.json"
    assert main(["infi", "analyze", "--measurement", "class-subset", "--option", "keep=sports,finance",
                 "--filter-ms", "1", "--model-ms", "9", "--filtered-ms", "1", "--filter-rate", "0.4",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["filterable"] and report["pays_off"]
    assert report["break_even_rate"] == pytest.approx(0.125)
    assert "why:" in capsys.readouterr().out


def test_analyze_says_confidence_thresholds_are_not_filterable(tmp_path):
    out = tmp_path / "a.json"
    assert main(["infi", "analyze", "--measurement", "confidence-below", "--option", "threshold=0.9",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert not report["filterable"] and report["verdict"].startswith("not filterable")


def test_analyze_rejects_half_given_costs_and_bad_options(capsys):
    assert main(["infi", "analyze", "--measurement", "empty", "--filter-ms", "1"]) == 1
    assert "both" in capsys.readouterr().err
    assert main(["infi", "analyze", "--measurement", "empty", "--option", "nonsense"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["infi", "analyze", "--measurement", "confidence-below", "--option", "threshold=2"]) == 1
    assert "(0, 1)" in capsys.readouterr().err
