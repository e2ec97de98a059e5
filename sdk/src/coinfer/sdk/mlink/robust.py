"""Robust aggregation of federated link updates: what one client may do to the global links.

Plain FedAvg (:func:`coinfer.sdk.mlink.fedavg.apply_mean_delta`) trusts every client: one
update with finite but huge deltas (1e30) and a huge sample count moves the mean wherever
it likes, the global weights reach 1e30 and more, and every honest client then fails. This module
bounds a client's influence in three independent steps, all numpy (float64 inside,
float32 out):

1. **Sample weights** are clipped to ``max_samples`` (they only weight the ``mean``).
2. **Norm clipping**: each delta's L2 norm (over all its arrays) is scaled down to at most
   ``clip_factor`` × the median norm of the round's deltas, so a client cannot outshout
   the others while honest clients, whose norms are alike, are left untouched.
3. **A robust aggregate**: the coordinate-wise ``median`` (default: every coordinate of the
   result lies between the honest clients' values as long as they are a majority) or the
   ``trimmed-mean`` (drops the ``trim`` fraction of the values at each end, at least one
   once there are three clients), or the sample-weighted ``mean`` of the clipped deltas.
   The median and the trimmed mean give each client one vote: a claimed sample count
   cannot buy influence there.

Finally :func:`check_divergence` refuses a result that is not finite or whose norm grew
past ``max_growth`` × the previous global's (at least 1), so a round that still went wrong
(attackers in the majority) can be discarded instead of kept. No rule helps once the
attackers are half of a round's clients or more.

Example:

>>> import numpy as np
>>> theta = {"w": np.zeros(3, np.float32)}
>>> honest = [{"w": np.array([0.1, 0.2, -0.1], np.float32)}, {"w": np.array([0.2, 0.1, 0.0], np.float32)},
...           {"w": np.array([0.1, 0.1, -0.1], np.float32)}]
>>> attacker = {"w": np.full(3, 1e30, np.float32)}
>>> result = aggregate(theta, [*honest, attacker], [100, 120, 90, 10**9], RobustOptions())
>>> result.weights["w"]
array([ 0.15,  0.15, -0.05], dtype=float32)
>>> result.clipped
[False, False, False, True]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.mlink.fedavg import FederatedError

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "DivergenceError",
    "RobustOptions",
    "aggregate",
    "check_divergence",
    "clip_norms",
    "coordinate_median",
    "delta_norm",
    "trimmed_mean",
    "weighted_mean",
]

#: The aggregates :func:`aggregate` knows; the first is the default.
AGGREGATES = ("median", "trimmed-mean", "mean")


class DivergenceError(FederatedError):
    """A round's result that must not become the global links (not finite, or its norm exploded)."""


@dataclass(frozen=True)
class RobustOptions:
    """How a round's deltas are combined; the defaults are what ``coinfer mlink serve`` uses.

    ``clip_factor`` and ``max_growth`` may be ``math.inf`` to switch that bound off (plain
    FedAvg is ``RobustOptions("mean", clip_factor=math.inf, max_growth=math.inf)`` with
    sample counts up to ``max_samples``).
    """

    aggregate: str = "median"
    #: Fraction of the values dropped at each end of a coordinate by ``trimmed-mean``.
    trim: float = 0.25
    #: Each delta's norm is clipped to this many times the round's median delta norm.
    clip_factor: float = 2.0
    #: A client's sample count weights the ``mean`` up to this many samples.
    max_samples: int = 10_000
    #: A round whose global norm exceeds this many times the previous one (at least 1) is rejected.
    max_growth: float = 10.0

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise FederatedError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if not 0 < self.trim < 0.5:
            raise FederatedError(f"trim must be a fraction in (0, 0.5), got {self.trim!r}")
        if not self.clip_factor >= 1:
            raise FederatedError(f"clip_factor must be at least 1 (inf: no clipping), "
                                 f"got {self.clip_factor!r}")
        if type(self.max_samples) is not int or self.max_samples < 1:
            raise FederatedError(f"max_samples must be a positive integer, got {self.max_samples!r}")
        if not self.max_growth > 1:
            raise FederatedError(f"max_growth must be above 1 (inf: no limit), got {self.max_growth!r}")


@dataclass(frozen=True)
class Aggregate:
    """One round's result: the new float32 weights, each delta's norm as sent, the clip bound
    and which deltas it scaled down."""

    weights: dict[str, np.ndarray]
    norms: list[float]
    bound: float
    clipped: list[bool]


