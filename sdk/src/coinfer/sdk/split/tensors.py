"""The tensors that cross a cut, encoded for the wire and checked exactly when they arrive.

Why exact checks: the edge runs a tail whose inputs have fixed shapes and dtypes; a frame
that does not match them (another cut, another encoding, a hostile peer) must be refused
with a line that names the tensor, before ONNX Runtime sees it, and never reach the tail as
NaN or as a shape the runtime reinterprets.

Layout of one frame's arrays (one array per crossing tensor, of the tensor's name, shape
``(batch, *per-sample shape)``):

- ``float32``: float tensors as ``<f4``, exact for float32 graphs;
- ``float16``: float tensors as ``<f2``; values beyond float16's range (65504) are refused
  when encoding rather than sent as infinity;
- ``int8``: float tensors as ``|i1``, affine per sample and per tensor,
  ``real = scale * (q - zero_point)``, with two extra arrays of shape ``(batch,)``:
  ``name#scale`` (float32, > 0, small enough that 255 steps stay finite) and
  ``name#zero_point`` (int32 in [-128, 127]).
  So each sample pays 8 bytes per tensor besides its elements, exactly what
  :meth:`Cut.nbytes("int8") <coinfer.sdk.split.graph.Cut.nbytes>` counts. The range always
  holds 0, so zeros (every ReLU6's) come back exact; per sample, so that a sample's result
  does not depend on the batch it was sent in; the error is at most ``scale / 2``;
- ``entropy``: the one float tensor ``(batch, C, H, W)`` that crosses after a bottleneck's
  rounding, range-coded per sample with the bottleneck's
  :class:`~coinfer.sdk.split.entropy.EntropyTables` (:func:`~coinfer.sdk.split.entropy.encode`:
  rounded, clipped to the tables' range, a 29-byte checked header per sample). Two arrays:
  ``name`` (``|u1``, 1-D: every sample's bitstream, concatenated in batch order) and
  ``name#lengths`` (``<i4``, ``(batch,)``: each bitstream's bytes). Its size depends on the
  values, so there is no fixed per-sample size: :attr:`TensorCodec.sample_bytes` is the bound
  a receiver allows (:func:`~coinfer.sdk.split.entropy.max_stream_bytes` plus the length),
  every length is checked against it and the lengths against the bytes present before
  anything is decoded, and a corrupt, truncated or foreign bitstream is refused, never
  decoded to another tensor. The edge gets back the integers, in the graph's float dtype,
  exactly (the tables' range must be exact in that dtype).

Tensors that are not float (indices, masks) travel in their own dtype in every encoding.
Decoding returns every tensor in the dtype the graph has for it. numpy only.

>>> import numpy as np
>>> from coinfer.sdk.tensor import TensorSpec
>>> codec = TensorCodec([TensorSpec("features", (None, 2, 3), "float32")], "int8")
>>> codec.sample_bytes, [array.name for array in codec.arrays]
(14, ['features', 'features#scale', 'features#zero_point'])
>>> x = np.linspace(-1, 2, 12, dtype=np.float32).reshape(2, 2, 3)
>>> sent = codec.encode({"features": x})
>>> sent["features"].dtype, sent["features#scale"], sent["features#zero_point"]
(dtype('int8'), array([0.00534759, 0.00784314], dtype=float32), array([  59, -128], dtype=int32))
>>> back = codec.decode(sent)["features"]
>>> bool(np.abs(back - x).max() <= sent["features#scale"].max() / 2)
True
>>> codec.decode({"features": sent["features"][:, :1], "features#scale": sent["features#scale"],
...               "features#zero_point": sent["features#zero_point"]})
Traceback (most recent call last):
    ...
coinfer.sdk.split.tensors.TensorCodecError: array 'features' must have shape (batch, 2, 3), got (2, 1, 3)

The entropy encoding, with tables of a two-channel latent (symbols -2..2 and 0..1):

>>> from coinfer.sdk.split.entropy import EntropyTables
>>> tables = EntropyTables.from_probabilities([np.array([1, 2, 8, 2, 1]), np.array([3, 1])], lows=[-2, 0])
>>> codec = TensorCodec([TensorSpec("latent", (None, 2, 3, 3), "float32")], "entropy", tables=tables)
>>> codec.sample_bytes, [array.name for array in codec.arrays]     # the bound on one sample
(49, ['latent', 'latent#lengths'])
>>> latent = np.zeros((2, 2, 3, 3), np.float32)
>>> latent[1, 0, 0, 0] = 7.0                                       # beyond the tables: clipped to 2
>>> sent, clipped = codec.encode_counting({"latent": latent})
>>> sent["latent"].shape, sent["latent#lengths"], clipped
((66,), array([33, 33], dtype=int32), 1)
>>> back = codec.decode(sent)["latent"]
>>> back.dtype, float(back[1, 0, 0, 0]), bool((back[0] == 0).all())
(dtype('float32'), 2.0, True)
>>> broken = sent["latent"].copy()
>>> broken[-1] ^= 1                                            # a bit of sample 1's payload
>>> codec.decode({**sent, "latent": broken})
Traceback (most recent call last):
    ...
coinfer.sdk.split.tensors.TensorCodecError: array 'latent', sample 1: bitstream fails its CRC32: ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.split import protocol
from coinfer.sdk.split.entropy import (
    HEADER_BYTES,
    EntropyCodingError,
    EntropyTables,
    decode,
    encode,
    max_stream_bytes,
    quantize,
)
from coinfer.sdk.split.graph import ENCODING_BYTES
from coinfer.sdk.tensor import TensorSpec
from coinfer.sdk.wire import WireLimits

#: The encodings whose size per sample is fixed (:data:`coinfer.sdk.split.graph.ENCODING_BYTES`).
FIXED_ENCODINGS = tuple(ENCODING_BYTES)
#: A bottleneck's integer latent, range-coded with its tables: sizes are measured, not computed.
ENTROPY = "entropy"
#: The encodings of float tensors on the wire.
ENCODINGS = (*FIXED_ENCODINGS, ENTROPY)
#: At most this many tensors cross one cut, and this many dimensions after the batch axis.
MAX_TENSORS = 256
MAX_SAMPLE_NDIM = 8
#: No sample of one set of tensors is larger (a graph's input or output or a cut's crossing).
MAX_SAMPLE_BYTES = 256 << 20

_ENCODED: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
                                 "int8": np.dtype("i1")}
_SCALE, _ZERO_POINT = np.dtype("<f4"), np.dtype("<i4")
_BITSTREAM, _LENGTHS = np.dtype("|u1"), np.dtype("<i4")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: Larger scales would dequantise 255 steps past float32's range, to infinity.
_MAX_SCALE = float(np.finfo(np.float32).max) / 256
#: dtypes a tensor of a split may have: what the wire carries, less complex numbers.
_DTYPES = frozenset(np.dtype(name) for name in ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                                                  "int64", "uint64", "float16", "float32", "float64"))


class TensorCodecError(CoinferError, ValueError):
    """Tensors (or their encoding) that do not match what crosses the cut; the message names
    the tensor and what was wrong with it."""


@dataclass(frozen=True)
class WireArray:
    """One array of a frame: its name, its dtype on the wire and its per-sample shape (the
    batch axis first, not counted; ``()`` for an int8 tensor's scale and zero point)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def check_specs(tensors: Sequence[TensorSpec], what: str) -> tuple[TensorSpec, ...]:
    """``tensors`` if they can cross a cut: 1 to :data:`MAX_TENSORS` of them, unique names,
    a batch axis first (``None``, or the same fixed size for all) then fixed dimensions, a
    dtype the wire carries and at most :data:`MAX_SAMPLE_BYTES` per sample in all."""
    tensors = tuple(tensors)
    if not 1 <= len(tensors) <= MAX_TENSORS:
        raise TensorCodecError(f"{what}: {len(tensors)} tensors, expected 1 to {MAX_TENSORS}")
    names = [spec.name for spec in tensors]
    if len(set(names)) != len(names):
        raise TensorCodecError(f"{what}: tensor names repeat: {names}")
    batches = {spec.shape[0] for spec in tensors if spec.shape}
    if len(batches) > 1:
        raise TensorCodecError(f"{what}: the tensors disagree on the batch axis: {sorted(map(str, batches))}")
    total = 0
    for spec in tensors:
        if not 1 <= len(spec.shape) <= MAX_SAMPLE_NDIM + 1:
            raise TensorCodecError(f"{what}: {spec.describe()} needs a batch axis and at most "
                                   f"{MAX_SAMPLE_NDIM} more dimensions")
        batch, *rest = spec.shape
        if batch is not None and batch < 1:
            raise TensorCodecError(f"{what}: {spec.describe()} has a batch axis of {batch}")
        if not all(isinstance(dim, int) and dim >= 0 for dim in rest):
            raise TensorCodecError(f"{what}: {spec.describe()} has a dimension past the batch axis that is "
                                   "not fixed")
        try:
            known = spec.numpy_dtype in _DTYPES
        except TypeError:  # a dtype name numpy does not know
            known = False
        if not known:
            raise TensorCodecError(f"{what}: {spec.describe()} has a dtype the wire does not carry")
        total += int(np.prod(sample_shape(spec), dtype=np.int64)) * spec.numpy_dtype.itemsize
        if total > MAX_SAMPLE_BYTES:
            raise TensorCodecError(f"{what}: a sample is over the {MAX_SAMPLE_BYTES}-byte limit")
    return tensors


def sample_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The dimensions of ``spec`` after the batch axis (fixed, as :func:`check_specs` requires)."""
    return tuple(dim for dim in spec.shape[1:] if dim is not None)


def sample_nbytes(tensors: Sequence[TensorSpec]) -> int:
    """Bytes of one sample of ``tensors`` in their own dtypes."""
    return sum(int(np.prod(sample_shape(spec), dtype=np.int64)) * spec.numpy_dtype.itemsize
               for spec in tensors)


def check_tensors(tensors: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray], *,
                  max_batch: int | None = None) -> int:
    """The batch size of ``arrays`` if they are exactly ``tensors`` (names, shapes after the
    batch axis, dtypes; one batch size, at least 1 and at most ``max_batch``); else raises
    :class:`TensorCodecError`."""
    layout = [WireArray(spec.name, spec.numpy_dtype, sample_shape(spec)) for spec in tensors]
    return _check_layout(layout, arrays, max_batch, tensors[0].shape[0] if tensors else None)


class TensorCodec:
    """Encodes the tensors crossing a cut for the wire in one of :data:`ENCODINGS`, and checks
    and decodes what arrives.

    ``tables`` are the bottleneck's entropy tables, required by (and only by) the ``entropy``
    encoding, which takes exactly one float tensor of per-sample shape ``(C, H, W)`` with
    ``C`` the tables' channels (the latent after the bottleneck's rounding).
    """

    def __init__(self, tensors: Sequence[TensorSpec], encoding: str, *,
                 tables: EntropyTables | None = None) -> None:
        if encoding not in ENCODINGS:
            raise TensorCodecError(f"unknown tensor encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
        self.tensors = check_specs(tensors, "crossing tensors")
        self.encoding = encoding
        self.batch: int | None = self.tensors[0].shape[0]
        self.tables = tables
        #: The most bytes one sample's bitstream may have (entropy only; 0 otherwise).
        self.max_stream_bytes = 0
        if encoding == ENTROPY:
            self.max_stream_bytes = _check_entropy(self.tensors, tables)
            name = self.tensors[0].name
            self.arrays: tuple[WireArray, ...] = (WireArray(name, _BITSTREAM, ()),
                                                  WireArray(protocol.lengths_name(name), _LENGTHS, ()))
            return
        if tables is not None:
            raise TensorCodecError(f"entropy tables are for the {ENTROPY!r} encoding, not {encoding!r}")
        arrays = []
        for spec in self.tensors:
            shape = sample_shape(spec)
            if not self._encodes(spec):
                arrays.append(WireArray(spec.name, spec.numpy_dtype, shape))
                continue
            arrays.append(WireArray(spec.name, _ENCODED[encoding], shape))
            if encoding == "int8":
                arrays += [WireArray(protocol.scale_name(spec.name), _SCALE, ()),
                           WireArray(protocol.zero_point_name(spec.name), _ZERO_POINT, ())]
        names = [array.name for array in arrays]
        if len(set(names)) != len(names):
            raise TensorCodecError(f"tensor names collide with the int8 parameter arrays: {names}")
        self.arrays = tuple(arrays)

    @property
    def sample_bytes(self) -> int:
        """Payload bytes per sample: ``Cut.nbytes(encoding)`` of the cut these tensors cross; for
        ``entropy``, which has no fixed size, the most a sample may take (its longest bitstream
        and its length), what the frame limits allow."""
        if self.encoding == ENTROPY:
            return self.max_stream_bytes + _LENGTHS.itemsize
        return sum(int(np.prod(array.shape, dtype=np.int64)) * array.dtype.itemsize for array in self.arrays)

    def limits(self, max_batch: int) -> WireLimits:
        """Wire limits of a frame of at most ``max_batch`` samples of these arrays."""
        return protocol.frame_limits([(array.name, 1 + len(array.shape)) for array in self.arrays],
                                     max_batch * self.sample_bytes)

    def encode(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays of a frame for ``tensors`` as the graph makes them (exact names, shapes
        and dtypes); float values must be finite, and within float16's range for float16."""
        return self.encode_counting(tensors)[0]

    def encode_counting(self, tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """:meth:`encode`'s arrays and how many values were clipped to the entropy tables'
        range (the distortion the tables add beyond rounding; 0 in the other encodings)."""
        batch = check_tensors(self.tensors, tensors)
        if self.encoding == ENTROPY:
            return self._entropy_encode(tensors[self.tensors[0].name])
        arrays: dict[str, np.ndarray] = {}
        for spec in self.tensors:
            value = tensors[spec.name]
            if not self._encodes(spec):
                arrays[spec.name] = value
                continue
            if not np.isfinite(value).all():
                raise TensorCodecError(f"tensor {spec.name!r} holds NaN or infinity; it cannot be sent")
            if self.encoding == "float16" and value.size and float(np.abs(value).max()) > _FLOAT16_MAX:
                raise TensorCodecError(f"tensor {spec.name!r} holds values beyond float16's range "
                                       f"(+-{_FLOAT16_MAX:g}); send it as float32 or int8")
            if self.encoding == "int8":
                arrays.update(_quantize(spec.name, value.reshape(batch, -1), value.shape))
            else:
                arrays[spec.name] = value.astype(_ENCODED[self.encoding], copy=False)
        return arrays, 0

    def decode(self, arrays: Mapping[str, np.ndarray], *,
               max_batch: int | None = None) -> dict[str, np.ndarray]:
        """The crossing tensors, in the graph's dtypes, from a frame's ``arrays``: refused
        unless the arrays are exactly this layout, of one batch of at least 1 and at most
        ``max_batch`` samples, with finite floats, valid int8 parameters or bitstreams that
        decode. Returns new arrays. (The frame's limits, :meth:`limits`, bound the bytes; an
        entropy-coded sample can be far smaller than its bound, so a receiver passes
        ``max_batch`` too.)"""
        if self.encoding == ENTROPY:
            return self._entropy_decode(arrays, max_batch)
        batch = _check_layout(self.arrays, arrays, max_batch, self.batch)
        tensors = {}
        for spec in self.tensors:
            value = arrays[spec.name]
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise TensorCodecError(f"array {spec.name!r} holds NaN or infinity")
            if self.encoding == "int8" and self._encodes(spec):
                value = _dequantize(spec.name, value, arrays, batch)
            tensors[spec.name] = np.array(value, dtype=spec.numpy_dtype)
        return tensors

    def _encodes(self, spec: TensorSpec) -> bool:
        """Whether ``spec`` travels in the encoding (float) or in its own dtype."""
        return spec.numpy_dtype.kind == "f"

    def _entropy_encode(self, value: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
        """Each sample quantised and range-coded; the bitstreams concatenated, and their lengths."""
        assert self.tables is not None  # the constructor requires them for this encoding
        name = self.tensors[0].name
        if not np.isfinite(value).all():
            raise TensorCodecError(f"tensor {name!r} holds NaN or infinity; it cannot be sent")
        streams, clipped = [], 0
        for index, sample in enumerate(value):
            try:
                symbols, outside = quantize(sample, self.tables)
                stream = encode(symbols, self.tables)
            except EntropyCodingError as error:
                raise TensorCodecError(f"tensor {name!r}, sample {index}: {error}") from None
            if len(stream) > self.max_stream_bytes:  # would be refused by the receiver: a bug, say so here
                raise TensorCodecError(f"tensor {name!r}, sample {index}: a {len(stream)}-byte bitstream, "
                                       f"over the {self.max_stream_bytes}-byte bound")
            streams.append(stream)
            clipped += outside
        data = np.frombuffer(b"".join(streams), dtype=_BITSTREAM)
        lengths = np.array([len(stream) for stream in streams], dtype=_LENGTHS)
        return {name: data, protocol.lengths_name(name): lengths}, clipped

    def _entropy_decode(self, arrays: Mapping[str, np.ndarray],
                        max_batch: int | None) -> dict[str, np.ndarray]:
        """The latent of a frame's bitstreams, every length checked before any is decoded."""
        assert self.tables is not None
        spec = self.tensors[0]
        name, lengths_name = spec.name, protocol.lengths_name(spec.name)
        _check_names([name, lengths_name], arrays)
        data, lengths = arrays[name], arrays[lengths_name]
        for key, value, dtype in ((name, data, _BITSTREAM), (lengths_name, lengths, _LENGTHS)):
            if not isinstance(value, np.ndarray):
                raise TensorCodecError(f"array {key!r} is a {type(value).__name__}, not a numpy array")
            if value.ndim != 1:
                what = "bytes" if key == name else "batch"
                raise TensorCodecError(f"array {key!r} must have shape ({what},), got {value.shape}")
            if value.dtype != dtype:
                raise TensorCodecError(f"array {key!r} must be {dtype.name}, got {value.dtype.name}")
        batch = lengths.size
        if batch < 1:
            raise TensorCodecError("the arrays hold no sample")
        if self.batch is not None and batch != self.batch:
            raise TensorCodecError(f"the graph takes batches of exactly {self.batch}, got {batch}")
        if max_batch is not None and batch > max_batch:
            raise TensorCodecError(f"a batch of {batch} is over the limit of {max_batch} samples per request")
        wrong = np.flatnonzero((lengths < HEADER_BYTES) | (lengths > self.max_stream_bytes))
        if wrong.size:
            raise TensorCodecError(f"array {lengths_name!r}: sample {wrong[0]}'s bitstream is "
                                   f"{lengths[wrong[0]]} bytes, outside [{HEADER_BYTES}, "
                                   f"{self.max_stream_bytes}]")
        total = int(lengths.sum(dtype=np.int64))
        if total != data.size:
            raise TensorCodecError(f"array {name!r} holds {data.size} bytes, its lengths add up to {total}")
        shape = sample_shape(spec)
        latent = np.empty((batch, *shape), dtype=spec.numpy_dtype)
        starts = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)[:-1]))
        for index, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
            try:
                latent[index] = decode(data[start:start + length].tobytes(), self.tables, shape)
            except EntropyCodingError as error:
                raise TensorCodecError(f"array {name!r}, sample {index}: {error}") from None
        return {name: latent}


