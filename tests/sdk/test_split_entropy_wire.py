"""The ``entropy`` encoding of a split: a bottleneck's rounded latent range-coded per sample on
the wire, exactly back on the other side, every length bounded and checked before decoding,
and the tables shipped in (and tied to) both sides of an export.

The property that matters is the one the bitstream's header guards: whatever arrives, the
edge gets back exactly what the device coded, or a :class:`TensorCodecError`; never another
tensor. The bound on a sample's bytes must hold for every latent, so it is checked on the
worst case (every symbol the least likely of its channel) as well as on random ones.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coinfer.sdk import wire
from coinfer.sdk.artifact import ArtifactError, Manifest, load_artifact, save_artifact
from coinfer.sdk.split import protocol
from coinfer.sdk.split.bundle import (
    DEVICE_DIR,
    EDGE_DIR,
    HEAD_FILE,
    SPLIT_FILE,
    TABLES_FILE,
    SplitBundleError,
    export_split,
    load_side,
    load_split,
    save_head,
)
from coinfer.sdk.split.entropy import (
    CODER_PRECISION,
    HEADER_BYTES,
    EntropyTables,
    encode,
    max_stream_bytes,
    quantize,
)
from coinfer.sdk.split.graph import SplitGraph, SplitGraphError
from coinfer.sdk.split.tensors import ENTROPY, TensorCodec, TensorCodecError
from coinfer.sdk.tensor import TensorSpec

LATENT = TensorSpec("latent", (None, 3, 4, 5), "float32")
LENGTHS = protocol.lengths_name(LATENT.name)


def laplace_tables(channels: int, radius: int = 8, seed: int = 0) -> EntropyTables:
    """Per channel a discretised Laplace prior over ``[-radius, radius]`` (a trained prior's shape)."""
    rng = np.random.default_rng(seed)
    probabilities = []
    for scale in rng.uniform(0.5, 3.0, channels):
        symbols = np.arange(-radius, radius + 1)
        probabilities.append(np.exp(-np.abs(symbols) / scale))
    return EntropyTables.from_probabilities(probabilities, [-radius] * channels)


def latents(batch: int, seed: int, spread: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.laplace(0.0, spread, (batch, 3, 4, 5)).astype(np.float32)  # LATENT's shape


def through_the_wire(codec: TensorCodec, latent: np.ndarray, max_batch: int = 8):
    """Encode, frame, unframe and decode, as the device and the edge do; also the frame."""
    limits = codec.limits(max_batch)
    arrays, clipped = codec.encode_counting({LATENT.name: latent})
    frame = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, arrays), limits)
    assert len(frame) <= protocol.frame_bytes(limits)
    return codec.decode(wire.decode(frame, limits).arrays, max_batch=max_batch), arrays, clipped


# ---------------------------------------------------------------------------------- round trips


def test_the_latent_comes_back_exactly_rounded_and_clipped():
    tables = laplace_tables(3)
    codec = TensorCodec([LATENT], ENTROPY, tables=tables)
    latent = latents(5, 1, spread=4.0)  # some values beyond [-8, 8]: clipped
    back, arrays, clipped = through_the_wire(codec, latent)
    expected = np.clip(np.rint(latent), -8, 8)
    assert back[LATENT.name].dtype == np.float32 and back[LATENT.name].flags.writeable
    np.testing.assert_array_equal(back[LATENT.name], expected)
    assert clipped == int(np.count_nonzero(np.abs(np.rint(latent)) > 8)) > 0
    # the wire holds each sample's own bitstream, in order, and nothing else
    streams = [encode(quantize(sample, tables)[0], tables) for sample in latent]
    assert arrays[LATENT.name].tobytes() == b"".join(streams)
    assert arrays[LENGTHS].dtype == np.dtype("<i4") and arrays[LENGTHS].tolist() == [len(s) for s in streams]
    assert sorted(arrays) == [LATENT.name, LENGTHS]


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_the_latent_keeps_the_graphs_float_dtype(dtype):
    spec = TensorSpec("latent", (None, 3, 4, 5), dtype)
    codec = TensorCodec([spec], ENTROPY, tables=laplace_tables(3))
    latent = latents(2, 2).astype(dtype)
    arrays = codec.encode({"latent": latent})
    back = codec.decode(wire.decode(wire.encode(wire.Message(wire.MessageType.REQUEST, {}, arrays))).arrays)
    assert back["latent"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back["latent"], np.clip(np.rint(latent), -8, 8))


