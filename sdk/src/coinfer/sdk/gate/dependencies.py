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

The per-round work is a handful of numpy operations over all streams; packet lists are
only materialised for the streams that are decoded.

Example::

    tracker = DependencyTracker(streams=2)
    batch = PacketBatch.from_packets([packet_a, packet_b])
    costs = tracker.arrive(batch, own_costs)        # cost of decoding each packet now
    plans = tracker.decode(np.array([True, False]))  # packets to hand the decoders
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.errors import GateError
from coinfer.sdk.gate.packet import PacketInfo, PictureType


@dataclass(frozen=True)
class PacketBatch:
    """One round's packets as columns (what the gate needs), plus the packets themselves.

    ``packets[i]`` may be any sequence (even a lazy one) returning stream i's PacketInfo or
    None; it is only indexed for streams whose packets end up decoded.
    """

    packets: Sequence[PacketInfo | None]
    present: np.ndarray
    sizes: np.ndarray
    pictures: np.ndarray
    reference: np.ndarray
    random_access: np.ndarray

    @classmethod
    def from_packets(cls, packets: Sequence[PacketInfo | None]) -> PacketBatch:
        count = len(packets)
        present = np.fromiter((p is not None for p in packets), dtype=bool, count=count)
        sizes = np.fromiter((p.size if p is not None else 0 for p in packets), dtype=np.float64, count=count)
        pictures = np.fromiter((p.header.picture if p is not None else PictureType.UNKNOWN for p in packets),
                               dtype=np.int64, count=count)
        reference = np.fromiter((p is not None and p.header.reference for p in packets), dtype=bool,
                                count=count)
        random_access = np.fromiter((p is not None and p.header.random_access for p in packets),
                                    dtype=bool, count=count)
        return cls(packets, present, sizes, pictures, reference, random_access)


@dataclass
class _Round:
    packets: Sequence[PacketInfo | None]
    own: np.ndarray
    pending: np.ndarray  # reference packets of this round that were not decoded

    def packet(self, stream: int) -> PacketInfo:
        """Stream ``stream``'s packet of this round, for a stream that is decoded or pending."""
        packet = self.packets[stream]
        assert packet is not None  # decodable and pending streams are present ones
        return packet


class DependencyTracker:
    """Decode dependencies of ``streams`` concurrent streams, one packet each per round."""

    def __init__(self, streams: int) -> None:
        if streams < 1:
            raise InvalidArgumentError(f"streams must be >= 1, got {streams}")
        self.streams = streams
        self._pending_cost = np.zeros(streams)
        self._pending_from = np.zeros(streams, dtype=np.int64)  # first round that may hold a pending ref
        self._synced = np.zeros(streams, dtype=bool)
        self._history: list[_Round] = []
        self._first_round = 0  # round number of _history[0]
        self._round = -1
        self._decodable = np.zeros(streams, dtype=bool)

    @property
    def pending_cost(self) -> np.ndarray:
        """Cost of the undecoded references each stream's next packet would need."""
        return self._pending_cost.copy()

    def arrive(self, batch: PacketBatch | Sequence[PacketInfo | None], own_costs: np.ndarray) -> np.ndarray:
        """Register this round's packets and price decoding each now (with its pending references).

        ``inf`` where nothing arrived or the stream has not reached a random access point.
        """
        if not isinstance(batch, PacketBatch):
            batch = PacketBatch.from_packets(batch)
        if batch.present.shape != (self.streams,):
            raise GateError(f"expected {self.streams} packets (None for absent), "
                            f"got {batch.present.shape[0]}")
        own = np.asarray(own_costs, dtype=np.float64)
        if own.shape != (self.streams,):
            raise GateError(f"own_costs must have shape ({self.streams},), got {own.shape}")
        self._retire_undecoded()
        self._round += 1
        fresh = batch.random_access
        self._pending_cost[fresh] = 0.0
        self._pending_from[fresh] = self._round
        self._synced |= fresh
        self._pending_from[~self._synced] = self._round
        self._decodable = batch.present & self._synced
        self._history.append(_Round(batch.packets, own, batch.reference & self._decodable))
        return np.where(self._decodable, own + self._pending_cost, np.inf)

    def decode(self, selected: np.ndarray) -> list[list[PacketInfo]]:
        """Mark the selected streams' current packets decoded; return what each decoder must get.

        For every selected stream the list holds its pending references in decode order
        followed by the packet itself; unselected streams get an empty list.
        """
        mask = np.asarray(selected, dtype=bool)
        bad = mask & ~self._decodable
        if bad.any():
            raise GateError(f"stream {int(np.flatnonzero(bad)[0])} has no decodable packet this round")
        plans: list[list[PacketInfo]] = [[] for _ in range(self.streams)]
        current = self._history[-1]
        for i in map(int, np.flatnonzero(mask)):
            plans[i] = [*self._take_pending(i, self._round), current.packet(i)]
        current.pending &= ~mask
        self._pending_cost[mask] = 0.0
        self._pending_from[mask] = self._round + 1
        self._decodable &= ~mask
        return plans

    def prefetch(self, stream: int, budget: float) -> list[PacketInfo]:
        """Decode the oldest pending references of ``stream`` that fit in ``budget``.

        Spending a round's leftover budget this way makes the stream's next packet
        cheaper without changing what is decoded.
        """
        taken: list[PacketInfo] = []
        spent = 0.0
        start = int(self._pending_from[stream])
        for number in range(start, self._round):
            entry = self._history[number - self._first_round]
            if not entry.pending[stream]:
                continue
            cost = float(entry.own[stream])
            if spent + cost > budget:
                self._pending_from[stream] = number
                break
            spent += cost
            entry.pending[stream] = False
            taken.append(entry.packet(stream))
        else:
            self._pending_from[stream] = self._round
        self._pending_cost[stream] = max(self._pending_cost[stream] - spent, 0.0)
        return taken

    def _take_pending(self, stream: int, end: int) -> list[PacketInfo]:
        taken = []
        for number in range(int(self._pending_from[stream]), end):
            entry = self._history[number - self._first_round]
            if entry.pending[stream]:
                entry.pending[stream] = False
                taken.append(entry.packet(stream))
        return taken

    def _retire_undecoded(self) -> None:
        """Last round's skipped references become pending; forget rounds nobody needs."""
        if not self._history:
            return
        last = self._history[-1]
        self._pending_cost += np.where(last.pending, last.own, 0.0)
        oldest = int(self._pending_from.min())
        if oldest - self._first_round > 64:
            del self._history[:oldest - self._first_round]
            self._first_round = oldest
