"""Entropy coding of a bottleneck's integer latent with a factorized prior, bit-exact on any machine.

A shallow variational bottleneck (FrankenSplit) sends a latent ``y`` of shape ``(C, H, W)``,
rounded to integers, coded with one distribution per channel (the same at every position).
Learned codecs fail across machines when the decoder computes float CDFs at decode time: the
edge's floats differ from the device's in the last bit, one interval boundary moves and every
symbol after it decodes wrong (CompressAI issue #279). Here the prior is quantised to integer
tables once, at export (:class:`EntropyTables`), the tables ship in the artifact, and
:func:`encode` and :func:`decode` use nothing else; no float is computed from a prior at
coding time.

Exact integer models in ``constriction``: its categorical model takes float weights and
quantises them itself (``perfect=False``: symbol ``i`` starts at
``floor(cumsum(w)[:i] * (2**24 - n) / sum(w)) + i``). Given an integer table ``c`` (``c >= 1``,
summing to ``2**24``) we pass ``w = c - 1``: every weight, partial sum and the normalisation
``2**24 - n`` are integers below ``2**53``, the scale is exactly ``1.0``, so every step is exact
in IEEE arithmetic (no rounding anywhere, whatever the order, SIMD or thread count) and the
model's CDF is exactly ``cumsum(c)``. Passing ``c / 2**24`` instead would round, and
``perfect=True`` moves weights by its own optimisation; neither reproduces the table. The test
suite checks the model's CDF boundary by boundary. ``CustomModel`` would call Python with
floats for every symbol: slower, and the floats are what this module avoids.

Out-of-range values are clipped, never escaped: :func:`quantize` rounds a float latent, clips
each channel to its table's ``[low, high]`` and returns how many values it clipped; :func:`encode`
refuses symbols outside the tables (an error, not a silent clip).

The bitstream is a 29-byte little-endian header (magic ``CFEC``, version, ``C``, ``H``, ``W``, a
CRC32 of the tables, the number of 32-bit words, a CRC32 of header and words) and the range
coder's words; :func:`decode` checks every field against the caller's expected shape and the
tables before it allocates or decodes, so a corrupt, truncated or foreign bitstream raises
:class:`EntropyCodingError` and never yields a wrong tensor.

``numpy`` only at import; ``constriction`` is imported when tables are first used to code.

>>> import numpy as np
>>> from coinfer.sdk.split.entropy import EntropyTables, decode, encode, quantize
>>> tables = EntropyTables.from_probabilities([np.array([0.1, 0.8, 0.1]), np.array([0.3, 0.7])],
...                                         lows=[-1, 0])
>>> tables.highs.tolist(), tables.table(0).tolist()
([1, 1], [1677722, 13421772, 1677722])
>>> symbols, clipped = quantize(np.array([[[0.2, -0.7], [3.4, 0.0]], [[1.0, 0.9], [0.4, 1.2]]]), tables)
>>> symbols.tolist(), clipped
([[[0, -1], [1, 0]], [[1, 1], [0, 1]]], 1)
>>> data = encode(symbols, tables)
>>> len(data)
33
>>> np.array_equal(decode(data, tables, (2, 2, 2)), symbols)
True
>>> decode(data[:-1], tables, (2, 2, 2))
Traceback (most recent call last):
    ...
coinfer.sdk.split.entropy.EntropyCodingError: bitstream is 32 bytes, its header declares 33 (truncated...)
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from coinfer.sdk.errors import CoinferError, one_line
from coinfer.sdk.npz import NpzError, read_arrays, write_arrays

#: The fixed-point precision of constriction's categorical models (``u32`` words, 24 bits):
#: the most a table may use; coarser tables are scaled up to it exactly.
CODER_PRECISION = 24
#: At most this many symbols in a channel's ``[low, high]``, and this many channels: bounds
#: the tables' memory (64 MiB at worst) before any is allocated.
MAX_SYMBOLS = 4096
MAX_CHANNELS = 4096
#: At most this many values in one coded tensor (``C * H * W``).
MAX_ELEMENTS = 1 << 24
#: Symbols and their range must fit ``int32``, constriction's symbol type.
_INT32 = np.iinfo(np.int32)

MAGIC = b"CFEC"
VERSION = 1
#: magic, version, C, H, W, CRC32 of the tables, number of words; then the CRC32 (``_CRC``).
_HEADER = struct.Struct("<4sB5I")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size
_TABLES_FORMAT = 1


class EntropyCodingError(CoinferError, ValueError):
    """Malformed tables, symbols the tables cannot code, or a bitstream that is corrupt,
    truncated, foreign or coded with other tables; the message says which."""


@dataclass(frozen=True, eq=False, repr=False)
class EntropyTables:
    """Integer probability tables of a factorized prior: channel ``c`` codes the symbols
    ``lows[c] .. lows[c] + sizes[c] - 1`` with probabilities ``table(c) / 2**precision``.

    ``counts`` is every channel's table, concatenated. Each count is at least 1 (so every
    symbol in range can be coded) and each channel's counts sum to exactly ``2**precision``;
    the constructor checks this and the bounds (:data:`MAX_CHANNELS`, :data:`MAX_SYMBOLS`,
    ``precision <= 24``, ``int32`` symbols), and keeps read-only copies. Build tables with
    :meth:`from_probabilities` (a trained prior) or :meth:`from_samples` (histograms).
    """

    precision: int
    lows: np.ndarray
    sizes: np.ndarray
    counts: np.ndarray
    fingerprint: int = field(init=False)
    #: constriction models by channel, built on first use (the tables never change).
    _models: dict[int, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        precision = _check_precision(self.precision)
        lows = _integer_vector(self.lows, "lows")
        sizes = _integer_vector(self.sizes, "sizes")
        counts = _integer_vector(self.counts, "counts")
        if not 1 <= lows.size <= MAX_CHANNELS or sizes.size != lows.size:
            raise EntropyCodingError(f"tables: need 1 to {MAX_CHANNELS} channels with one low and one size "
                                     f"each, got {lows.size} lows and {sizes.size} sizes")
        limit = min(MAX_SYMBOLS, 1 << precision)
        if sizes.min() < 1 or sizes.max() > limit:
            raise EntropyCodingError(f"tables: every channel needs 1 to {limit} symbols at precision "
                                     f"{precision}, got sizes {sizes.min()} to {sizes.max()}")
        if lows.min() < _INT32.min or (lows > _INT32.max - (sizes - 1)).any():
            raise EntropyCodingError("tables: symbol ranges must lie within int32")
        if counts.size != sizes.sum():
            raise EntropyCodingError(f"tables: the sizes add up to {sizes.sum()} symbols but there are "
                                     f"{counts.size} counts")
        if counts.min() < 1:
            raise EntropyCodingError("tables: every count must be >= 1 (a symbol in range with "
                                     "probability 0 could not be coded)")
        sums = np.add.reduceat(counts, np.concatenate(([0], np.cumsum(sizes)[:-1])))
        wrong = np.flatnonzero(sums != 1 << precision)
        if wrong.size:
            raise EntropyCodingError(f"tables: channel {wrong[0]}'s counts sum to {sums[wrong[0]]}, "
                                     f"not 2**{precision}")
        object.__setattr__(self, "precision", precision)
        for name, values, dtype in (("lows", lows, np.int32), ("sizes", sizes, np.int32),
                                    ("counts", counts, np.uint32)):
            stored = values.astype(dtype)
            stored.setflags(write=False)
            object.__setattr__(self, name, stored)
        canonical = (struct.pack("<2I", self.precision, lows.size) + self.lows.astype("<i4").tobytes()
                     + self.sizes.astype("<i4").tobytes() + self.counts.astype("<u4").tobytes())
        object.__setattr__(self, "fingerprint", zlib.crc32(canonical))

    @classmethod
    def from_probabilities(cls, probabilities: Sequence[ArrayLike], lows: Sequence[int] | np.ndarray, *,
                           precision: int = CODER_PRECISION) -> EntropyTables:
        """Quantise per-channel probabilities of the symbols ``lows[c], lows[c] + 1, ...`` to
        integer tables, deterministically on any machine (this runs once, at export).

        Each channel's values need not sum to 1 (they are normalised) but must be finite,
        non-negative and not all zero. Every symbol gets 1, and the other ``2**precision - n``
        units are shared in proportion: the floors of ``p * (units / sum(p))``, then one each
        to the largest fractional parts (ties to the lower symbol). The sum is ``math.fsum``
        (correctly rounded, so independent of order, SIMD width or library) and the rest are
        elementwise IEEE operations, which round the same everywhere: permuting a channel's
        probabilities permutes its counts.
        """
        if len(probabilities) != len(lows):
            raise EntropyCodingError(f"tables: {len(probabilities)} probability arrays but {len(lows)} lows")
        if not 1 <= len(lows) <= MAX_CHANNELS:
            raise EntropyCodingError(f"tables: need 1 to {MAX_CHANNELS} channels, got {len(lows)}")
        precision = _check_precision(precision)
        tables = [_quantise_channel(np.asarray(values), channel, precision)
                  for channel, values in enumerate(probabilities)]
        return cls(precision, np.asarray(lows), np.array([t.size for t in tables]), np.concatenate(tables))

    @classmethod
    def from_samples(cls, symbols: ArrayLike, *, precision: int = CODER_PRECISION) -> EntropyTables:
        """Tables from observed integer latents ``(N, C, H, W)``: per channel, the range seen and
        its histogram plus one (add-one smoothing, so unseen values inside the range stay codable).
        A baseline and a test fixture; a trained prior gives tables that generalise better."""
        array = np.asarray(symbols)
        if array.ndim != 4 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
            raise EntropyCodingError(f"samples must be a non-empty integer array (N, C, H, W), got "
                                     f"{array.dtype} {array.shape}")
        per_channel = np.moveaxis(array, 1, 0).reshape(array.shape[1], -1).astype(np.int64)
        lows = per_channel.min(axis=1)
        highs = per_channel.max(axis=1)
        too_wide = np.flatnonzero(highs - lows + 1 > MAX_SYMBOLS)
        if too_wide.size:
            channel = too_wide[0]
            raise EntropyCodingError(f"samples: channel {channel} spans [{lows[channel]}, {highs[channel]}], "
                                     f"more than {MAX_SYMBOLS} symbols")
        histograms = [np.bincount(values - low, minlength=int(high - low + 1)) + 1.0
                      for values, low, high in zip(per_channel, lows, highs, strict=True)]
        return cls.from_probabilities(histograms, lows.tolist(), precision=precision)

    @property
    def channels(self) -> int:
        return int(self.lows.size)

    @property
    def highs(self) -> np.ndarray:
        """The largest codable symbol of each channel."""
        return self.lows + self.sizes - 1

    def table(self, channel: int) -> np.ndarray:
        """Channel ``channel``'s counts (read-only), one per symbol from its low to its high."""
        start = int(self.sizes[:channel].sum())
        return self.counts[start:start + int(self.sizes[channel])]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The tables as plain integer arrays, to store beside a model (see :meth:`from_arrays`)."""
        return {"format": np.array(_TABLES_FORMAT), "precision": np.array(self.precision),
                "lows": self.lows, "sizes": self.sizes, "counts": self.counts}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EntropyTables:
        """Tables from :meth:`to_arrays`' arrays, every invariant checked again."""
        missing = sorted({"format", "precision", "lows", "sizes", "counts"} - set(arrays))
        if missing:
            raise EntropyCodingError(f"tables: missing array(s) {', '.join(missing)}")
        header = [np.asarray(arrays[key]) for key in ("format", "precision")]
        if any(value.shape != () or not np.issubdtype(value.dtype, np.integer) for value in header):
            raise EntropyCodingError("tables: 'format' and 'precision' must be integer scalars")
        if int(header[0]) != _TABLES_FORMAT:
            raise EntropyCodingError(f"tables: format {int(header[0])}, this version reads {_TABLES_FORMAT}")
        return cls(int(header[1]), arrays["lows"], arrays["sizes"], arrays["counts"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the tables as ``.npz`` (integer arrays only), atomically."""
        write_arrays(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> EntropyTables:
        """Read tables saved by :meth:`save`; no pickles, sizes bounded before reading, every
        invariant checked, so a damaged or foreign file raises :class:`EntropyCodingError`."""
        limit = 4 * (MAX_CHANNELS * (MAX_SYMBOLS + 2)) + 1024
        try:
            arrays = read_arrays(path, max_bytes=limit, what="entropy tables file")
        except NpzError as error:
            raise EntropyCodingError(one_line(error)) from error
        try:
            return cls.from_arrays(arrays)
        except EntropyCodingError as error:
            raise EntropyCodingError(f"{path}: {error}") from error

    def model(self, channel: int) -> Any:
        """constriction's categorical model of ``channel``, exact to the table (see the module
        docstring); built once per channel. Channels with one symbol have none (nothing is coded)."""
        model = self._models.get(channel)
        if model is None:
            import constriction

            scaled = self.table(channel).astype(np.int64) << (CODER_PRECISION - self.precision)
            model = constriction.stream.model.Categorical((scaled - 1).astype(np.float64), perfect=False)
            self._models[channel] = model
        return model

    def __repr__(self) -> str:
        return (f"EntropyTables(channels={self.channels}, precision={self.precision}, "
                f"symbols={int(self.sizes.sum())}, fingerprint={self.fingerprint:#010x})")


def quantize(latent: ArrayLike, tables: EntropyTables) -> tuple[np.ndarray, int]:
    """Round a latent ``(C, H, W)`` to integers (half to even, as ``torch.round``) and clip each
    channel to its tables' ``[low, high]``: the ``int32`` symbols and how many values were clipped,
    so the caller can report the distortion that clipping adds."""
    array = np.asarray(latent)
    _check_shape(array.shape, tables)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise EntropyCodingError(f"latent must hold finite numbers, got {array.dtype} with NaN or inf "
                                     "or a non-numeric type")
        array = np.rint(array)
    lows = tables.lows.reshape(-1, 1, 1)
    highs = tables.highs.reshape(-1, 1, 1)
    clipped = int(np.count_nonzero((array < lows) | (array > highs)))
    return np.clip(array, lows, highs).astype(np.int32), clipped


def encode(symbols: ArrayLike, tables: EntropyTables) -> bytes:
    """Range-code integer symbols ``(C, H, W)`` with ``tables``: header and words (module docstring).

    Symbols outside a channel's ``[low, high]`` raise :class:`EntropyCodingError` (clip them
    with :func:`quantize`, which counts them). Channels with a single symbol cost no bits.
    """
    import constriction

    array = np.asarray(symbols)
    if not np.issubdtype(array.dtype, np.integer):
        raise EntropyCodingError(f"symbols must be integers, got {array.dtype} (quantize() rounds a latent)")
    channels, height, width = _check_shape(array.shape, tables)
    offsets = array.astype(np.int64) - tables.lows.reshape(-1, 1, 1)
    outside = (offsets < 0) | (offsets >= tables.sizes.reshape(-1, 1, 1))
    if outside.any():
        channel, row, column = np.argwhere(outside)[0]
        raise EntropyCodingError(
            f"{np.count_nonzero(outside)} of {array.size} symbols lie outside the tables' range, first "
            f"{array[channel, row, column]} in channel {channel} (range [{tables.lows[channel]}, "
            f"{tables.highs[channel]}]); quantize() clips them and counts how many")
    encoder = constriction.stream.queue.RangeEncoder()
    for channel in range(channels):
        if tables.sizes[channel] > 1:
            encoder.encode(offsets[channel].ravel().astype(np.int32), tables.model(channel))
    payload = encoder.get_compressed().astype("<u4").tobytes()
    header = _HEADER.pack(MAGIC, VERSION, channels, height, width, tables.fingerprint, len(payload) // 4)
    return header + _CRC.pack(zlib.crc32(header + payload)) + payload


def decode(data: bytes, tables: EntropyTables, shape: Sequence[int]) -> np.ndarray:
    """The ``int32`` symbols of ``shape`` (``(C, H, W)``, what the caller expects) that
    :func:`encode` coded into ``data`` with the same ``tables``.

    Every header field is checked (magic, version, shape equal to ``shape``, word count within
    what such a tensor can need, exact length, CRC32, the tables' fingerprint) before anything
    is allocated or decoded; any mismatch raises :class:`EntropyCodingError`.
    """
    import constriction

    channels, height, width = _check_shape(tuple(shape), tables)
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise EntropyCodingError(f"bitstream is {len(data)} bytes, shorter than its "
                                 f"{HEADER_BYTES}-byte header")
    magic, version, *coded_shape, fingerprint, words = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise EntropyCodingError(f"not an entropy-coded tensor: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise EntropyCodingError(f"bitstream version {version}, this decoder reads version {VERSION}")
    if tuple(coded_shape) != (channels, height, width):
        raise EntropyCodingError(f"bitstream holds a {tuple(coded_shape)} tensor, expected "
                                 f"{(channels, height, width)}")
    most = channels * height * width + 4  # at most 24 bits a symbol, plus the coder's flush
    if words > most:
        raise EntropyCodingError(f"header declares {words} words, more than the {most} a "
                                 f"{(channels, height, width)} tensor can need")
    if len(data) != HEADER_BYTES + 4 * words:
        raise EntropyCodingError(f"bitstream is {len(data)} bytes, its header declares "
                                 f"{HEADER_BYTES + 4 * words} (truncated or padded)")
    payload = data[HEADER_BYTES:]
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if zlib.crc32(data[:_HEADER.size] + payload) != crc:
        raise EntropyCodingError("bitstream fails its CRC32: corrupted in transit")
    if fingerprint != tables.fingerprint:
        raise EntropyCodingError(f"bitstream was coded with other tables (fingerprint {fingerprint:#010x}, "
                                 f"these are {tables.fingerprint:#010x})")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    symbols = np.empty((channels, height, width), dtype=np.int32)
    for channel in range(channels):
        if tables.sizes[channel] > 1:
            offsets = decoder.decode(tables.model(channel), height * width)
            symbols[channel] = offsets.reshape(height, width) + tables.lows[channel]
        else:
            symbols[channel] = tables.lows[channel]
    if not decoder.maybe_exhausted():
        raise EntropyCodingError("bitstream holds data past the last symbol: not coded with these tables")
    return symbols


def max_stream_bytes(tables: EntropyTables, shape: Sequence[int]) -> int:
    """The most bytes :func:`encode` can make of a tensor of ``shape`` (``(C, H, W)``) with
    ``tables``: what a receiver may allow a stream before it reads or decodes one.

    A symbol of probability ``p`` costs the range coder ``-log2(p)`` bits plus what its
    integer arithmetic truncates (under 0.006 bits with 24-bit models in a 64-bit state);
    the stream ends with at most two words of flush. So the bound charges each symbol of
    channel ``c`` the ceiling of ``-log2`` of the channel's smallest probability (channels
    with one symbol cost nothing), ``1/128`` bit of slack per symbol and two words, all in
    integers, so that the device and the edge compute the same limit on any machine. The
    tests code every channel's least likely symbol everywhere (the worst case) and random
    symbols, and check the streams stay within it.

    >>> tables = EntropyTables.from_probabilities([np.array([0.1, 0.8, 0.1]), np.array([1.0])],
    ...                                         lows=[-1, 0])
    >>> max_stream_bytes(tables, (2, 4, 4))   # 29-byte header, 16 x 4 bits + 1 of slack + 2 words
    49
    >>> len(encode(np.full((2, 4, 4), [[[1]], [[0]]]), tables))   # the worst case: every symbol rare
    37
    """
    channels, height, width = _check_shape(tuple(shape), tables)
    area = height * width
    bits = 0
    for channel in range(channels):
        if tables.sizes[channel] > 1:
            smallest = int(tables.table(channel).min())  # -log2(smallest / 2**precision), rounded up
            bits += area * (tables.precision - (smallest.bit_length() - 1))
    bits += -(-channels * area // 128)
    return HEADER_BYTES + 4 * (-(-bits // 32) + 2)


def _quantise_channel(probabilities: np.ndarray, channel: int, precision: int) -> np.ndarray:
    """One channel's integer table (see :meth:`EntropyTables.from_probabilities`)."""
    n, limit = probabilities.size, min(MAX_SYMBOLS, 1 << precision)
    if probabilities.ndim != 1 or not 1 <= n <= limit:
        raise EntropyCodingError(f"tables: channel {channel} needs a 1-D array of 1 to {limit} "
                                 f"probabilities, got shape {probabilities.shape}")
    if not np.issubdtype(probabilities.dtype, np.number) or np.iscomplexobj(probabilities):
        raise EntropyCodingError(f"tables: channel {channel}'s probabilities are {probabilities.dtype}, "
                                 "not real numbers")
    p = probabilities.astype(np.float64)
    if not np.isfinite(p).all() or (p < 0).any():
        raise EntropyCodingError(f"tables: channel {channel}'s probabilities must be finite and >= 0")
    total = math.fsum(p.tolist())
    if not total > 0 or not math.isfinite(total):
        raise EntropyCodingError(f"tables: channel {channel}'s probabilities sum to {total}, "
                                 "need a finite sum > 0")
    units = (1 << precision) - n
    scaled = p * (units / total)
    floors = np.floor(scaled)
    counts = floors.astype(np.int64) + 1
    # sum(scaled) is units within a few ulps, far below one unit, so the shortfall is in [0, n].
    shortfall = units - int(floors.astype(np.int64).sum())
    counts += shortfall // n
    counts[np.argsort(floors - scaled, kind="stable")[:shortfall % n]] += 1
    return counts


