"""What gating knows about a compressed packet before anything is decoded."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coinfer.sdk.errors import CoinferError


class BitstreamError(CoinferError, ValueError):
    """A packet's bytes could not be parsed; the message says which field broke."""


class PictureType(enum.IntEnum):
    """Coding type of the picture a packet carries (as the decoder would report it)."""

    UNKNOWN = 0
    I = 1  # noqa: E741 - the codec standards' own name
    P = 2
    B = 3

    @classmethod
    def from_ffmpeg(cls, value: int) -> PictureType:
        """Map FFmpeg's AVPictureType (what ``frame.pict_type`` holds in PyAV) onto I/P/B."""
        return _FFMPEG_TYPES.get(int(value), cls.UNKNOWN)


# AV_PICTURE_TYPE_I, P, B, S (GMC), SI, SP, BI
_FFMPEG_TYPES = {1: PictureType.I, 2: PictureType.P, 3: PictureType.B, 4: PictureType.P, 5: PictureType.I,
                 6: PictureType.P, 7: PictureType.B}


@dataclass(frozen=True, slots=True)
class PictureInfo:
    """Header facts of one packet, read from its first slice / frame header.

    ``reference`` is False only when no later picture can depend on this one (an H.264
    picture with nal_ref_idc 0, an HEVC sub-layer non-reference NAL on the highest
    sub-layer, a VP9 frame that refreshes no reference slot and whose successors are
    error-resilient, i.e. do not read its motion vectors or entropy context), so skipping
    it can never corrupt another frame.
    ``random_access`` marks pictures a decoder can start from (IDR/CRA/BLA, VP9 key
    frames, every picture of an intra-only codec).
    """

    picture: PictureType
    reference: bool
    random_access: bool
    show: bool = True


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """One demuxed packet of one stream, in decode order, with its parsed header."""

    stream: int
    index: int
    size: int
    pts: int | None
    dts: int | None
    keyframe: bool
    header: PictureInfo

    @property
    def picture(self) -> PictureType:
        return self.header.picture

    @property
    def reference(self) -> bool:
        return self.header.reference

    @property
    def random_access(self) -> bool:
        return self.header.random_access
