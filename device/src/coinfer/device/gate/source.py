"""Demux a camera stream or file with PyAV and tag every packet with its parsed header.

The gate decides per packet whether to decode, so packets must arrive with their picture
type, reference flag and random-access flag already known. :class:`PacketSource` reads
compressed packets only (it never decodes) and hands them out with a
:class:`~coinfer.sdk.gate.packet.PacketInfo`; its ``parameters``
(:class:`~coinfer.sdk.gate.protocol.StreamParameters`, re-exported here) are what a decoder
in another process needs to decode the packets that were kept. Example::

    with PacketSource.open("rtsp://camera/stream", options={"rtsp_transport": "tcp"}) as source:
        decoder = source.parameters.create_decoder()
        for packet in source:
            if packet.info.reference or wanted(packet.info):
                frames = decoder.decode(av.Packet(packet.data))
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.gate.bitstream import PacketParser, create_parser
from coinfer.sdk.gate.packet import BitstreamError, PacketInfo, PictureInfo, PictureType
from coinfer.sdk.gate.protocol import StreamParameters

__all__ = ["LIVE_TIMEOUT_S", "PacketSource", "PacketSourceError", "SourcePacket", "StreamParameters"]

#: Seconds a live source (any URL with a protocol) may stay silent before reading fails,
#: when the caller gives no timeout: a dead camera must raise, not hang its worker.
LIVE_TIMEOUT_S = 10.0
_PROTOCOL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


class PacketSourceError(CoinferError):
    """A video source could not be opened or read; the message names its URL."""


@dataclass(frozen=True, slots=True)
class SourcePacket:
    """One compressed packet and the header facts parsed from it."""

    info: PacketInfo
    data: bytes


def _is_live(url: str) -> bool:
    """URLs with a protocol (rtsp:, tcp:, pipe:...) may stall; plain or file: paths do not."""
    return bool(_PROTOCOL.match(url)) and not url.startswith("file:")


class PacketSource:
    """Iterator of :class:`SourcePacket` (decode order) from the first video stream of a URL.

    Packets are numbered from 0 in decode order; empty flush packets are skipped. A packet
    whose header does not parse is still yielded, as an UNKNOWN picture kept for reference
    (the safe answer), and counted in :attr:`parse_errors`.
    """

    def __init__(self, container: av.container.InputContainer, url: str, stream_id: int,
                 timeout_s: float | None) -> None:
        self.url = url
        self.parse_errors = 0
        self._container = container
        self._stream_id = stream_id
        self._timeout_s = timeout_s
        if not container.streams.video:
            container.close()
            raise PacketSourceError(f"{url!r} has no video stream")
        self._stream = container.streams.video[0]
        context = self._stream.codec_context
        extradata = context.extradata or None
        rate = self._stream.average_rate or self._stream.guessed_rate
        time_base = self._stream.time_base
        assert time_base is not None  # FFmpeg gives every demuxed stream one (1/90000 unless set)
        self.parameters = StreamParameters(
            codec=context.name, extradata=extradata, width=context.width, height=context.height,
            time_base=Fraction(time_base),
            frame_rate=Fraction(rate) if rate else None)
        try:
            self._parser: PacketParser = create_parser(context.name, extradata)
        except BitstreamError as error:
            container.close()
            raise PacketSourceError(f"{url!r}: cannot read packet headers of its video stream: {error}") \
                from error
        self._packets = self._read()

    @classmethod
    def open(cls, url: str, *, stream_id: int = 0, options: dict[str, str] | None = None,
             timeout_s: float | None = None, format: str | None = None) -> PacketSource:
        """Open a file path or any URL FFmpeg reads (rtsp://, tcp://, udp://, pipe:...).

        ``stream_id`` labels this source's packets (:attr:`PacketInfo.stream`); ``options``
        go to FFmpeg (e.g. ``{"rtsp_transport": "tcp"}``); ``timeout_s`` bounds every wait
        for data (default :data:`LIVE_TIMEOUT_S` for live URLs, none for files); ``format``
        forces a demuxer when probing cannot tell (e.g. ``"h264"`` for a raw stream).
        """
        if timeout_s is None and _is_live(url):
            timeout_s = LIVE_TIMEOUT_S
        try:
            container = av.open(url, options=dict(options or {}), timeout=timeout_s, format=format)
        except (av.FFmpegError, OSError) as error:
            raise PacketSourceError(f"cannot open video source {url!r}: {_describe(error, timeout_s)}") \
                from error
        return cls(container, url, stream_id, timeout_s)

    def _read(self) -> Iterator[SourcePacket]:
        demux = self._container.demux(self._stream)
        index = 0
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (av.FFmpegError, OSError) as error:
                raise PacketSourceError(f"reading {self.url!r} failed after {index} packets: "
                                        f"{_describe(error, self._timeout_s)}") from error
            if packet.size == 0:
                continue
            data = bytes(packet)
            keyframe = packet.is_keyframe
            try:
                header = self._parser.parse(data)
            except BitstreamError:
                self.parse_errors += 1
                header = PictureInfo(PictureType.UNKNOWN, reference=True, random_access=keyframe)
            yield SourcePacket(PacketInfo(self._stream_id, index, packet.size, packet.pts, packet.dts,
                                          keyframe, header), data)
            index += 1

    def __iter__(self) -> PacketSource:
        return self

    def __next__(self) -> SourcePacket:
        return next(self._packets)

    def close(self) -> None:
        """Close the container; iteration then ends. Call it from the thread that iterates."""
        self._packets = iter(())
        self._container.close()

    def __enter__(self) -> PacketSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _describe(error: Exception, timeout_s: float | None) -> str:
    """FFmpeg reports a timeout as an 'exit requested' interrupt; say what it means."""
    if isinstance(error, av.ExitError) and timeout_s is not None:
        return f"no data for {timeout_s:g} s (timed out)"
    return str(error)
