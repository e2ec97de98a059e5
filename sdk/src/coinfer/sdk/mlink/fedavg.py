"""Federated averaging of link graphs (MLink, Algorithm 5.1): the arithmetic and the messages.

Edge clients each train the same :class:`~coinfer.sdk.mlink.LinkGraph` on their own
cameras' model outputs and send the change of every weight, Δ_k = Θ_k − Θ; plain FedAvg
applies Θ ← Θ + Σ_k n_k Δ_k / Σ_k n_k (``n_k`` = the client's training samples), which one
client can pull anywhere, so the aggregation service combines the deltas robustly by
default (:mod:`coinfer.sdk.mlink.robust`). Only link weights travel, never model outputs.
This module holds the pure parts: the delta, the weighted mean, and the two
:mod:`coinfer.sdk.wire` frames the cloud service (:mod:`coinfer.cloud.mlink.server`) and
the edge client (:mod:`coinfer.edge.mlink.federated_client`) exchange. It imports numpy
and the standard library only; weights are plain ``{name: float32 array}`` dicts as
``LinkGraph.weights()`` returns them.

Frames (message type ``TENSORS``, every array float32):

* update, client -> cloud: header ``{"kind": "mlink-update", "round": r, "client": name,
  "samples": n, "graph": sha256}``, arrays = Δ under the graph's weight names;
* global, cloud -> client: header ``{"kind": "mlink-global", "round": r, "graph": sha256}``,
  arrays = Θ.

``graph`` is :func:`graph_id` of ``LinkGraph.describe()``, so a frame for another graph
is refused even when its names and shapes happen to fit. Decoding checks the header
fields, the names (exactly the graph's), shapes, dtype and finiteness, under wire limits
derived from the graph's own size (:func:`frame_limits`).

Example::

    from coinfer.sdk.mlink import fedavg

    theta = graph.weights()
    graph.fit(local_outputs, epochs=3)
    delta = fedavg.weight_delta(graph.weights(), theta)
    frame = fedavg.encode_update(delta, round=0, client="edge-1", samples=400,
                                 graph=fedavg.graph_id(graph.describe()))
    update = fedavg.decode_update(frame, fedavg.weight_shapes(theta), fedavg.graph_id(graph.describe()))
    theta = fedavg.apply_mean_delta(theta, [update.delta], [update.samples])
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError

__all__ = [
    "CONTENT_TYPE",
    "GLOBAL_KIND",
    "GLOBAL_PATH",
    "GRAPH_PATH",
    "MAX_SAMPLES",
    "STATUS_PATH",
    "UPDATES_PATH",
    "UPDATE_KIND",
    "FederatedError",
    "GlobalModel",
    "NonFiniteError",
    "Update",
    "WeightMismatchError",
    "apply_mean_delta",
    "check_applicable",
    "check_client_name",
    "decode_global",
    "decode_update",
    "encode_global",
    "encode_update",
    "frame_limits",
    "graph_id",
    "max_frame_bytes",
    "weight_delta",
    "weight_shapes",
]

#: HTTP routes of the aggregation service (shared by the cloud server and the edge client).
GLOBAL_PATH = "/v1/mlink/global"
GRAPH_PATH = "/v1/mlink/graph"
UPDATES_PATH = "/v1/mlink/updates"
STATUS_PATH = "/v1/mlink/status"
CONTENT_TYPE = "application/octet-stream"

UPDATE_KIND = "mlink-update"
GLOBAL_KIND = "mlink-global"
#: A client's claimed training-sample count must lie in [1, MAX_SAMPLES] on the wire; the
#: aggregation service weighs it far lower (``RobustOptions.max_samples``), as even this bound
#: lets one client drown the others in a plain mean.
MAX_SAMPLES = 10**9
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_GRAPH_ID = re.compile(r"^[0-9a-f]{64}$")
_UPDATE_KEYS = {"kind", "round", "client", "samples", "graph"}
_GLOBAL_KEYS = {"kind", "round", "graph"}
#: Room in the msgpack header beyond the array table (kind, round, client, samples, graph).
_HEADER_ROOM = 1024


class FederatedError(CoinferError, ValueError):
    """An update, a global model or a frame carrying one cannot be used."""


class WeightMismatchError(FederatedError):
    """Weights whose names, shapes or dtype do not fit the graph being aggregated."""


class NonFiniteError(FederatedError):
    """Weights or deltas holding NaN or infinity (or that would overflow float32 once applied)."""


@dataclass(frozen=True)
class Update:
    """One client's decoded contribution to one round."""

    round: int
    client: str
    samples: int
    graph: str
    delta: dict[str, np.ndarray]


@dataclass(frozen=True)
class GlobalModel:
    """The aggregator's weights after ``round`` closed rounds."""

    round: int
    graph: str
    weights: dict[str, np.ndarray]


