"""One round of PacketGame over many streams: price, score, select, plan the decoding.

:class:`PacketGate` strings the parts together and owns no I/O: the edge runtime feeds it
demuxed packets and hands the returned plans to decoders; the benchmark replays logged
streams through the very same object.

Example::

    gate = PacketGate(streams=64, costs=cost_model, policy=PredictorPolicy(64, predictor),
                      budget=0.02)
    decision = gate.step(packets)                 # one PacketInfo (or None) per stream
    for stream in decision.inferred:
        ...decode decision.plans[stream], run the model on the last frame...
    gate.feedback(necessary)                      # result differed from the last reported one
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.dependencies import DependencyTracker
from coinfer.sdk.gate.estimator import SlidingWindowUCB
from coinfer.sdk.gate.features import SizeWindows
from coinfer.sdk.gate.optimizer import DecodeBudgetOptimizer
from coinfer.sdk.gate.packet import PacketInfo, PictureType
from coinfer.sdk.gate.policies import Policy, RoundContext


@dataclass(frozen=True)
class GateOptions:
    """Window sizes and whether leftover budget prefetches the next-best packet's references."""

    size_window: int = 5
    ucb_window: int = 30
    prefetch: bool = True


@dataclass
class GateDecision:
    """What to decode this round.

    ``plans[i]`` lists stream i's packets to decode in order (pending references, then the
    packet itself when ``selected[i]``); ``selected`` marks packets whose frame is inferred.
    """

    selected: np.ndarray
    plans: list[list[PacketInfo]]
    costs: np.ndarray
    spent: float
    context: RoundContext

    @property
    def inferred(self) -> np.ndarray:
        return np.flatnonzero(self.selected)


class PacketGate:
    """Budgeted packet selection for ``streams`` streams; one :meth:`step` per round."""

    def __init__(self, streams: int, costs: DecodeCostModel, policy: Policy, budget: float,
                 options: GateOptions | None = None) -> None:
        if policy.streams != streams:
            raise ValueError(f"policy was built for {policy.streams} streams, the gate has {streams}")
        self.streams = streams
        self.options = options or GateOptions()
        self.cost_model = costs
        self.policy = policy
        self.budget = budget
        self.tracker = DependencyTracker(streams)
        self.windows = SizeWindows(streams, self.options.size_window)
        self.estimator = SlidingWindowUCB(streams, self.options.ucb_window)
        self.optimizer = DecodeBudgetOptimizer()
        self.rounds = 0
        self._last_selected = np.zeros(streams, dtype=bool)

    def step(self, packets: Sequence[PacketInfo | None], oracle: np.ndarray | None = None) -> GateDecision:
        present = np.fromiter((packet is not None for packet in packets), dtype=bool, count=self.streams)
        pictures = np.fromiter((packet.picture if packet is not None else PictureType.UNKNOWN
                                for packet in packets), dtype=np.int64, count=self.streams)
        sizes = np.fromiter((packet.size if packet is not None else 0 for packet in packets),
                            dtype=np.float64, count=self.streams)
        costs = self.tracker.arrive(packets, self.cost_model.cost_of(pictures))
        i_view, p_view = self.windows.push(sizes, pictures, present)
        context = RoundContext(self.rounds, present, costs, i_view, p_view, self.estimator.estimate(), oracle)
        values = self.policy.values(context)
        if self.policy.decode_all:
            selected = np.isfinite(costs)
            spent = float(costs[selected].sum())
            plans = self.tracker.decode(selected)
        else:
            choice = self.optimizer.select(values, costs, self.budget)
            selected, spent = choice.selected, choice.spent
            plans = self.tracker.decode(selected)
            if self.options.prefetch and choice.next_best is not None and choice.leftover > 0:
                extra = self.tracker.prefetch(choice.next_best, choice.leftover)
                plans[choice.next_best] = extra
                spent += float(self.cost_model.cost_of([packet.picture for packet in extra]).sum())
        self.rounds += 1
        self._last_selected = selected
        return GateDecision(selected, plans, costs, spent, context)

    def feedback(self, necessary: np.ndarray) -> None:
        """Tell the gate which inferred packets were necessary (values at other streams are ignored)."""
        necessary = np.asarray(necessary, dtype=bool)
        self.estimator.update(self._last_selected, necessary)
        self.policy.feedback(self._last_selected, necessary)
