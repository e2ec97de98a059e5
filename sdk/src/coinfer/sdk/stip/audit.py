"""Security audit tools for STIP: how much of the plaintext survives a permutation.

- :func:`distance_correlation` of a vector and its transform, over coordinate pairs
  ``(x_k, y_k)`` (the paper's metric; 0 means independent, 1 means a function of each
  other). Over *rows* instead it would be 1 for any permutation, which preserves
  distances, so the coordinate view is the meaningful one.
- :func:`random_projection` is the baseline a permutation is compared with.
- :func:`known_plaintext_attack` recovers pi from a few (x, x pi) pairs by matching
  columns: a user, or a server that learns plaintext, can do this. It shows why the
  per-layer keys, which never leave the developer, are what protects the weights.
"""

from __future__ import annotations

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError


def distance_correlation(x: np.ndarray, y: np.ndarray, max_samples: int = 2000, seed: int = 0) -> float:
    """Sample distance correlation of two equally long vectors (subsampled to ``max_samples``)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size < 2:
        raise InvalidArgumentError(f"need two vectors of the same length >= 2, got {x.shape} and {y.shape}")
    if x.size > max_samples:
        keep = np.random.default_rng(seed).choice(x.size, max_samples, replace=False)
        x, y = x[keep], y[keep]

    def centred(values: np.ndarray) -> np.ndarray:
        d = np.abs(values[:, None] - values[None, :])
        return d - d.mean(axis=0) - d.mean(axis=1)[:, None] + d.mean()

    a, b = centred(x), centred(y)
    dcov = (a * b).mean()
    dvar = np.sqrt((a * a).mean() * (b * b).mean())
    return float(np.sqrt(max(dcov, 0.0) / dvar)) if dvar > 0 else 0.0


def random_projection(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x R`` with a Gaussian ``R`` scaled to keep norms: the baseline transform."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    rng = np.random.default_rng(seed)
    return x @ (rng.standard_normal((d, d)) / np.sqrt(d))


def known_plaintext_attack(plain: np.ndarray, permuted: np.ndarray) -> np.ndarray:
    """Estimate pi from rows of ``x`` and ``x pi`` by matching each permuted column to a plain one."""
    plain = np.asarray(plain, dtype=np.float64)
    permuted = np.asarray(permuted, dtype=np.float64)
    if plain.shape != permuted.shape or plain.ndim != 2:
        raise InvalidArgumentError(f"need two (samples, d) arrays of one shape, got {plain.shape} and "
                                   f"{permuted.shape}")
    # ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b between every permuted column and every plain column.
    distances = ((permuted ** 2).sum(0)[:, None] + (plain ** 2).sum(0)[None, :] - 2 * permuted.T @ plain)
    return np.argmin(distances, axis=1)
