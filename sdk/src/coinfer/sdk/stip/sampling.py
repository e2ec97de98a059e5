"""Next-token choice on the data owner's device: the server never sees which token was picked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import CoinferError


@dataclass(frozen=True)
class SamplingOptions:
    """``temperature == 0`` is greedy; otherwise sample after top-k then top-p (nucleus) filtering."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise CoinferError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise CoinferError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise CoinferError(f"top_p must be in (0, 1], got {self.top_p}")


GREEDY = SamplingOptions()


class TokenSampler:
    """Chooses the next token from one row of logits."""

    def __init__(self, options: SamplingOptions = GREEDY) -> None:
        self.options = options
        self._rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.options.temperature == 0:
            return int(np.argmax(logits))
        scaled = logits / self.options.temperature
        if self.options.top_k:
            cutoff = np.partition(scaled, -self.options.top_k)[-self.options.top_k]
            scaled = np.where(scaled < cutoff, -np.inf, scaled)
        probabilities = np.exp(scaled - np.max(scaled))
        probabilities /= probabilities.sum()
        if self.options.top_p < 1:
            order = np.argsort(-probabilities)
            cumulative = np.cumsum(probabilities[order])
            keep = order[: int(np.searchsorted(cumulative, self.options.top_p)) + 1]
            mask = np.zeros_like(probabilities)
            mask[keep] = probabilities[keep]
            probabilities = mask / mask.sum()
        return int(self._rng.choice(len(probabilities), p=probabilities))
