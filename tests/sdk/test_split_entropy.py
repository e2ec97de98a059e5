"""coinfer.sdk.split.entropy: integer tables, exact constriction models, a checked bitstream.

What matters is that the edge decodes exactly what the device encoded on any machine, so
besides round trips and rates these tests read back the CDF constriction builds from the
tables, decode and encode in fresh processes with other thread counts, and corrupt the
bitstream every way the header guards against.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from coinfer.sdk.npz import write_arrays
from coinfer.sdk.split.entropy import (
    HEADER_BYTES,
    MAX_SYMBOLS,
    EntropyCodingError,
    EntropyTables,
    decode,
    encode,
    quantize,
)


def laplace_prior(channels: int, seed: int, radius: int = 64) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Per channel a location and scale, and the discretised Laplace probabilities of the
    integers within ``radius`` of the rounded location (CDF differences, as a trained prior)."""
    rng = np.random.default_rng(seed)
    locations = rng.uniform(-3, 3, channels)
    scales = rng.uniform(0.15, 3.0, channels)
    probabilities, lows = [], []
    for location, scale in zip(locations, scales, strict=True):
        low = round(location) - radius
        edges = np.arange(low, low + 2 * radius + 2) - 0.5 - location
        cdf = np.where(edges < 0, 0.5 * np.exp(edges / scale), 1 - 0.5 * np.exp(-edges / scale))
        probabilities.append(np.diff(cdf))
        lows.append(low)
    return locations, scales, probabilities, lows


def laplace_latent(locations: np.ndarray, scales: np.ndarray, height: int, width: int,
                   seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.laplace(locations[:, None, None], scales[:, None, None], (len(locations), height, width))


def empirical_bits(symbols: np.ndarray) -> float:
    """The tensor's empirical entropy under a factorized model: per channel, count * H(histogram)."""
    bits = 0.0
    for channel in symbols:
        _, counts = np.unique(channel, return_counts=True)
        p = counts / counts.sum()
        bits -= float((counts * np.log2(p)).sum())
    return bits


def cdf_probe(model, quantile: int) -> int:
    """The symbol constriction's model decodes for a 24-bit ``quantile``: an ANS coder whose
    state is one word decodes from its low 24 bits (the bit above keeps the word nonzero)."""
    import constriction

    coder = constriction.stream.stack.AnsCoder(np.array([quantile | (1 << 24)], dtype=np.uint32))
    return int(coder.decode(model, 1)[0])


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("channels", "height", "width"), [(1, 64, 64), (8, 32, 32), (48, 16, 24)])
def test_round_trip_and_rate_near_the_empirical_entropy(channels: int, height: int, width: int) -> None:
    locations, scales, probabilities, lows = laplace_prior(channels, seed=channels)
    tables = EntropyTables.from_probabilities(probabilities, lows)
    symbols, clipped = quantize(laplace_latent(locations, scales, height, width, seed=1), tables)
    assert clipped == 0
    data = encode(symbols, tables)
    decoded = decode(data, tables, symbols.shape)
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, symbols)
    bound = empirical_bits(symbols) / 8
    assert len(data) <= 1.05 * bound + HEADER_BYTES + 8, (len(data), bound)

    # Tables from the tensor's own histograms (add-one smoothing) code it near its entropy too.
    own = EntropyTables.from_samples(symbols[None])
    data = encode(symbols, own)
    np.testing.assert_array_equal(decode(data, own, symbols.shape), symbols)
    assert len(data) <= 1.05 * bound + HEADER_BYTES + 8, (len(data), bound)


def test_a_constant_channel_costs_nothing_and_decodes() -> None:
    rng = np.random.default_rng(3)
    symbols = rng.integers(-2, 3, (3, 8, 8)).astype(np.int16)
    symbols[1] = 7
    tables = EntropyTables.from_samples(symbols[None])
    assert tables.sizes[1] == 1 and tables.table(1).tolist() == [1 << 24]
    data = encode(symbols, tables)
    np.testing.assert_array_equal(decode(data, tables, (3, 8, 8)), symbols)
    others = np.delete(symbols, 1, axis=0)
    assert data[HEADER_BYTES:] == encode(others, EntropyTables.from_samples(others[None]))[HEADER_BYTES:]


