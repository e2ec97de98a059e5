"""Choose where to cut and how to encode what crosses, for the link as it is now (Neurosurgeon).

An :class:`Option` is one way to run a request: a cut, an encoding of the tensors that
cross it (or of the image, for the all-edge baselines), and its measured or predicted
costs. :func:`plan` picks the option with the least ``device + transfer + edge`` time for
a :class:`Link` (bandwidth and round-trip time), optionally weighting device time (energy)
or edge time (a loaded edge server) and adding the edge's current queueing delay.
:class:`Replanner` re-plans as bandwidth and queueing are observed, with hysteresis so
that noise around a break-even point does not make the device flap between cuts.

Example: three options, a slow link favours the small tensor, a fast one the idle edge.

>>> options = [Option("all-edge", "jpeg", device_ms=2.0, edge_ms=12.0, nbytes=20_000),
...            Option("cut-40", "int8", device_ms=30.0, edge_ms=6.0, nbytes=2_000),
...            Option("all-device", "float32", device_ms=80.0, edge_ms=0.0, nbytes=4_000)]
>>> plan(options, Link(bandwidth_mbps=0.5, rtt_ms=20)).option.cut
'cut-40'
>>> best = plan(options, Link(bandwidth_mbps=50, rtt_ms=20))
>>> best.option.cut, round(best.total_ms, 1)
('all-edge', 37.2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.split.graph import Cut


@dataclass(frozen=True)
class Link:
    """The device-edge link: ``bandwidth_mbps`` megabits per second, ``rtt_ms`` per request."""

    bandwidth_mbps: float
    rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth_mbps > 0 or not self.rtt_ms >= 0:
            raise InvalidArgumentError(f"a link needs bandwidth > 0 and rtt >= 0, got {self.bandwidth_mbps} "
                                       f"Mbit/s and {self.rtt_ms} ms")

    def transfer_ms(self, nbytes: int) -> float:
        """Time to send ``nbytes`` and hear back: one round trip plus serialisation."""
        return self.rtt_ms + nbytes * 8 / (self.bandwidth_mbps * 1e3)


@dataclass(frozen=True)
class Option:
    """One way to run: ``cut`` (a name or index), ``encoding`` of what crosses, the device's
    time (head and encoding), the edge's time (decoding and tail) and the bytes sent."""

    cut: str | int
    encoding: str
    device_ms: float
    edge_ms: float
    nbytes: int

    def __post_init__(self) -> None:
        if min(self.device_ms, self.edge_ms) < 0 or self.nbytes < 0:
            raise InvalidArgumentError(f"option {self.cut}/{self.encoding}: times and bytes must be >= 0")


@dataclass(frozen=True)
class Weights:
    """How much a millisecond of device time (battery) and of edge time (a shared server)
    count against one of waiting; 1 and 1 minimise latency."""

    device: float = 1.0
    edge: float = 1.0

    def __post_init__(self) -> None:
        if min(self.device, self.edge) < 0:
            raise InvalidArgumentError(f"weights must be >= 0, got device {self.device}, edge {self.edge}")


@dataclass(frozen=True)
class Plan:
    """The chosen option and its latency on the link it was chosen for (unweighted)."""

    option: Option
    device_ms: float
    transfer_ms: float
    edge_ms: float
    cost: float

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.transfer_ms + self.edge_ms


def evaluate(option: Option, link: Link, weights: Weights = Weights(), edge_queue_ms: float = 0.0) -> Plan:
    """The latency of ``option`` on ``link``, and its weighted cost."""
    transfer = link.transfer_ms(option.nbytes)
    edge = option.edge_ms + (edge_queue_ms if option.edge_ms > 0 else 0.0)
    cost = weights.device * option.device_ms + transfer + weights.edge * edge
    return Plan(option, option.device_ms, transfer, edge, cost)


