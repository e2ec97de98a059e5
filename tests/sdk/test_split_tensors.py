"""The crossing tensors of a split on the wire: round trips in each encoding, exact refusals of
anything that is not the cut's layout, and frame limits sized from the tensors."""

import numpy as np
import pytest

from coinfer.sdk import wire
from coinfer.sdk.split import protocol
from coinfer.sdk.split.graph import Cut
from coinfer.sdk.split.tensors import (
    TensorCodec,
    TensorCodecError,
    check_specs,
    check_tensors,
)
from coinfer.sdk.tensor import TensorSpec

FEATURES = TensorSpec("/blocks.4/Add_output_0", (None, 40, 7, 7), "float32")
SKIP = TensorSpec("skip", (None, 5), "float32")
INDEX = TensorSpec("index", (None, 3), "int64")
TENSORS = [FEATURES, SKIP, INDEX]


def batch(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = (rng.standard_normal((rows, 40, 7, 7)) * 3).astype(np.float32)
    features[0, :4] = 0.0  # exact zeros, as after a ReLU
    return {FEATURES.name: features, SKIP.name: rng.uniform(0.5, 6.0, (rows, 5)).astype(np.float32),
            INDEX.name: rng.integers(-(2**40), 2**40, (rows, 3))}


def through_the_wire(codec: TensorCodec, tensors: dict[str, np.ndarray], max_batch: int = 4):
    """Encode, frame, unframe and decode, as the device and the edge do."""
    limits = codec.limits(max_batch)
    frame = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, codec.encode(tensors)), limits)
    assert len(frame) <= protocol.frame_bytes(limits)
    return codec.decode(wire.decode(frame, limits).arrays), frame


