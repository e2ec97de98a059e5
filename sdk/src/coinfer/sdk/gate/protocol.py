"""The wire messages a camera gate uploads to an edge gateway, and their checked parser.

A camera sends the packets it chose (and the references they need) to
``POST /v1/gate/streams/{stream}/frames`` (:func:`frames_path`) with
``Authorization: Bearer <token>`` and content type ``application/octet-stream``; the body
is one or more :mod:`coinfer.sdk.wire` frames:

* ``CONTROL`` ``{"kind": "parameters", "stream", "session", "codec", "width", "height",
  "time_base": [num, den], "frame_rate": [num, den] | None}`` with array ``extradata``
  (uint8, possibly empty). First frame of a session, and again after a resync.
* ``STREAM_CHUNK`` ``{"kind": "packets", "stream", "session", "seq", "packets": [[index, pts,
  dts, keyframe, picture, reference, random_access, size, inferred], ...]}`` with array
  ``data`` (uint8: the packets' bytes concatenated in that order). ``seq`` counts chunks of
  the session from 0; ``inferred`` is false for references sent only so the edge can decode.
* ``CONTROL`` ``{"kind": "end", "stream", "session"}``: the stream ended; the edge flushes.

The edge answers JSON ``{"results": [{"index", "pts", "necessary"}, ...], "resync": bool, ...}``;
``resync`` asks the camera to resend its parameters and restart at a random-access packet.
:func:`parse_body` checks every field, count and size of a body before anything is kept.

The camera side is :class:`coinfer.device.gate.CameraGate`, the edge side
:mod:`coinfer.edge.gateway`. Example::

    body = encode_parameters("cam0", session, parameters) + encode_packets("cam0", session, 0, chunk)
    for message in parse_body(body, "cam0", codecs=("h264",)):
        ...
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.gate.packet import PacketInfo, PictureInfo, PictureType

if TYPE_CHECKING:
    import av

__all__ = [
    "CONTENT_TYPE",
    "FRAMES_PATH",
    "KIND_END",
    "KIND_PACKETS",
    "KIND_PARAMETERS",
    "PACKET_FIELDS",
    "STREAM_ID",
    "EndMessage",
    "GateMessage",
    "GateProtocolError",
    "PacketsMessage",
    "ParametersMessage",
    "StreamParameters",
    "check_stream_id",
    "encode_end",
    "encode_packets",
    "encode_parameters",
    "frames_path",
    "parse_body",
]

CONTENT_TYPE = "application/octet-stream"
FRAMES_PATH = "/v1/gate/streams/{stream_id}/frames"
#: Stream ids travel in URL paths: a short, plain alphabet.
STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Order of the per-packet fields inside a ``packets`` chunk.
PACKET_FIELDS = ("index", "pts", "dts", "keyframe", "picture", "reference", "random_access", "size",
                 "inferred")
KIND_PARAMETERS, KIND_PACKETS, KIND_END = "parameters", "packets", "end"
_MAX_SESSION = 64
_MAX_DIMENSION = 16384
_MAX_CODEC_NAME = 32


def frames_path(stream: str) -> str:
    """The gateway path a stream's frames are POSTed to."""
    return FRAMES_PATH.format(stream_id=urllib.parse.quote(check_stream_id(stream), safe=""))


