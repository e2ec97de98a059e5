"""Life-cycle performance: the accuracy a device delivers over a whole evolution window.

An evolution that ends with a better model is worth less the longer it takes, because the
device keeps serving with its drifted model until the new one arrives. NestEvo scores a window
of ``t_total`` seconds in which evolving took ``t_evolving`` as the time-weighted accuracy

    ``LCP = (acc_before * t_evolving + acc_after * (t_total - t_evolving)) / t_total``

so a scheduler that halves the latency and a training recipe that adds accuracy can be compared
on one number. An evolution that outlasts the window never delivers: the whole window runs at
``acc_before``.

>>> life_cycle_performance(0.6, 0.9, t_evolving=30, t_total=120)
0.825
>>> life_cycle_performance(0.6, 0.9, t_evolving=200, t_total=120)
0.6
"""

from __future__ import annotations

import math

from coinfer.sdk.errors import InvalidArgumentError


def life_cycle_performance(acc_before: float, acc_after: float, t_evolving: float, t_total: float) -> float:
    """The time-weighted accuracy of a window of ``t_total`` seconds whose first ``t_evolving``
    seconds ran the old model (accuracies in any one unit: fractions or percent)."""
    for name, value in (("acc_before", acc_before), ("acc_after", acc_after), ("t_evolving", t_evolving),
                        ("t_total", t_total)):
        if isinstance(value, bool) or not math.isfinite(value):
            raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    if t_evolving < 0:
        raise InvalidArgumentError(f"t_evolving must be >= 0, got {t_evolving}")
    if t_total <= 0:
        raise InvalidArgumentError(f"t_total must be > 0, got {t_total}")
    if t_evolving >= t_total:
        return float(acc_before)
    return (acc_before * t_evolving + acc_after * (t_total - t_evolving)) / t_total
