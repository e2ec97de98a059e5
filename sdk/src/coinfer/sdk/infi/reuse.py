"""Reuse cache: answer an input with a cached result when its nearest cached inputs agree.

Keys are embeddings from the reuse filter's feature network; the distance between two
embeddings is the learned pair classifier ``d = sigmoid(|e1 - e2| @ w + b)`` (the
probability that their results differ), not the Euclidean distance (paper sec. 3.3).
A lookup runs H-KNN: the K nearest entries vote with their results; the homogeneity

    theta = sum over the majority's voters of (1 - d) / K

is high only when most neighbours are both close and agree. ``theta >= homogeneity``
is a hit (the majority result is reused); otherwise the model runs and its result is
inserted, replacing the least frequently (``lfu``) or least recently (``lru``) used entry
when the cache is full. Lookups start once the cache holds K entries.

Example: a trained reuse filter gives the embedder and the pair classifier (``trained.embed``
and ``trained.pair_head()``, or :func:`coinfer.device.infi.load_reuse_cache`); here the
inputs are their own 2-D embeddings and the distance grows with ``|e1 - e2|``:

>>> import numpy as np
>>> from coinfer.sdk.infi.reuse import CacheOptions, ReuseCache
>>> cache = ReuseCache(lambda inputs: inputs, np.ones(2), -4.0, CacheOptions(capacity=4, k=2))
>>> def model(x):                      # the expensive model: is anyone there?
...     return int(x[0] > 5)
>>> inputs = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [0.05, 0.1], [10.1, 10.0]], np.float32)
>>> outputs, hits = cache.run(inputs, model, key=int)
>>> outputs, hits                      # the fourth input's two nearest neighbours agree: reused
([0, 0, 1, 0, 1], array([False, False, False,  True, False]))
>>> len(cache), cache.stats.filter_rate
(4, 0.2)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.infi.curves import optimal_rate
from coinfer.sdk.infi.modalities import InputError
from coinfer.sdk.infi.skip import FilterStats

REPLACEMENTS = ("lfu", "lru")


@dataclass(frozen=True)
class CacheOptions:
    """Cache size, H-KNN's K, the homogeneity threshold (paper: 0.5) and replacement policy."""

    capacity: int = 1000
    k: int = 5
    homogeneity: float = 0.5
    replacement: str = "lfu"

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.k < 1:
            raise InvalidArgumentError(f"capacity and k must be >= 1, got {self.capacity} and {self.k}")
        if self.k > self.capacity:
            raise InvalidArgumentError(f"k ({self.k}) cannot exceed the capacity ({self.capacity})")
        if not 0.0 <= self.homogeneity <= 1.0:
            raise InvalidArgumentError(f"homogeneity must be in [0, 1], got {self.homogeneity}")
        if self.replacement not in REPLACEMENTS:
            raise InvalidArgumentError(f"replacement must be one of {REPLACEMENTS}, got {self.replacement!r}")


@dataclass(frozen=True)
class Lookup:
    """One H-KNN answer: ``hit`` says whether ``result`` may be reused."""

    hit: bool
    result: Any
    homogeneity: float