def plan(options: Sequence[Option], link: Link, weights: Weights = Weights(),
         edge_queue_ms: float = 0.0) -> Plan:
    """The option of least weighted cost (ties: the earlier option)."""
    if not options:
        raise InvalidArgumentError("no options to plan over")
    if edge_queue_ms < 0:
        raise InvalidArgumentError(f"edge_queue_ms must be >= 0, got {edge_queue_ms}")
    return min((evaluate(option, link, weights, edge_queue_ms) for option in options), key=lambda p: p.cost)


class Replanner:
    """Keeps a plan and changes it only when another option is clearly better for long enough.

    Observations of bandwidth, round-trip time and edge queueing are smoothed
    (exponentially, ``smoothing`` the weight of a new one); the best option replaces the
    current one when its cost is lower by more than ``margin`` (a fraction) on ``patience``
    consecutive observations.

    >>> options = [Option("a", "raw", 1, 2, 100_000), Option("b", "raw", 10, 1, 10_000)]
    >>> replanner = Replanner(options, Link(100, 5), patience=2)
    >>> replanner.plan.option.cut
    'a'
    >>> [replanner.observe(bandwidth_mbps=bw).option.cut for bw in (8, 8, 8, 100, 8, 100, 8)]
    ['a', 'b', 'b', 'b', 'b', 'b', 'b']
    """

    def __init__(self, options: Sequence[Option], link: Link, weights: Weights = Weights(), *,
                 margin: float = 0.1, patience: int = 3, smoothing: float = 0.5) -> None:
        if not 0 <= margin < 1 or patience < 1 or not 0 < smoothing <= 1:
            raise InvalidArgumentError(f"need 0 <= margin < 1, patience >= 1, 0 < smoothing <= 1; got "
                                       f"{margin}, {patience}, {smoothing}")
        self.options = list(options)
        self.weights = weights
        self.margin, self.patience, self.smoothing = margin, patience, smoothing
        self.link = link
        self.edge_queue_ms = 0.0
        self.plan = plan(self.options, link, weights)
        self.switches = 0
        self._better_for = 0

    def observe(self, *, bandwidth_mbps: float | None = None, rtt_ms: float | None = None,
                edge_queue_ms: float | None = None) -> Plan:
        """Fold in new measurements and return the plan to use for the next request."""
        def smooth(old: float, new: float | None) -> float:
            return old if new is None else (1 - self.smoothing) * old + self.smoothing * new

        self.link = Link(smooth(self.link.bandwidth_mbps, bandwidth_mbps), smooth(self.link.rtt_ms, rtt_ms))
        self.edge_queue_ms = max(0.0, smooth(self.edge_queue_ms, edge_queue_ms))
        current = evaluate(self.plan.option, self.link, self.weights, self.edge_queue_ms)
        best = plan(self.options, self.link, self.weights, self.edge_queue_ms)
        if best.option != current.option and best.cost < (1 - self.margin) * current.cost:
            self._better_for += 1
        else:
            self._better_for = 0
        if self._better_for >= self.patience:
            self.plan, self._better_for = best, 0
            self.switches += 1
        else:
            self.plan = current
        return self.plan


def cut_options(cuts: Sequence[Cut], device_ms: Sequence[float], edge_ms: Sequence[float],
                encodings: Sequence[str] = ("float32", "float16", "int8")) -> list[Option]:
    """One option per cut and tensor encoding, from the cuts of a graph and the measured (or
    predicted) head and tail times aligned with them; the all-device cut sends its outputs
    as float32 only (they are the result, not a tensor to finish)."""
    if not len(cuts) == len(device_ms) == len(edge_ms):
        raise InvalidArgumentError(f"{len(cuts)} cuts but {len(device_ms)} device and {len(edge_ms)} edge "
                                   "times")
    options = []
    for index, (cut, device, edge) in enumerate(zip(cuts, device_ms, edge_ms, strict=True)):
        for encoding in encodings if edge > 0 else ("float32",):
            options.append(Option(index, encoding, float(device), float(edge), cut.nbytes(encoding)))
    return options
