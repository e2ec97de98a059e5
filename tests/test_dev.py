"""dev.py, the README's set-up script: what it says when pip fails on a nearly full disk."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dev(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("coinfer_dev_script", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "VENV", tmp_path / "not-made-yet" / ".venv")
    return module


#: A stand-in for ``python -m pip install``: the real interpreter, exiting with an error.
FAILING_PIP = [sys.executable, "-c", "raise SystemExit(1)"]


def test_free_space_is_read_from_the_nearest_existing_folder(dev, tmp_path):
    assert dev.free_gb(tmp_path / "a" / "b" / ".venv") > 0


def test_pip_failure_on_a_full_disk_names_the_space_and_the_way_out(dev, monkeypatch):
    monkeypatch.setattr(dev, "free_gb", lambda path: 0.3)
    with pytest.raises(SystemExit) as stopped:
        dev.install(FAILING_PIP)
    message = str(stopped.value.code)
    assert "0.3 GB free" in message and "COINFER_VENV" in message and str(dev.VENV) in message


def test_pip_failure_with_room_to_spare_is_raised_as_it_is(dev, monkeypatch):
    monkeypatch.setattr(dev, "free_gb", lambda path: 100.0)
    with pytest.raises(subprocess.CalledProcessError):
        dev.install(FAILING_PIP)