class ReuseCache:
    """Bounded key-value cache of (embedding -> result) with H-KNN lookups; thread-safe."""

    def __init__(self, embedder: Callable[[Any], np.ndarray], pair_weights: np.ndarray, pair_bias: float,
                 options: CacheOptions | None = None) -> None:
        self.options = options or CacheOptions()
        self._embedder = embedder
        self._w = np.asarray(pair_weights, dtype=np.float32).reshape(-1)
        self._b = float(pair_bias)
        dim = self._w.size
        self._keys = np.zeros((self.options.capacity, dim), dtype=np.float32)
        self._results: list[Any] = [None] * self.options.capacity
        self._labels: list[Hashable] = [None] * self.options.capacity
        self._uses = np.zeros(self.options.capacity, dtype=np.int64)
        self._last = np.zeros(self.options.capacity, dtype=np.int64)
        self._size = 0
        self._clock = 0
        self._lock = threading.Lock()
        self.stats = FilterStats()

    def __len__(self) -> int:
        return self._size

    def distances(self, embedding: np.ndarray) -> np.ndarray:
        """Learned distance from one embedding to every cached key."""
        keys = self._keys[:self._size]
        logits = np.abs(keys - embedding[None, :]) @ self._w + self._b
        return 0.5 * (1.0 + np.tanh(0.5 * logits))

    def embed(self, inputs: Any) -> np.ndarray:
        """The cache keys of a batch of inputs, (n, embedding)."""
        return np.asarray(self._embedder(inputs), dtype=np.float32)

    def lookup_embedding(self, embedding: np.ndarray) -> Lookup:
        embedding = self._check_embedding(embedding)
        with self._lock:
            return self._lookup(embedding)

    def insert_embedding(self, embedding: np.ndarray, result: Any, label: Hashable) -> None:
        embedding = self._check_embedding(embedding)
        with self._lock:
            self._insert(embedding, result, label)

    def run(self, inputs: Any, model: Callable[[Any], Any],
            key: Callable[[Any], Hashable]) -> tuple[list[Any], np.ndarray]:
        """Outputs for a batch (reused on hits, computed and cached on misses) and the hit mask."""
        embeddings = self.embed(inputs)
        outputs, hits = [], np.zeros(len(embeddings), dtype=bool)
        for row, embedding in enumerate(embeddings):
            with self._lock:
                answer = self._lookup(embedding)
                if answer.hit:
                    hits[row] = True
                    outputs.append(answer.result)
                    continue
            result = model(_row(inputs, row))
            outputs.append(result)
            with self._lock:
                self._insert(embedding, result, key(result))
        return outputs, hits

    def clear(self) -> None:
        with self._lock:
            self._size = 0
            self._results = [None] * self.options.capacity
            self._labels = [None] * self.options.capacity

    def _lookup(self, embedding: np.ndarray) -> Lookup:
        self.stats.seen += 1
        k = self.options.k
        if self._size < k:
            return Lookup(False, None, 0.0)
        distance = self.distances(embedding)
        nearest = np.argpartition(distance, k - 1)[:k]
        votes: dict[Hashable, float] = {}
        for index in nearest:
            label = self._labels[index]
            votes[label] = votes.get(label, 0.0) + 1.0 - float(distance[index])
        majority = max(votes, key=votes.__getitem__)
        theta = votes[majority] / k
        if theta < self.options.homogeneity:
            return Lookup(False, None, theta)
        members = [int(i) for i in nearest if self._labels[i] == majority]
        self._clock += 1
        self._uses[members] += 1
        self._last[members] = self._clock
        self.stats.filtered += 1
        closest = min(members, key=lambda i: distance[i])
        return Lookup(True, self._results[closest], theta)

    def _insert(self, embedding: np.ndarray, result: Any, label: Hashable) -> None:
        self._clock += 1
        if self._size < self.options.capacity:
            slot = self._size
            self._size += 1
        elif self.options.replacement == "lfu":
            slot = int(np.lexsort((self._last, self._uses))[0])
        else:
            slot = int(np.argmin(self._last))
        self._keys[slot] = embedding
        self._results[slot], self._labels[slot] = result, label
        self._uses[slot], self._last[slot] = 0, self._clock

    def _check_embedding(self, embedding: np.ndarray) -> np.ndarray:
        embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if embedding.size != self._w.size:
            raise InputError(f"embedding has {embedding.size} values, the cache keys have {self._w.size}")
        if not np.all(np.isfinite(embedding)):
            raise InputError("the embedding contains NaN or infinite values")
        return embedding


def _row(inputs: Any, row: int) -> Any:
    if isinstance(inputs, dict):
        return {name: value[row] for name, value in inputs.items()}
    return inputs[row]


@dataclass(frozen=True)
class ReuseCurve:
    """Filter rate (hits) and accuracy (hits whose reused result was interchangeable with the
    true one, plus all misses) for each homogeneity threshold, on one input stream."""

    homogeneity: np.ndarray
    rates: np.ndarray
    accuracies: np.ndarray
    optimal_at_90: float

    def rate_at(self, target: float = 0.9) -> float:
        ok = self.accuracies >= target - 1e-12
        return float(self.rates[ok].max()) if ok.any() else 0.0


def reuse_curve(embeddings: np.ndarray, outputs: Sequence[Any], same: Callable[[Any, Any], bool],
                key: Callable[[Any], Hashable], pair_weights: np.ndarray, pair_bias: float,
                options: CacheOptions, thresholds: Sequence[float] = tuple(np.linspace(0.0, 1.0, 41))
                ) -> ReuseCurve:
    """Replay a stream through a fresh cache per homogeneity threshold (embeddings precomputed)."""
    rates, accuracies = [], []
    labels = [key(output) for output in outputs]
    for threshold in thresholds:
        cache = ReuseCache(lambda x: x, pair_weights, pair_bias,
                           CacheOptions(options.capacity, options.k, float(threshold), options.replacement))
        _, accuracy = replay(cache, embeddings, outputs, labels, same)
        rates.append(cache.stats.filter_rate)
        accuracies.append(accuracy)
    return ReuseCurve(np.asarray(thresholds, dtype=np.float64), np.array(rates), np.array(accuracies),
                      optimal_rate(repeated_fraction(labels), 0.9))


def replay(cache: ReuseCache, embeddings: np.ndarray, outputs: Sequence[Any], labels: Sequence[Hashable],
           same: Callable[[Any, Any], bool]) -> tuple[np.ndarray, float]:
    """Stream precomputed embeddings through ``cache`` in order; a miss inserts its true output.

    Returns the hit mask and the accuracy: hits whose reused result is interchangeable with
    the true output (``same``), plus every miss (the model ran), over all inputs.
    """
    hits = np.zeros(len(outputs), dtype=bool)
    correct = 0
    for row, (embedding, output, label) in enumerate(zip(embeddings, outputs, labels, strict=True)):
        answer = cache.lookup_embedding(embedding)
        if answer.hit:
            hits[row] = True
            correct += same(answer.result, output)
        else:
            correct += 1
            cache.insert_embedding(embedding, output, label)
    return hits, correct / max(len(outputs), 1)


def repeated_fraction(labels: Sequence[Hashable]) -> float:
    """Fraction of a stream whose result already appeared earlier: what a perfect cache reuses."""
    seen: set[Hashable] = set()
    repeated = 0
    for label in labels:
        repeated += label in seen
        seen.add(label)
    return repeated / max(len(labels), 1)
