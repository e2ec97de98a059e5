"""STIP permutation keys: what the model developer draws, and what users receive.

A permutation is an index vector ``p``: the permuted feature vector is ``x[..., p]`` (the
paper's ``x pi``), and ``argsort(p)`` undoes it. Keys respect the structure of attention,
or the transformed model would not compute the same function:

- query/key/value heads move as whole heads, with one head permutation shared by Q, K and
  V; with grouped-query attention a query head moves with its key/value group;
- within a head, Q and K share one permutation (their dot product must survive) while V
  has its own; dimensions that carry rotary position embeddings stay in place, because
  each rotated pair has its own frequency and no permutation of them commutes with RoPE;
- the MLP's intermediate dimension gets its own permutation.

``UserKeys`` (pi over the hidden size, pi_c over the output classes or vocabulary) go to
registered users; ``DeveloperKeys`` add the per-layer keys, which never leave the developer.

Example: ``ModelLayout.from_config(model.config)`` reads the layout of a Hugging Face model;
here a tiny one with grouped-query attention (4 query heads over 2 key/value heads) and
rotary embeddings on the first 2 of each head's 4 dimensions:

>>> import os
>>> import tempfile
>>> import numpy as np
>>> from coinfer.sdk.stip.keys import DeveloperKeys, ModelLayout, UserKeys, generate_keys
>>> layout = ModelLayout(hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4,
...                      intermediate_size=16, output_size=10, rotary_dim=2)
>>> keys = generate_keys(layout, seed=0)          # without a seed: drawn from os.urandom
>>> sorted(keys.user.hidden.tolist()) == list(range(8)), len(keys.layers)
(True, 2)
>>> x = np.arange(8.0)
>>> bool(np.array_equal(keys.user.unpermute_hidden(keys.user.permute_input(x)), x))
True
>>> layer = keys.layers[0]
>>> layer.qk_within[:, :2]                        # the rotary dimensions stay in place
array([[0, 1],
       [0, 1]])
>>> layer.q_out.shape, layer.k_out.shape, layer.mlp.shape
((16,), (8,), (1, 16))

Users get ``keys.user`` only; both files are readable by their owner alone:

>>> work = tempfile.TemporaryDirectory()
>>> keys.save(f"{work.name}/dev.keys.npz")
>>> keys.user.save(f"{work.name}/user.keys.npz")
>>> oct(os.stat(f"{work.name}/user.keys.npz").st_mode & 0o777)
'0o600'
>>> DeveloperKeys.load(f"{work.name}/dev.keys.npz").layout == layout
True
>>> bool(np.array_equal(UserKeys.load(f"{work.name}/user.keys.npz").output, keys.user.output))
True
>>> work.cleanup()
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError

KEY_FORMAT = "coinfer-stip-keys-v1"


class StipKeyError(CoinferError):
    """Keys are malformed, do not match the model, or cannot be read safely."""


@dataclass(frozen=True)
class ModelLayout:
    """The dimensions of a transformer that keys must fit."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    output_size: int
    rotary_dim: int = 0
    num_experts: int = 0

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise StipKeyError(
                f"{self.num_heads} query heads cannot be grouped over {self.num_kv_heads} kv heads"
            )
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise StipKeyError(
                f"rotary_dim {self.rotary_dim} must be even and at most head_dim {self.head_dim}"
            )

    @classmethod
    def from_config(cls, config: Any, output_size: int | None = None) -> ModelLayout:
        """Read the layout from a Hugging Face config (any supported architecture)."""
        from coinfer.sdk.stip.architectures import layout_from_config

        return layout_from_config(config, output_size)