def test_float32_round_trips_exactly():
    tensors = batch(3)
    back, _ = through_the_wire(TensorCodec(TENSORS, "float32"), tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and back[name].flags.writeable
        np.testing.assert_array_equal(back[name], value)


def test_float16_round_trips_within_its_precision():
    tensors = batch(3)
    back, _ = through_the_wire(TensorCodec(TENSORS, "float16"), tensors)
    features = tensors[FEATURES.name]
    assert back[FEATURES.name].dtype == np.float32
    np.testing.assert_array_equal(back[FEATURES.name], features.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(back[FEATURES.name], features, rtol=2.0**-11, atol=2.0**-24)
    np.testing.assert_array_equal(back[INDEX.name], tensors[INDEX.name])  # integers travel as they are


def test_int8_round_trips_within_half_a_step_per_sample():
    tensors = batch(4)
    codec = TensorCodec(TENSORS, "int8")
    sent = codec.encode(tensors)
    scale = sent[protocol.scale_name(FEATURES.name)]
    zero_point = sent[protocol.zero_point_name(FEATURES.name)]
    assert scale.shape == zero_point.shape == (4,)
    assert scale.dtype == np.float32 and zero_point.dtype == np.int32
    back, _ = through_the_wire(codec, tensors)
    for name in (FEATURES.name, SKIP.name):
        value = tensors[name].reshape(4, -1)
        step = sent[protocol.scale_name(name)]
        error = np.abs(back[name].reshape(4, -1) - value).max(axis=1)
        assert (error <= step / 2 * (1 + 1e-6)).all(), (error, step)
        # Each sample has its own range, which holds 0.
        spread = np.maximum(value.max(axis=1), 0) - np.minimum(value.min(axis=1), 0)
        np.testing.assert_allclose(step, spread / 255, rtol=1e-6)
    assert (back[FEATURES.name][0, :4] == 0).all()  # zeros come back exact
    assert (back[SKIP.name] > 0).all()
    np.testing.assert_array_equal(back[INDEX.name], tensors[INDEX.name])


def test_int8_of_constant_and_all_zero_samples():
    codec = TensorCodec([SKIP], "int8")
    values = np.array([[0.0] * 5, [2.5] * 5, [-7.0] * 5], np.float32)
    back, _ = through_the_wire(codec, {SKIP.name: values})
    np.testing.assert_allclose(back[SKIP.name], values, atol=7.0 / 255 / 2 * (1 + 1e-6))
    assert (back[SKIP.name][0] == 0).all()


def test_bytes_per_sample_are_what_the_cut_counts():
    names = tuple(spec.name for spec in TENSORS)
    cut = Cut(frozenset(), names, (40 * 49, 5, 3), (4, 4, 8), (True, True, False))
    for encoding in ("float32", "float16", "int8"):
        codec = TensorCodec(TENSORS, encoding)
        assert codec.sample_bytes == cut.nbytes(encoding)
        _, frame = through_the_wire(codec, batch(2), max_batch=2)
        overhead = len(frame) - 2 * codec.sample_bytes
        assert 0 < overhead <= protocol.frame_bytes(codec.limits(2)) - 2 * codec.sample_bytes


def test_limits_admit_max_batch_and_refuse_one_more():
    long_name = TensorSpec("n" * 300, (None, *([1] * 8)), "float16")
    codec = TensorCodec([long_name, FEATURES], "int8")
    limits = codec.limits(4)
    assert (limits.max_arrays, limits.max_ndim, limits.max_payload_bytes) == (6, 9, 4 * codec.sample_bytes)
    rows = {long_name.name: np.full((4, *([1] * 8)), 1e4, np.float16), FEATURES.name: batch(4)[FEATURES.name]}
    header = {protocol.SPLIT_KEY: {"fingerprint": "f" * 64, "cut": "c" * 16, "encoding": "int8"}}
    frame = wire.encode(wire.Message(wire.MessageType.REQUEST, header, codec.encode(rows)), limits)
    assert len(frame) <= protocol.frame_bytes(limits)
    more = {name: np.concatenate([value, value[:1]]) for name, value in rows.items()}
    with pytest.raises(wire.WireError, match="exceeds the limit"):
        wire.encode(wire.Message(wire.MessageType.REQUEST, header, codec.encode(more)), limits)
    with pytest.raises(TensorCodecError, match="a batch of 5 is over the limit of 4 samples"):
        check_tensors(codec.tensors, more, max_batch=4)


def malformed(arrays: dict, name: str, value) -> dict:
    return {**arrays, name: value}


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: {k: v for k, v in a.items() if k != "skip"}, r"missing \['skip'\], unknown \[\]"),
    (lambda a: malformed(a, "extra", np.zeros((2, 1))), r"missing \[\], unknown \['extra'\]"),
    (lambda a: malformed(a, "skip", np.zeros((2, 6), np.int8)), r"shape \(batch, 5\), got \(2, 6\)"),
    (lambda a: malformed(a, "skip", np.zeros((2,), np.int8)), r"'skip' must have shape \(batch, 5\), got"),
    (lambda a: malformed(a, "skip", np.zeros((2, 5), np.float32)), "'skip' must be int8, got float32"),
    (lambda a: malformed(a, "skip", [[0] * 5] * 2), "'skip' is a list, not a numpy array"),
    (lambda a: malformed(a, "skip", np.zeros((3, 5), np.int8)), "'skip#scale' has 2 samples, the others 3"),
    (lambda a: {k: v[:0] for k, v in a.items()}, "the arrays hold no sample"),
    (lambda a: malformed(a, "skip#scale", np.array([1.0, np.nan], np.float32)), r"in \(0, 1\.33e\+36\]"),
    (lambda a: malformed(a, "skip#scale", np.array([1.0, 0.0], np.float32)), "must hold scales in"),
    (lambda a: malformed(a, "skip#scale", np.array([1.0, 2e36], np.float32)), "must hold scales in"),
    (lambda a: malformed(a, "skip#scale", np.array([1.0, np.inf], np.float32)), "must hold scales in"),
    (lambda a: malformed(a, "skip#scale", np.array([1.0, 1.0], np.float64)), "must be float32, got float64"),
    (lambda a: malformed(a, "skip#zero_point", np.array([0, 128], np.int32)), r"in \[-128, 127\]"),
    (lambda a: malformed(a, "index", np.zeros((2, 3), np.int32)), "'index' must be int64, got int32"),
])
def test_int8_frames_that_are_not_the_layout_are_refused(change, message):
    codec = TensorCodec([SKIP, INDEX], "int8")
    arrays = codec.encode({SKIP.name: np.ones((2, 5), np.float32), INDEX.name: np.zeros((2, 3), np.int64)})
    with pytest.raises(TensorCodecError, match=message):
        codec.decode(change(arrays))