def _check_names(expected: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
    known = set(expected)
    if set(arrays) != known:
        missing = [name for name in expected if name not in arrays]
        unknown = [name for name in arrays if name not in known]
        raise TensorCodecError(f"expected the arrays {_names(expected)}; missing {_names(missing)}, "
                               f"unknown {_names(unknown)}")


def _check_entropy(tensors: Sequence[TensorSpec], tables: EntropyTables | None) -> int:
    """The bound on one sample's bitstream, if ``tensors`` can be entropy-coded with ``tables``."""
    if tables is None:
        raise TensorCodecError(f"the {ENTROPY!r} encoding needs the bottleneck's entropy tables")
    if not isinstance(tables, EntropyTables):
        raise TensorCodecError(f"entropy tables must be EntropyTables, got {type(tables).__name__}")
    if len(tensors) != 1 or tensors[0].numpy_dtype.kind != "f":
        described = ", ".join(spec.describe() for spec in tensors[:4])
        raise TensorCodecError(f"the {ENTROPY!r} encoding codes one float tensor (a bottleneck's latent); "
                               f"{len(tensors)} cross: {described}")
    spec = tensors[0]
    shape = sample_shape(spec)
    if len(shape) != 3 or shape[0] != tables.channels or 0 in shape:
        raise TensorCodecError(f"the {ENTROPY!r} encoding codes a latent (batch, C, H, W) with C = the "
                               f"tables' {tables.channels} channels; {spec.describe()} crosses")
    exact = 2 ** (np.finfo(spec.numpy_dtype).nmant + 1)  # every integer up to this is exact in the dtype
    widest = max(-int(tables.lows.min()), int(tables.highs.max()))
    if widest > exact:
        raise TensorCodecError(f"the tables' symbols reach {widest}, beyond the integers "
                               f"{spec.numpy_dtype.name} holds exactly ({exact}); {spec.name!r} would not "
                               "decode to what was coded")
    try:
        most = max_stream_bytes(tables, shape)
    except EntropyCodingError as error:
        raise TensorCodecError(f"{spec.describe()}: {error}") from None
    if most + _LENGTHS.itemsize > MAX_SAMPLE_BYTES:
        raise TensorCodecError(f"{spec.describe()}: a bitstream may need {most} bytes, over the "
                               f"{MAX_SAMPLE_BYTES}-byte limit of a sample")
    return most


def _check_layout(layout: Sequence[WireArray], arrays: Mapping[str, np.ndarray], max_batch: int | None,
                  fixed_batch: int | None) -> int:
    expected = [array.name for array in layout]
    if not expected:
        raise TensorCodecError("no tensors to check the arrays against")
    _check_names(expected, arrays)
    batches: list[int] = []
    for array in layout:
        value = arrays[array.name]
        if not isinstance(value, np.ndarray):
            raise TensorCodecError(f"array {array.name!r} is a {type(value).__name__}, not a numpy array")
        if value.ndim != 1 + len(array.shape) or value.shape[1:] != array.shape:
            want = ", ".join(["batch", *map(str, array.shape)])
            raise TensorCodecError(f"array {array.name!r} must have shape ({want}), got {value.shape}")
        if value.dtype != array.dtype:
            raise TensorCodecError(f"array {array.name!r} must be {array.dtype.name}, got {value.dtype.name}")
        if batches and value.shape[0] != batches[0]:
            raise TensorCodecError(f"array {array.name!r} has {value.shape[0]} samples, the others "
                                   f"{batches[0]}")
        batches.append(value.shape[0])
    batch = batches[0]
    if batch < 1:
        raise TensorCodecError("the arrays hold no sample")
    if fixed_batch is not None and batch != fixed_batch:
        raise TensorCodecError(f"the graph takes batches of exactly {fixed_batch}, got {batch}")
    if max_batch is not None and batch > max_batch:
        raise TensorCodecError(f"a batch of {batch} is over the limit of {max_batch} samples per request")
    return batch


def _names(names: Sequence[str], most: int = 4) -> str:
    """Names for a one-line message, at most ``most`` of them."""
    shown = ", ".join(repr(name) for name in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}]"


