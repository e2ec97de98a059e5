"""The edge side of split inference: decode what crosses the cut, run the tail, answer the outputs.

A device (:class:`coinfer.device.split.SplitClient`) runs the head of an exported split and
posts the crossing tensors; this service checks them exactly against its tail bundle (the
``OUT/edge`` of :func:`~coinfer.sdk.split.bundle.export_split`), decodes them, runs the tail
on ONNX Runtime (CPU) and answers the graph's outputs. Endpoints (all need
``Authorization: Bearer <token>``, the API description at ``/docs``, ``/redoc`` and
``/openapi.json`` too):

- ``POST /v1/split/infer``: a wire frame as :mod:`coinfer.sdk.split.protocol` describes;
  answers a frame of the outputs, and the tail's milliseconds in its header;
- ``GET /v1/split/info``: the bundle's spec, the limits and what was served so far.

Refusals are one line, ``{"detail": ...}``: 401 without the token; 413 for a body or a
frame over the limit, which is sized from the bundle (``max_batch`` samples of the crossing
tensors: a larger batch is refused before it is decoded); 400 for a body that is not a
frame; 422 for a frame of another export or whose arrays are not exactly the crossing
tensors (names, shapes after the batch axis, dtypes, finite values, valid int8
parameters, entropy-coded bitstreams that decode with the bundle's tables: a corrupt or
truncated one is refused, never decoded to another latent). None is a 500 or a traceback
in the log.

Example, with the device's client (``y = relu(x) + sigmoid(x)`` cut after ``relu``):

>>> import tempfile
>>> import numpy as np
>>> from onnx import TensorProto, helper
>>> from coinfer.device.split import SplitClient
>>> from coinfer.sdk.split.bundle import export_split
>>> from coinfer.sdk.split.graph import SplitGraph
>>> nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
...          helper.make_node("Add", ["a", "b"], ["y"])]
>>> value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])
>>> graph = SplitGraph(helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")])))
>>> work = tempfile.TemporaryDirectory()
>>> device, edge = export_split(graph, graph.cut_after("a"), work.name + "/split", "float32")
>>> with SplitServer(edge, "secret", SplitServiceOptions(max_batch=4)) as server:
...     client = SplitClient.create_from_bundle(device, server.url, "secret")   # max_batch=16 here
...     y = client.infer(np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32))["y"]
...     client.infer(np.zeros((5, 4), np.float32))
Traceback (most recent call last):
    ...
coinfer.device.split.client.SplitClientError: POST /v1/split/infer: HTTP 413: {"detail":"frame over ..."}
>>> np.round(y, 3), client.last.bytes_sent - client.spec.codec.sample_bytes   # the frame's own bytes
(array([[0.269, 0.5  , 1.731, 2.881]], dtype=float32), 170)
>>> work.cleanup()
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from coinfer.device.runtime.base import RunnerError, RunnerOptions
from coinfer.device.runtime.onnx import ONNXRunner
from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.service import ServiceError, ThreadedServer, create_service_app, read_limited_body
from coinfer.sdk.split import protocol
from coinfer.sdk.split.bundle import TAIL_KIND, SplitSide, load_side
from coinfer.sdk.split.tensors import MAX_TENSORS, TensorCodecError, sample_nbytes

#: Limits that only check the frame's structure (magic, version, type, flags).
_STRUCTURE = wire.WireLimits(max_header_bytes=(1 << 32) - 1, max_payload_bytes=(1 << 64) - 1)


class SplitServiceError(ServiceError):
    """A request the split service refuses; ``status`` is the HTTP status to answer with."""


@dataclass(frozen=True)
class SplitServiceOptions:
    """How much one request may hold and how the tail runs.

    ``max_batch``: samples per request (1 to :data:`~coinfer.sdk.split.protocol.MAX_BATCH`);
    the body limit follows from it and the bundle's tensors. ``threads``: ONNX Runtime's
    intra-op threads per tail run. ``workers``: tail runs at once (each request waits for a
    free one), so that concurrent requests cannot take more than ``workers x threads`` cores.
    """

    max_batch: int = protocol.DEFAULT_MAX_BATCH
    threads: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        for name, most in (("max_batch", protocol.MAX_BATCH), ("threads", 256), ("workers", 64)):
            value = getattr(self, name)
            if not (type(value) is int and 1 <= value <= most):
                raise InvalidArgumentError(f"{name} must be an int in [1, {most}], got {value!r}")


class SplitTailService:
    """The tail of one exported split behind the checks of the service; without HTTP."""

    def __init__(self, bundle: SplitSide | str | os.PathLike,
                 options: SplitServiceOptions | None = None) -> None:
        side = bundle if isinstance(bundle, SplitSide) else load_side(bundle, TAIL_KIND)
        if side.kind != TAIL_KIND:
            raise CoinferError(f"{side.artifact.path}: the edge serves a split's tail, not its {side.kind}")
        self.spec = side.spec
        self.options = options or SplitServiceOptions()
        self.limits = self.spec.request_limits(self.options.max_batch)
        self.max_request_bytes = protocol.frame_bytes(self.limits)
        # The codec checks the arrays exactly once the frame names this split; read any table
        # the header bound admits first, so that a device of another export hears that, not
        # "malformed frame".
        self._read_limits = replace(self.limits, max_arrays=3 * MAX_TENSORS,
                                    max_ndim=wire.DEFAULT_LIMITS.max_ndim)
        self.response_limits = self.spec.response_limits(self.options.max_batch)
        decoded = self.options.max_batch * sample_nbytes(self.spec.crossing)  # int8 decodes to 4x its bytes
        for limit in (self.max_request_bytes, decoded, protocol.frame_bytes(self.response_limits)):
            if limit > protocol.MAX_FRAME_BYTES:
                raise InvalidArgumentError(f"{self.options.max_batch} samples make {limit} bytes of tensors, "
                                           f"over the {protocol.MAX_FRAME_BYTES}-byte limit; lower max_batch")
        model = side.model
        self._runner = (None if model is None else
                        ONNXRunner.create_from_file(model, RunnerOptions(num_threads=self.options.threads)))
        self._slots = threading.BoundedSemaphore(self.options.workers)
        self._lock = threading.Lock()
        self.counters = {"requests": 0, "samples": 0, "bytes_received": 0}

    def read(self, body: bytes) -> dict[str, np.ndarray]:
        """The crossing tensors of a request body, decoded; every refusal a :class:`SplitServiceError`."""
        try:
            wire.frame_length(body, _STRUCTURE)
        except wire.WireError as error:
            raise SplitServiceError(f"malformed frame: {error}") from None
        try:
            wire.frame_length(body, self.limits)
        except wire.WireError as error:
            raise SplitServiceError(f"frame over this service's limit of {self.options.max_batch} samples of "
                                    f"{self.spec.codec.sample_bytes} bytes: {error}", status=413) from None
        try:
            message = wire.decode(body, self._read_limits)
        except wire.WireError as error:
            raise SplitServiceError(f"malformed frame: {error}") from None
        if message.type != wire.MessageType.REQUEST:
            raise SplitServiceError(f"expected a REQUEST frame, got {message.type.name}")
        named = message.header.get(protocol.SPLIT_KEY)
        if named != self.spec.identity:
            spec = self.spec
            tables = f" with entropy tables {spec.tables_fingerprint}" if spec.tables_fingerprint else ""
            raise SplitServiceError(f"this service runs cut {spec.cut} of graph {spec.fingerprint[:12]}... "
                                    f"in {spec.encoding}{tables}; the request names {_describe(named)}",
                                    status=422)
        try:  # the frame limit leaves room for max_batch samples of these arrays, no more
            return self.spec.codec.decode(message.arrays, max_batch=self.options.max_batch)
        except TensorCodecError as error:
            raise SplitServiceError(str(error), status=422) from None

    def run(self, crossing: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """The graph's outputs for decoded crossing tensors, and the tail's milliseconds (the
        wait for a free worker included: what a planner's edge time is)."""
        started = time.perf_counter()
        made: dict[str, np.ndarray] = {}
        if self._runner is not None:
            feeds = {spec.name: crossing[spec.name] for spec in self._runner.input_specs}
            with self._slots:
                try:
                    made = self._runner.run(feeds)
                except RunnerError as error:  # e.g. an index the tail's Gather cannot look up
                    raise SplitServiceError(str(error), status=422) from error
        outputs = {spec.name: made[spec.name] if spec.name in made else crossing[spec.name]
                   for spec in self.spec.outputs}
        return outputs, (time.perf_counter() - started) * 1000.0

    def answer(self, body: bytes) -> bytes:
        """The response frame for a request body."""
        crossing = self.read(body)
        outputs, tail_ms = self.run(crossing)
        with self._lock:
            self.counters["requests"] += 1
            self.counters["samples"] += next(iter(crossing.values())).shape[0]
            self.counters["bytes_received"] += len(body)
        return wire.encode(wire.Message(wire.MessageType.RESPONSE, {protocol.TAIL_MS_KEY: tail_ms}, outputs),
                           self.response_limits)

    def info(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
        return {"spec": self.spec.to_dict(), "max_batch": self.options.max_batch,
                "max_request_bytes": self.max_request_bytes, "sample_bytes": self.spec.codec.sample_bytes,
                **counters}


def _describe(named: Any) -> str:
    """What a request's split header names, in one line of bounded length."""
    if not isinstance(named, dict):
        return "no split" if named is None else f"a {type(named).__name__} instead of a split"
    parts = [f"{key}={str(named.get(key))[:16]!r}" for key in ("cut", "fingerprint", "encoding", "tables")
             if key != "tables" or key in named]
    return "another split (" + ", ".join(parts) + ")"


def create_app(tail_bundle: SplitSide | str | os.PathLike, token: str,
               options: SplitServiceOptions | None = None) -> FastAPI:
    """The FastAPI app serving ``tail_bundle``; its :class:`SplitTailService` is ``app.state.service``."""
    if not token:
        raise CoinferError("the split service needs a non-empty token")
    service = SplitTailService(tail_bundle, options)
    app, authorize = create_service_app("coinfer split tail service", SplitServiceError, token)
    app.router.dependencies.append(Depends(authorize))
    app.state.service = service

    @app.get(protocol.INFO_PATH)
    def info() -> dict[str, Any]:
        return service.info()

    @app.post(protocol.INFER_PATH)
    async def infer(request: Request) -> Response:
        body = await read_limited_body(request, service.max_request_bytes, SplitServiceError)
        frame = await run_in_threadpool(service.answer, body)
        return Response(frame, media_type=protocol.CONTENT_TYPE)

    return app


class SplitServer(ThreadedServer):
    """The split service on a uvicorn thread (port 0 picks a free one); for samples and tests.

    Example::

        with SplitServer("out/split/edge", token) as server:
            client = SplitClient.create_from_bundle("out/split/device", server.url, token)
    """

    def __init__(self, tail_bundle: SplitSide | str | os.PathLike, token: str,
                 options: SplitServiceOptions | None = None, host: str = "127.0.0.1", port: int = 0,
                 start_timeout: float = 30.0) -> None:
        app = create_app(tail_bundle, token, options)
        self.service: SplitTailService = app.state.service
        super().__init__(app, host, port, start_timeout, name="the split service")


__all__ = ["SplitServer", "SplitServiceError", "SplitServiceOptions", "SplitTailService", "create_app"]