@st.composite
def coded_cases(draw: st.DrawFn):
    """Random tables (1-4 channels, 1-40 symbols each, any precision, lopsided probabilities),
    a random shape and a batch of latents: random values, or every channel's rarest symbol."""
    channels = draw(st.integers(1, 4))
    precision = draw(st.sampled_from([8, 12, 16, CODER_PRECISION]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    probabilities, lows = [], []
    for _ in range(channels):
        size = draw(st.integers(1, 40))
        probabilities.append(rng.exponential(size=size) ** rng.uniform(1, 10))
        lows.append(draw(st.integers(-50, 10)))
    tables = EntropyTables.from_probabilities(probabilities, lows, precision=precision)
    shape = (channels, draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    batch = draw(st.integers(1, 4))
    if draw(st.booleans()):
        rarest = [tables.lows[c] + int(np.argmin(tables.table(c))) for c in range(channels)]
        latent = np.broadcast_to(np.array(rarest, np.float32)[:, None, None], (batch, *shape)).copy()
    else:
        latent = rng.normal(np.mean(lows) + 5, 15, (batch, *shape)).astype(np.float32)
    return tables, shape, latent


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coded_cases())
def test_random_latents_round_trip_exactly_within_the_bound(case):
    tables, shape, latent = case
    codec = TensorCodec([TensorSpec("latent", (None, *shape), "float32")], ENTROPY, tables=tables)
    back, arrays, clipped = through_the_wire(codec, latent, max_batch=4)
    lows, highs = tables.lows.reshape(-1, 1, 1), tables.highs.reshape(-1, 1, 1)
    rounded = np.rint(latent)
    np.testing.assert_array_equal(back[LATENT.name], np.clip(rounded, lows, highs))
    assert clipped == int(np.count_nonzero((rounded < lows) | (rounded > highs)))
    assert (arrays[LENGTHS] <= codec.max_stream_bytes).all()
    assert codec.sample_bytes == codec.max_stream_bytes + 4 == max_stream_bytes(tables, shape) + 4


@pytest.mark.parametrize(("precision", "size", "shape"), [
    (CODER_PRECISION, 2, (1, 64, 64)),        # a probability of 2**-24: 24 bits a symbol
    (CODER_PRECISION, 4096, (2, 32, 32)),     # the widest channel
    (16, 3, (4, 16, 16)),
    (8, 200, (3, 8, 8)),
    (CODER_PRECISION, 17, (8, 28, 28)),       # a bottleneck's size
])
def test_the_bound_holds_in_the_worst_case(precision, size, shape):
    """Every symbol the least likely one of its channel costs the most bits the tables allow:
    the stream stays within :func:`max_stream_bytes`, and not far below it (the bound is tight
    enough to size frames with)."""
    rng = np.random.default_rng(size)
    probabilities = [rng.exponential(size=size) ** 6 + (1e-9 if index else 0.0) for index in range(shape[0])]
    for p in probabilities:
        p[0] = 0.0  # the floor of one count: the least probable symbol the tables can hold
    tables = EntropyTables.from_probabilities(probabilities, [-size // 2] * shape[0], precision=precision)
    rarest = np.array([int(np.argmin(tables.table(c))) for c in range(shape[0])]) + tables.lows
    worst = len(encode(np.broadcast_to(rarest[:, None, None], shape).astype(np.int32), tables))
    bound = max_stream_bytes(tables, shape)
    assert worst <= bound
    exact_bits = sum(-np.log2(tables.table(c).min() / 2.0**precision) for c in range(shape[0])) \
        * shape[1] * shape[2]
    assert bound - HEADER_BYTES <= exact_bits / 8 * 1.2 + 16  # at most a bit a symbol and a few words over
    # random symbols of the same tables cost less
    symbols = np.stack([rng.integers(0, size, shape[1:]) for _ in range(shape[0])])
    symbols += tables.lows[:, None, None]
    assert len(encode(symbols.astype(np.int32), tables)) <= worst


def test_a_trained_like_prior_codes_far_below_the_bound():
    tables = laplace_tables(3, radius=32)
    codec = TensorCodec([LATENT], ENTROPY, tables=tables)
    arrays = codec.encode({LATENT.name: latents(16, 3, spread=1.0)})
    assert arrays[LENGTHS].max() < codec.max_stream_bytes / 2


# ---------------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def sent():
    codec = TensorCodec([LATENT], ENTROPY, tables=laplace_tables(3))
    return codec, codec.encode({LATENT.name: latents(2, 4)})


def test_every_single_byte_corruption_is_refused(sent):
    codec, arrays = sent
    data = arrays[LATENT.name]
    for index in range(data.size):
        for flip in (0x01, 0x80, 0xFF):
            broken = data.copy()
            broken[index] ^= flip
            with pytest.raises(TensorCodecError, match=r"array 'latent', sample [01]: "):
                codec.decode({**arrays, LATENT.name: broken})


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: {**a, "latent": a["latent"][:-1]}, r"holds \d+ bytes, its lengths add up to \d+"),
    (lambda a: {**a, "latent": np.append(a["latent"], np.uint8(0))}, r"its lengths add up to"),
    (lambda a: {**a, LENGTHS: a[LENGTHS] + np.array([1, -1], np.int32)},
     r"array 'latent', sample 0: .*declares"),
    (lambda a: {**a, LENGTHS: a[LENGTHS][::-1].copy()}, r"array 'latent', sample 0"),
    (lambda a: {**a, LENGTHS: np.array([0, a["latent"].size], np.int32)}, r"sample 0's bitstream is 0 bytes, "
                                                                             r"outside \[29, \d+\]"),
    (lambda a: {**a, LENGTHS: np.array([-5, 10**6], np.int32)}, r"sample 0's bitstream is -5 bytes"),
    (lambda a: {**a, LENGTHS: np.array([40, 2**31 - 1], np.int32)}, r"sample 1's bitstream is 2147483647"),
    (lambda a: {**a, LENGTHS: a[LENGTHS].astype(np.int64)}, r"'latent#lengths' must be int32, got int64"),
    (lambda a: {**a, "latent": a["latent"].view(np.int8)}, r"'latent' must be uint8, got int8"),
    (lambda a: {**a, "latent": a["latent"][None]}, r"'latent' must have shape \(bytes,\)"),
    (lambda a: {**a, LENGTHS: a[LENGTHS][:, None]}, r"'latent#lengths' must have shape \(batch,\)"),
    (lambda a: {**a, LENGTHS: a[LENGTHS][:0], "latent": a["latent"][:0]}, r"the arrays hold no sample"),
    (lambda a: {"latent": a["latent"]}, r"missing \['latent#lengths'\]"),
    (lambda a: {**a, "latent#scale": np.ones(2, np.float32)}, r"unknown \['latent#scale'\]"),
    (lambda a: {"latent": np.zeros((2, 3, 4, 5), np.float32)}, r"missing \['latent#lengths'\]"),
    (lambda a: {**a, "latent": np.zeros((2, 3, 4, 5), np.float32)}, r"'latent' must have shape \(bytes,\)"),
    (lambda a: {**a, "latent": list(a["latent"])}, r"'latent' is a list, not a numpy array"),
])
def test_frames_that_are_not_the_layout_or_do_not_add_up_are_refused(sent, change, message):
    codec, arrays = sent
    with pytest.raises(TensorCodecError, match=message):
        codec.decode(change(arrays))


def test_small_samples_cannot_smuggle_a_larger_batch(sent):
    """A sample can be far below its bound, so the frame's byte limit alone would let many
    more samples through than the service allows: the batch is checked on its own."""
    codec, _ = sent
    zeros = codec.encode({LATENT.name: np.zeros((12, 3, 4, 5), np.float32)})
    assert zeros[LATENT.name].size <= 4 * codec.sample_bytes  # fits the byte limit of a batch of 4
    with pytest.raises(TensorCodecError, match="a batch of 12 is over the limit of 4 samples"):
        codec.decode(zeros, max_batch=4)
    fixed = TensorCodec([TensorSpec("latent", (2, 3, 4, 5), "float32")], ENTROPY, tables=codec.tables)
    with pytest.raises(TensorCodecError, match="batches of exactly 2, got 12"):
        fixed.decode(zeros)


def test_a_stream_of_other_tables_or_shape_is_refused(sent):
    codec, arrays = sent
    other = TensorCodec([LATENT], ENTROPY, tables=laplace_tables(3, seed=9))
    with pytest.raises(TensorCodecError, match="coded with other tables"):
        other.decode(arrays)
    wider = TensorCodec([TensorSpec("latent", (None, 3, 4, 6), "float32")], ENTROPY, tables=codec.tables)
    with pytest.raises(TensorCodecError, match=r"holds a \(3, 4, 5\) tensor, expected \(3, 4, 6\)"):
        wider.decode(arrays)


def test_non_finite_latents_are_refused_on_the_device():
    codec = TensorCodec([LATENT], ENTROPY, tables=laplace_tables(3))
    latent = latents(2, 5)
    latent[1, 2, 3, 4] = np.nan
    with pytest.raises(TensorCodecError, match="'latent' holds NaN or infinity"):
        codec.encode({LATENT.name: latent})


@pytest.mark.parametrize(("tensors", "tables", "message"), [
    ([LATENT], None, "the 'entropy' encoding needs the bottleneck's entropy tables"),
    ([LATENT, TensorSpec("skip", (None, 4), "float32")], "tables", r"codes one float tensor .*; 2 cross"),
    ([TensorSpec("idx", (None, 3, 4, 5), "int64")], "tables", "codes one float tensor"),
    ([TensorSpec("flat", (None, 60), "float32")], "tables",
     r"a latent \(batch, C, H, W\) with C = the tables' 3"),
    ([TensorSpec("latent", (None, 4, 4, 5), "float32")], "tables", "tables' 3 channels"),
    ([TensorSpec("latent", (None, 3, 4, 5), "float16")], "wide", r"reach 3000, beyond the integers float16 "
                                                                  r"holds exactly \(2048\)"),
])
def test_what_the_entropy_encoding_cannot_code_is_refused_up_front(tensors, tables, message):
    given = {"tables": laplace_tables(3), "wide": EntropyTables.from_probabilities(
        [np.ones(2)] * 3, [0, 0, 2999]), None: None}[tables]
    with pytest.raises(TensorCodecError, match=message):
        TensorCodec(tensors, ENTROPY, tables=given)


def test_tables_belong_to_the_entropy_encoding_only():
    with pytest.raises(TensorCodecError, match="entropy tables are for the 'entropy' encoding, not 'int8'"):
        TensorCodec([LATENT], "int8", tables=laplace_tables(3))
    with pytest.raises(TensorCodecError, match="unknown tensor encoding 'rans'"):
        TensorCodec([LATENT], "rans")


def test_planners_sizes_stay_fixed_encodings_and_say_entropy_is_measured():
    graph = bottleneck_graph()
    cut = graph.cut_after("latent")
    assert cut.nbytes("int8") == 60 + 8
    with pytest.raises(SplitGraphError, match="entropy-coded sizes depend on the values: measure them"):
        cut.nbytes("entropy")


# ---------------------------------------------------------------------------------- bundles


def bottleneck_graph(channels: int = 3) -> SplitGraph:
    """``latent = round(2.5 x)``, ``y = relu(latent) * 0.5``: a bottleneck's shape in two nodes."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Mul", ["x", "gain"], ["scaled"]),
             helper.make_node("Round", ["scaled"], ["latent"]),
             helper.make_node("Relu", ["latent"], ["r"]), helper.make_node("Mul", ["r", "half"], ["y"])]
    weights = [numpy_helper.from_array(np.array(2.5, np.float32), "gain"),
               numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", channels, 4, 5])  # noqa: E731
    return SplitGraph(helper.make_model(helper.make_graph(nodes, "bottleneck", [value("x")], [value("y")],
                                                          weights)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of one cut, with different tables."""
    root = tmp_path_factory.mktemp("entropy")
    graph = bottleneck_graph()
    cut = graph.cut_after("latent")
    first = export_split(graph, cut, root / "first", ENTROPY, tables=laplace_tables(3))
    second = export_split(graph, cut, root / "second", ENTROPY, tables=laplace_tables(3, seed=7))
    return root, first, second


def test_both_sides_hold_the_tables_hashed_and_named_in_the_spec(exports):
    root, (device, edge), _ = exports
    tables = laplace_tables(3)
    for side in (device, edge):
        manifest = side.artifact.manifest
        assert TABLES_FILE in manifest.files and len(manifest.files[TABLES_FILE]) == 64  # a sha256
        assert EntropyTables.load(side.artifact.file(TABLES_FILE)).fingerprint == tables.fingerprint
        assert side.spec.tables is not None and side.spec.tables.fingerprint == tables.fingerprint
        assert manifest.metadata["tables"] == f"{tables.fingerprint:08x}"
    written = json.loads((root / "first" / DEVICE_DIR / SPLIT_FILE).read_text())
    assert written["encoding"] == ENTROPY and written["tables"] == f"{tables.fingerprint:08x}"
    assert device.spec.identity["tables"] == written["tables"] and device.spec == edge.spec
    assert [t.name for t in edge.spec.crossing] == ["latent"] and edge.spec.codec.tables is edge.spec.tables
    assert sorted(edge.artifact.manifest.files) == [SPLIT_FILE, TABLES_FILE, "tail.onnx"]


def test_sides_with_other_tables_are_refused_at_load(exports, tmp_path):
    root, _, _ = exports
    with pytest.raises(SplitBundleError, match=r"not two sides of one export: the device .* in entropy "
                                               r"with entropy tables [0-9a-f]{8}, the edge .* with entropy"):
        load_split(root / "first" / DEVICE_DIR, root / "second" / EDGE_DIR)
    # a side whose tables.npz was swapped for other (valid) tables and re-hashed: split.json names others
    side = load_artifact(root / "first" / EDGE_DIR)
    files = {name: side.file(name).read_bytes() for name in side.manifest.files}
    files[TABLES_FILE] = (root / "second" / EDGE_DIR / TABLES_FILE).read_bytes()
    save_artifact(tmp_path / "swapped", side.manifest, files)
    with pytest.raises(SplitBundleError, match=r"tables\.npz holds entropy tables [0-9a-f]{8}, split\.json "
                                               r"names [0-9a-f]{8}: not the tables of this export"):
        load_side(tmp_path / "swapped", "tail")
    # damaged bytes fail the manifest's hash before anything is read
    shutil.copytree(root / "first" / DEVICE_DIR, tmp_path / "damaged")
    with open(tmp_path / "damaged" / TABLES_FILE, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01")
    with pytest.raises(ArtifactError, match=r"tables\.npz: sha256 mismatch"):
        load_side(tmp_path / "damaged", "head")


def test_a_side_must_hold_tables_exactly_when_it_is_entropy_coded(exports, tmp_path):
    root, _, _ = exports
    side = load_artifact(root / "first" / EDGE_DIR)
    files = {name: side.file(name).read_bytes() for name in side.manifest.files}
    without = {name: data for name, data in files.items() if name != TABLES_FILE}
    save_artifact(tmp_path / "without", side.manifest, without)
    with pytest.raises(SplitBundleError, match=r"lacks tables\.npz, entropy tables, and its encoding is "
                                               r"'entropy'"):
        load_side(tmp_path / "without", "tail")
    spec = json.loads(files[SPLIT_FILE])
    plain = {**spec, "encoding": "float32"}
    del plain["tables"]
    save_artifact(tmp_path / "plain", side.manifest, {**files, SPLIT_FILE: json.dumps(plain).encode()})
    with pytest.raises(SplitBundleError, match=r"holds tables\.npz, entropy tables, and its encoding is "
                                               r"'float32'"):
        load_side(tmp_path / "plain", "tail")
    for name, broken, says in (
            ("unnamed", {k: v for k, v in spec.items() if k != "tables"}, "tables if and only if"),
            ("not hex", {**spec, "tables": "tables"}, "the tables' fingerprint, 8 hex digits")):
        save_artifact(tmp_path / name, side.manifest, {**files, SPLIT_FILE: json.dumps(broken).encode()})
        with pytest.raises(SplitBundleError, match=rf"not a split spec: .*{says}"):
            load_side(tmp_path / name, "tail")
    junk = Manifest("split", "tail", inputs=side.manifest.inputs, outputs=side.manifest.outputs)
    save_artifact(tmp_path / "junk", junk, {**files, TABLES_FILE: b"not an npz archive"})
    with pytest.raises(SplitBundleError, match=r"tables\.npz: .*not a readable \.npz"):
        load_side(tmp_path / "junk", "tail")


def test_export_refuses_what_the_encoding_cannot_carry(tmp_path):
    graph = bottleneck_graph()
    with pytest.raises(SplitBundleError, match="needs the bottleneck's entropy tables"):
        export_split(graph, graph.cut_after("latent"), tmp_path / "a", ENTROPY)
    with pytest.raises(SplitBundleError, match=r"C = the tables' 4 channels; 'latent' float32\[\?, 3, 4, "):
        export_split(graph, graph.cut_after("latent"), tmp_path / "b", ENTROPY, tables=laplace_tables(4))
    with pytest.raises(SplitBundleError, match="not 'float16'"):
        export_split(graph, graph.cut_after("latent"), tmp_path / "c", "float16", tables=laplace_tables(3))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_saved_head_keeps_the_tables(exports, tmp_path):
    _, (device, edge), _ = exports
    copy = save_head(device, tmp_path / "head", HEAD_FILE, device.model)
    assert copy.artifact.file(TABLES_FILE).read_bytes() == device.artifact.file(TABLES_FILE).read_bytes()
    assert load_split(copy.artifact.path, edge.artifact.path)[0].spec == edge.spec