def delta_norm(delta: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all of a delta's (or a weight set's) arrays together, in float64, where
    1e30 entries do not overflow.

    >>> delta_norm({"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float32)})
    5.0
    """
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(value, np.float64)))) for value in delta.values()))



def clip_norms(deltas: Sequence[Mapping[str, np.ndarray]], bound: float) -> list[dict[str, np.ndarray]]:
    """Each delta scaled down (as a whole, keeping its direction) to a norm of at most ``bound``.

    >>> clip_norms([{"a": np.array([3.0, 4.0])}, {"a": np.array([0.3, 0.4])}], 1.0)[0]["a"]
    array([0.6, 0.8])
    """
    out = []
    for delta in deltas:
        norm = delta_norm(delta)
        scale = bound / norm if norm > bound else 1.0
        out.append({name: np.asarray(value, np.float64) * scale for name, value in delta.items()})
    return out


def _stack(deltas: Sequence[Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    return np.stack([np.asarray(delta[name], np.float64) for delta in deltas])


def coordinate_median(deltas: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The median of every coordinate across clients (float64): one outlier among three moves nothing.

    >>> coordinate_median([{"a": np.array([1.0, -1.0])}, {"a": np.array([2.0, 0.0])},
    ...                    {"a": np.array([1e30, 5.0])}])["a"]
    array([2., 0.])
    """
    _check_some(deltas)
    return {name: np.median(_stack(deltas, name), axis=0) for name in deltas[0]}


def trimmed_mean(deltas: Sequence[Mapping[str, np.ndarray]], trim: float) -> dict[str, np.ndarray]:
    """Per coordinate, the mean after dropping ``ceil(trim × K)`` values at each end (K clients),
    at most ``(K − 1) // 2`` so one value always remains: with three clients it is the median.

    >>> values = [{"a": np.array([v])} for v in (1.0, 2.0, 3.0, 4.0, 1e30)]
    >>> trimmed_mean(values, 0.2)["a"]
    array([3.])
    """
    _check_some(deltas)
    count = len(deltas)
    cut = min(math.ceil(trim * count), (count - 1) // 2)
    out = {}
    for name in deltas[0]:
        ordered = np.sort(_stack(deltas, name), axis=0)
        out[name] = ordered[cut:count - cut].mean(axis=0)
    return out


def weighted_mean(deltas: Sequence[Mapping[str, np.ndarray]],
                  weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Σ_k w_k Δ_k / Σ_k w_k per coordinate (float64): FedAvg's mean.

    >>> weighted_mean([{"a": np.array([1.0])}, {"a": np.array([4.0])}], [2, 1])["a"]
    array([2.])
    """
    _check_some(deltas)
    factors = np.asarray(weights, np.float64)
    factors = factors / factors.sum()
    return {name: np.tensordot(factors, _stack(deltas, name), axes=1) for name in deltas[0]}


def aggregate(global_: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]],
              samples: Sequence[int] | None, options: RobustOptions) -> Aggregate:
    """Θ + the robust combination of ``deltas`` (already checked to fit Θ, e.g. by
    :func:`~coinfer.sdk.mlink.fedavg.decode_update`), as new float32 arrays.

    ``samples`` (one per delta, or None for equal weights) only weight the ``mean``, each
    clipped to ``options.max_samples``. The result is not checked here: pass it to
    :func:`check_divergence` before keeping it.
    """
    _check_some(deltas)
    norms = [delta_norm(delta) for delta in deltas]
    median = float(np.median(norms))
    bound = math.inf if math.isinf(options.clip_factor) else options.clip_factor * median
    clipped = clip_norms(deltas, bound)
    if options.aggregate == "median":
        step = coordinate_median(clipped)
    elif options.aggregate == "trimmed-mean":
        step = trimmed_mean(clipped, options.trim)
    else:
        counts = [1] * len(deltas) if samples is None else [min(int(n), options.max_samples) for n in samples]
        if len(counts) != len(deltas) or min(counts) < 1:
            raise FederatedError(f"{len(deltas)} deltas need as many positive sample counts, got {samples!r}")
        step = weighted_mean(clipped, counts)
    with np.errstate(over="ignore", invalid="ignore"):
        weights = {name: (np.asarray(value, np.float64) + step[name]).astype(np.float32)
                   for name, value in global_.items()}
    return Aggregate(weights=weights, norms=norms, bound=bound, clipped=[norm > bound for norm in norms])


def check_divergence(previous: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray],
                     max_growth: float) -> None:
    """Raise :class:`DivergenceError` when ``new`` is not finite or its norm is over ``max_growth``
    × max(norm of ``previous``, 1): honest rounds grow the norm slowly (under 2× in the first
    round of the tests' graphs), a poisoned one by orders of magnitude.

    >>> check_divergence({"w": np.ones(4)}, {"w": np.full(4, 1.5)}, 10.0)
    >>> check_divergence({"w": np.ones(4)}, {"w": np.full(4, 1e30)}, 10.0)
    Traceback (most recent call last):
    ...
    coinfer.sdk.mlink.robust.DivergenceError: the weight norm would jump from 2 to 2e+30, over 10x
    """
    for name, value in new.items():
        if not np.isfinite(value).all():
            raise DivergenceError(f"array {name!r} would hold NaN or infinity")
    before, after = delta_norm(previous), delta_norm(new)
    if after > max_growth * max(before, 1.0):
        raise DivergenceError(f"the weight norm would jump from {before:.3g} to {after:.3g}, "
                              f"over {max_growth:g}x")


def _check_some(deltas: Sequence[Mapping[str, np.ndarray]]) -> None:
    if not deltas:
        raise FederatedError("no deltas to aggregate")
