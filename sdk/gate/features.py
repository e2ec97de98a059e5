"""Contextual views from packet metadata only: recent sizes of I and of P/B packets.

A moving actor inflates predicted-picture sizes, a new object in the scene changes the
next intra picture; both are visible in the bitstream before any decoding. Each view is a
window of the last ``window`` sizes of one picture class, normalised per stream so one
model serves cameras of different content and bitrate: channel 0 is log(size / running
mean of that class), channel 1 is log(size / running mean of all packets of the stream).

Example::

    windows = SizeWindows(streams=64, window=5)
    i_view, p_view = windows.push(sizes, pictures, present)   # (64, 5, 2) each
"""

from __future__ import annotations

import numpy as np

from coinfer.sdk.gate.packet import PictureType

CHANNELS = 2


class SizeWindows:
    """Per-stream ring buffers of normalised I and P/B packet sizes."""

    def __init__(self, streams: int, window: int = 5, *, smoothing: float = 0.05) -> None:
        if streams < 1 or window < 1:
            raise ValueError(f"streams and window must be >= 1, got {streams} and {window}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.streams, self.window, self.smoothing = streams, window, smoothing
        self._views = np.zeros((2, streams, window, CHANNELS), dtype=np.float32)
        self._means = np.zeros((3, streams))  # intra, predicted, all
        self._slots = np.zeros((2, streams), dtype=np.int64)

    def push(self, sizes: np.ndarray, pictures: np.ndarray, present: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Add this round's packets and return the (intra, predicted) views, each (streams, window, 2).

        The windows are ring buffers: the network max-pools over them, so slot order does not
        matter. The returned arrays are the live buffers; copy them to keep a snapshot.
        """
        sizes = np.maximum(np.asarray(sizes, dtype=np.float64), 1.0)
        pictures = np.asarray(pictures)
        here = np.ones(self.streams, dtype=bool) if present is None else np.asarray(present, dtype=bool)
        intra = here & (pictures == PictureType.I)
        total = self._update_mean(2, sizes, here)
        for view, members in ((0, intra), (1, here & ~intra)):
            rows = np.flatnonzero(members)
            if rows.size == 0:
                continue
            mean = self._update_mean(view, sizes, members)
            slots = self._slots[view, rows]
            self._views[view, rows, slots, 0] = np.log(sizes[rows] / mean[rows])
            self._views[view, rows, slots, 1] = np.log(sizes[rows] / total[rows])
            self._slots[view, rows] = (slots + 1) % self.window
        return self._views[0], self._views[1]

    def _update_mean(self, which: int, sizes: np.ndarray, members: np.ndarray) -> np.ndarray:
        mean = self._means[which]
        fresh = members & (mean == 0)
        mean[fresh] = sizes[fresh]
        old = members & ~fresh
        mean[old] += self.smoothing * (sizes[old] - mean[old])
        return mean
