"""Gating on the device: compressed packets with their parsed headers, from files or cameras."""

from coinfer.device.gate.camera import (
    CameraGate,
    CameraGateOptions,
    CameraGateStats,
    GatewayUploader,
    PacketDecision,
    UplinkError,
    UplinkRefused,
)
from coinfer.device.gate.source import (
    LIVE_TIMEOUT_S,
    PacketSource,
    PacketSourceError,
    SourcePacket,
    StreamParameters,
)
from coinfer.sdk.gate.uplink import UplinkPrice

__all__ = ["LIVE_TIMEOUT_S", "PacketSource", "PacketSourceError", "SourcePacket", "StreamParameters"]
__all__ += ["CameraGate", "CameraGateOptions", "CameraGateStats", "GatewayUploader", "PacketDecision",
            "UplinkError", "UplinkPrice", "UplinkRefused"]