@pytest.mark.parametrize("encoding", ["float32", "float16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_refused_on_both_sides(encoding, bad):
    codec = TensorCodec([SKIP], encoding)
    values = np.ones((2, 5), np.float32)
    values[1, 3] = bad
    with pytest.raises(TensorCodecError, match="'skip' holds NaN or infinity; it cannot be sent"):
        codec.encode({SKIP.name: values})
    arrays = {SKIP.name: values.astype(np.float16 if encoding == "float16" else np.float32)}
    with pytest.raises(TensorCodecError, match="array 'skip' holds NaN or infinity"):
        codec.decode(arrays)


def test_float16_refuses_values_it_would_turn_into_infinity():
    with pytest.raises(TensorCodecError, match=r"beyond float16's range \(\+-65504\); send it as float32"):
        TensorCodec([SKIP], "float16").encode({SKIP.name: np.full((1, 5), 7e4, np.float32)})
    with pytest.raises(TensorCodecError, match="'skip' must be float32, got float64"):
        TensorCodec([SKIP], "float16").encode({SKIP.name: np.ones((1, 5))})


def test_a_graph_with_a_fixed_batch_takes_only_that_batch():
    fixed = TensorSpec("x", (2, 3), "float32")
    codec = TensorCodec([fixed], "float32")
    assert codec.decode({"x": np.ones((2, 3), np.float32)})["x"].shape == (2, 3)
    with pytest.raises(TensorCodecError, match="takes batches of exactly 2, got 1"):
        codec.decode({"x": np.ones((1, 3), np.float32)})
    assert check_tensors([fixed], {"x": np.ones((2, 3), np.float32)}) == 2


@pytest.mark.parametrize(("tensors", "encoding", "message"), [
    ([SKIP], "bfloat16", "unknown tensor encoding 'bfloat16'; known: float32, float16, int8"),
    ([], "int8", "0 tensors, expected 1 to 256"),
    ([SKIP, SKIP], "int8", "tensor names repeat"),
    ([SKIP, TensorSpec("skip#scale", (None, 1), "float32")], "int8", "collide with the int8 parameter"),
    ([TensorSpec("x", (None, None, 3), "float32")], "int8", "not fixed"),
    ([TensorSpec("x", (), "float32")], "int8", "needs a batch axis"),
    ([TensorSpec("x", (None, 2), "complex64")], "int8", "a dtype the wire does not carry"),
    ([TensorSpec("x", (None, 2), "bfloat16")], "int8", "a dtype the wire does not carry"),
    ([TensorSpec("x", (None, 2), "float32"), TensorSpec("y", (1, 2), "float32")], "int8", "disagree on"),
    ([TensorSpec("x", (None, 1 << 20, 1 << 7), "float32")], "int8", "over the 268435456-byte limit"),
])
def test_layouts_that_cannot_cross_a_cut_are_refused(tensors, encoding, message):
    with pytest.raises(TensorCodecError, match=message):
        TensorCodec(tensors, encoding)


def test_check_specs_returns_the_specs():
    assert check_specs([SKIP, INDEX], "inputs") == (SKIP, INDEX)


def test_int8_refuses_a_range_its_own_decoder_would_refuse():
    codec = TensorCodec([TensorSpec("t", (None, 2), "float32")], "int8")
    wide = np.array([[3.4e38, -3.4e38]], np.float32)
    with pytest.raises(TensorCodecError, match="too wide for int8"):
        codec.encode({"t": wide})
    codec.decode(codec.encode({"t": wide / 4}))
