"""Decode what the gate planned, exactly as a decode-all pass would, and count what went wrong.

The gate hands each stream a plan: the reference packets it skipped since it last decoded
(decode order), then the packet itself. Fed in that order, the decoder reproduces every
planned picture bit for bit, because every picture it references was decoded before it
(tested against :func:`decode_all`). A :class:`StreamDecoder` keeps its codec context for
the whole stream: dropping it would lose the reference pictures the next plan relies on.

Pictures leave an H.264/HEVC decoder in display order, so with B-frames a picture may come
out only after later packets were fed (the stream's reorder delay); frames are therefore
returned keyed by their packet's pts, whenever they appear, and :meth:`StreamDecoder.flush`
drains the rest at the end of a stream.

Broken input never raises: packets the decoder rejects, frames it flags as corrupt and
error messages FFmpeg logs (a missing reference, a damaged slice) are counted, so one bad
packet of one camera cannot stop a gateway. Logged errors are seen only after
:func:`capture_decoder_errors` (the decoder workers call it). The counts catch damaged
data, not every wrong plan: H.264 conceals a skipped reference picture silently (a
frame_num gap), which is why exactness is checked by comparing with :func:`decode_all`.

Example::

    decoder = StreamDecoder(source.parameters)
    frames = decoder.decode([(packet.info, packet.data) for packet in plan])   # {pts: av.VideoFrame}
    rgb = frame_array(frames[pts])
    frames.update(decoder.flush())                 # end of stream: pictures still held back
    decoder.errors, decoder.corrupt
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import av
import av.logging
import numpy as np

from coinfer.sdk.gate.packet import PacketInfo

if TYPE_CHECKING:
    from coinfer.device.gate.source import StreamParameters

#: Decoder messages kept per stream, so a report can say what broke without growing forever.
MAX_MESSAGES = 8


def frame_key(info: PacketInfo) -> int:
    """The key a packet's picture is returned under: its pts, or its index when the container
    has no timestamps (raw Annex-B streams)."""
    return info.pts if info.pts is not None else info.index


def frame_array(frame: av.VideoFrame, format: str | None = "rgb24") -> np.ndarray:
    """A decoded picture as an array: RGB uint8 (H, W, 3) by default; ``format=None`` gives the
    decoder's own planes (for YUV 4:2:0 a (H*3/2, W) array), the strictest thing to compare."""
    return frame.to_ndarray(format=format) if format else frame.to_ndarray()


def capture_decoder_errors() -> None:
    """Let FFmpeg's error messages reach Python so :class:`StreamDecoder` can count them.

    PyAV drops FFmpeg's log by default; this routes error-level messages to it for the
    whole process, which is what a process that only decodes wants.
    """
    level = av.logging.get_level()
    if level is None or level < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)


class StreamDecoder:
    """One stream's decoder, fed plan after plan in decode order.

    ``threads`` is FFmpeg's decoding thread count: 1 by default, because the worker pool
    decodes many streams in parallel already and a single thread keeps the output free of
    frame-threading delay and the error log on the calling thread.
    """

    def __init__(self, parameters: StreamParameters, *, threads: int = 1) -> None:
        self.parameters = parameters
        self._context = parameters.create_decoder()
        self._context.thread_count = threads
        self.packets = 0
        self.frames = 0
        self.errors = 0
        self.corrupt = 0
        self.seconds = 0.0
        self.messages: list[str] = []

    def decode(self, plan: Iterable[tuple[PacketInfo, bytes]]) -> dict[int, av.VideoFrame]:
        """Feed ``plan``'s packets in order; return the pictures that came out, by pts."""
        out: dict[int, av.VideoFrame] = {}
        for info, data in plan:
            packet = av.Packet(data)
            packet.pts = frame_key(info)
            packet.dts = info.dts
            self.packets += 1
            self._run(packet, out, f"packet {info.index} (pts {info.pts})")
        return out

    def flush(self) -> dict[int, av.VideoFrame]:
        """Drain the pictures held back for reordering; the decoder then accepts no more packets."""
        out: dict[int, av.VideoFrame] = {}
        self._run(None, out, "end of stream")
        return out

    def _run(self, packet: av.Packet | None, out: dict[int, av.VideoFrame], what: str) -> None:
        start = time.perf_counter()
        with av.logging.Capture(local=True) as logs:
            try:
                frames = self._context.decode(packet)
            except (av.FFmpegError, ValueError) as error:
                frames = []
                self._error(f"{what}: {error}")
        self.seconds += time.perf_counter() - start
        for level, _, message in logs:
            if level <= av.logging.ERROR:
                self._error(f"{what}: {message.strip()}")
        for frame in frames:
            if frame.is_corrupt:
                self.corrupt += 1
            self.frames += 1
            if frame.pts is None:  # decode() stamps every packet; a picture without one is an error
                self._error(f"{what}: a decoded picture carries no timestamp")
                continue
            out[frame.pts] = frame

    def _error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)


@dataclass
class DecodedStream:
    """Every picture of a stream from a decode-all pass, keyed like :class:`StreamDecoder` keys them."""

    frames: dict[int, np.ndarray]
    packets: list[PacketInfo]
    errors: int
    corrupt: int
    messages: list[str] = field(default_factory=list)


def decode_all(url: str, *, format: str | None = "rgb24") -> DecodedStream:
    """Decode every packet of ``url`` (the reference gated decoding must reproduce)."""
    from coinfer.device.gate.source import PacketSource

    with PacketSource.open(url) as source:
        decoder = StreamDecoder(source.parameters)
        frames: dict[int, np.ndarray] = {}
        packets: list[PacketInfo] = []
        for packet in source:
            packets.append(packet.info)
            frames.update(_arrays(decoder.decode([(packet.info, packet.data)]), format))
        frames.update(_arrays(decoder.flush(), format))
    return DecodedStream(frames, packets, decoder.errors, decoder.corrupt, decoder.messages)


def _arrays(frames: dict[int, av.VideoFrame], format: str | None) -> dict[int, np.ndarray]:
    return {key: frame_array(frame, format) for key, frame in frames.items()}

