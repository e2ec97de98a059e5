"""Attacks a STIP model server can run on what the data owner sends; numpy only.

Why: a security claim is only as good as the attack that failed to break it. These are
the published attacks on permutation-based private inference (arXiv 2505.18332) and the
classic ones on deterministic encodings, written so ``coinfer stip audit`` runs them
against real published bundles:

- :func:`vocab_match`: a permutation keeps each row's multiset of values, so the sorted
  row names the embedding row of a public table (nearest signature, which also works
  against a lightly fine-tuned copy);
- :func:`norm_match`: an orthogonal rotation keeps norms, and the public table's row
  norms are nearly all distinct;
- :class:`SequentialAttack`: for rows that went through the first blocks (on the device),
  try every vocabulary token through the public weights, position by position, and keep
  the one whose invariants match (sorted values under permutations; norm and inner
  products with earlier positions under rotations);
- :func:`repeat_leak` and :func:`frequency_recovery`: with private weights one token
  always gives the same row, so repeats link up and rank-frequency analysis names them.

Example: permuted rows of a public table come back by sorting.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> table = rng.standard_normal((50, 16)).astype(np.float32)
>>> tokens = np.array([3, 14, 15, 9, 26, 3])
>>> sent = table[tokens][:, rng.permutation(16)]
>>> vocab_match(sent, table).tolist()
[3, 14, 15, 9, 26, 3]
>>> rotated = table[tokens] @ np.linalg.qr(rng.standard_normal((16, 16)))[0]
>>> float(np.mean(vocab_match(rotated, table) == tokens)) < 0.5, norm_match(rotated, table).tolist()
(True, [3, 14, 15, 9, 26, 3])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.stip.local_blocks import LocalBlocks

Invariant = Literal["permutation", "rotation"]
#: Rows compared per chunk when searching a vocabulary (bounds memory to chunk x vocab floats).
CHUNK = 256


def nearest(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Index of the nearest (Euclidean) reference row for each query row."""
    queries = np.asarray(queries, dtype=np.float32)
    references = np.asarray(references, dtype=np.float32)
    if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1]:
        raise InvalidArgumentError(f"need (n, d) queries and (m, d) references, got {queries.shape} and "
                                   f"{references.shape}")
    squared = (references * references).sum(1)
    found = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), CHUNK):
        part = queries[start:start + CHUNK]
        distances = squared[None, :] - 2.0 * part @ references.T
        found[start:start + CHUNK] = np.argmin(distances, axis=1)
    return found