def _quantize(name: str, rows: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """int8 of each row (sample) with its own range, which always holds 0."""
    low = rows.min(axis=1, initial=0.0).astype(np.float64)
    high = rows.max(axis=1, initial=0.0).astype(np.float64)
    wanted = np.where(high > low, (high - low) / 255.0, 1.0)
    scale = wanted.astype(np.float32)
    # Rounded down to float32, the scale would stretch the range past 255 steps and clip.
    scale = np.where(scale < wanted, np.nextafter(scale, np.float32(np.inf)), scale).astype(np.float32)
    if (scale > _MAX_SCALE).any():  # what the decoder would refuse: say so here, not at the edge
        raise TensorCodecError(f"tensor {name!r} spans {float((high - low).max()):.3g}, too wide for int8 "
                               f"(a scale over {_MAX_SCALE:.3g}); send it as float32")
    zero_point = np.clip(np.round(-128.0 - low / scale), -128, 127).astype(np.int32)
    steps = np.round(rows / scale[:, None].astype(np.float64)) + zero_point[:, None]
    return {name: np.clip(steps, -128, 127).astype(np.int8).reshape(shape),
            protocol.scale_name(name): scale, protocol.zero_point_name(name): zero_point}


def _dequantize(name: str, value: np.ndarray, arrays: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
    scale = arrays[protocol.scale_name(name)]
    zero_point = arrays[protocol.zero_point_name(name)]
    if not ((scale > 0) & (scale <= _MAX_SCALE)).all():  # NaN fails both
        raise TensorCodecError(f"array {protocol.scale_name(name)!r} must hold scales in "
                               f"(0, {_MAX_SCALE:.3g}]")
    if not ((zero_point >= -128) & (zero_point <= 127)).all():
        raise TensorCodecError(f"array {protocol.zero_point_name(name)!r} must hold zero points in "
                               "[-128, 127]")
    rows = value.reshape(batch, -1).astype(np.float32) - zero_point[:, None].astype(np.float32)
    return (rows * scale[:, None]).reshape(value.shape)


__all__ = ["ENCODINGS", "ENTROPY", "FIXED_ENCODINGS", "MAX_SAMPLE_BYTES", "MAX_SAMPLE_NDIM", "MAX_TENSORS",
           "TensorCodec", "TensorCodecError", "WireArray", "check_specs", "check_tensors", "sample_nbytes",
           "sample_shape"]