def graph_id(description: Mapping[str, Any]) -> str:
    """sha256 of a graph description's canonical JSON: names the graph an update was trained on."""
    try:
        text = json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise FederatedError(f"graph description is not plain JSON: {error}") from error
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weight_shapes(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}``: what an update must look like to fit these weights."""
    return {name: tuple(np.shape(value)) for name, value in weights.items()}


def check_client_name(name: Any) -> str:
    if not isinstance(name, str) or not CLIENT_NAME.match(name):
        raise FederatedError(f"client name must be 1-64 letters, digits, '.', '-' or '_' starting with a "
                             f"letter or digit, got {name!r}")
    return name


def _some(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names[:3]) + (" ..." if len(names) > 3 else "") or "none"


def _check_fits(weights: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Names exactly ``shapes``' names, each array float with that shape and finite."""
    if set(weights) != set(shapes):
        missing, extra = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
        raise WeightMismatchError(f"{what} does not fit the graph: missing {_some(missing)}, "
                                  f"unexpected {_some(extra)}")
    for name, value in weights.items():
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise WeightMismatchError(f"{what}: array {name!r} has dtype {array.dtype}, expected float32")
        if tuple(array.shape) != tuple(shapes[name]):
            raise WeightMismatchError(f"{what}: array {name!r} has shape {tuple(array.shape)}, "
                                      f"the graph needs {tuple(shapes[name])}")
        if not np.isfinite(array).all():
            raise NonFiniteError(f"{what}: array {name!r} contains NaN or infinity")


def weight_delta(local: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Δ = local − global, name by name, as float32 (what a client uploads)."""
    _check_fits(global_, weight_shapes(global_), "the global weights")
    _check_fits(local, weight_shapes(global_), "the local weights")
    return {name: (np.asarray(local[name], np.float64) - np.asarray(value, np.float64)).astype(np.float32)
            for name, value in global_.items()}


def apply_mean_delta(global_: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]],
                     samples: Sequence[int] | None = None, *,
                     clients: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Θ + Σ_k w_k Δ_k as new float32 arrays; w_k ∝ ``samples[k]`` (FedAvg), or 1/K without them.

    Every delta is checked against Θ first (names, shapes, finiteness, and Θ + Δ_k staying
    finite in float32), so the result is finite; errors name the array and the client
    (``clients[k]``, else "client k"). The mean is taken in float64.
    """
    if not deltas:
        raise FederatedError("no deltas to average")
    names = list(clients) if clients is not None else [f"client {k}" for k in range(len(deltas))]
    if len(names) != len(deltas):
        raise FederatedError(f"{len(deltas)} deltas but {len(names)} client names")
    if samples is None:
        factors = np.full(len(deltas), 1.0 / len(deltas))
    else:
        if len(samples) != len(deltas):
            raise FederatedError(f"{len(deltas)} deltas but {len(samples)} sample counts")
        for name, count in zip(names, samples, strict=True):
            integral = isinstance(count, int | np.integer) and not isinstance(count, bool)
            if not integral or not 1 <= count <= MAX_SAMPLES:
                raise FederatedError(f"{name}: sample count must be an integer in [1, {MAX_SAMPLES}], "
                                     f"got {count!r}")
        counts = np.asarray(samples, dtype=np.float64)
        factors = counts / counts.sum()
    shapes = weight_shapes(global_)
    _check_fits(global_, shapes, "the global weights")
    for name, delta in zip(names, deltas, strict=True):
        check_applicable(global_, delta, name)
    out = {}
    for key, value in global_.items():
        mean = sum(factor * np.asarray(delta[key], np.float64) for factor, delta in zip(factors, deltas,
                                                                                         strict=True))
        updated = (np.asarray(value, np.float64) + mean).astype(np.float32)
        if not np.isfinite(updated).all():
            raise NonFiniteError(f"array {key!r} overflows float32 after averaging")
        out[key] = updated
    return out


def check_applicable(global_: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], client: str) -> None:
    """Refuse a delta that does not fit Θ, is not finite, or would overflow float32 when applied."""
    _check_fits(delta, weight_shapes(global_), f"update from {client}")
    with np.errstate(over="ignore", invalid="ignore"):
        for key, value in global_.items():
            applied = (np.asarray(value, np.float64) + np.asarray(delta[key], np.float64)).astype(np.float32)
            if not np.isfinite(applied).all():
                raise NonFiniteError(f"update from {client}: array {key!r} overflows float32 once applied")


def frame_limits(shapes: Mapping[str, tuple[int, ...]]) -> wire.WireLimits:
    """Wire limits that fit exactly one frame of these weights: as many arrays as the graph has,
    a payload of exactly their float32 bytes, a header of their table plus a little room."""
    table = sum(len(name.encode("utf-8")) + 16 + 9 * len(shape) for name, shape in shapes.items())
    payload = sum(4 * int(np.prod(shape, dtype=np.int64)) for shape in shapes.values())
    return wire.WireLimits(max_header_bytes=_HEADER_ROOM + table, max_payload_bytes=payload,
                           max_arrays=max(1, len(shapes)),
                           max_ndim=max((len(shape) for shape in shapes.values()), default=1))


