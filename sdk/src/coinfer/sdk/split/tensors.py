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
  does not depend on the batch it was sent in; the error is at most ``scale / 2``.

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.split import protocol
from coinfer.sdk.split.graph import ENCODING_BYTES
from coinfer.sdk.tensor import TensorSpec
from coinfer.sdk.wire import WireLimits

#: The encodings of float tensors on the wire (:data:`coinfer.sdk.split.graph.ENCODING_BYTES`).
ENCODINGS = tuple(ENCODING_BYTES)
#: At most this many tensors cross one cut, and this many dimensions after the batch axis.
MAX_TENSORS = 256
MAX_SAMPLE_NDIM = 8
#: No sample of one set of tensors is larger (a graph's input or output or a cut's crossing).
MAX_SAMPLE_BYTES = 256 << 20

_ENCODED: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
                                 "int8": np.dtype("i1")}
_SCALE, _ZERO_POINT = np.dtype("<f4"), np.dtype("<i4")
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
    and decodes what arrives."""

    def __init__(self, tensors: Sequence[TensorSpec], encoding: str) -> None:
        if encoding not in _ENCODED:
            raise TensorCodecError(f"unknown tensor encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
        self.tensors = check_specs(tensors, "crossing tensors")
        self.encoding = encoding
        self.batch: int | None = self.tensors[0].shape[0]
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
        """Payload bytes per sample: ``Cut.nbytes(encoding)`` of the cut these tensors cross."""
        return sum(int(np.prod(array.shape, dtype=np.int64)) * array.dtype.itemsize for array in self.arrays)

    def limits(self, max_batch: int) -> WireLimits:
        """Wire limits of a frame of at most ``max_batch`` samples of these arrays."""
        return protocol.frame_limits([(array.name, 1 + len(array.shape)) for array in self.arrays],
                                     max_batch * self.sample_bytes)

    def encode(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays of a frame for ``tensors`` as the graph makes them (exact names, shapes
        and dtypes); float values must be finite, and within float16's range for float16."""
        batch = check_tensors(self.tensors, tensors)
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
        return arrays

    def decode(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The crossing tensors, in the graph's dtypes, from a frame's ``arrays``: refused
        unless the arrays are exactly this layout, of one batch of at least 1 sample, with
        finite floats and valid int8 parameters. Returns new arrays. (The frame's limits,
        :meth:`limits`, bound the batch.)"""
        batch = _check_layout(self.arrays, arrays, None, self.batch)
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


def _check_layout(layout: Sequence[WireArray], arrays: Mapping[str, np.ndarray], max_batch: int | None,
                  fixed_batch: int | None) -> int:
    expected = [array.name for array in layout]
    if not expected:
        raise TensorCodecError("no tensors to check the arrays against")
    known = set(expected)
    if set(arrays) != known:
        missing = [name for name in expected if name not in arrays]
        unknown = [name for name in arrays if name not in known]
        raise TensorCodecError(f"expected the arrays {_names(expected)}; missing {_names(missing)}, "
                               f"unknown {_names(unknown)}")
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


__all__ = ["ENCODINGS", "MAX_SAMPLE_BYTES", "MAX_SAMPLE_NDIM", "MAX_TENSORS", "TensorCodec",
           "TensorCodecError", "WireArray", "check_specs", "check_tensors", "sample_nbytes",
           "sample_shape"]
