"""Samples are documentation: they must keep running."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_export_and_run_filter_sample(tmp_path):
    sample = ROOT / "samples" / "export_and_run_filter.py"
    out = subprocess.run([sys.executable, str(sample), str(tmp_path / "f")],
                         capture_output=True, text=True, check=True).stdout
    assert "int8 vs Keras: top-1 agreement" in out
    agreement = float(out.split("top-1 agreement ")[1].split(",")[0])
    assert agreement >= 0.97
    assert (tmp_path / "f" / "manifest.json").is_file()
