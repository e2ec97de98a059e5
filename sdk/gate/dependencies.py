"""Which earlier packets a packet needs decoded first, and what decoding it now costs.

A decoder can only reproduce a picture exactly when every picture it references was
decoded before it. In decode order every reference precedes its dependants, so per
stream it is enough to remember the *reference* packets that arrived since the last
packet that was decoded: decoding anything now means decoding those first. A random
access packet (IDR / key frame / intra-only) starts afresh and forgets them. Until a
stream's first random access packet arrives nothing in it can be decoded (cost ``inf``).

This assumes closed GOPs, which surveillance encoders use and ``coinfer data scenes``
writes; HEVC open-GOP leading pictures (RASL) after a CRA are dropped by decoders that
start at that CRA.

Example::

    tracker = DependencyTracker(streams=2)
    costs = tracker.arrive([packet_a, packet_b], own_costs)   # cost of decoding each now
    plan = tracker.decode(np.array([True, False]))           # packets to hand the decoder
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from coinfer.sdk.gate.packet import PacketInfo


@dataclass
class _Pending:
    """Reference packets of one stream that arrived since its last decoded packet."""

    packets: list[PacketInfo] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)


class DependencyTracker:
    """Decode dependencies of ``streams`` concurrent streams, one packet each per round."""

    def __init__(self, streams: int) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.streams = streams
        self._pending = [_Pending() for _ in range(streams)]
        self._pending_cost = np.zeros(streams)
        self._synced = np.zeros(streams, dtype=bool)
        self._current: list[PacketInfo | None] = [None] * streams
        self._own = np.zeros(streams)

    @property
    def pending_cost(self) -> np.ndarray:
        """Cost of the undecoded references each stream's next packet would need."""
        return self._pending_cost.copy()

    def arrive(self, packets: Sequence[PacketInfo | None], own_costs: np.ndarray) -> np.ndarray:
        """Register this round's packets (``None``: nothing arrived) and price decoding each now.

        Returns the cost of decoding each stream's new packet together with its undecoded
        references; ``inf`` where nothing arrived or the stream has not reached a random
        access point yet.
        """
        if len(packets) != self.streams:
            raise ValueError(f"expected {self.streams} packets (None for absent), got {len(packets)}")
        own = np.asarray(own_costs, dtype=np.float64)
        if own.shape != (self.streams,):
            raise ValueError(f"own_costs must have shape ({self.streams},), got {own.shape}")
        self._retire_undecoded()
        for i, packet in enumerate(packets):
            self._current[i] = packet
            if packet is not None and packet.random_access:
                self._pending[i] = _Pending()
                self._pending_cost[i] = 0.0
                self._synced[i] = True
        self._own = own
        present = np.array([packet is not None for packet in packets])
        return np.where(present & self._synced, own + self._pending_cost, np.inf)

    def decode(self, selected: np.ndarray) -> list[list[PacketInfo]]:
        """Mark the selected streams' current packets decoded; return what each decoder must get.

        For every selected stream the list holds its pending references in decode order
        followed by the packet itself; unselected streams get an empty list.
        """
        mask = np.asarray(selected, dtype=bool)
        plans: list[list[PacketInfo]] = [[] for _ in range(self.streams)]
        for i in np.flatnonzero(mask):
            packet = self._current[i]
            if packet is None or not self._synced[i]:
                raise ValueError(f"stream {i} has no decodable packet this round")
            plans[i] = [*self._pending[i].packets, packet]
            self._pending[i] = _Pending()
            self._pending_cost[i] = 0.0
            self._current[i] = None
        return plans

    def prefetch(self, stream: int, budget: float) -> list[PacketInfo]:
        """Decode the oldest pending references of ``stream`` that fit in ``budget`` seconds.

        Spending a round's leftover budget this way makes the stream's next packet
        cheaper without changing what is decoded.
        """
        pending = self._pending[stream]
        spent, count = 0.0, 0
        for cost in pending.costs:
            if spent + cost > budget:
                break
            spent += cost
            count += 1
        taken = pending.packets[:count]
        del pending.packets[:count], pending.costs[:count]
        self._pending_cost[stream] = float(sum(pending.costs))
        return taken

    def _retire_undecoded(self) -> None:
        """Packets of the last round that were skipped: references become pending."""
        for i, packet in enumerate(self._current):
            if packet is None or not packet.reference or not self._synced[i]:
                continue
            self._pending[i].packets.append(packet)
            self._pending[i].costs.append(float(self._own[i]))
            self._pending_cost[i] += self._own[i]
        self._current = [None] * self.streams