def test_the_model_constriction_builds_has_exactly_the_tables_cdf() -> None:
    # Peaked, flat and coarse (precision 12, scaled up by 2**12 when coding) tables, every
    # boundary read back: cdf[s] and cdf[s + 1] - 1 must both decode to s.
    rng = np.random.default_rng(5)
    probabilities = [rng.dirichlet(np.full(200, 0.05)), np.ones(37), rng.dirichlet(np.full(3, 1.0))]
    for precision in (24, 12):
        tables = EntropyTables.from_probabilities(probabilities, [0, -10, 5], precision=precision)
        for channel in range(tables.channels):
            counts = tables.table(channel).astype(np.int64) << (24 - precision)
            cdf = np.concatenate(([0], np.cumsum(counts)))
            model = tables.model(channel)
            decoded = [(cdf_probe(model, int(cdf[s])), cdf_probe(model, int(cdf[s + 1] - 1)))
                       for s in range(len(counts))]
            assert decoded == [(s, s) for s in range(len(counts))], (precision, channel)


# ------------------------------------------------------------------ bit-exact across processes

_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from coinfer.sdk.split.entropy import EntropyTables, decode, encode

    work = Path(sys.argv[1])
    tables = EntropyTables.load(work / "tables.npz")
    with np.load(work / "prior.npz", allow_pickle=False) as prior:
        rebuilt = EntropyTables.from_probabilities([prior[f"p{c}"] for c in range(len(prior["lows"]))],
                                                   prior["lows"].tolist())
    symbols = np.load(work / "symbols.npy", allow_pickle=False)
    np.save(work / "decoded.npy", decode((work / "data.bin").read_bytes(), tables, symbols.shape))
    (work / "encoded.bin").write_bytes(encode(symbols, tables))
    print(json.dumps({"same_counts": bool(np.array_equal(rebuilt.counts, tables.counts)),
                      "fingerprint": rebuilt.fingerprint}))
