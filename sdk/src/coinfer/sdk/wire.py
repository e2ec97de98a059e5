"""Versioned binary frame format spoken between coinfer tiers.

This docstring is the specification. A frame is three sections, back to back::

    offset  size  field
    0       4     magic, the ASCII bytes b"CNFR"
    4       1     version, u8; this build speaks 1
    5       1     message type, u8 (see MessageType)
    6       2     flags, u16 little-endian; reserved, must be 0
    8       4     header length H, u32 little-endian
    12      8     payload length P, u64 little-endian
    20      H     msgpack header
    20+H    P     payload

The fixed part is ``struct.Struct("<4sBBHIQ")`` (20 bytes). The msgpack header is a
map with exactly two keys:

* ``"h"``: the user header, a map with str keys whose values are None, bool, int
  (64-bit), float, str, bytes, lists of these or maps with str keys, nested at most
  32 levels deep;
* ``"a"``: the array table, a list of ``[name, dtype, shape]`` entries: a unique str
  name, a dtype string from the whitelist below (numpy ``dtype.str``, always
  little-endian) and a list of non-negative int dimensions (at most ``max_ndim``).

The payload is the raw C-order little-endian buffers of the arrays, concatenated in
table order with no padding; its length must equal the sum of the arrays' sizes. A
frame is exactly ``20 + H + P`` bytes. Whitelisted dtypes: ``|b1 |i1 |u1 <i2 <u2 <i4
<u4 <i8 <u8 <f2 <f4 <f8 <c8 <c16``.

Decoders check the fixed header (magic, version, type, flags, H and P against
:class:`WireLimits`) before allocating anything proportional to the declared sizes,
so a hostile peer cannot make a receiver buffer or allocate more than its limits.
Every malformed input raises :class:`WireError`.

Example:

>>> import numpy as np
>>> from coinfer.sdk import wire
>>> frame = wire.encode(wire.Message(wire.MessageType.TENSORS, {"step": 3},
...                                  {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}))
>>> frame[:4], len(frame), wire.frame_length(frame[:20])
(b'CNFR', 67, 67)
>>> message = wire.decode(frame)
>>> message.type, message.header
(<MessageType.TENSORS: 1>, {'step': 3})
>>> message.arrays["x"]
array([[0., 1., 2.],
       [3., 4., 5.]], dtype=float32)
>>> wire.decode(frame[:-1])
Traceback (most recent call last):
    ...
coinfer.sdk.wire.WireError: truncated frame: 66 of 67 bytes

A :class:`FrameDecoder` reads frames from a byte stream (a socket, a pipe) in any chunking:

>>> decoder = wire.FrameDecoder()
>>> decoder.feed(frame[:7]), decoder.buffered
([], 7)
>>> [m.header for m in decoder.feed(frame[7:] + frame)]
[{'step': 3}, {'step': 3}]
>>> decoder.close()                 # raises WireError if the stream stopped mid-frame
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from coinfer.sdk.errors import CoinferError

__all__ = [
    "DEFAULT_LIMITS",
    "FIXED_HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "FrameDecoder",
    "Message",
    "MessageType",
    "WireError",
    "WireLimits",
    "decode",
    "encode",
    "frame_length",
]

MAGIC = b"CNFR"
VERSION = 1
_FIXED = struct.Struct("<4sBBHIQ")
FIXED_HEADER_SIZE = _FIXED.size
_MAX_HEADER_DEPTH = 32
_DTYPES = {
    s: np.dtype(s)
    for s in (
        "|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8",
        "<f2", "<f4", "<f8", "<c8", "<c16",
    )
}  # fmt: skip


class WireError(CoinferError, ValueError):
    """A frame is malformed, exceeds the limits, or cannot be represented on the wire."""


class MessageType(enum.IntEnum):
    """What a frame carries; the byte at offset 5."""

    TENSORS = 1
    REQUEST = 2
    RESPONSE = 3
    ERROR = 4
    STREAM_CHUNK = 5
    CONTROL = 6


@dataclass
class Message:
    """One frame's content: a type, a small msgpack-able header and named arrays."""

    type: MessageType
    header: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class WireLimits:
    """Upper bounds a receiver enforces (and a sender respects) so peers cannot exhaust memory."""

    max_header_bytes: int = 1 << 20
    max_payload_bytes: int = 256 << 20
    max_arrays: int = 1024
    max_ndim: int = 16


DEFAULT_LIMITS = WireLimits()


