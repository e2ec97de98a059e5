"""What the split device (head) and edge (tail) agree on: endpoints, array names, limits.

Requests and responses are :mod:`coinfer.sdk.wire` frames sent as
``application/octet-stream`` over HTTP with ``Authorization: Bearer <token>``:

- ``POST /v1/split/infer``: a ``REQUEST`` frame whose header is ``{"split": identity}`` (the
  bundle's fingerprint, cut id and encoding, so an edge refuses a device holding the head of
  another export) and whose arrays are the crossing tensors as
  :class:`~coinfer.sdk.split.tensors.TensorCodec` lays them out; the answer is a ``RESPONSE``
  frame with the graph's outputs in their own dtypes and ``{"tail_ms": float}``;
- ``GET /v1/split/info``: the bundle's spec and the service's limits, as JSON.

Limits are sized from the bundle's tensors rather than fixed: a frame of ``max_batch``
samples of a 94 kB cut needs 1.5 MB, and a fixed 64 MiB bound would let one client make the
edge read 40 times what any honest request holds. The header bound counts the worst-case
msgpack size of each array's table entry (its name, dtype and shape) plus
:data:`USER_HEADER_BYTES` for the small user header:

>>> limits = frame_limits([("image", 4)], payload_bytes=16 * 3 * 224 * 224 * 4)
>>> limits.max_payload_bytes, limits.max_arrays, limits.max_ndim
(9633792, 1, 4)
>>> frame_bytes(limits) - limits.max_payload_bytes      # the fixed header and the msgpack header
604
"""

from __future__ import annotations

from collections.abc import Sequence

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.wire import FIXED_HEADER_SIZE, WireLimits

INFER_PATH = "/v1/split/infer"
INFO_PATH = "/v1/split/info"
CONTENT_TYPE = "application/octet-stream"

#: Key of the request header naming the split the arrays were encoded for.
SPLIT_KEY = "split"
#: Key of the response header carrying the edge's milliseconds for the tail.
TAIL_MS_KEY = "tail_ms"
#: Suffixes of the two per-sample arrays that travel with each int8 tensor ``name``: its
#: float32 scale and int32 zero point (``'#'`` does not occur in exported ONNX names).
SCALE_SUFFIX = "#scale"
ZERO_POINT_SUFFIX = "#zero_point"
#: Suffix of the array that travels with an entropy-coded tensor ``name``: the int32 byte
#: length of each sample's bitstream (``name`` itself is every bitstream, concatenated).
LENGTHS_SUFFIX = "#lengths"

#: Samples in one request unless the service is told otherwise.
DEFAULT_MAX_BATCH = 16
#: No service takes more samples per request, whatever it is told.
MAX_BATCH = 1024
#: No frame of a split is larger, whatever the batch and the tensors: what a peer can make
#: the other side read.
MAX_FRAME_BYTES = 1 << 30
#: Bound on the msgpack of the user header (``{"split": identity}`` or ``{"tail_ms": ms}``).
USER_HEADER_BYTES = 512


def scale_name(tensor: str) -> str:
    """The array carrying the per-sample scales of the int8 tensor ``tensor``."""
    return tensor + SCALE_SUFFIX


def zero_point_name(tensor: str) -> str:
    """The array carrying the per-sample zero points of the int8 tensor ``tensor``."""
    return tensor + ZERO_POINT_SUFFIX


def lengths_name(tensor: str) -> str:
    """The array carrying the per-sample bitstream lengths of the entropy-coded tensor ``tensor``."""
    return tensor + LENGTHS_SUFFIX


def frame_limits(arrays: Sequence[tuple[str, int]], payload_bytes: int) -> WireLimits:
    """The wire limits of a frame holding exactly ``arrays`` (name, rank) and at most
    ``payload_bytes`` of payload: what a receiver allows and what a sender stays within.

    Each table entry is a 3-list (1 byte) of a name (str header <= 5 bytes), a dtype string
    (4) and a shape list (header <= 5, each dimension an int of <= 9 bytes).
    """
    if not arrays:
        raise InvalidArgumentError("a frame of a split carries at least one array")
    if not 0 <= payload_bytes <= MAX_FRAME_BYTES:
        raise InvalidArgumentError(f"a payload of {payload_bytes} bytes is outside [0, {MAX_FRAME_BYTES}]")
    entries = sum(1 + 5 + len(name.encode("utf-8")) + 4 + 5 + 9 * rank for name, rank in arrays)
    header = 16 + USER_HEADER_BYTES + entries  # outer map, its two keys, the table's list header
    return WireLimits(max_header_bytes=header, max_payload_bytes=payload_bytes, max_arrays=len(arrays),
                      max_ndim=max(rank for _, rank in arrays))


def frame_bytes(limits: WireLimits) -> int:
    """The largest frame ``limits`` admit: the body limit of a request (or response)."""
    return FIXED_HEADER_SIZE + limits.max_header_bytes + limits.max_payload_bytes


__all__ = ["CONTENT_TYPE", "DEFAULT_MAX_BATCH", "INFER_PATH", "INFO_PATH", "LENGTHS_SUFFIX", "MAX_BATCH",
           "MAX_FRAME_BYTES", "SCALE_SUFFIX", "SPLIT_KEY", "TAIL_MS_KEY", "USER_HEADER_BYTES",
           "ZERO_POINT_SUFFIX", "frame_bytes", "frame_limits", "lengths_name", "scale_name",
           "zero_point_name"]
