"""Is a task worth filtering? The theory's verdict plus the cost condition (paper sec. 3.1-3.2).

A filter ``g`` pays off in computation when, at filter rate ``r``,
``C(g) + (1 - r) C(h) + r C(h_hat) < C(h)``, i.e. ``r > C(g) / (C(h) - C(h_hat))``:
``C(h)`` is the model's cost, ``C(h_hat)`` the cost of producing a filtered input's result
(nothing for skip, a cache lookup for reuse). For bandwidth (the filter runs on the device,
the model elsewhere) any ``r > 0`` saves bytes. Whether a filter can reach a useful ``r``
at all is the filterability verdict of the redundancy measurement.

Example::

    report = analyze(create_measurement("empty"), filter_ms=1.3, model_ms=9.0)
    print(report.verdict, report.break_even_rate)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.infi.measurements import Measurement


@dataclass(frozen=True)
class Analysis:
    """What ``coinfer infi analyze`` reports."""

    measurement: str
    kind: str
    filterable: bool
    reason: str
    filter_ms: float | None
    model_ms: float | None
    filtered_ms: float
    #: The filter rate above which the filter saves computation (None: costs not given;
    #: > 1: it never can).
    break_even_rate: float | None
    filter_rate: float | None
    pays_off: bool | None

    @property
    def verdict(self) -> str:
        if not self.filterable:
            return "not filterable: a filter would need the model's own complexity"
        if self.break_even_rate is None:
            return "filterable"
        if self.break_even_rate >= 1.0:
            return "filterable, but the filter costs as much as the model: no computation to save"
        if self.pays_off is None:
            return f"filterable; pays off above a filter rate of {self.break_even_rate:.3f}"
        if self.pays_off:
            return (f"filterable and pays off: rate {self.filter_rate:.3f} > break-even "
                    f"{self.break_even_rate:.3f}")
        return f"filterable, but rate {self.filter_rate:.3f} <= break-even {self.break_even_rate:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def break_even_rate(filter_ms: float, model_ms: float, filtered_ms: float = 0.0) -> float:
    """``C(g) / (C(h) - C(h_hat))``; infinity when filtering saves nothing per input."""
    for name, value in (("filter", filter_ms), ("model", model_ms), ("filtered-result", filtered_ms)):
        if value < 0:
            raise InvalidArgumentError(f"{name} cost must be >= 0, got {value}")
    saving = model_ms - filtered_ms
    return float("inf") if saving <= 0 else filter_ms / saving


def analyze(measurement: Measurement, *, filter_ms: float | None = None, model_ms: float | None = None,
            filtered_ms: float = 0.0, filter_rate: float | None = None) -> Analysis:
    """The verdict for a measurement and, when costs are given, whether a filter pays off."""
    if (filter_ms is None) != (model_ms is None):
        raise InvalidArgumentError(f"give both the filter's and the model's cost, or neither; got filter_ms "
                                   f"{filter_ms} and model_ms {model_ms}")
    if filter_rate is not None and not 0.0 <= filter_rate <= 1.0:
        raise InvalidArgumentError(f"filter rate must be in [0, 1], got {filter_rate}")
    rate = None
    if filter_ms is not None and model_ms is not None:
        rate = break_even_rate(filter_ms, model_ms, filtered_ms)
    pays = None
    if rate is not None and filter_rate is not None:
        pays = bool(measurement.filterable and filter_rate > rate)
    return Analysis(measurement.name, measurement.kind, measurement.filterable, measurement.reason,
                    filter_ms, model_ms, filtered_ms, rate, filter_rate, pays)