def _parse_fixed(prefix: bytes | bytearray | memoryview, limits: WireLimits) -> tuple[MessageType, int, int]:
    """Validate the 20-byte fixed header; returns (message type, header length, payload length).

    Shared by every reader so the checks happen in one order, before any sized allocation.
    """
    if len(prefix) < FIXED_HEADER_SIZE:
        raise WireError(
            f"truncated frame: {len(prefix)} bytes, the fixed header alone is {FIXED_HEADER_SIZE}"
        )
    magic, version, type_byte, flags, header_len, payload_len = _FIXED.unpack_from(prefix)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}, expected {MAGIC!r}: not a coinfer frame")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version} (this build speaks {VERSION})")
    try:
        message_type = MessageType(type_byte)
    except ValueError:
        raise WireError(f"unknown message type {type_byte}") from None
    if flags:
        raise WireError(f"reserved flags must be 0, got {flags:#06x}")
    if header_len > limits.max_header_bytes:
        raise WireError(f"header length {header_len} exceeds the limit of {limits.max_header_bytes} bytes")
    if payload_len > limits.max_payload_bytes:
        raise WireError(f"payload length {payload_len} exceeds the limit of {limits.max_payload_bytes} bytes")
    return message_type, header_len, payload_len


def frame_length(prefix: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS) -> int:
    """Total size of the frame whose first 20 (or more) bytes are ``prefix``.

    Lets a transport read exactly one frame after validating its fixed header.
    """
    _, header_len, payload_len = _parse_fixed(prefix, limits)
    return FIXED_HEADER_SIZE + header_len + payload_len


def _check_value(value: Any, path: str, depth: int) -> None:
    """Reject header values msgpack would not round-trip as the same Python value."""
    if depth > _MAX_HEADER_DEPTH:
        raise WireError(f"{path} nests deeper than {_MAX_HEADER_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError(f"{path} has a non-str key {key!r}")
            _check_value(item, f"{path}[{key!r}]", depth + 1)
    else:
        raise WireError(f"{path} has unsupported type {type(value).__name__}")


def _check_header(header: Any) -> dict:
    if not isinstance(header, dict):
        raise WireError(f"header must be a dict, got {type(header).__name__}")
    _check_value(header, "header", 0)
    return header


def _wire_dtype(name: str, array: np.ndarray) -> np.dtype:
    """The little-endian whitelisted dtype ``array`` travels as."""
    dtype = array.dtype.newbyteorder("<")
    if dtype.str not in _DTYPES:
        raise WireError(
            f"array {name!r} has dtype {array.dtype} ({array.dtype.str}), "
            f"which the wire format does not carry"
        )
    return dtype


def encode(message: Message, limits: WireLimits = DEFAULT_LIMITS) -> bytes:
    """Serialize ``message`` into one frame.

    Enforces the same limits as :func:`decode`, so a frame that leaves here is never
    rejected by a peer using the same limits. Arrays (or anything ``np.asarray`` takes)
    are converted to C-order little-endian, copying only when they are not already, so
    big-endian or strided input arrives as the same values.
    """
    try:
        message_type = MessageType(message.type)
    except ValueError:
        raise WireError(f"unknown message type {message.type!r}") from None
    header = _check_header(message.header)
    if len(message.arrays) > limits.max_arrays:
        raise WireError(f"{len(message.arrays)} arrays exceed the limit of {limits.max_arrays}")
    table = []
    parts: list[memoryview] = []
    payload_len = 0
    for name, value in message.arrays.items():
        if not isinstance(name, str):
            raise WireError(f"array names must be str, got {name!r}")
        array = np.asarray(value)
        dtype = _wire_dtype(name, array)
        if array.ndim > limits.max_ndim:
            raise WireError(
                f"array {name!r} has {array.ndim} dimensions, more than the limit of {limits.max_ndim}"
            )
        payload_len += array.size * dtype.itemsize
        if payload_len > limits.max_payload_bytes:
            raise WireError(
                f"payload exceeds the limit of {limits.max_payload_bytes} bytes at array {name!r}"
            )
        array = np.asarray(array, dtype=dtype, order="C")
        table.append([name, dtype.str, list(array.shape)])
        parts.append(array.reshape(-1).view(np.uint8).data)
    try:
        packed = msgpack.packb({"h": header, "a": table}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"header cannot be encoded: {exc}") from exc
    if len(packed) > limits.max_header_bytes:
        raise WireError(
            f"encoded header is {len(packed)} bytes, more than the limit of {limits.max_header_bytes}"
        )
    fixed = _FIXED.pack(MAGIC, VERSION, message_type, 0, len(packed), payload_len)
    return b"".join([fixed, packed, *parts])


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed in a header")


def _unpack_header(raw: memoryview) -> Any:
    """msgpack-decode the header section with every length bounded by its own size."""
    size = len(raw)
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            ext_hook=_reject_ext,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=size,
        )
    # msgpack raises these two without a message; the others carry a reason worth passing on.
    except msgpack.StackError:
        raise WireError(f"malformed msgpack header: header nests deeper than {_MAX_HEADER_DEPTH} levels "
                        "(too deep for the msgpack unpacker)") from None
    except msgpack.FormatError:
        raise WireError("malformed msgpack header: byte 0xc1, which msgpack never uses") from None
    except Exception as exc:  # msgpack signals bad input with many exception types
        raise WireError(f"malformed msgpack header: {str(exc) or type(exc).__name__}") from exc