""")


def test_bit_exact_across_processes_and_thread_counts(tmp_path: Path) -> None:
    locations, scales, probabilities, lows = laplace_prior(16, seed=11)
    tables = EntropyTables.from_probabilities(probabilities, lows)
    tables.save(tmp_path / "tables.npz")
    np.savez(tmp_path / "prior.npz", lows=np.array(lows), **{f"p{c}": p for c, p in enumerate(probabilities)})
    symbols, _ = quantize(laplace_latent(locations, scales, 24, 24, seed=12), tables)
    np.save(tmp_path / "symbols.npy", symbols)
    data = encode(symbols, tables)
    (tmp_path / "data.bin").write_bytes(data)
    for threads in ("1", "4"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   OPENBLAS_NUM_THREADS=threads, NUMEXPR_NUM_THREADS=threads, PYTHONHASHSEED=threads)
        done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report == {"same_counts": True, "fingerprint": tables.fingerprint}, threads
        np.testing.assert_array_equal(np.load(tmp_path / "decoded.npy"), symbols)
        encoded = (tmp_path / "encoded.bin").read_bytes()
        assert encoded == data, threads
        np.testing.assert_array_equal(decode(encoded, tables, symbols.shape), symbols)
        (tmp_path / "decoded.npy").unlink()
        (tmp_path / "encoded.bin").unlink()


# ------------------------------------------------------------------------ damaged bitstreams


@pytest.fixture(scope="module")
def coded() -> tuple[EntropyTables, np.ndarray, bytes]:
    locations, scales, probabilities, lows = laplace_prior(4, seed=21)
    tables = EntropyTables.from_probabilities(probabilities, lows)
    symbols, _ = quantize(laplace_latent(locations, scales, 6, 5, seed=22), tables)
    return tables, symbols, encode(symbols, tables)


def _with_header(data: bytes, **fields: int | bytes) -> bytes:
    """``data`` with header fields replaced and its CRC recomputed over the new header."""
    names = ("magic", "version", "channels", "height", "width", "fingerprint", "words")
    values = dict(zip(names, struct.unpack_from("<4sB5I", data), strict=True)) | fields
    header = struct.pack("<4sB5I", *(values[name] for name in names))
    payload = data[HEADER_BYTES:]
    return header + struct.pack("<I", zlib.crc32(header + payload)) + payload


def test_every_single_byte_corruption_is_refused(coded: tuple[EntropyTables, np.ndarray, bytes]) -> None:
    tables, symbols, data = coded
    assert len(data) > HEADER_BYTES + 8
    for position in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[position] ^= flip
            with pytest.raises(EntropyCodingError):
                decode(bytes(damaged), tables, symbols.shape)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[:-3], "truncated or padded"),
    (lambda data: data[:HEADER_BYTES - 1], "shorter than its 29-byte header"),
    (lambda data: b"", "shorter than its 29-byte header"),
    (lambda data: data + b"\0\0\0\0", "truncated or padded"),
    (lambda data: data[:HEADER_BYTES + 4] + bytes([data[HEADER_BYTES + 4] ^ 4]) + data[HEADER_BYTES + 5:],
     "fails its CRC32"),
    (lambda data: b"JUNK" + data[4:], "magic b'JUNK'"),
    (lambda data: _with_header(data, magic=b"JUNK"), "magic b'JUNK'"),
    (lambda data: _with_header(data, version=2), "version 2"),
    (lambda data: _with_header(data, width=6), "holds a (4, 6, 6) tensor, expected (4, 6, 5)"),
    (lambda data: _with_header(data, channels=2**32 - 1, height=2**32 - 1), "expected (4, 6, 5)"),
    (lambda data: _with_header(data, words=2**32 - 1), "more than the 124 a (4, 6, 5) tensor can need"),
    (lambda data: _with_header(data, fingerprint=12345), "coded with other tables"),
    # Valid CRC and fingerprint but words left over (the range decoder keeps two words of state,
    # so it can tell two extra words apart, not one).
    (lambda data: _with_header(data + data[-8:], words=(len(data) - HEADER_BYTES) // 4 + 2),
     "past the last symbol"),
])
def test_damaged_bitstreams_are_refused_with_a_clear_message(coded, damage, message: str) -> None:
    tables, symbols, data = coded
    with pytest.raises(EntropyCodingError, match=re.escape(message)):
        decode(damage(data), tables, symbols.shape)


def test_the_caller_decides_the_shape(coded: tuple[EntropyTables, np.ndarray, bytes]) -> None:
    tables, symbols, data = coded
    with pytest.raises(EntropyCodingError, match=r"holds a \(4, 6, 5\) tensor, expected \(4, 5, 6\)"):
        decode(data, tables, (4, 5, 6))
    with pytest.raises(EntropyCodingError, match="tensor has 3 channels, the tables 4"):
        decode(data, tables, (3, 6, 5))
    with pytest.raises(EntropyCodingError, match="shape must be"):
        decode(data, tables, (4, 30))
    with pytest.raises(EntropyCodingError, match="more than 16777216 values"):
        decode(data, tables, (4, 4096, 4096))
    other = EntropyTables.from_samples(symbols[None])
    with pytest.raises(EntropyCodingError, match="coded with other tables"):
        decode(data, other, symbols.shape)


# ---------------------------------------------------------------------------- out of range


def test_out_of_range_symbols_are_clipped_by_quantize_and_refused_by_encode() -> None:
    tables = EntropyTables.from_probabilities([np.ones(5), np.ones(3)], lows=[-2, 10])
    latent = np.array([[[-9.0, 0.4, 2.5]], [[10.2, 12.6, 99.0]]])
    symbols, clipped = quantize(latent, tables)
    assert symbols.tolist() == [[[-2, 0, 2]], [[10, 12, 12]]] and clipped == 3  # 2.5 rounds to 2
    np.testing.assert_array_equal(decode(encode(symbols, tables), tables, (2, 1, 3)), symbols)
    with pytest.raises(EntropyCodingError, match=r"3 of 6 symbols lie outside.*first -9 in channel 0 "
                                                 r"\(range \[-2, 2\]\)"):
        encode(np.rint(latent).astype(np.int64), tables)
    with pytest.raises(EntropyCodingError, match="must be integers"):
        encode(latent, tables)
    with pytest.raises(EntropyCodingError, match="finite numbers"):
        quantize(np.full((2, 1, 3), np.nan), tables)
    with pytest.raises(EntropyCodingError, match="tensor has 1 channels, the tables 2"):
        encode(np.zeros((1, 1, 3), np.int32), tables)


# ----------------------------------------------------------------------------------- tables


def test_from_probabilities_is_exact_normalised_and_order_independent() -> None:
    rng = np.random.default_rng(7)
    peaked = rng.dirichlet(np.full(500, 0.02)) * 3.7  # unnormalised, most mass on a few symbols
    with_zeros = np.array([0.0, 1e-300, 0.5, 0.0, 0.25])
    for precision in (10, 16, 24):
        tables = EntropyTables.from_probabilities([peaked, with_zeros, np.array([2.0])], [0, -2, 3],
                                                  precision=precision)
        assert tables.counts.dtype == np.uint32 and tables.counts.min() >= 1
        assert [int(tables.table(c).sum()) for c in range(3)] == [1 << precision] * 3
        assert tables.table(2).tolist() == [1 << precision]
        # Permuting a channel's probabilities permutes its counts (the sum is fsum, exact).
        order = rng.permutation(peaked.size)
        permuted = EntropyTables.from_probabilities([peaked[order]], [0], precision=precision)
        np.testing.assert_array_equal(permuted.counts, tables.table(0)[order])
        # Scaling by a power of two changes no float but the exponent: the same integers.
        scaled = EntropyTables.from_probabilities([peaked * 2.0**40, with_zeros * 1024, [2.0]], [0, -2, 3],
                                                  precision=precision)
        np.testing.assert_array_equal(scaled.counts, tables.counts)
        assert scaled.fingerprint == tables.fingerprint
    # Float32 input is widened exactly; 2**precision symbols leave exactly 1 each.
    assert EntropyTables.from_probabilities([np.array([1, 2, 1], np.float32)], [0]).table(0).tolist() == \
        [4194304, 8388608, 4194304]
    assert EntropyTables.from_probabilities([np.ones(4)], [0], precision=2).table(0).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(("probabilities", "lows", "precision", "message"), [
    ([np.ones(3)], [0, 1], 24, "1 probability arrays but 2 lows"),
    ([np.array([1.0, np.nan])], [0], 24, "finite and >= 0"),
    ([np.array([1.0, -0.1])], [0], 24, "finite and >= 0"),
    ([np.zeros(4)], [0], 24, "sum to 0.0"),
    ([np.ones(MAX_SYMBOLS + 1)], [0], 24, f"1 to {MAX_SYMBOLS} probabilities"),
    ([np.ones(5)], [0], 2, "1 to 4 probabilities"),
    ([np.ones((2, 2))], [0], 24, r"got shape \(2, 2\)"),
    ([np.array(["a", "b"])], [0], 24, "not real numbers"),
    ([np.ones(3)], [0], 25, "precision must be an int in"),
    ([np.ones(3)], [2**31 - 2], 24, "within int32"),
    ([np.ones(3)], [0.5], 24, "'lows' must be a non-empty 1-D integer array"),
])
def test_from_probabilities_refuses_bad_input(probabilities, lows, precision: int, message: str) -> None:
    with pytest.raises(EntropyCodingError, match=message):
        EntropyTables.from_probabilities(probabilities, lows, precision=precision)


def test_from_samples_refuses_wide_or_non_integer_samples() -> None:
    wide = np.zeros((1, 2, 1, 2), np.int32)
    wide[0, 1, 0, 1] = MAX_SYMBOLS
    with pytest.raises(EntropyCodingError, match=f"channel 1 spans \\[0, {MAX_SYMBOLS}\\]"):
        EntropyTables.from_samples(wide)
    with pytest.raises(EntropyCodingError, match="integer array"):
        EntropyTables.from_samples(np.zeros((1, 2, 1, 2)))


def test_save_load_round_trip(tmp_path: Path) -> None:
    _, _, probabilities, lows = laplace_prior(5, seed=31, radius=20)
    tables = EntropyTables.from_probabilities(probabilities, lows, precision=16)
    tables.save(tmp_path / "tables.npz")
    loaded = EntropyTables.load(tmp_path / "tables.npz")
    assert loaded.precision == 16 and loaded.fingerprint == tables.fingerprint
    for name in ("lows", "sizes", "counts"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(tables, name))
    assert repr(loaded) == ("EntropyTables(channels=5, precision=16, symbols=205, "
                            f"fingerprint={tables.fingerprint:#010x})")
    assert not loaded.counts.flags.writeable


def _malformed(arrays: dict[str, np.ndarray], key: str, value: object) -> dict[str, np.ndarray]:
    changed = dict(arrays)
    if value is None:
        del changed[key]
    else:
        changed[key] = np.asarray(value)
    return changed


@pytest.mark.parametrize(("key", "value", "message"), [
    ("counts", "sum_off_by_one", "channel 1's counts sum to 65537, not 2\\*\\*16"),
    ("counts", "zero_count", "every count must be >= 1"),
    ("counts", "short", "the sizes add up to 7 symbols but there are 6 counts"),
    ("counts", np.ones((7, 1), np.uint32), "'counts' must be a non-empty 1-D integer array"),
    ("sizes", np.array([3, 0, 4]), "every channel needs 1 to 4096 symbols"),
    ("sizes", np.array([3, 4]), "need 1 to 4096 channels with one low and one size each, got 3 lows and "
                                "2 sizes"),
    ("lows", np.array([0.0, 1.0, 2.0]), "'lows' must be a non-empty 1-D integer array"),
    ("lows", np.array([0, 2**31 - 1, 0], np.int64), "symbol ranges must lie within int32"),
    ("precision", np.array(25), "precision must be an int in \\[1, 24\\]"),
    ("precision", np.array(16.0), "'format' and 'precision' must be integer scalars"),
    ("format", np.array(2), "format 2, this version reads 1"),
    ("counts", None, "missing array\\(s\\) counts"),
])
def test_malformed_tables_are_refused(tmp_path: Path, key: str, value: object, message: str) -> None:
    tables = EntropyTables(16, np.array([0, -1, 5]), np.array([3, 2, 2]),
                           np.array([1, 65534, 1, 32768, 32768, 65535, 1]))
    arrays = {name: np.array(array) for name, array in tables.to_arrays().items()}
    if isinstance(value, str) and value == "sum_off_by_one":
        arrays["counts"][3] += 1
    elif isinstance(value, str) and value == "zero_count":
        arrays["counts"][0], arrays["counts"][1] = 0, 65535
    elif isinstance(value, str) and value == "short":
        arrays["counts"] = arrays["counts"][:-1]
    else:
        arrays = _malformed(arrays, key, value)
    write_arrays(tmp_path / "bad.npz", arrays)
    with pytest.raises(EntropyCodingError, match=f"bad.npz: tables: {message}"):
        EntropyTables.load(tmp_path / "bad.npz")


def test_files_that_are_not_tables_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(EntropyCodingError, match=r"junk\.npz: not a readable \.npz entropy tables file"):
        EntropyTables.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "objects.npz", counts=np.array([{"run": "code"}], dtype=object))
    with pytest.raises(EntropyCodingError, match="never unpickled"):
        EntropyTables.load(tmp_path / "objects.npz")
    with pytest.raises(EntropyCodingError, match="no such entropy tables file"):
        EntropyTables.load(tmp_path / "missing.npz")