@dataclass(frozen=True)
class LayerKeys:
    """One layer's secret permutations, in structured form (see the module docstring)."""

    kv_heads: np.ndarray        # (num_kv_heads,)
    query_in_group: np.ndarray  # (num_kv_heads, heads per group)
    qk_within: np.ndarray       # (num_kv_heads, head_dim): per kv head, shared by its Q heads and K
    v_within: np.ndarray        # (num_kv_heads, head_dim)
    mlp: np.ndarray             # (num_experts or 1, intermediate_size)

    @property
    def group(self) -> int:
        return self.query_in_group.shape[1]

    @property
    def query_heads(self) -> np.ndarray:
        """New query head position -> old query head."""
        return (self.kv_heads[:, None] * self.group + self.query_in_group).reshape(-1)

    def _expand(self, heads: np.ndarray, within: np.ndarray, kv_of_head: np.ndarray) -> np.ndarray:
        head_dim = within.shape[1]
        return (heads[:, None] * head_dim + within[kv_of_head]).reshape(-1)

    @property
    def q_out(self) -> np.ndarray:
        heads = self.query_heads
        return self._expand(heads, self.qk_within, heads // self.group)

    @property
    def k_out(self) -> np.ndarray:
        return self._expand(self.kv_heads, self.qk_within, self.kv_heads)

    @property
    def v_out(self) -> np.ndarray:
        return self._expand(self.kv_heads, self.v_within, self.kv_heads)

    @property
    def o_in(self) -> np.ndarray:
        """Permutation of the attention output (query heads, each in its group's V order)."""
        heads = self.query_heads
        return self._expand(heads, self.v_within, heads // self.group)


@dataclass(frozen=True)
class UserKeys:
    """pi (hidden) and pi_c (outputs): what a data owner needs to talk to the model server."""

    hidden: np.ndarray
    output: np.ndarray

    def permute_input(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings[..., self.hidden]

    def unpermute_hidden(self, values: np.ndarray) -> np.ndarray:
        return values[..., np.argsort(self.hidden)]

    def unpermute_output(self, values: np.ndarray) -> np.ndarray:
        return values[..., np.argsort(self.output)]

    def save(self, path: str | os.PathLike) -> None:
        _save_private(path, {"kind": "user", "hidden": self.hidden, "output": self.output})

    @classmethod
    def load(cls, path: str | os.PathLike) -> UserKeys:
        arrays = _load(path, "user")
        return cls(_perm(arrays, "hidden", path), _perm(arrays, "output", path))


@dataclass(frozen=True)
class DeveloperKeys:
    """All keys of one model instance; only the model developer holds these."""

    layout: ModelLayout
    user: UserKeys
    layers: tuple[LayerKeys, ...]

    def save(self, path: str | os.PathLike) -> None:
        arrays: dict[str, Any] = {"kind": "developer", "hidden": self.user.hidden, "output": self.user.output,
                                  "layout": np.array([getattr(self.layout, f) for f in _LAYOUT_FIELDS])}
        for i, layer in enumerate(self.layers):
            for name in _LAYER_FIELDS:
                arrays[f"layer{i}.{name}"] = getattr(layer, name)
        _save_private(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeveloperKeys:
        arrays = _load(path, "developer")
        layout = ModelLayout(*[int(v) for v in arrays["layout"]])
        user = UserKeys(_perm(arrays, "hidden", path), _perm(arrays, "output", path))
        layers = tuple(
            LayerKeys(**{name: arrays[f"layer{i}.{name}"] for name in _LAYER_FIELDS})
            for i in range(layout.num_layers)
        )
        keys = cls(layout, user, layers)
        check_keys(keys)
        return keys


_LAYOUT_FIELDS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "output_size", "rotary_dim", "num_experts")
_LAYER_FIELDS = ("kv_heads", "query_in_group", "qk_within", "v_within", "mlp")


def generate_keys(layout: ModelLayout, *, seed: int | None = None) -> DeveloperKeys:
    """Draw a fresh key set. Without ``seed`` the draws come from ``os.urandom``.

    ``seed`` makes keys reproducible for tests only; never use it for a deployment.
    """
    rng: random.Random = random.SystemRandom() if seed is None else random.Random(seed)

    def perm(n: int) -> np.ndarray:
        order = list(range(n))
        rng.shuffle(order)
        return np.array(order, dtype=np.int64)

    def within_head(qk: bool) -> np.ndarray:
        if not qk or layout.rotary_dim == 0:
            return perm(layout.head_dim)
        # Rotary dimensions stay in place; only the pass-through tail may move.
        tail = layout.rotary_dim + perm(layout.head_dim - layout.rotary_dim)
        return np.concatenate([np.arange(layout.rotary_dim), tail])

    group = layout.num_heads // layout.num_kv_heads
    layers = tuple(
        LayerKeys(
            kv_heads=perm(layout.num_kv_heads),
            query_in_group=np.stack([perm(group) for _ in range(layout.num_kv_heads)]),
            qk_within=np.stack([within_head(True) for _ in range(layout.num_kv_heads)]),
            v_within=np.stack([within_head(False) for _ in range(layout.num_kv_heads)]),
            mlp=np.stack([perm(layout.intermediate_size) for _ in range(max(layout.num_experts, 1))]),
        )
        for _ in range(layout.num_layers)
    )
    return DeveloperKeys(layout, UserKeys(perm(layout.hidden_size), perm(layout.output_size)), layers)


def check_keys(keys: DeveloperKeys) -> None:
    """Raise unless every key is a permutation of the size the layout demands."""
    layout = keys.layout
    _check_perm(keys.user.hidden, layout.hidden_size, "pi (hidden)")
    _check_perm(keys.user.output, layout.output_size, "pi_c (output)")
    if len(keys.layers) != layout.num_layers:
        raise StipKeyError(f"{len(keys.layers)} layer keys for {layout.num_layers} layers")
    group = layout.num_heads // layout.num_kv_heads
    for i, layer in enumerate(keys.layers):
        _check_perm(layer.kv_heads, layout.num_kv_heads, f"layer {i} kv heads")
        for row in layer.query_in_group.reshape(-1, group):
            _check_perm(row, group, f"layer {i} query heads")
        for name in ("qk_within", "v_within"):
            for row in getattr(layer, name):
                _check_perm(row, layout.head_dim, f"layer {i} {name}")
        rotary = layer.qk_within[:, :layout.rotary_dim]
        if layout.rotary_dim and not (rotary == np.arange(layout.rotary_dim)).all():
            raise StipKeyError(f"layer {i}: qk_within moves rotary dimensions, which breaks RoPE")
        for row in layer.mlp:
            _check_perm(row, layout.intermediate_size, f"layer {i} mlp")


def _check_perm(values: np.ndarray, size: int, what: str) -> None:
    values = np.asarray(values)
    if values.shape != (size,) or not np.array_equal(np.sort(values), np.arange(size)):
        raise StipKeyError(f"{what} is not a permutation of {size} elements")


def _perm(arrays: dict[str, np.ndarray], name: str, path: Any) -> np.ndarray:
    if name not in arrays:
        raise StipKeyError(f"{path}: missing key '{name}'")
    values = arrays[name]
    _check_perm(values, values.shape[0] if values.ndim == 1 else -1, f"{path}: '{name}'")
    return values


def _save_private(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Write an .npz readable and writable by its owner only (mode 0600), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            # numpy's savez stub has allow_pickle: bool beside **kwds, and mypy lets a **dict fill it.
            np.savez(handle, format=np.array(KEY_FORMAT), **{  # type: ignore[arg-type]
                name: np.asarray(value) for name, value in arrays.items()
            })
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _load(path: str | os.PathLike, kind: str) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise StipKeyError(f"{path}: no such key file")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        mode = oct(path.stat().st_mode & 0o777)
        raise StipKeyError(f"{path}: key file is readable by others (mode {mode}); chmod 600 it")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError) as error:
        raise StipKeyError(f"{path}: not a readable key file: {error}") from error
    if str(arrays.get("format", "")) != KEY_FORMAT:
        raise StipKeyError(f"{path}: not a coinfer STIP key file")
    if str(arrays.get("kind", "")) != kind:
        raise StipKeyError(f"{path}: holds {arrays.get('kind')} keys, expected {kind} keys")
    return arrays