def _array_table(table: Any, limits: WireLimits) -> Iterator[tuple[str, np.dtype, list[int]]]:
    """Validate the array table entry by entry, yielding (name, dtype, shape)."""
    if not isinstance(table, list):
        raise WireError("array table 'a' must be a list")
    if len(table) > limits.max_arrays:
        raise WireError(f"{len(table)} arrays exceed the limit of {limits.max_arrays}")
    seen: set[str] = set()
    for index, entry in enumerate(table):
        if not (isinstance(entry, list) and len(entry) == 3):
            raise WireError(f"array table entry {index} must be [name, dtype, shape]")
        name, dtype, shape = entry
        if not isinstance(name, str):
            raise WireError(f"array table entry {index} has a non-str name")
        if name in seen:
            raise WireError(f"duplicate array name {name!r}")
        seen.add(name)
        if not (isinstance(dtype, str) and dtype in _DTYPES):
            raise WireError(f"array {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list):
            raise WireError(f"array {name!r} shape must be a list")
        if len(shape) > limits.max_ndim:
            raise WireError(
                f"array {name!r} has {len(shape)} dimensions, more than the limit of {limits.max_ndim}"
            )
        if not all(type(dim) is int and dim >= 0 for dim in shape):
            raise WireError(f"array {name!r} shape {shape!r} must be non-negative ints")
        yield name, _DTYPES[dtype], shape


def decode(data: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS) -> Message:
    """Parse exactly one frame.

    The returned arrays are zero-copy, read-only views into ``data``: they keep it
    alive, may be unaligned, and change if a caller later mutates a ``bytearray`` it
    passed in. Call ``.copy()`` on an array to own or modify it.
    """
    view = memoryview(data).cast("B").toreadonly()
    message_type, header_len, payload_len = _parse_fixed(view, limits)
    total = FIXED_HEADER_SIZE + header_len + payload_len
    if len(view) < total:
        raise WireError(f"truncated frame: {len(view)} of {total} bytes")
    if len(view) > total:
        raise WireError(f"{len(view) - total} trailing bytes after a {total}-byte frame")
    raw = _unpack_header(view[FIXED_HEADER_SIZE : FIXED_HEADER_SIZE + header_len])
    if not (isinstance(raw, dict) and set(raw) == {"h", "a"}):
        raise WireError("msgpack header must be a map with exactly the keys 'h' and 'a'")
    header = _check_header(raw["h"])
    start = offset = FIXED_HEADER_SIZE + header_len
    end = start + payload_len
    arrays = {}
    for name, dtype, shape in _array_table(raw["a"], limits):
        nbytes = dtype.itemsize
        for dim in shape:
            nbytes *= dim
        if nbytes > end - offset:
            raise WireError(
                f"array {name!r} ({dtype.str} {shape}) needs {nbytes} bytes "
                f"but only {end - offset} remain in the payload"
            )
        flat = np.frombuffer(view[offset : offset + nbytes], dtype=dtype)
        try:
            arrays[name] = flat.reshape(shape)
        except ValueError as exc:
            raise WireError(f"array {name!r} shape {shape} is not representable: {exc}") from exc
        offset += nbytes
    if offset != end:
        raise WireError(f"payload is {payload_len} bytes but the arrays describe {offset - start}")
    return Message(message_type, header, arrays)


class FrameDecoder:
    """Split a byte stream (socket, pipe) into messages, one chunk at a time.

    It buffers at most one frame, and validates each fixed header as soon as its 20
    bytes arrive, so an oversized declared frame is rejected before its payload is
    buffered. After any error the stream position is unknown, so the decoder refuses
    all further input; messages completed earlier in the failing ``feed`` are lost.
    """

    def __init__(self, limits: WireLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._frame_len: int | None = None
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes received that belong to a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Consume ``data``; return the messages whose frames it completed, in order."""
        if self._failed:
            raise WireError("frame stream is unusable after an earlier error")
        try:
            return self._consume(data)
        except Exception:
            self._failed = True
            raise

    def _consume(self, data: bytes | bytearray | memoryview) -> list[Message]:
        messages: list[Message] = []
        with memoryview(data) as chunk, chunk.cast("B") as view:
            pos = 0
            while True:
                want = self._frame_len if self._frame_len is not None else FIXED_HEADER_SIZE
                take = want - len(self._buffer)
                self._buffer += view[pos : pos + take]
                pos += take
                if len(self._buffer) < want:
                    return messages
                if self._frame_len is None:
                    self._frame_len = frame_length(self._buffer, self._limits)
                    continue
                frame = bytes(self._buffer)
                self._buffer.clear()
                self._frame_len = None
                messages.append(decode(frame, self._limits))

    def close(self) -> None:
        """Declare the end of the stream; a half-received frame means the peer hung up."""
        if self._buffer:
            raise WireError(f"stream ended inside a frame ({len(self._buffer)} bytes buffered)")
