"""ViT under STIP: the patch embedding runs on the device, the encoder in the cloud.

Hugging Face's ViT takes only pixels, so the cloud side starts at the encoder blocks
(:func:`cloud_forward`) and the device builds embeddings in numpy (:func:`embed_pixels`):
patch projection, the class token, position embeddings; then permutes them with pi.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError


def device_parameters(model: Any) -> dict[str, np.ndarray]:
    """What the data owner needs from the model: the embedding parameters, in numpy."""
    embeddings = getattr(model, "vit", model).embeddings
    return {
        "projection_weight": embeddings.patch_embeddings.projection.weight.detach().cpu().numpy(),
        "projection_bias": embeddings.patch_embeddings.projection.bias.detach().cpu().numpy(),
        "cls_token": embeddings.cls_token.detach().cpu().numpy(),
        "position_embeddings": embeddings.position_embeddings.detach().cpu().numpy(),
    }


def embed_pixels(parameters: dict[str, np.ndarray], pixels: np.ndarray) -> np.ndarray:
    """(batch, channels, H, W) float pixels -> (batch, 1 + patches, hidden) embeddings."""
    weight = parameters["projection_weight"]
    hidden, channels, patch, _ = weight.shape
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[1] != channels or pixels.shape[2] % patch or pixels.shape[3] % patch:
        raise CoinferError(f"pixels must be (batch, {channels}, H, W) with H, W multiples of {patch}, "
                           f"got {pixels.shape}")
    batch, _, height, width = pixels.shape
    grid = pixels.reshape(batch, channels, height // patch, patch, width // patch, patch)
    patches = grid.transpose(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch * patch)
    projected = patches @ weight.reshape(hidden, -1).T + parameters["projection_bias"]
    positions = parameters["position_embeddings"]
    if projected.shape[1] + 1 != positions.shape[1]:
        expected = positions.shape[1] - 1
        raise CoinferError(f"image gives {projected.shape[1]} patches, the model expects {expected}")
    cls = np.broadcast_to(parameters["cls_token"], (batch, 1, hidden))
    return (np.concatenate([cls, projected], axis=1) + positions).astype(np.float32)


def device_embed(model: Any, pixels: np.ndarray) -> np.ndarray:
    return embed_pixels(device_parameters(model), pixels)


def cloud_forward(model: Any, inputs_embeds: Any, attention_mask: Any = None) -> Any:
    """Run the (transformed) ViT from embeddings: encoder blocks, final norm, head or pooler."""
    base = getattr(model, "vit", model)
    hidden = inputs_embeds
    for layer in base.layers:
        hidden = layer(hidden, None)
    sequence = base.layernorm(hidden)
    if hasattr(model, "classifier"):
        return SimpleNamespace(logits=model.classifier(sequence[:, 0, :]))
    return SimpleNamespace(logits=None, last_hidden_state=sequence)
