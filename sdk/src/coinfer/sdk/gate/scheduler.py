"""One round of PacketGame over many streams: price, score, select, plan the decoding.

:class:`PacketGate` strings the parts together and owns no I/O: the edge runtime feeds it
demuxed packets and hands the returned plans to decoders; the benchmark replays logged
streams through the very same object.

Example: two streams under a budget of 5 ms of decoding a round (with a trained predictor,
``PredictorPolicy(streams, ContextualPredictor.load(path))`` replaces the temporal policy):

>>> import numpy as np
>>> from coinfer.sdk.gate.costs import DecodeCostModel
>>> from coinfer.sdk.gate.packet import PacketInfo, PictureInfo, PictureType
>>> from coinfer.sdk.gate.policies import TemporalPolicy
>>> from coinfer.sdk.gate.scheduler import PacketGate
>>> def packet(stream, index, kind):        # a demuxed packet and its parsed header
...     intra = kind == "I"
...     return PacketInfo(stream, index, 4000 if intra else 300, index, index, intra,
...                       PictureInfo(PictureType[kind], reference=True, random_access=intra))
>>> costs = DecodeCostModel(i_seconds=0.004, p_seconds=0.001, b_seconds=0.001)
>>> gate = PacketGate(streams=2, costs=costs, policy=TemporalPolicy(2), budget=0.005)
>>> decision = gate.step([packet(0, 0, "I"), packet(1, 0, "I")])  # one packet (or None) per stream
>>> decision.inferred, decision.spent     # one intra picture fits
(array([0]), 0.004)
>>> gate.feedback(np.array([True, False]))  # the inferred result differed from the last one

Stream 1's P-picture now needs the intra picture it skipped: its plan decodes both.

>>> decision = gate.step([packet(0, 1, "P"), packet(1, 1, "P")])
>>> decision.costs, decision.inferred
(array([0.001, 0.005]), array([0, 1]))
>>> [[info.index for info in plan] for plan in decision.plans]
[[1], [0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.dependencies import DependencyTracker, PacketBatch
from coinfer.sdk.gate.errors import GateError
from coinfer.sdk.gate.estimator import SlidingWindowUCB
from coinfer.sdk.gate.features import SizeWindows
from coinfer.sdk.gate.optimizer import DecodeBudgetOptimizer, Selection
from coinfer.sdk.gate.packet import PacketInfo
from coinfer.sdk.gate.policies import Policy, RoundContext


@dataclass(frozen=True)
class GateOptions:
    """Window sizes, leftover prefetching, and how long unused budget may be banked.

    Decoders work from a short queue, so budget a round leaves unused stays available for
    up to ``carry_rounds`` rounds (1: strictly per round, as in the paper's formulation),
    and the bank always reaches the dearest single picture, so a stream can afford an
    intra picture that costs more than one round's budget.

    ``ucb_window`` 20 rounds (2 s at 10 fps) follows a scene that empties and fills within
    seconds: on busy generated scenes (``--crowd 2``) it gave PacketGame 5 points more
    savings at 90% accuracy than 60 rounds, and 2-3 more than 10 or 30.
    """

    size_window: int = 5
    ucb_window: int = 20
    prefetch: bool = True
    carry_rounds: int = 10

    def __post_init__(self) -> None:
        for name in ("size_window", "ucb_window", "carry_rounds"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")


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
            raise GateError(f"policy was built for {policy.streams} streams, the gate has {streams}")
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
        self._credit = 0.0
        self._dearest = float(costs.table.max())
        self._last_selected = np.zeros(streams, dtype=bool)

    def step(self, packets: PacketBatch | Sequence[PacketInfo | None],
             oracle: np.ndarray | None = None) -> GateDecision:
        """Decide this round. ``packets``: one PacketInfo (or None) per stream, or a PacketBatch."""
        batch = packets if isinstance(packets, PacketBatch) else PacketBatch.from_packets(packets)
        costs = self.tracker.arrive(batch, self.cost_model.table[batch.pictures])
        i_view, p_view = self.windows.push(batch.sizes, batch.pictures, batch.present)
        context = RoundContext(self.rounds, batch.present, costs, i_view, p_view, self.estimator.estimate(),
                               oracle)
        values = self.policy.values(context)
        if self.policy.decode_all:
            selected = np.isfinite(costs)
            spent = float(costs[selected].sum())
            plans = self.tracker.decode(selected)
        else:
            cap = max(self.budget * self.options.carry_rounds, self._dearest)
            available = min(self._credit + self.budget, cap)
            choice = self.optimizer.select(values, costs, available)
            selected, spent = choice.selected, choice.spent
            plans = self.tracker.decode(selected)
            spare = self._prefetch_allowance(choice, costs, cap)
            if spare > 0:
                assert choice.next_best is not None  # _prefetch_allowance gives none without it
                extra = self.tracker.prefetch(choice.next_best, spare)
                plans[choice.next_best] = extra
                spent += float(self.cost_model.cost_of([packet.picture for packet in extra]).sum())
            self._credit = max(available - spent, 0.0)
        self.windows.mark_decoded(selected)
        self.rounds += 1
        self._last_selected = selected
        return GateDecision(selected, plans, costs, spent, context)

    def _prefetch_allowance(self, choice: Selection, costs: np.ndarray, cap: float) -> float:
        """Leftover worth spending on the next-best packet's references now.

        All of it when that packet costs more than the bank can ever hold (it would never be
        affordable otherwise); else only what would overflow the bank next round, so a
        tight budget still saves up for whole packets instead of prefetching forever.
        """
        if not self.options.prefetch or choice.next_best is None or choice.leftover <= 0:
            return 0.0
        if costs[choice.next_best] > cap:
            return choice.leftover
        return max(choice.leftover + self.budget - cap, 0.0)

    def feedback(self, necessary: np.ndarray) -> None:
        """Tell the gate which inferred packets were necessary (values at other streams are ignored)."""
        necessary = np.asarray(necessary, dtype=bool)
        self.estimator.update(self._last_selected, necessary)
        self.policy.feedback(self._last_selected, necessary)
