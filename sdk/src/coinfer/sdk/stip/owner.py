"""What the STIP data owner computes before anything leaves the device, in numpy.

A user bundle (``coinfer stip publish``) holds the embedding table, pi and pi_c and, when
the developer chose device-side mitigations, the first ``K`` decoder blocks
(:mod:`coinfer.sdk.stip.local_blocks`); with a residual rotation
(:mod:`coinfer.sdk.stip.rotation`) the table and blocks come already rotated. The device
client sends :meth:`OwnerEncoder.encode`'s rows; ``coinfer stip audit`` computes the same rows
to attack them as a server would. Example with a tiny table and no local blocks:

>>> import numpy as np
>>> from coinfer.sdk.stip.keys import UserKeys
>>> table = np.arange(12, dtype=np.float32).reshape(4, 3)
>>> keys = UserKeys(hidden=np.array([2, 0, 1]), output=np.arange(5))
>>> encoder = OwnerEncoder(table, keys)
>>> encoder.encode(np.array([[3, 1]]))
array([[[11.,  9., 10.],
        [ 5.,  3.,  4.]]], dtype=float32)
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.artifact import Artifact
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.stip.keys import UserKeys
from coinfer.sdk.stip.local_blocks import BlockCache, BlockShape, LocalBlocks

USER_KEYS = "user.keys.npz"
EMBEDDINGS = "embeddings.npy"
PIXEL_EMBEDDING = "pixel_embedding.npz"
LOCAL_BLOCKS = "local_blocks.npz"


class OwnerBundleError(CoinferError):
    """A user bundle whose arrays cannot be read or do not fit each other."""


def load_arrays(path: Path) -> Any:
    """A bundle's ``.npy`` array, or its ``.npz`` arrays by name; never unpickled."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise OwnerBundleError(f"{path}: not a readable numpy file: {error}") from error


class OwnerEncoder:
    """Token ids -> the rows the server receives: embed, run the local blocks, permute by pi."""

    def __init__(self, table: np.ndarray, keys: UserKeys, blocks: LocalBlocks | None = None) -> None:
        if table.ndim != 2 or table.shape[1] != keys.hidden.shape[0]:
            raise OwnerBundleError(f"embedding table {table.shape} does not fit pi of size "
                                   f"{keys.hidden.shape[0]}")
        if blocks is not None and blocks.shape.hidden_size != table.shape[1]:
            raise OwnerBundleError(f"local blocks of width {blocks.shape.hidden_size} do not fit the "
                                   f"{table.shape[1]}-wide embedding table")
        self.keys = keys
        self.blocks = blocks if blocks is not None and blocks.count else None
        # Without local blocks, permute the table once: each lookup then yields x pi directly.
        self._table = np.ascontiguousarray(
            table.astype(np.float32) if self.blocks else keys.permute_input(table.astype(np.float32)))

    @classmethod
    def create_from_bundle(cls, bundle: Artifact) -> OwnerEncoder:
        """The encoder of a verified user bundle holding a token embedding table."""
        files = bundle.manifest.files
        if EMBEDDINGS not in files:
            raise OwnerBundleError(f"{bundle.path}: this bundle embeds pixels, not token ids")
        keys = UserKeys.load(bundle.file(USER_KEYS))
        blocks = None
        if LOCAL_BLOCKS in files:
            shape = BlockShape.from_metadata(dict(bundle.manifest.metadata.get("local_block_shape") or {}))
            blocks = LocalBlocks(shape, load_arrays(bundle.file(LOCAL_BLOCKS)))
        return cls(load_arrays(bundle.file(EMBEDDINGS)), keys, blocks)

    @property
    def vocab_size(self) -> int:
        return len(self._table)

    def new_cache(self) -> BlockCache | None:
        """Per-sequence state of the local blocks (None when there are none)."""
        return None if self.blocks is None else self.blocks.new_cache()

    def encode(self, token_ids: np.ndarray, cache: BlockCache | None = None,
               attention_mask: np.ndarray | None = None) -> np.ndarray:
        """(batch, tokens) ids -> (batch, tokens, hidden) float32 rows to send, already permuted."""
        ids = np.asarray(token_ids)
        in_range = not ids.size or (ids.dtype.kind in "iu" and ids.min() >= 0 and ids.max() < self.vocab_size)
        if ids.dtype.kind not in "iu" or ids.ndim != 2 or not in_range:
            raise OwnerBundleError(f"token ids must be integers in [0, {self.vocab_size}), "
                                   "as a (batch, tokens) array")
        rows = self._table[ids]
        if self.blocks is None:
            return rows
        return self.keys.permute_input(self.blocks(rows, cache, attention_mask))