def _check_precision(precision: object) -> int:
    if isinstance(precision, bool) or not isinstance(precision, int | np.integer) \
            or not 1 <= precision <= CODER_PRECISION:
        raise EntropyCodingError(f"tables: precision must be an int in [1, {CODER_PRECISION}], "
                                 f"got {precision!r}")
    return int(precision)


def _integer_vector(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        raise EntropyCodingError(f"tables: '{name}' must be a non-empty 1-D integer array, got "
                                 f"{array.dtype} {array.shape}")
    if np.issubdtype(array.dtype, np.unsignedinteger) and array.max() > np.iinfo(np.int64).max:
        raise EntropyCodingError(f"tables: '{name}' holds values beyond int64")
    return array.astype(np.int64)


def _check_shape(shape: tuple[int, ...], tables: EntropyTables) -> tuple[int, int, int]:
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1
                              for n in shape):
        raise EntropyCodingError(f"shape must be (C, H, W) of positive ints, got {shape}")
    channels, height, width = (int(n) for n in shape)
    if channels != tables.channels:
        raise EntropyCodingError(f"tensor has {channels} channels, the tables {tables.channels}")
    if channels * height * width > MAX_ELEMENTS:
        raise EntropyCodingError(f"tensor of shape {(channels, height, width)} holds more than "
                                 f"{MAX_ELEMENTS} values")
    return channels, height, width