def vocab_match(sent: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Token ids whose sorted table row is nearest to each sorted sent row (permutation invariant)."""
    return nearest(np.sort(sent, axis=-1), np.sort(table, axis=-1))


def norm_match(sent: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Token ids whose table row norm is nearest to each sent row's norm (rotation invariant)."""
    sent_norms = np.linalg.norm(np.asarray(sent, dtype=np.float64), axis=-1)
    table_norms = np.linalg.norm(np.asarray(table, dtype=np.float64), axis=-1)
    order = np.argsort(table_norms)
    ranked = table_norms[order]
    slot = np.clip(np.searchsorted(ranked, sent_norms), 1, len(ranked) - 1)
    below = np.abs(sent_norms - ranked[slot - 1]) <= np.abs(ranked[slot] - sent_norms)
    return order[np.where(below, slot - 1, slot)]


class SequentialAttack:
    """Recover a message token by token from rows that passed the first blocks on the device.

    The attacker holds the public embedding table and the same first blocks (an empty
    :class:`LocalBlocks` or ``None`` when the device sends embeddings). At position ``t`` it
    computes, for every vocabulary token, the row that token would produce after the
    tokens it already recovered, and keeps the best match of the invariant.
    """

    def __init__(self, table: np.ndarray, blocks: LocalBlocks | None, invariant: Invariant) -> None:
        if invariant not in ("permutation", "rotation"):
            raise InvalidArgumentError(f"invariant must be 'permutation' or 'rotation', got {invariant!r}")
        self.table = np.asarray(table, dtype=np.float32)
        self.blocks = blocks if blocks is not None and blocks.count else None
        self.invariant = invariant
        self._sorted_table = np.sort(self.table, axis=-1) if self.blocks is None else None

    def recover(self, sent: np.ndarray) -> np.ndarray:
        """(tokens, hidden) rows of one message -> the recovered token ids."""
        sent = np.asarray(sent, dtype=np.float64)
        cache = None if self.blocks is None else self.blocks.new_cache()
        recovered: list[int] = []
        mine: list[np.ndarray] = []     # the attacker's own rows for the recovered prefix
        for t in range(len(sent)):
            candidates = self.table if self.blocks is None or cache is None else self.blocks.next_for_each(
                self.table, cache)
            if self.invariant == "permutation":
                sorted_candidates = (self._sorted_table if self._sorted_table is not None
                                     else np.sort(candidates, axis=-1))
                token = int(nearest(np.sort(sent[t:t + 1], axis=-1), sorted_candidates)[0])
            else:
                token = _gram_match(candidates, mine, sent[:t + 1])
            recovered.append(token)
            mine.append(np.asarray(candidates[token], dtype=np.float64))
            if self.blocks is not None and cache is not None:
                self.blocks(self.table[[[token]]], cache)
        return np.array(recovered, dtype=np.int64)


def _gram_match(candidates: np.ndarray, mine: list[np.ndarray], sent: np.ndarray) -> int:
    """The candidate whose squared norm and inner products with the attacker's prefix rows best
    match the sent row's, relative to their size (all preserved by an orthogonal transform)."""
    observed = sent[:-1] @ sent[-1]
    target = np.concatenate([[sent[-1] @ sent[-1]], observed])
    candidates = np.asarray(candidates, dtype=np.float64)
    features = [np.einsum("vd,vd->v", candidates, candidates)]
    features += [candidates @ row for row in mine]
    scale = np.abs(target) + 1e-6
    pairs = zip(features, target, scale, strict=True)
    error = sum(((feature - value) / size) ** 2 for feature, value, size in pairs)
    return int(np.argmin(error))


def recovery_rate(recovered: np.ndarray, truth: np.ndarray) -> float:
    """The share of tokens recovered exactly."""
    truth = np.asarray(truth)
    return float(np.mean(np.asarray(recovered) == truth)) if truth.size else 0.0


def repeat_leak(sent: np.ndarray, tokens: Sequence[int] | np.ndarray) -> float:
    """Of the positions whose token occurred before, the share whose nearest earlier row
    (cosine) holds that same token: how well the server links repeats without any weights."""
    rows = _unit(sent)
    truth = np.asarray(tokens)
    hits = total = 0
    for i in range(1, len(rows)):
        if not np.any(truth[:i] == truth[i]):
            continue
        total += 1
        hits += int(truth[int(np.argmax(rows[:i] @ rows[i]))] == truth[i])
    return hits / total if total else 0.0


def frequency_recovery(sent: np.ndarray, tokens: Sequence[int] | np.ndarray, reference: Counter[int],
                       thresholds: Sequence[float] = (1.0 - 1e-6, 0.99, 0.95, 0.9, 0.8),
                       ) -> tuple[float, float]:
    """Rank-frequency analysis: cluster the rows (cosine >= threshold to a cluster's first row),
    give the k-th largest cluster the k-th most frequent token of ``reference`` (the
    attacker's public statistics), and score the share of tokens named right.

    Returns the best share over ``thresholds`` and that threshold: an upper bound on this
    attacker, who cannot check a threshold against the truth.
    """
    rows = _unit(sent)
    truth = np.asarray(tokens)
    ranked = [token for token, _ in reference.most_common()]
    best = (0.0, float(thresholds[0]))
    for threshold in thresholds:
        labels = _greedy_clusters(rows, threshold)
        sizes = Counter(labels.tolist())
        named = {label: ranked[rank] if rank < len(ranked) else -1
                 for rank, (label, _) in enumerate(sizes.most_common())}
        share = float(np.mean([named[label] == token for label, token in zip(labels, truth, strict=True)]))
        if share > best[0]:
            best = (share, float(threshold))
    return best


def _greedy_clusters(rows: np.ndarray, threshold: float) -> np.ndarray:
    labels = np.empty(len(rows), dtype=np.int64)
    leaders = np.empty_like(rows)
    count = 0
    for i, row in enumerate(rows):
        if count:
            similarity = leaders[:count] @ row
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                labels[i] = best
                continue
        labels[i] = count
        leaders[count] = row
        count += 1
    return labels


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)
