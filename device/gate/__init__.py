"""Gating on the device: compressed packets with their parsed headers, from files or cameras."""

from coinfer.device.gate.source import (
    LIVE_TIMEOUT_S,
    PacketSource,
    PacketSourceError,
    SourcePacket,
    StreamParameters,
)

__all__ = ["LIVE_TIMEOUT_S", "PacketSource", "PacketSourceError", "SourcePacket", "StreamParameters"]
