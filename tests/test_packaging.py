"""One distribution per tier: each wheel holds only its own package, and a device install
brings numpy, LiteRT, av and the sdk core, nothing heavy, and runs a TFLite filter."""

import json
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib

from coinfer.sdk._version import __version__

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = {"sdk": "coinfer-sdk", "device": "coinfer-device", "edge": "coinfer-edge",
                 "cloud": "coinfer-cloud", "converters": "coinfer-converters", "bench": "coinfer-bench"}
#: What a Raspberry Pi must not be made to download.
HEAVY = {"tensorflow", "tensorflow-cpu", "torch", "transformers", "onnx", "onnxruntime", "fastapi",
         "opencv-python", "opencv-python-headless", "keras", "jax"}


def _project(folder: str) -> dict:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("folder", list(DISTRIBUTIONS))
def test_every_distribution_has_the_shared_version_and_pins_its_siblings(folder):
    project = _project(folder)
    assert project["name"] == DISTRIBUTIONS[folder]
    assert project["version"] == __version__
    siblings = [dep for dep in project.get("dependencies", []) if dep.startswith("coinfer-")]
    assert all(dep.endswith(f"=={__version__}") for dep in siblings), siblings
    assert (ROOT / folder / "src" / "coinfer" / folder / "__init__.py").is_file()
    assert not (ROOT / folder / "src" / "coinfer" / "__init__.py").exists()  # PEP 420 namespace


def test_the_device_declares_no_heavy_dependency():
    names = {re.split(r"[<>=\[; ]", dep)[0].lower() for dep in _project("device")["dependencies"]}
    assert names == {"coinfer-sdk", "numpy", "ai-edge-litert", "av"}
    sdk = {re.split(r"[<>=\[; ]", dep)[0].lower() for dep in _project("sdk")["dependencies"]}
    assert not (names | sdk) & HEAVY


def test_the_root_is_no_importable_package():
    """``import sdk.wire`` from the repository root must not load a second copy of coinfer.sdk.wire."""
    probe = ("import importlib.util, coinfer.sdk.wire\n"
             "print(importlib.util.find_spec('sdk.wire') is None)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.slow
def test_wheels_hold_only_their_own_package(tmp_path):
    for folder, name in DISTRIBUTIONS.items():
        # built from a copy: setuptools leaves build/ and *.egg-info next to the sources
        source = shutil.copytree(ROOT / folder, tmp_path / "src" / folder,
                                 ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), "-q"], check=True, capture_output=True)
        (wheel,) = tmp_path.glob(f"{name.replace('-', '_')}-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        code = [n for n in names if not n.startswith(f"{name.replace('-', '_')}-")]
        assert code and all(n.startswith(f"coinfer/{folder}/") for n in code), (folder, code[:5])
        assert f"coinfer/{folder}/__init__.py" in code
        wheel.unlink()


@pytest.mark.slow
def test_a_device_install_brings_nothing_heavy_and_runs_a_tflite_filter(tmp_path, filter_artifacts,
                                                                       filter_data):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    sources = [shutil.copytree(ROOT / folder, tmp_path / "src" / folder,
                               ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
               for folder in ("sdk", "device")]
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *map(str, sources)],
                   check=True, capture_output=True)
    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True,
                            capture_output=True, text=True).stdout
    installed = {item["name"].lower() for item in json.loads(listed)}
    assert {"coinfer-sdk", "coinfer-device", "numpy", "ai-edge-litert", "av"} <= installed
    assert not installed & HEAVY, installed & HEAVY
    assert not {"coinfer-edge", "coinfer-cloud", "coinfer-bench", "coinfer-converters"} & installed

    x, _ = filter_data
    np.save(tmp_path / "inputs.npy", x[:32])
    script = (
        "import json, sys, numpy as np\n"
        "from coinfer.device.runtime import create_runner\n"
        f"runner = create_runner({str(filter_artifacts['int8'].artifact.path)!r})\n"
        f"scores = runner.run(np.load({str(tmp_path / 'inputs.npy')!r}))['output_0']\n"
        f"np.save({str(tmp_path / 'scores.npy')!r}, scores)\n"
        "print(json.dumps({'backend': runner.backend, 'tiers': sorted({m.split('.')[1] for m in sys.modules "
        "if m.startswith('coinfer.')})}))\n"
    )
    out = subprocess.run([python, "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"backend": "ai_edge_litert.interpreter",
                                                               "tiers": ["device", "sdk"]}
    from coinfer.device.runtime import create_runner

    expected = create_runner(filter_artifacts["int8"].artifact).run(x[:32])["output_0"]
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), expected)
    help_text = subprocess.run([env_dir / "bin" / "coinfer", "--help"], check=True, capture_output=True,
                               text=True).stdout
    assert "gate" in help_text and "demo" in help_text
    missing = subprocess.run([env_dir / "bin" / "coinfer", "gate", "bench", "--quick"], capture_output=True,
                             text=True)
    assert missing.returncode == 69 and "pip install coinfer-bench" in missing.stderr
