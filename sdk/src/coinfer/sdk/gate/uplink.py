"""Online-knapsack admission for one uplink: a price per byte plus a token bucket.

A sender that sees one stream has no other items to rank a packet against, so it answers
the knapsack question with a price per byte. Each round (one frame interval) an item of
``value`` costing ``cost`` bytes is admitted when ``value >= price * cost``, and it goes when
its bytes fit the token bucket (``burst_bytes`` deep, refilled at the budget on the stream's
clock, so the bytes sent never exceed ``burst + budget * elapsed`` apart from overdrafts the
caller chooses to make).

After each round ``price *= exp(step * (spent - budget_of_the_interval) / round_budget)``.
Summed over rounds, ``log(price / price_0) = step * (sent - budget * elapsed) / round_budget``:
the price is an exponential of the overspend so far, so the long-run spend tracks the
budget whatever the values' scale. Two corrections: a round the bucket blocked never
lowers the price (the shortage was of tokens, not of demand), and while the bucket is
full the price falls by ``full_step`` instead of ``step`` per round budget, because
budget a full bucket cannot keep is lost for good.

:class:`coinfer.device.gate.CameraGate` uses it to gate a camera's uploads.
"""

from __future__ import annotations

import math

from coinfer.sdk.errors import InvalidArgumentError

__all__ = ["UplinkPrice"]


class UplinkPrice:
    """Online-knapsack admission for one uplink: a price per byte plus a token bucket.

    ``round_bytes`` (the budget of one frame interval) sets the scale: the starting price
    lets a value of 1 buy one interval's budget. See the module docstring for the rule.

    Example::

        price = UplinkPrice(bytes_per_s=4000, burst_bytes=8000, round_bytes=160)
        price.refill(0.04)
        if price.admits(value, cost) and price.affordable(frame_bytes):
            price.spend(frame_bytes)
        price.settle(spent=frame_bytes, blocked=False)
    """

    #: The price stays within this factor of its start either way (a runaway guard).
    RANGE = 1e6

    def __init__(self, bytes_per_s: float, burst_bytes: float, round_bytes: float, step: float = 0.05,
                 full_step: float = 0.25) -> None:
        if not all(value > 0 for value in (bytes_per_s, burst_bytes, round_bytes, step, full_step)):
            raise InvalidArgumentError(f"bytes_per_s, burst_bytes, round_bytes, step and full_step "
                                       f"must be > 0, got {bytes_per_s}, {burst_bytes}, {round_bytes}, "
                                       f"{step}, {full_step}")
        self.rate, self.capacity, self.round_bytes = bytes_per_s, burst_bytes, round_bytes
        self.step, self.full_step = step, full_step
        self.tokens = float(burst_bytes)
        self.start_price = 1.0 / round_bytes
        # kept as a logarithm: one huge overspend must not overflow a float
        self._log_price = 0.0
        self._interval_budget = 0.0

    @property
    def price(self) -> float:
        return self.start_price * math.exp(self._log_price)

    def refill(self, seconds: float) -> None:
        """Start a round ``seconds`` after the previous one: add its budget to the bucket."""
        self._interval_budget = self.rate * max(seconds, 0.0)
        self.tokens = min(self.capacity, self.tokens + self._interval_budget)

    def admits(self, value: float, cost: float) -> bool:
        return value >= self.price * cost

    def affordable(self, nbytes: float) -> bool:
        """Whether ``nbytes`` may go now: they fit, or they exceed the whole bucket and it is full."""
        return nbytes <= self.tokens or (nbytes > self.capacity and self.tokens >= self.capacity)

    def spend(self, nbytes: float) -> None:
        self.tokens -= nbytes

    def settle(self, spent: float, blocked: bool) -> None:
        """End the round: move the price by this round's over- or underspend."""
        gradient = (spent - self._interval_budget) / self.round_bytes
        if blocked:
            gradient = max(gradient, 0.0)
        step = self.full_step if self.tokens >= self.capacity else self.step
        limit = math.log(self.RANGE)
        self._log_price = min(max(self._log_price + step * gradient, -limit), limit)
