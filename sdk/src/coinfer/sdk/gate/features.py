"""Contextual views from packet metadata only: recent sizes of I and of P/B packets.

A moving actor inflates predicted-picture sizes, a new object in the scene changes the
next intra picture; both are visible in the bitstream before any decoding. Each view is a
window of the last ``window`` packets of one picture class, normalised per stream so one
model serves cameras of different content and bitrate. Every slot has four channels:

0. log(size / running mean of that class): a spike against the stream's own baseline;
1. log(mean predicted-picture size since the stream was last decoded / running mean of
   predicted sizes): how much has moved while nobody looked;
2. log(current activity level / activity level when the stream was last decoded), where
   the level is a fast running mean of predicted-picture sizes: whether the scene changed
   since the result the system is still reporting;
3. log(1 + rounds since the stream was last decoded) / 4.

Channels 1-3 (:data:`FEEDBACK_CHANNELS`) depend on what the gate decided, not only on the
bitstream: with the UCB estimate they form the temporal view, and a contextual-only
predictor sees channel 0 alone. They need to know what was decoded: call
:meth:`SizeWindows.mark_decoded` after every selection (``PacketGate`` does).

Example::

    windows = SizeWindows(streams=64, window=5)
    i_view, p_view = windows.push(sizes, pictures, present)   # (64, 5, 4) each
    windows.mark_decoded(selected)
"""

from __future__ import annotations

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.packet import PictureType

CHANNELS = 4
#: Channels that depend on the gate's past decisions (part of the temporal view).
FEEDBACK_CHANNELS = (1, 2, 3)
_INTRA, _PREDICTED, _LEVEL = range(3)


class SizeWindows:
    """Per-stream ring buffers of normalised I and P/B packet sizes."""

    def __init__(self, streams: int, window: int = 5, *, smoothing: float = 0.05,
                 level_smoothing: float = 0.3) -> None:
        if streams < 1 or window < 1:
            raise InvalidArgumentError(f"streams and window must be >= 1, got {streams} and {window}")
        for name, value in (("smoothing", smoothing), ("level_smoothing", level_smoothing)):
            if not 0.0 < value <= 1.0:
                raise InvalidArgumentError(f"{name} must be in (0, 1], got {value}")
        self.streams, self.window = streams, window
        self._rates = np.array([smoothing, smoothing, level_smoothing])
        self._views = np.zeros((2, streams, window, CHANNELS), dtype=np.float32)
        self._means = np.zeros((3, streams))
        self._slots = np.zeros((2, streams), dtype=np.int64)
        self._level_at_decode = np.zeros(streams)
        self._age = np.zeros(streams)
        self._since_sum = np.zeros(streams)
        self._since_count = np.zeros(streams)

    def push(self, sizes: np.ndarray, pictures: np.ndarray, present: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Add this round's packets and return the (intra, predicted) views, each (streams, window, 4).

        The windows are ring buffers: the network max-pools over them, so slot order does not
        matter. The returned arrays are the live buffers; copy them to keep a snapshot.
        """
        sizes = np.maximum(np.asarray(sizes, dtype=np.float64), 1.0)
        pictures = np.asarray(pictures)
        here = np.ones(self.streams, dtype=bool) if present is None else np.asarray(present, dtype=bool)
        rows = np.flatnonzero(here)
        if rows.size == 0:
            return self._views[0], self._views[1]
        size = sizes[rows]
        view = (pictures[rows] != PictureType.I).astype(np.int64)  # 0: intra, 1: predicted
        predicted = rows[view == 1]
        self._update_mean(_LEVEL, predicted, sizes[predicted])
        mean = self._update_mean(view, rows, size)
        self._age[rows] += 1.0
        self._since_sum[predicted] += sizes[predicted]
        self._since_count[predicted] += 1.0
        count = self._since_count[rows]
        since_mean = self._since_sum[rows] / np.maximum(count, 1.0)
        baseline = np.maximum(self._means[_PREDICTED, rows], 1.0)
        level = self._means[_LEVEL, rows]
        at_decode = self._level_at_decode[rows]
        cells = np.empty((rows.size, CHANNELS), dtype=np.float32)
        cells[:, 0] = np.log(size / mean)
        cells[:, 1] = np.where(count > 0, np.log(np.maximum(since_mean, 1.0) / baseline), 0.0)
        change = np.log(np.maximum(level, 1.0) / np.maximum(at_decode, 1.0))
        cells[:, 2] = np.where(at_decode > 0, change, 0.0)
        cells[:, 3] = np.log1p(self._age[rows]) / 4.0
        slots = self._slots[view, rows]
        self._views[view, rows, slots] = cells
        self._slots[view, rows] = (slots + 1) % self.window
        return self._views[0], self._views[1]

    def mark_decoded(self, decoded: np.ndarray) -> None:
        """Remember the activity level at which each decoded stream's result was taken."""
        decoded = np.asarray(decoded, dtype=bool)
        self._level_at_decode[decoded] = self._means[_LEVEL, decoded]
        self._age[decoded] = 0.0
        self._since_sum[decoded] = 0.0
        self._since_count[decoded] = 0.0

    def _update_mean(self, which: int | np.ndarray, rows: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Move the running means of ``(which, rows)`` towards ``sizes`` (the first size seeds
        a mean) and return them."""
        old = self._means[which, rows]
        new = np.where(old == 0, sizes, old + self._rates[which] * (sizes - old))
        self._means[which, rows] = new
        return new
