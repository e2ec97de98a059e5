"""Filter rate against inference accuracy, and the optimal curve a perfect filter reaches.

Skipping input ``x`` reports the result of the all-zero input instead of ``h(x)``; that is
correct exactly when ``x`` was redundant. So with filter rate ``r`` (fraction skipped), the
accuracy is ``1 - (non-redundant inputs skipped) / n``. A perfect filter skips every
redundant input first: accuracy ``a = 1 - max(r - r_N, 0)`` with ``r_N`` the redundant
fraction, so at target accuracy ``T`` it reaches ``r = r_N + (1 - T)`` (paper sec. 3.5).

Example: six inputs, three of them redundant, scored by a filter (P(redundant)) that ranks
one necessary input above a redundant one:

>>> import numpy as np
>>> from coinfer.sdk.infi import FilterCurve, optimal_rate
>>> scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
>>> redundant = np.array([True, True, False, True, False, False])
>>> curve = FilterCurve.from_scores(scores, redundant)
>>> curve.rates[:5], curve.accuracies[:5]
(array([0. , 0.167, 0.333, 0.5  , 0.667]), array([1.   , 1.   , 1.   , 0.833, 0.833]))
>>> curve.rate_at(0.8), curve.threshold_for(0.8)        # skip inputs scored >= 0.4
(0.667, 0.4)
>>> optimal_rate(redundant.mean(), 0.8)                  # a perfect filter
0.7
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError


def optimal_rate(redundant_fraction: float, target: float = 0.9) -> float:
    """The filter rate of a perfect filter at ``target`` accuracy."""
    return float(min(1.0, redundant_fraction + (1.0 - target)))


@dataclass(frozen=True)
class FilterCurve:
    """Filter rate and accuracy for every useful threshold (skip when score >= threshold).

    ``thresholds[0]`` is +inf (skip nothing: rate 0, accuracy 1).
    """

    thresholds: np.ndarray
    rates: np.ndarray
    accuracies: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, redundant: np.ndarray) -> FilterCurve:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        redundant = np.asarray(redundant, dtype=bool).reshape(-1)
        if scores.shape != redundant.shape:
            raise InvalidArgumentError(f"{scores.size} scores but {redundant.size} redundancy labels")
        if scores.size == 0:
            raise InvalidArgumentError("a filter curve needs at least one input, got no scores")
        if not np.all(np.isfinite(scores)):
            raise InvalidArgumentError("the filter scores contain NaN or infinite values")
        order = np.argsort(-scores, kind="stable")
        ranked = scores[order]
        errors = np.cumsum(~redundant[order])
        # a threshold can only fall between distinct scores: keep the last of each tie
        ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
        n = scores.size
        thresholds = np.r_[np.inf, ranked[ends]]
        rates = np.r_[0.0, (ends + 1) / n]
        accuracies = np.r_[1.0, 1.0 - errors[ends] / n]
        return cls(thresholds, rates, accuracies)

    def rate_at(self, target: float = 0.9) -> float:
        """The highest filter rate whose accuracy is still >= ``target``."""
        return float(self.rates[self._best(target)])

    def threshold_for(self, target: float = 0.9) -> float:
        """The score threshold that reaches :meth:`rate_at` (skip when score >= it)."""
        return float(self.thresholds[self._best(target)])

    def accuracy_at_threshold(self, threshold: float) -> float:
        index = int(np.searchsorted(-self.thresholds, -threshold, side="right")) - 1
        return float(self.accuracies[max(index, 0)])

    def _best(self, target: float) -> int:
        if not 0.0 < target <= 1.0:
            raise InvalidArgumentError(f"target accuracy must be in (0, 1], got {target}")
        ok = np.flatnonzero(self.accuracies >= target - 1e-12)
        return int(ok[np.argmax(self.rates[ok])])
