"""The first decoder blocks of a LLaMA-family model in numpy, for the data owner to run.

Why: the data owner's first message under plain STIP is ``E[token] pi``, one fixed row per
token, which a server holding the public embedding table names by sorting (see
:mod:`coinfer.sdk.stip.attacks`). Running the first ``K`` blocks on the device makes each
row depend on its context, so repeats of a token no longer look alike. The blocks are the
model's own (RMSNorm, rotary attention with grouped query heads, SwiGLU MLP), computed the
way ``transformers`` computes them, so the server's remaining blocks give the same output.

Weights are plain arrays in PyTorch's ``(out, in)`` layout, keyed ``"{i}.{name}"`` with
``name`` one of :data:`WEIGHTS` (plus ``q_bias``/``k_bias``/``v_bias`` for models with
attention biases). Example, one random block of a tiny model:

>>> import numpy as np
>>> from coinfer.sdk.stip.local_blocks import BlockShape, LocalBlocks, WEIGHTS
>>> shape = BlockShape(hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate_size=16,
...                    rms_eps=1e-6, inv_freq=np.array([1.0, 0.01]), attention_scaling=1.0)
>>> rng = np.random.default_rng(0)
>>> sizes = {"input_norm": (8,), "q": (8, 8), "k": (4, 8), "v": (4, 8), "o": (8, 8),
...          "post_norm": (8,), "gate": (16, 8), "up": (16, 8), "down": (8, 16)}
>>> blocks = LocalBlocks(shape, {f"0.{n}": rng.standard_normal(sizes[n]).astype(np.float32)
...                               for n in WEIGHTS})
>>> x = rng.standard_normal((1, 5, 8)).astype(np.float32)
>>> whole = blocks(x)
>>> cache = blocks.new_cache()
>>> stepwise = np.concatenate([blocks(x[:, :3], cache), blocks(x[:, 3:4], cache),
...                            blocks(x[:, 4:], cache)], axis=1)
>>> bool(np.allclose(whole, stepwise, atol=1e-5)), cache.length
(True, 5)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError

#: The arrays of one block, in PyTorch's (out, in) layout.
WEIGHTS = ("input_norm", "q", "k", "v", "o", "post_norm", "gate", "up", "down")
OPTIONAL_WEIGHTS = ("q_bias", "k_bias", "v_bias")


class LocalBlocksError(CoinferError):
    """Local block weights that do not fit their shape, or inputs that do not fit the blocks."""


@dataclass(frozen=True)
class BlockShape:
    """What the device needs besides the weights: head layout, norm epsilon, rotary frequencies."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float
    inv_freq: np.ndarray = field(compare=False)
    attention_scaling: float = 1.0

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready (for an artifact manifest); ``inv_freq`` as a list."""
        found = asdict(self)
        found["inv_freq"] = [float(v) for v in self.inv_freq]
        return found

    @classmethod
    def from_metadata(cls, found: dict[str, Any]) -> BlockShape:
        try:
            return cls(**{**found, "inv_freq": np.asarray(found["inv_freq"], dtype=np.float64)})
        except (KeyError, TypeError, ValueError) as error:
            raise LocalBlocksError(f"local block shape is malformed: {error}") from error


@dataclass
class BlockCache:
    """Keys and values of every local block for the positions seen so far (one sequence batch)."""

    keys: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    length: int = 0


class LocalBlocks:
    """``K`` decoder blocks; ``blocks(x, cache)`` maps (batch, tokens, hidden) embeddings to the
    residual stream after block ``K``, extending ``cache`` when one is given."""

    def __init__(self, shape: BlockShape, weights: dict[str, np.ndarray]) -> None:
        self.shape = shape
        self.count = _count_blocks(weights)
        expected = _expected_shapes(shape)
        for i in range(self.count):
            for name, size in expected.items():
                key = f"{i}.{name}"
                if name in OPTIONAL_WEIGHTS and key not in weights:
                    continue
                if key not in weights or tuple(weights[key].shape) != size:
                    got = tuple(weights[key].shape) if key in weights else "nothing"
                    raise LocalBlocksError(f"local block weight '{key}' should be {size}, got {got}")
        self._weights = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in weights.items()}

    def new_cache(self) -> BlockCache:
        return BlockCache()

    def __call__(self, x: np.ndarray, cache: BlockCache | None = None,
                 attention_mask: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[-1] != self.shape.hidden_size:
            raise LocalBlocksError(f"expected (batch, tokens, {self.shape.hidden_size}) inputs, "
                                   f"got {x.shape}")
        start = 0 if cache is None else cache.length
        positions = start + np.arange(x.shape[1])
        allowed = _allowed(start, x.shape[1], attention_mask, x.shape[0])
        for i in range(self.count):
            past = None if cache is None or not cache.keys[i:] else (cache.keys[i], cache.values[i])
            x, keys, values = self._block(i, x, positions, past, allowed)
            if cache is not None:
                if len(cache.keys) > i:
                    cache.keys[i], cache.values[i] = keys, values
                else:
                    cache.keys.append(keys)
                    cache.values.append(values)
        if cache is not None:
            cache.length = start + x.shape[1]
        return x

    def next_for_each(self, rows: np.ndarray, cache: BlockCache) -> np.ndarray:
        """The output at the next position for each of ``rows`` (candidates, hidden), every one
        continuing the same cached (batch 1) prefix; the cache is left as it was.

        This is what an attacker with the public weights computes to test every vocabulary
        token at once (:mod:`coinfer.sdk.stip.attacks`); one batch, no copies of the cache.
        """
        s = self.shape
        x = np.asarray(rows, dtype=np.float32)
        count = len(x)
        group = s.num_heads // s.num_kv_heads
        cos, sin = _rotary(np.array([cache.length]), s.inv_freq, s.attention_scaling)
        for i in range(self.count):
            w = {name: self._weights.get(f"{i}.{name}") for name in WEIGHTS + OPTIONAL_WEIGHTS}
            h = _rms_norm(x, w["input_norm"], s.rms_eps)
            q = _rotate(_linear(h, w["q"], w["q_bias"]).reshape(count, s.num_heads, s.head_dim), cos, sin)
            k = _rotate(_linear(h, w["k"], w["k_bias"]).reshape(count, s.num_kv_heads, s.head_dim), cos, sin)
            v = _linear(h, w["v"], w["v_bias"]).reshape(count, s.num_kv_heads, s.head_dim)
            q = q.reshape(count, s.num_kv_heads, group, s.head_dim)
            scale = np.float32(1.0 / np.sqrt(s.head_dim))
            own = np.einsum("ckgd,ckd->ckg", q, k)[..., None] * scale
            if cache.length:
                past_k, past_v = cache.keys[i][0], cache.values[i][0]   # (kv heads, prefix, head_dim)
                scores = np.concatenate([np.einsum("ckgd,kpd->ckgp", q, past_k) * scale, own], axis=-1)
            else:
                past_v, scores = None, own
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            weights = scores / scores.sum(-1, keepdims=True)
            attended = weights[..., -1:] * v[:, :, None, :]
            if past_v is not None:
                attended = attended + np.einsum("ckgp,kpd->ckgd", weights[..., :-1], past_v)
            x = x + _linear(attended.reshape(count, -1), w["o"])
            h = _rms_norm(x, w["post_norm"], s.rms_eps)
            gate = _linear(h, w["gate"])
            x = x + _linear(gate / (1.0 + np.exp(-gate)) * _linear(h, w["up"]), w["down"])
            x = x.astype(np.float32)
        return x

    def _block(self, i: int, x: np.ndarray, positions: np.ndarray, past: tuple[np.ndarray, np.ndarray] | None,
               allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = {name: self._weights.get(f"{i}.{name}") for name in WEIGHTS + OPTIONAL_WEIGHTS}
        s = self.shape
        batch, tokens, _ = x.shape
        h = _rms_norm(x, w["input_norm"], s.rms_eps)
        def heads(name: str, count: int) -> np.ndarray:
            projected = _linear(h, w[name], w[f"{name}_bias"])
            return projected.reshape(batch, tokens, count, s.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads("q", s.num_heads), heads("k", s.num_kv_heads), heads("v", s.num_kv_heads)
        cos, sin = _rotary(positions, s.inv_freq, s.attention_scaling)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if past is not None:
            k = np.concatenate([past[0], k], axis=2)
            v = np.concatenate([past[1], v], axis=2)
        group = s.num_heads // s.num_kv_heads
        scores = np.einsum("bhtd,bhsd->bhts", q, np.repeat(k, group, axis=1)) / np.sqrt(s.head_dim)
        scores = np.where(allowed[:, None], scores, np.finfo(np.float32).min)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        weights = scores / scores.sum(-1, keepdims=True)
        attended = np.einsum("bhts,bhsd->bhtd", weights, np.repeat(v, group, axis=1))
        x = x + _linear(attended.transpose(0, 2, 1, 3).reshape(batch, tokens, -1), w["o"])
        h = _rms_norm(x, w["post_norm"], s.rms_eps)
        gate = _linear(h, w["gate"])
        x = x + _linear(gate / (1.0 + np.exp(-gate)) * _linear(h, w["up"]), w["down"])
        return x.astype(np.float32), k, v


def _count_blocks(weights: dict[str, np.ndarray]) -> int:
    indices = {key.split(".", 1)[0] for key in weights}
    if not all(index.isdigit() for index in indices):
        raise LocalBlocksError(f"local block weights must be keyed '<block>.<name>', "
                               f"got {sorted(indices)[:3]}")
    count = len(indices)
    if indices != {str(i) for i in range(count)}:
        raise LocalBlocksError(f"local blocks must be numbered 0..{count - 1}, got {sorted(indices)}")
    return count


def _expected_shapes(s: BlockShape) -> dict[str, tuple[int, ...]]:
    q_width, kv_width = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    return {"input_norm": (s.hidden_size,), "q": (q_width, s.hidden_size), "k": (kv_width, s.hidden_size),
            "v": (kv_width, s.hidden_size), "o": (s.hidden_size, q_width), "post_norm": (s.hidden_size,),
            "gate": (s.intermediate_size, s.hidden_size), "up": (s.intermediate_size, s.hidden_size),
            "down": (s.hidden_size, s.intermediate_size), "q_bias": (q_width,), "k_bias": (kv_width,),
            "v_bias": (kv_width,)}


def _allowed(start: int, tokens: int, attention_mask: np.ndarray | None, batch: int) -> np.ndarray:
    """(batch, tokens, start + tokens) bool: causal, and only keys the mask keeps."""
    total = start + tokens
    causal = np.arange(total)[None, :] <= (start + np.arange(tokens))[:, None]
    if attention_mask is None:
        return np.broadcast_to(causal, (batch, tokens, total))
    mask = np.asarray(attention_mask).astype(bool)
    if mask.shape != (batch, total):
        raise LocalBlocksError(f"attention_mask must be (batch, {total}) covering cached and new tokens, "
                               f"got {mask.shape}")
    return causal[None] & mask[:, None, :]


def _rms_norm(x: np.ndarray, gain: np.ndarray | None, eps: float) -> np.ndarray:
    assert gain is not None  # checked by LocalBlocks.__init__
    return gain * (x * (1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps))).astype(np.float32)


def _linear(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None = None) -> np.ndarray:
    assert weight is not None  # checked by LocalBlocks.__init__
    y = x @ weight.T
    return y if bias is None else y + bias


def _rotary(positions: np.ndarray, inv_freq: np.ndarray, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    angles = positions[:, None].astype(np.float32) * inv_freq[None, :].astype(np.float32)
    angles = np.concatenate([angles, angles], axis=-1)
    return (np.cos(angles) * scaling).astype(np.float32), (np.sin(angles) * scaling).astype(np.float32)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding on the first ``2 * len(inv_freq)`` dimensions of each head; the rest pass."""
    width = cos.shape[-1]
    rotary, rest = x[..., :width], x[..., width:]
    half = width // 2
    turned = np.concatenate([-rotary[..., half:], rotary[..., :half]], axis=-1)
    return np.concatenate([rotary * cos + turned * sin, rest], axis=-1)
