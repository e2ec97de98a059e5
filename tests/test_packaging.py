"""The distribution builds as one wheel whose tiers install as coinfer.<tier> in a fresh venv."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_builds_installs_and_runs_in_a_fresh_venv(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), "-q"],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("coinfer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = ["coinfer/sdk/wire.py", "coinfer/sdk/cli/main.py", "coinfer/device/runtime/tflite.py",
                "coinfer/converters/keras_tflite.py", "coinfer/edge/__init__.py", "coinfer/cloud/__init__.py"]
    assert set(expected) <= names
    assert not any(name.startswith(("tests/", "sdk/", "samples/")) for name in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    probe = ("import coinfer.sdk, coinfer.sdk.wire, coinfer.sdk.artifact, coinfer.device; "
             "print(coinfer.sdk.__version__)")
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.strip()
    help_text = subprocess.run([env_dir / "bin" / "coinfer", "--help"], check=True, capture_output=True,
                               text=True).stdout
    assert "export" in help_text and "demo" in help_text
