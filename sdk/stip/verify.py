"""In-process equivalence check: the plain model against device -> transformed model -> device."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from coinfer.sdk.stip.keys import UserKeys
from coinfer.sdk.stip.transform import device_embedding_table


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


def compare(model: Any, cloud_model: Any, keys: UserKeys, input_ids: np.ndarray,
            attention_mask: np.ndarray | None = None) -> EquivalenceReport:
    """Run ``model`` on token ids and the STIP path on the same ids; compare the outputs.

    The data owner's side uses numpy only: look up embeddings, permute with pi, and
    un-permute the server's output with pi_c (logits) or pi (hidden states).
    """
    import torch

    ids = torch.as_tensor(input_ids)
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    permuted = keys.permute_input(device_embedding_table(model)[input_ids])
    with torch.no_grad():
        plain, is_logits = _primary_output(model(input_ids=ids, attention_mask=mask))
        served = cloud_model(inputs_embeds=torch.from_numpy(permuted), attention_mask=mask)
        served, _ = _primary_output(served)
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
