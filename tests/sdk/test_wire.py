"""Tests for coinfer.sdk.wire: round trips, hostile input and the streaming decoder."""

import itertools
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError

#: Each fuzz test runs a quick pass of 100 examples in every run and a thorough one of 2000
#: with the slow tests (drawing the examples, not the decoding, takes the time).
FUZZ_PASSES = pytest.mark.parametrize("examples", [
    pytest.param(100, id="quick"), pytest.param(2000, id="thorough", marks=pytest.mark.slow)])


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL = wire.WireLimits(max_header_bytes=4 << 10, max_payload_bytes=64 << 10)
FIXED = struct.Struct("<4sBBHIQ")

WIRE_DTYPES = [
    np.dtype(code).newbyteorder(order)
    for code in ("?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16")
    for order in ("<", ">")
]

arrays = hnp.arrays(
    dtype=st.sampled_from(WIRE_DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3),
)
header_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)
array_dicts = st.dictionaries(st.text(max_size=4), arrays, min_size=1, max_size=3)
messages = st.builds(
    wire.Message,
    type=st.sampled_from(wire.MessageType),
    header=st.dictionaries(st.text(max_size=4), header_values, max_size=3),
    arrays=st.dictionaries(st.text(max_size=4), arrays, max_size=3),
)
HUGE = st.sampled_from([2**31, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]) | st.integers(0, 2**64 - 1)


def assert_same(decoded: wire.Message, original: wire.Message) -> None:
    assert decoded.type == original.type
    assert decoded.header == original.header
    assert list(decoded.arrays) == list(original.arrays)
    for name, expected in original.arrays.items():
        got = decoded.arrays[name]
        assert got.dtype == expected.dtype.newbyteorder("<")
        assert got.dtype.str in {"|b1", "|i1", "|u1"} or got.dtype.str.startswith("<")
        assert got.shape == expected.shape
        assert np.array_equal(got, expected, equal_nan=True)


def frame(raw_header, payload: bytes = b"", *, type_byte: int = 1, version: int = 1, flags: int = 0):
    """A frame with a hand-made msgpack header, for structure errors encode never emits."""
    packed = raw_header if isinstance(raw_header, bytes) else msgpack.packb(raw_header, use_bin_type=True)
    return FIXED.pack(b"CNFR", version, type_byte, flags, len(packed), len(payload)) + packed + payload


def decode_traced(data: bytes) -> int:
    """Decode under tracemalloc; returns the peak traced allocation in bytes."""
    tracemalloc.start()
    try:
        wire.decode(data, SMALL)
    except wire.WireError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@FUZZ_PASSES
def test_round_trip(examples):
    @fuzz(examples)
    @given(messages)
    def check(message):
        assert_same(wire.decode(wire.encode(message)), message)

    check()


@FUZZ_PASSES
def test_random_bytes_raise_only_wire_error(examples):
    @fuzz(examples)
    @given(st.binary(max_size=200))
    def check(data):
        with pytest.raises(wire.WireError):
            wire.decode(data)

    check()


random_headers = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 2**64 - 1) | st.text(max_size=4) | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["h", "a", "x"]) | st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=12,
)


@FUZZ_PASSES
def test_random_bytes_behind_valid_prefix_raise_only_wire_error(examples):
    @fuzz(examples)
    @given(
        st.binary(max_size=64) | random_headers.map(lambda obj: msgpack.packb(obj, use_bin_type=True)),
        st.binary(max_size=64),
        st.sampled_from(wire.MessageType),
    )
    def check(header, payload, message_type):
        try:
            message = wire.decode(frame(header, payload, type_byte=message_type))
        except wire.WireError:
            return
        assert message.type == message_type
        assert sum(array.nbytes for array in message.arrays.values()) == len(payload)

    check()


