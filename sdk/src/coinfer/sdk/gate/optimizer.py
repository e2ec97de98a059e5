"""Per-round choice of packets to decode under a decode budget (PacketGame section 2.3.3).

Packets are ranked by predicted necessity per second of decoding (value / cost) and taken
in that order while the budget lasts; the remainder is spent decoding the pending
references of the next-best packet, which makes it cheaper next round. This greedy
solution of the "approximately fractional" knapsack is within 1 - c/B of the optimum
(c: the dearest single packet, B: the budget). One argsort: O(m log m).

Example: four streams' next packets, the first an I-picture four times as dear as the rest.
The two best per second fit the budget; what is left goes to the references of the next
best (stream 0), which makes it cheaper next round:

>>> import numpy as np
>>> from coinfer.sdk.gate.optimizer import DecodeBudgetOptimizer
>>> values = np.array([0.9, 0.2, 0.8, 0.5])         # predicted necessity
>>> costs = np.array([0.004, 0.001, 0.001, 0.001])  # seconds to decode
>>> choice = DecodeBudgetOptimizer().select(values, costs, budget=0.003)
>>> np.flatnonzero(choice.selected), choice.spent, choice.next_best, choice.leftover
(array([2, 3]), 0.002, 0, 0.001)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError


@dataclass(frozen=True)
class Selection:
    """The packets chosen this round and what is left for prefetching dependencies."""

    selected: np.ndarray
    spent: float
    next_best: int | None
    leftover: float


class DecodeBudgetOptimizer:
    """Greedy value-per-cost selection; ties go to the cheaper packet, then the lower stream."""

    def select(self, values: np.ndarray, costs: np.ndarray, budget: float) -> Selection:
        values = np.asarray(values, dtype=np.float64)
        costs = np.asarray(costs, dtype=np.float64)
        if values.shape != costs.shape or values.ndim != 1:
            raise InvalidArgumentError(f"values and costs must be 1-D of one shape, got {values.shape} and "
                                       f"{costs.shape}")
        if budget < 0 or not np.isfinite(budget):
            raise InvalidArgumentError(f"budget must be a finite number >= 0, got {budget}")
        selected = np.zeros(values.shape, dtype=bool)
        decodable = np.flatnonzero(np.isfinite(costs) & (costs > 0))
        if decodable.size == 0:
            return Selection(selected, 0.0, None, budget)
        ratio = np.maximum(values[decodable], 0.0) / costs[decodable]
        order = decodable[np.lexsort((decodable, costs[decodable], -ratio))]
        spent = np.cumsum(costs[order])
        taken = int(np.searchsorted(spent, budget, side="right"))
        selected[order[:taken]] = True
        used = float(spent[taken - 1]) if taken else 0.0
        next_best = int(order[taken]) if taken < order.size else None
        return Selection(selected, used, next_best, budget - used)
