"""Temporal view: a sliding-window UCB estimate of how often decoding a stream was worth it.

mu_i = (mean necessity of stream i's decoded packets in the last ``window`` rounds)
       + sqrt(3 ln t / (2 T_i)),
with T_i the number of times stream i was decoded in that window (PacketGame eq. 2.3).
A stream nobody looked at lately gets a large bonus, so every stream is revisited.

Example::

    ucb = SlidingWindowUCB(streams=64, window=30)
    mu = ucb.estimate()                          # one value per stream
    ucb.update(selected_mask, necessary_mask)     # feedback of this round's inference
"""

from __future__ import annotations

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError


class SlidingWindowUCB:
    """Vectorised over streams; O(streams) per round."""

    def __init__(self, streams: int, window: int = 30, *, unseen_bonus: float = 2.0) -> None:
        if streams < 1 or window < 1:
            raise InvalidArgumentError(f"streams and window must be >= 1, got {streams} and {window}")
        self.streams, self.window = streams, window
        self.unseen_bonus = unseen_bonus
        self._selected = np.zeros((window, streams), dtype=np.float64)
        self._necessary = np.zeros((window, streams), dtype=np.float64)
        self._rounds = 0

    def estimate(self) -> np.ndarray:
        """The upper confidence bound of each stream's necessity rate for the next round."""
        count = self._selected.sum(axis=0)
        mean = np.divide(self._necessary.sum(axis=0), count, out=np.zeros(self.streams), where=count > 0)
        elapsed = max(self._rounds, 2)
        bonus = np.sqrt(3.0 * np.log(elapsed) / (2.0 * np.maximum(count, 1.0)))
        return np.where(count > 0, mean + bonus, self.unseen_bonus)

    def update(self, selected: np.ndarray, necessary: np.ndarray) -> None:
        """Record which streams were decoded and whether their inference was necessary."""
        slot = self._rounds % self.window
        chosen = np.asarray(selected, dtype=bool)
        self._selected[slot] = chosen
        self._necessary[slot] = chosen & np.asarray(necessary, dtype=bool)
        self._rounds += 1
