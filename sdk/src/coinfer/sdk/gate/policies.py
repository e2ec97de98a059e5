"""Who deserves decoding this round: PacketGame and the baselines, behind one interface.

Every policy scores the streams' current packets (higher: more likely necessary); the
same :class:`~coinfer.sdk.gate.optimizer.DecodeBudgetOptimizer` turns scores and costs
into a selection, so policies differ only in what they know:

- ``packetgame``: the contextual predictor fed with the temporal estimate (both views);
- ``contextual``: the predictor trained and run without the temporal view;
- ``temporal``: the sliding-window UCB estimate alone;
- ``round-robin``: the stream waiting longest goes first;
- ``random``: uniform random scores;
- ``oracle``: knows whether each packet's inference is necessary (an upper reference);
- ``decode-all``: everything, ignoring the budget (the accuracy reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.sdk.gate.errors import GateError
from coinfer.sdk.gate.predictor import ContextualPredictor


@dataclass
class RoundContext:
    """What a policy may look at when scoring one round (``oracle`` only for the oracle)."""

    round: int
    present: np.ndarray
    costs: np.ndarray
    i_view: np.ndarray
    p_view: np.ndarray
    temporal: np.ndarray
    oracle: np.ndarray | None = None


class Policy:
    """Scores packets; ``decode_all`` policies bypass the budget."""

    name = "policy"
    decode_all = False

    def __init__(self, streams: int) -> None:
        self.streams = streams

    def values(self, context: RoundContext) -> np.ndarray:
        raise NotImplementedError

    def feedback(self, selected: np.ndarray, necessary: np.ndarray) -> None:
        """Learn from this round's inference results (most policies need nothing)."""


class PredictorPolicy(Policy):
    """PacketGame (with the temporal view) or contextual-only (a predictor trained without it)."""

    def __init__(self, streams: int, predictor: ContextualPredictor) -> None:
        super().__init__(streams)
        self.predictor = predictor
        self.name = "packetgame" if predictor.options.use_temporal else "contextual"
        self._forward = predictor.streaming(streams)

    def values(self, context: RoundContext) -> np.ndarray:
        probabilities = self._forward.predict(context.i_view, context.p_view, context.temporal)
        return probabilities.max(axis=1)


class TemporalPolicy(Policy):
    name = "temporal"

    def values(self, context: RoundContext) -> np.ndarray:
        return context.temporal


class RoundRobinPolicy(Policy):
    name = "round-robin"

    def __init__(self, streams: int) -> None:
        super().__init__(streams)
        self._waiting = np.ones(streams)

    def values(self, context: RoundContext) -> np.ndarray:
        return self._waiting.copy()

    def feedback(self, selected: np.ndarray, necessary: np.ndarray) -> None:
        self._waiting = np.where(selected, 1.0, self._waiting + 1.0)


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, streams: int, seed: int = 0) -> None:
        super().__init__(streams)
        self._rng = np.random.default_rng(seed)

    def values(self, context: RoundContext) -> np.ndarray:
        return self._rng.random(self.streams)


class OraclePolicy(RoundRobinPolicy):
    """Decodes necessary packets first; among the rest, the stream waiting longest."""

    name = "oracle"

    def values(self, context: RoundContext) -> np.ndarray:
        if context.oracle is None:
            raise GateError("the oracle policy needs the true necessity of every packet")
        waiting = super().values(context)
        return context.oracle.astype(np.float64) + 1e-3 * waiting / (1.0 + waiting)


class DecodeAllPolicy(Policy):
    name = "decode-all"
    decode_all = True

    def values(self, context: RoundContext) -> np.ndarray:
        return np.ones(self.streams)
