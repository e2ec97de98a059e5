"""Decode cost per picture type, in measured seconds.

Costs differ by codec, resolution and picture type (an I picture of 1080p H.264 costs
several P pictures), so the gate prices packets with numbers measured on the machine
that decodes: :func:`calibrate_decode_costs` times a short encode/decode of a synthetic
clip at start-up, :meth:`DecodeCostModel.from_timings` turns real decode timings into a
model.

Example::

    model = calibrate_decode_costs("h264", 320, 180)
    own = model.cost_of(picture_types)          # seconds per packet
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.packet import PictureType


@dataclass(frozen=True)
class DecodeCostModel:
    """Seconds to decode one picture of each type; UNKNOWN is priced as the dearest."""

    i_seconds: float
    p_seconds: float
    b_seconds: float
    codec: str = ""
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        for name in ("i_seconds", "p_seconds", "b_seconds"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds, got {value}")

    @property
    def table(self) -> np.ndarray:
        """Cost indexed by :class:`PictureType` value."""
        dearest = max(self.i_seconds, self.p_seconds, self.b_seconds)
        return np.array([dearest, self.i_seconds, self.p_seconds, self.b_seconds])

    def cost_of(self, pictures: Iterable[int] | np.ndarray) -> np.ndarray:
        return self.table[np.asarray(pictures, dtype=np.int64)]

    @classmethod
    def from_timings(cls, pictures: np.ndarray, seconds: np.ndarray, *, codec: str = "",
                     width: int = 0, height: int = 0) -> DecodeCostModel:
        """Median decode time per picture type; a type never seen borrows P's time."""
        pictures = np.asarray(pictures)
        seconds = np.asarray(seconds, dtype=np.float64)
        if pictures.shape != seconds.shape or pictures.size == 0:
            raise InvalidArgumentError(f"pictures and seconds must be non-empty and of equal shape, got "
                                       f"{pictures.shape} and {seconds.shape}")
        medians = {}
        for kind in (PictureType.I, PictureType.P, PictureType.B):
            chosen = seconds[pictures == kind]
            medians[kind] = float(np.median(chosen)) if chosen.size else None
        fallback = medians[PictureType.P] or medians[PictureType.I] or float(np.median(seconds))
        return cls(
            i_seconds=medians[PictureType.I] or fallback,
            p_seconds=medians[PictureType.P] or fallback,
            b_seconds=medians[PictureType.B] or fallback,
            codec=codec, width=width, height=height,
        )

    def to_dict(self) -> dict[str, float | str | int]:
        return {"i_seconds": self.i_seconds, "p_seconds": self.p_seconds, "b_seconds": self.b_seconds,
                "codec": self.codec, "width": self.width, "height": self.height}


_ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "mjpeg": "mjpeg"}


def calibrate_decode_costs(codec: str, width: int, height: int, *, frames: int = 60, gop: int = 20,
                           bframes: int = 0, seed: int = 0) -> DecodeCostModel:
    """Encode a short synthetic clip with this codec and size, then time decoding each packet."""
    from fractions import Fraction

    import av

    if codec not in _ENCODERS:
        raise InvalidArgumentError(f"cannot calibrate codec {codec!r}; known: {sorted(_ENCODERS)}")
    encoder = cast(av.VideoCodecContext, av.CodecContext.create(_ENCODERS[codec], "w"))  # all video encoders
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    encoder.time_base = Fraction(1, 25)
    encoder.gop_size = gop
    if codec == "h264":
        encoder.options = {"preset": "veryfast", "bf": str(bframes), "sc_threshold": "0"}
    elif codec == "hevc":
        encoder.options = {"x265-params": f"keyint={gop}:min-keyint={gop}:bframes={bframes}:log-level=error"}
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    # smooth shading with texture and mild sensor noise, like a static camera view
    scene = 128 + 50 * np.sin(cols / 23.0) * np.cos(rows / 17.0) + 30 * np.sin((cols + rows) / 5.0)
    packets = []
    for index in range(frames):
        image = scene + rng.normal(0.0, 2.0, scene.shape)
        top, left = (7 * index) % max(height - height // 4, 1), (11 * index) % max(width - width // 4, 1)
        image[top:top + height // 4, left:left + width // 4] = 230.0  # a moving object
        image = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., np.newaxis], 3, axis=2)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=encoder.pix_fmt)
        frame.pts = index
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.encode(None))
    return time_decoding(codec, encoder.extradata, [bytes(packet) for packet in packets],
                         width=width, height=height)


def time_decoding(codec: str, extradata: bytes | None, packets: list[bytes], *, width: int = 0,
                  height: int = 0) -> DecodeCostModel:
    """Decode ``packets`` one by one and price each picture type by its packets' decode time."""
    import av

    from coinfer.sdk.gate.bitstream import create_parser

    parser = create_parser(codec, extradata)  # only video codecs have a parser
    decoder = cast(av.VideoCodecContext, av.CodecContext.create(codec, "r"))
    if extradata:
        decoder.extradata = extradata
    types, seconds = [], []
    for data in packets:
        packet = av.Packet(data)
        start = time.perf_counter()
        decoder.decode(packet)
        seconds.append(time.perf_counter() - start)
        types.append(int(parser.parse(data).picture))
    return DecodeCostModel.from_timings(np.array(types), np.array(seconds), codec=codec, width=width,
                                        height=height)