@st.composite
def mutated_frames(draw) -> bytes:
    """Valid frames with a huge/bogus dimension and/or byte-level damage."""
    message = draw(st.builds(wire.Message, type=st.just(wire.MessageType.TENSORS), arrays=array_dicts))
    data = bytearray(wire.encode(message))
    damage_shape = draw(st.booleans())
    if damage_shape:
        header_len = struct.unpack_from("<I", data, 8)[0]
        raw = msgpack.unpackb(bytes(data[20 : 20 + header_len]))
        shape = draw(st.sampled_from(raw["a"]))[2]
        if not shape:
            shape.append(1)
        shape[draw(st.integers(0, len(shape) - 1))] = draw(HUGE)
        packed = msgpack.packb(raw, use_bin_type=True)
        data[8:12] = struct.pack("<I", len(packed))
        data[20 : 20 + header_len] = packed
    for _ in range(draw(st.integers(0 if damage_shape else 1, 3))):
        kind = draw(st.sampled_from(["flip", "flip_body", "truncate", "extend", "header_len", "payload_len"]))
        if kind == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif kind == "flip_body" and len(data) > 20:
            data[draw(st.integers(20, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "header_len" and len(data) >= 12:
            data[8:12] = struct.pack("<I", draw(HUGE) & 0xFFFFFFFF)
        elif kind == "payload_len" and len(data) >= 20:
            data[12:20] = struct.pack("<Q", draw(HUGE))
    return bytes(data)


@FUZZ_PASSES
def test_mutated_frames_raise_only_wire_error_within_memory_bound(examples):
    @fuzz(examples)
    @given(mutated_frames())
    def check(data):
        assert decode_traced(data) < SMALL.max_payload_bytes + (64 << 10)

    check()


def test_declared_sizes_are_not_allocated():
    # Sizes just under the limit, but no such bytes behind them: rejected, nothing allocated.
    data = FIXED.pack(b"CNFR", 1, 1, 0, SMALL.max_header_bytes, SMALL.max_payload_bytes) + b"\x80"
    assert decode_traced(data) < 16 << 10


def test_arrays_are_read_only_zero_copy_views():
    buffer = bytearray(wire.encode(wire.Message(wire.MessageType.TENSORS, arrays={"x": np.zeros(4, "<i4")})))
    x = wire.decode(buffer).arrays["x"]
    assert not x.flags.writeable
    buffer[-4:] = struct.pack("<i", 7)
    assert x[-1] == 7


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_bytes_like(kind):
    message = wire.Message(wire.MessageType.REQUEST, {"k": [1, "v"]}, {"a": np.arange(3.0)})
    assert_same(wire.decode(kind(wire.encode(message))), message)


def test_big_endian_and_strided_input_round_trip_as_values():
    source = np.arange(24, dtype=">i4").reshape(4, 6)[::2, ::3]
    frame_bytes = wire.encode(wire.Message(wire.MessageType.TENSORS, arrays={"x": source}))
    decoded = wire.decode(frame_bytes).arrays["x"]
    assert decoded.dtype.str == "<i4"
    assert decoded.tolist() == [[0, 3], [12, 15]]


def test_layout_matches_spec():
    data = wire.encode(wire.Message(wire.MessageType.ERROR, {}, {"b": np.array([1, 2], "<u2")}))
    magic, version, type_byte, flags, header_len, payload_len = FIXED.unpack_from(data)
    assert (magic, version, type_byte, flags, payload_len) == (b"CNFR", 1, 4, 0, 4)
    assert msgpack.unpackb(data[20 : 20 + header_len]) == {"h": {}, "a": [["b", "<u2", [2]]]}
    assert data[20 + header_len :] == b"\x01\x00\x02\x00"
    assert wire.frame_length(data[:20]) == len(data)


def test_wire_error_is_value_error_and_coinfer_error():
    assert issubclass(wire.WireError, ValueError)
    assert issubclass(wire.WireError, CoinferError)


VALID = wire.encode(wire.Message(wire.MessageType.TENSORS, {"a": 1}, {"x": np.arange(4, dtype=np.float32)}))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"CNFR\x01", "truncated frame: 5 bytes"),
        (b"XNFR" + VALID[4:], "bad magic"),
        (VALID[:4] + b"\x02" + VALID[5:], r"unsupported wire version 2 \(this build speaks 1\)"),
        (VALID[:5] + b"\x00" + VALID[6:], "unknown message type 0"),
        (VALID[:5] + b"\x07" + VALID[6:], "unknown message type 7"),
        (VALID[:6] + b"\x01\x00" + VALID[8:], "reserved flags must be 0"),
        (VALID[:-1], f"truncated frame: {len(VALID) - 1} of {len(VALID)} bytes"),
        (VALID + b"\x00\x00", "2 trailing bytes"),
    ],
)
def test_fixed_header_errors(data, match):
    with pytest.raises(wire.WireError, match=match):
        wire.decode(data)


def test_size_limits_checked_before_length():
    data = VALID[:8] + struct.pack("<IQ", 10, 2**64 - 1)
    with pytest.raises(wire.WireError, match="payload length 18446744073709551615 exceeds the limit"):
        wire.decode(data)
    with pytest.raises(wire.WireError, match="header length 5000 exceeds the limit of 4096"):
        wire.frame_length(VALID[:8] + struct.pack("<IQ", 5000, 0), SMALL)