def check_stream_id(stream: str) -> str:
    """``stream`` if it is a valid stream id, else :class:`GateProtocolError`."""
    if not isinstance(stream, str) or not STREAM_ID.fullmatch(stream):
        raise GateProtocolError(f"stream id {stream!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return stream


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class StreamParameters:
    """What a decoder needs for one video stream; plain fields, so cheap to pickle to a worker."""

    codec: str
    extradata: bytes | None
    width: int
    height: int
    time_base: Fraction
    frame_rate: Fraction | None

    def create_decoder(self) -> av.VideoCodecContext:
        """A PyAV decoder for this stream's packets (codec, extradata and size set)."""
        import av

        # A video codec's context: setting the picture size below fails on any other kind.
        context = cast(av.VideoCodecContext, av.CodecContext.create(self.codec, "r"))
        if self.extradata:
            context.extradata = self.extradata
        context.width, context.height = self.width, self.height
        return context


class GateProtocolError(CoinferError, ValueError):
    """A body is not a well-formed sequence of gate frames; the message names what broke."""


@dataclass(frozen=True)
class ParametersMessage:
    stream: str
    session: str
    parameters: StreamParameters


@dataclass(frozen=True)
class PacketsMessage:
    """One chunk: packets in decode order, each with its bytes and whether to infer on it."""

    stream: str
    session: str
    seq: int
    packets: list[tuple[PacketInfo, bytes, bool]]


@dataclass(frozen=True)
class EndMessage:
    stream: str
    session: str


GateMessage = ParametersMessage | PacketsMessage | EndMessage


def _fraction_pair(value: Fraction | None) -> list[int] | None:
    return None if value is None else [value.numerator, value.denominator]


def encode_parameters(stream: str, session: str, parameters: StreamParameters) -> bytes:
    header = {"kind": KIND_PARAMETERS, "stream": stream, "session": session, "codec": parameters.codec,
              "width": parameters.width, "height": parameters.height,
              "time_base": _fraction_pair(parameters.time_base),
              "frame_rate": _fraction_pair(parameters.frame_rate)}
    extradata = np.frombuffer(parameters.extradata or b"", dtype=np.uint8)
    return wire.encode(wire.Message(wire.MessageType.CONTROL, header, {"extradata": extradata}))


def encode_end(stream: str, session: str) -> bytes:
    header = {"kind": KIND_END, "stream": stream, "session": session}
    return wire.encode(wire.Message(wire.MessageType.CONTROL, header))


def encode_packets(stream: str, session: str, seq: int, packets: Sequence[tuple[PacketInfo, bytes, bool]]
                   ) -> bytes:
    rows = [[info.index, info.pts, info.dts, info.keyframe, int(info.picture), info.reference,
             info.random_access, len(data), inferred] for info, data, inferred in packets]
    header = {"kind": KIND_PACKETS, "stream": stream, "session": session, "seq": seq, "packets": rows}
    data = np.frombuffer(b"".join(data for _, data, _ in packets), dtype=np.uint8)
    return wire.encode(wire.Message(wire.MessageType.STREAM_CHUNK, header, {"data": data}))


def parse_body(body: bytes, stream: str, *, limits: wire.WireLimits = wire.DEFAULT_LIMITS,
               max_frames: int = 256, max_packets: int = 4096,
               codecs: Iterable[str] | None = None) -> list[GateMessage]:
    """Validate a request body of gate frames for ``stream``; nothing partial is ever returned.

    ``codecs`` restricts which decoders a peer may make the receiver create (None: any name).
    """
    if not body:
        raise GateProtocolError("empty body: expected one or more coinfer frames")
    decoder = wire.FrameDecoder(limits)
    messages: list[wire.Message] = []
    view = memoryview(body)
    step = 1 << 16
    try:
        for start in range(0, len(view), step):
            messages += decoder.feed(view[start:start + step])
            if len(messages) > max_frames:
                raise GateProtocolError(f"body holds more than {max_frames} frames")
    except wire.WireError as error:
        raise GateProtocolError(f"malformed frame {len(messages)}: {error}") from error
    if decoder.buffered:
        raise GateProtocolError(f"truncated body: it ends inside frame {len(messages)} "
                                f"({decoder.buffered} bytes of it present)")
    allowed = None if codecs is None else frozenset(codecs)
    return [_parse_message(number, message, stream, max_packets, allowed)
            for number, message in enumerate(messages)]


def _field(header: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = header.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass; a flag must not pass as a number nor a number as a flag
    if not any(type(value) is k for k in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise GateProtocolError(f"{where}: field {name!r} must be {names}, got {value!r}")
    return value


def _fraction(value: Any, name: str, where: str) -> Fraction:
    valid = (isinstance(value, list) and len(value) == 2
             and all(type(part) is int and 0 < part < 1 << 31 for part in value))
    if not valid:
        raise GateProtocolError(f"{where}: {name} must be [numerator, denominator] of positive ints, "
                                f"got {value!r}")
    return Fraction(value[0], value[1])


def _parse_message(number: int, message: wire.Message, stream: str, max_packets: int,
                   codecs: frozenset[str] | None) -> GateMessage:
    where = f"frame {number}"
    header = message.header
    kind = header.get("kind")
    expected = {wire.MessageType.CONTROL: (KIND_PARAMETERS, KIND_END),
                wire.MessageType.STREAM_CHUNK: (KIND_PACKETS,)}.get(message.type, ())
    if kind not in expected:
        raise GateProtocolError(f"{where}: a {message.type.name} frame of kind {kind!r} is not a gate "
                                f"message (expected kind {' or '.join(expected) or 'none'})")
    if _field(header, "stream", str, where) != stream:
        raise GateProtocolError(f"{where}: stream {header['stream']!r} does not match the URL's {stream!r}")
    session = _field(header, "session", str, where)
    if not 0 < len(session) <= _MAX_SESSION:
        raise GateProtocolError(f"{where}: session must be 1-{_MAX_SESSION} characters")
    if kind == KIND_END:
        return EndMessage(stream, session)
    if kind == KIND_PARAMETERS:
        return ParametersMessage(stream, session, _parse_parameters(header, message.arrays, where, codecs))
    return _parse_packets(header, message.arrays, where, stream, session, max_packets)


def _single_array(arrays: Mapping[str, np.ndarray], name: str, where: str) -> np.ndarray:
    if set(arrays) != {name}:
        raise GateProtocolError(f"{where}: expected exactly one array {name!r}, got {sorted(arrays)}")
    array = arrays[name]
    if array.dtype != np.uint8 or array.ndim != 1:
        raise GateProtocolError(f"{where}: array {name!r} must be 1-D uint8, "
                                f"got {array.dtype}{list(array.shape)}")
    return array


def _parse_parameters(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str,
                      codecs: frozenset[str] | None) -> StreamParameters:
    codec = _field(header, "codec", str, where)
    if not 0 < len(codec) <= _MAX_CODEC_NAME or (codecs is not None and codec not in codecs):
        allowed = "" if codecs is None else f" (accepted: {', '.join(sorted(codecs))})"
        raise GateProtocolError(f"{where}: codec {codec!r} is not accepted{allowed}")
    width, height = (_field(header, name, int, where) for name in ("width", "height"))
    if not (0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION):
        raise GateProtocolError(f"{where}: picture size {width}x{height} outside 1..{_MAX_DIMENSION}")
    extradata = _single_array(arrays, "extradata", where)
    time_base = _fraction(header.get("time_base"), "time_base", where)
    rate = header.get("frame_rate")
    frame_rate = None if rate is None else _fraction(rate, "frame_rate", where)
    return StreamParameters(codec=codec, extradata=extradata.tobytes() or None, width=width, height=height,
                            time_base=time_base, frame_rate=frame_rate)


def _parse_packets(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str, stream: str,
                   session: str, max_packets: int) -> PacketsMessage:
    seq = _field(header, "seq", int, where)
    if seq < 0:
        raise GateProtocolError(f"{where}: seq must be >= 0, got {seq}")
    rows = header.get("packets")
    if not isinstance(rows, list) or not 0 < len(rows) <= max_packets:
        raise GateProtocolError(f"{where}: packets must be a list of 1..{max_packets} entries")
    data = _single_array(arrays, "data", where)
    packets = []
    offset, previous = 0, -1
    for position, row in enumerate(rows):
        info, size, inferred = _parse_row(row, f"{where} packet {position}")
        if info.index <= previous:
            raise GateProtocolError(f"{where} packet {position}: index {info.index} does not follow "
                                    f"{previous}")
        previous = info.index
        if offset + size > data.size:
            raise GateProtocolError(f"{where}: packet sizes sum past the {data.size}-byte data array "
                                    f"(at packet {position})")
        packets.append((info, data[offset:offset + size].tobytes(), inferred))
        offset += size
    if offset != data.size:
        raise GateProtocolError(f"{where}: packet sizes sum to {offset} bytes but the data array holds "
                                f"{data.size}")
    return PacketsMessage(stream, session, seq, packets)


def _parse_row(row: Any, where: str) -> tuple[PacketInfo, int, bool]:
    if not isinstance(row, list) or len(row) != len(PACKET_FIELDS):
        raise GateProtocolError(f"{where}: expected a list of the {len(PACKET_FIELDS)} fields "
                                f"{', '.join(PACKET_FIELDS)}")
    values = dict(zip(PACKET_FIELDS, row, strict=True))
    kinds: dict[str, tuple[type, ...]] = {
        "index": (int,), "pts": (int, type(None)), "dts": (int, type(None)), "keyframe": (bool,),
        "picture": (int,), "reference": (bool,), "random_access": (bool,), "size": (int,),
        "inferred": (bool,)}
    for name, kind in kinds.items():
        _field(values, name, kind, where)
    if values["index"] < 0 or values["size"] < 1:
        raise GateProtocolError(f"{where}: index must be >= 0 and size >= 1, got {values['index']}, "
                                f"{values['size']}")
    for name in ("index", "pts", "dts"):  # the decoder (FFmpeg) stores timestamps as int64
        if values[name] is not None and not -(2 ** 63) <= values[name] < 2 ** 63:
            raise GateProtocolError(f"{where}: {name} {values[name]} does not fit in 64 signed bits")
    if values["picture"] not in PictureType._value2member_map_:
        raise GateProtocolError(f"{where}: unknown picture type {values['picture']}")
    header = PictureInfo(PictureType(values["picture"]), reference=values["reference"],
                         random_access=values["random_access"])
    info = PacketInfo(0, values["index"], values["size"], values["pts"], values["dts"], values["keyframe"],
                      header)
    return info, values["size"], values["inferred"]
