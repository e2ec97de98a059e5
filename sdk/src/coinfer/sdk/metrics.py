"""Agreement metrics between a reference model and a converted or remote copy of it, and timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest absolute difference; shapes must match."""
    reference, candidate = _same_shape(reference, candidate)
    if reference.size == 0:
        return 0.0
    return float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows whose arg-max over the last axis is the same."""
    reference, candidate = _same_shape(reference, candidate)
    same = np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)
    return float(np.mean(same)) if same.size else 1.0


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity over the last axis (1.0 for two zero rows)."""
    reference, candidate = _same_shape(reference, candidate)
    a = reference.astype(np.float64).reshape(-1, reference.shape[-1])
    b = candidate.astype(np.float64).reshape(-1, candidate.shape[-1])
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)


def _same_shape(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise InvalidArgumentError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    return reference, candidate


def median_latency_ms(call: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``call`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