@pytest.mark.parametrize(
    ("raw", "payload", "match"),
    [
        ([1, 2], b"", "exactly the keys 'h' and 'a'"),
        ({"h": {}, "a": [], "x": 1}, b"", "exactly the keys 'h' and 'a'"),
        ({"h": [], "a": []}, b"", "header must be a dict"),
        ({"h": {"k": {"n": msgpack.Timestamp(1)}}, "a": []}, b"", r"header\['k'\]\['n'\] has unsupported"),
        ({"h": {}, "a": {}}, b"", "array table 'a' must be a list"),
        ({"h": {}, "a": [["x", "<f4"]]}, b"", r"entry 0 must be \[name, dtype, shape\]"),
        ({"h": {}, "a": [[1, "<f4", []]]}, b"", "entry 0 has a non-str name"),
        ({"h": {}, "a": [["x", "|u1", [1]], ["x", "|u1", [1]]]}, b"ab", "duplicate array name 'x'"),
        ({"h": {}, "a": [["x", ">f4", [1]]]}, b"abcd", "'x' has unsupported dtype '>f4'"),
        ({"h": {}, "a": [["x", "|O", [1]]]}, b"abcdefgh", "unsupported dtype"),
        ({"h": {}, "a": [["x", "<f4", 1]]}, b"abcd", "shape must be a list"),
        ({"h": {}, "a": [["x", "<f4", [True]]]}, b"abcd", "must be non-negative ints"),
        ({"h": {}, "a": [["x", "<f4", [-1]]]}, b"", "must be non-negative ints"),
        ({"h": {}, "a": [["x", "|u1", [1] * 17]]}, b"a", "17 dimensions, more than the limit of 16"),
        ({"h": {}, "a": [[str(i), "|u1", [0]] for i in range(1025)]}, b"", "1025 arrays exceed"),
        (
            {"h": {}, "a": [["x", "<f4", [2]], ["y", "<f4", [2]]]},
            b"x" * 12,
            "'y' .* needs 8 bytes but only 4",
        ),
        ({"h": {}, "a": [["x", "<f8", [2**62, 2**62]]]}, b"", "'x' .* needs"),
        ({"h": {}, "a": [["x", "<f4", [1]]]}, b"x" * 6, "payload is 6 bytes but the arrays describe 4"),
        ({"h": {}, "a": [["x", "<f8", [0, 2**63]]]}, b"", "'x' shape .* is not representable"),
        (b"\x82\xa1h\x80\xa1a\x90\xc1", b"", "malformed msgpack header"),
        (msgpack.packb({"h": {"e": msgpack.ExtType(5, b"z")}, "a": []}), b"", "extension type 5"),
        (msgpack.packb({1: 2}), b"", "malformed msgpack header"),
    ],
)
def test_header_structure_errors(raw, payload, match):
    with pytest.raises(wire.WireError, match=match):
        wire.decode(frame(raw, payload))


def test_header_depth_is_bounded_on_decode():
    nested: dict = {}
    for _ in range(40):
        nested = {"n": nested}
    with pytest.raises(wire.WireError, match="nests deeper than 32 levels"):
        wire.decode(frame({"h": nested, "a": []}))


@pytest.mark.parametrize(
    ("dtype", "shown"),
    [(object, "object"), ("U3", "<U3"), ("S2", "|S2"), ("M8[ns]", "datetime64"), ([("a", "<i4")], "|V4")],
)
def test_encode_refuses_unsupported_dtypes(dtype, shown):
    message = wire.Message(wire.MessageType.TENSORS, arrays={"bad": np.zeros(2, dtype=dtype)})
    with pytest.raises(wire.WireError, match=rf"array 'bad' has dtype .*{shown}"):
        wire.encode(message)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({1: "x"}, "header has a non-str key 1"),
        ({"a": {"b": (1, 2)}}, r"header\['a'\]\['b'\] has unsupported type tuple"),
        ({"a": [np.int64(1)]}, r"header\['a'\]\[0\] has unsupported type int64"),
        ({"a": {3}}, "unsupported type set"),
        ({"a": 2**64}, "header cannot be encoded"),
        ({"a": "\ud800"}, "header cannot be encoded"),
        ([1], "header must be a dict"),
    ],
)
def test_encode_validates_header(header, match):
    with pytest.raises(wire.WireError, match=match):
        wire.encode(wire.Message(wire.MessageType.CONTROL, header))


def test_encode_rejects_self_referencing_header():
    header: dict = {}
    header["me"] = header
    with pytest.raises(wire.WireError, match="nests deeper than 32 levels"):
        wire.encode(wire.Message(wire.MessageType.CONTROL, header))


