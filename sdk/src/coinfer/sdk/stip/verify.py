"""In-process equivalence check: the plain model against device -> transformed model -> device."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from coinfer.sdk.stip.architectures import architecture_for
from coinfer.sdk.stip.keys import UserKeys
from coinfer.sdk.stip.transform import cloud_forward, device_embed


@dataclass(frozen=True)
class EquivalenceReport:
    """How far the STIP path is from the plain model (``rel_err`` = max abs error / max |output|)."""

    max_abs_err: float
    rel_err: float
    top1_agreement: float
    positions: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def equivalent(self, rel_tolerance: float = 1e-4) -> bool:
        return self.rel_err <= rel_tolerance and self.top1_agreement == 1.0


def compare(model: Any, cloud_model: Any, keys: UserKeys, inputs: np.ndarray,
            attention_mask: np.ndarray | None = None) -> EquivalenceReport:
    """Run ``model`` on raw inputs and the STIP path on the same inputs; compare the outputs.

    ``inputs`` are token ids (pixels for ViT). The data owner's side uses numpy only: embed,
    permute with pi, and un-permute the server's output with pi_c (logits) or pi (hidden).
    """
    import torch

    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    permuted = keys.permute_input(device_embed(model, inputs))
    entry = "pixel_values" if architecture_for(model.config).device_embed else "input_ids"
    with torch.no_grad():
        plain_kwargs = {entry: torch.as_tensor(inputs)}
        if mask is not None:
            plain_kwargs["attention_mask"] = mask
        plain, is_logits = _primary_output(model(**plain_kwargs))
        served, _ = _primary_output(cloud_forward(cloud_model, torch.from_numpy(permuted), mask))
    recovered = keys.unpermute_output(served) if is_logits else keys.unpermute_hidden(served)
    error = float(np.max(np.abs(recovered.astype(np.float64) - plain)))
    scale = float(np.max(np.abs(plain))) or 1.0
    positions = int(np.prod(plain.shape[:-1]))
    agreement = float(np.mean(recovered.argmax(-1) == plain.argmax(-1)))
    return EquivalenceReport(error, error / scale, agreement, positions)


def _primary_output(outputs: Any) -> tuple[np.ndarray, bool]:
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        return logits.detach().cpu().numpy(), True
    return outputs.last_hidden_state.detach().cpu().numpy(), False