def max_frame_bytes(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The largest frame :func:`frame_limits` admits: a body bound a server checks before reading."""
    limits = frame_limits(shapes)
    return wire.FIXED_HEADER_SIZE + limits.max_header_bytes + limits.max_payload_bytes


def _check_int(header: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FederatedError(f"header field {key!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_graph(value: Any, expected: str | None) -> str:
    if not isinstance(value, str) or not _GRAPH_ID.match(value):
        raise FederatedError(f"header field 'graph' must be a sha256 hex digest, got {value!r}")
    if expected is not None and value != expected:
        raise FederatedError(f"frame is for graph {value[:12]}..., not this graph {expected[:12]}...")
    return value


def _decode(frame: bytes | bytearray | memoryview, shapes: Mapping[str, tuple[int, ...]], kind: str,
            keys: set[str], limits: wire.WireLimits | None) -> wire.Message:
    message = wire.decode(frame, limits or frame_limits(shapes))
    if message.type != wire.MessageType.TENSORS:
        raise FederatedError(f"expected a TENSORS frame, got {message.type.name}")
    header = message.header
    if header.get("kind") != kind:
        raise FederatedError(f"expected a {kind!r} frame, got kind {header.get('kind')!r}")
    if set(header) != keys:
        raise FederatedError(f"{kind} header must have exactly the fields {sorted(keys)}, "
                             f"got {sorted(header)}")
    for name, array in message.arrays.items():
        if array.dtype != np.float32:
            raise WeightMismatchError(f"array {name!r} has dtype {array.dtype}, expected float32")
    return message


def encode_update(delta: Mapping[str, np.ndarray], *, round: int, client: str, samples: int, graph: str,
                  limits: wire.WireLimits | None = None) -> bytes:
    """An update frame (limits default to those of ``delta``'s own shapes)."""
    header = {"kind": UPDATE_KIND, "round": round, "client": client, "samples": samples, "graph": graph}
    _check_int(header, "round", 0, 2**62)
    _check_int(header, "samples", 1, MAX_SAMPLES)
    check_client_name(client)
    _check_graph(graph, None)
    arrays = {name: np.asarray(value, np.float32) for name, value in delta.items()}
    return wire.encode(wire.Message(wire.MessageType.TENSORS, header, arrays),
                       limits or frame_limits(weight_shapes(arrays)))


def decode_update(frame: bytes | bytearray | memoryview, shapes: Mapping[str, tuple[int, ...]], graph: str,
                  limits: wire.WireLimits | None = None) -> Update:
    """A validated update for the graph with these weight ``shapes`` and id ``graph``.

    Raises :class:`~coinfer.sdk.wire.WireError` for a malformed frame and
    :class:`FederatedError` (or a subclass) for a well-formed frame that is not a usable update.
    The delta arrays are read-only views into ``frame``.
    """
    message = _decode(frame, shapes, UPDATE_KIND, _UPDATE_KEYS, limits)
    header = message.header
    client = check_client_name(header["client"])
    update = Update(round=_check_int(header, "round", 0, 2**62), client=client,
                    samples=_check_int(header, "samples", 1, MAX_SAMPLES),
                    graph=_check_graph(header["graph"], graph), delta=message.arrays)
    _check_fits(update.delta, shapes, f"update from {client!r}")
    return update


def encode_global(weights: Mapping[str, np.ndarray], *, round: int, graph: str,
                  limits: wire.WireLimits | None = None) -> bytes:
    """The global-model frame the aggregator serves."""
    header = {"kind": GLOBAL_KIND, "round": round, "graph": graph}
    _check_int(header, "round", 0, 2**62)
    _check_graph(graph, None)
    arrays = {name: np.asarray(value, np.float32) for name, value in weights.items()}
    return wire.encode(wire.Message(wire.MessageType.TENSORS, header, arrays),
                       limits or frame_limits(weight_shapes(arrays)))


def decode_global(frame: bytes | bytearray | memoryview, shapes: Mapping[str, tuple[int, ...]], graph: str,
                  limits: wire.WireLimits | None = None) -> GlobalModel:
    """A validated global model for the graph with these weight ``shapes`` and id ``graph``."""
    message = _decode(frame, shapes, GLOBAL_KIND, _GLOBAL_KEYS, limits)
    model = GlobalModel(round=_check_int(message.header, "round", 0, 2**62),
                        graph=_check_graph(message.header["graph"], graph), weights=message.arrays)
    _check_fits(model.weights, shapes, "global model")
    return model