def test_encode_rejects_bad_type_and_names():
    with pytest.raises(wire.WireError, match="unknown message type 9"):
        wire.encode(wire.Message(9))
    with pytest.raises(wire.WireError, match="array names must be str"):
        wire.encode(wire.Message(wire.MessageType.TENSORS, arrays={1: np.zeros(1)}))


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (wire.Message(1, arrays={str(i): np.zeros(0) for i in range(1025)}), "1025 arrays exceed"),
        (wire.Message(1, arrays={"x": np.zeros((1,) * 17)}), "17 dimensions, more than the limit of 16"),
        (wire.Message(1, arrays={"x": np.zeros(8193)}), "payload exceeds .* at array 'x'"),
        (wire.Message(1, {"s": "x" * 5000}), "encoded header is .* more than the limit of 4096"),
    ],
)
def test_encode_enforces_limits(message, match):
    with pytest.raises(wire.WireError, match=match):
        wire.encode(message, SMALL)


def test_encode_output_at_limits_is_accepted_by_decode():
    message = wire.Message(1, arrays={"x": np.zeros(8192)})
    assert wire.decode(wire.encode(message, SMALL), SMALL).arrays["x"].nbytes == SMALL.max_payload_bytes


@FUZZ_PASSES
def test_frame_decoder_reassembles_any_chunking(examples):
    @fuzz(examples)
    @given(st.lists(messages, min_size=1, max_size=3), st.lists(st.integers(0, 10_000), max_size=8))
    def check(sent, cuts):
        stream = b"".join(wire.encode(message) for message in sent)
        bounds = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
        decoder = wire.FrameDecoder()
        received = []
        for start, end in itertools.pairwise(bounds):
            received += decoder.feed(memoryview(stream)[start:end])
        assert decoder.buffered == 0
        decoder.close()
        assert len(received) == len(sent)
        for got, expected in zip(received, sent, strict=True):
            assert_same(got, expected)

    check()


def test_frame_decoder_rejects_oversized_frame_after_20_bytes():
    prefix = FIXED.pack(b"CNFR", 1, 1, 0, 0, SMALL.max_payload_bytes + 1)
    decoder = wire.FrameDecoder(SMALL)
    assert decoder.feed(prefix[:19]) == []
    assert decoder.buffered == 19
    with pytest.raises(wire.WireError, match="payload length 65537 exceeds the limit"):
        decoder.feed(prefix[19:])


def test_frame_decoder_buffers_only_the_current_frame():
    decoder = wire.FrameDecoder()
    assert decoder.feed(VALID + VALID[:25]) != []
    assert decoder.buffered == 25


def test_frame_decoder_is_poisoned_after_error():
    decoder = wire.FrameDecoder()
    with pytest.raises(wire.WireError, match="bad magic"):
        decoder.feed(b"XXXX" + VALID[4:])
    with pytest.raises(wire.WireError, match="unusable after an earlier error"):
        decoder.feed(VALID)


def test_frame_decoder_close_on_partial_frame():
    decoder = wire.FrameDecoder()
    assert len(decoder.feed(VALID + VALID[:3])) == 1
    with pytest.raises(wire.WireError, match=r"stream ended inside a frame \(3 bytes buffered\)"):
        decoder.close()
    empty = wire.FrameDecoder()
    empty.close()


def test_frame_length_needs_the_whole_fixed_header():
    with pytest.raises(wire.WireError, match="truncated frame: 19 bytes"):
        wire.frame_length(VALID[:19])
    assert wire.frame_length(VALID) == len(VALID)


@pytest.mark.parametrize(("raw", "reason"), [
    pytest.param(b"\x82\xa1h" + b"\x91" * 3000 + b"\xc0" + b"\xa1a\x90", "nests deeper than 32 levels",
                 id="lists 3000 deep"),
    pytest.param(b"\x82\xa1h" + b"\x81\xa1k" * 3000 + b"\xc0" + b"\xa1a\x90", "nests deeper than 32 levels",
                 id="maps 3000 deep"),
    pytest.param(b"\xc1", "byte 0xc1", id="reserved type byte"),
    pytest.param(b"\x82\xa1h\x80\xa1a\x90\xc1", "extra data", id="trailing byte"),
    pytest.param(b"\x82\xa1h\x81", "incomplete input", id="truncated"),
    pytest.param(b"\xa2\xff\xfe", "utf-8", id="invalid utf-8"),
])
def test_malformed_msgpack_names_the_problem(raw, reason):
    with pytest.raises(wire.WireError) as raised:
        wire.decode(frame(raw))
    message = str(raised.value)
    assert message.startswith("malformed msgpack header: ") and reason in message, message
