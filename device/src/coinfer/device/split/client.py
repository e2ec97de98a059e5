"""The device side of split inference: run the head, send what crosses the cut, get the outputs.

The device holds only its half of an export (``OUT/device`` of
:func:`~coinfer.sdk.split.bundle.export_split`): the head as ONNX, run on ONNX Runtime
(``pip install coinfer-device[split]``), or as TFLite (``head.tflite``, written by
``coinfer.converters.split_heads.export_tflite_head``), run on LiteRT, and the spec of what
crosses. Each
:meth:`SplitClient.infer` checks the inputs against the graph's, runs the head, encodes the
crossing tensors (float32, float16, int8, or a bottleneck's latent range-coded with the
side's ``tables.npz``, as exported; constriction codes it), posts them to the edge's tail
service (:mod:`coinfer.edge.split.service`) and checks the outputs it answers. It measures
what a planner needs (:class:`CallStats`): the head's milliseconds and the bytes sent.
numpy, ONNX Runtime or LiteRT and the standard library only: no torch, no tensorflow.

Inputs are refused before the head runs or anything is sent:

>>> import tempfile
>>> import numpy as np
>>> from onnx import TensorProto, helper
>>> from coinfer.sdk.split.bundle import export_split
>>> from coinfer.sdk.split.graph import SplitGraph
>>> nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["y"])]
>>> value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])
>>> graph = SplitGraph(helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")])))
>>> work = tempfile.TemporaryDirectory()
>>> device, _ = export_split(graph, graph.cut_after("a"), work.name + "/split", "float16")
>>> client = SplitClient.create_from_bundle(device, "http://127.0.0.1:9", "token")
>>> client.infer(np.zeros((1, 3), np.float32))
Traceback (most recent call last):
    ...
coinfer.device.split.client.SplitClientError: array 'x' must have shape (batch, 4), got (1, 3)
>>> client.infer({"image": np.zeros((1, 4), np.float32)})
Traceback (most recent call last):
    ...
coinfer.device.split.client.SplitClientError: the graph's inputs are ['x']; missing ['x'], unknown ['image']
>>> work.cleanup()
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coinfer.device.runtime.base import Runner, RunnerOptions
from coinfer.device.runtime.onnx import ONNXRunner
from coinfer.device.runtime.tflite import TFLiteRunner
from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.split import protocol
from coinfer.sdk.split.bundle import HEAD_KIND, SplitSide, load_side
from coinfer.sdk.split.tensors import TensorCodecError, check_tensors

#: Bytes of an error answer kept for the message.
_MAX_DETAIL_BYTES = 4096


class SplitClientError(CoinferError):
    """Inputs that do not fit the graph, an edge that refused or could not be reached, or an
    answer that is not the graph's outputs."""


@dataclass(frozen=True)
class CallStats:
    """What one :meth:`SplitClient.infer` cost.

    ``head_ms``: the head on this device (0 where the cut leaves it no node); ``encode_ms``:
    encoding the crossing tensors and the frame; ``bytes_sent``/``bytes_received``: the
    request and answer bodies (frames); ``round_trip_ms``: from sending to the whole answer;
    ``tail_ms``: the edge's time for the tail (its queue included), as it reports it;
    ``clipped``: values of an entropy-coded latent outside its tables' range, sent as the
    range's ends (0 in the other encodings).
    """

    batch: int
    head_ms: float
    encode_ms: float
    bytes_sent: int
    bytes_received: int
    round_trip_ms: float
    tail_ms: float
    clipped: int = 0


class SplitClient:
    """One device running the head of an exported split against one edge tail service.

    ``max_batch`` must not exceed the service's (``GET /v1/split/info``); ``threads`` are
    the head runtime's threads (ONNX Runtime's intra-op threads, or LiteRT's for a
    ``head.tflite``). ``last`` holds the :class:`CallStats` of
    the latest call; ``calls``, ``bytes_sent``, ``bytes_received``, ``head_ms`` and
    ``clipped`` add up.
    """

    def __init__(self, head: SplitSide, url: str, token: str, *, threads: int = 1, timeout: float = 60.0,
                 max_batch: int = protocol.DEFAULT_MAX_BATCH) -> None:
        if head.kind != HEAD_KIND:
            raise SplitClientError(f"{head.artifact.path}: the device runs a split's head, not its "
                                   f"{head.kind}")
        if not url.startswith(("http://", "https://")):
            raise SplitClientError(f"the edge's URL must start with http:// or https://, got {url!r}")
        if not token:
            raise SplitClientError("the split client needs the edge service's bearer token")
        if not (type(max_batch) is int and 1 <= max_batch <= protocol.MAX_BATCH):
            raise SplitClientError(f"max_batch must be an int in [1, {protocol.MAX_BATCH}], "
                                   f"got {max_batch!r}")
        if not timeout > 0:
            raise SplitClientError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.spec = head.spec
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_batch = max_batch
        self._token = token
        self._request_limits = self.spec.request_limits(max_batch)
        self._response_limits = self.spec.response_limits(max_batch)
        self._max_response_bytes = protocol.frame_bytes(self._response_limits)
        self._runner, self._feeds, self._made = self._head_runner(head, threads)
        self.last: CallStats | None = None
        self.calls = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.head_ms = 0.0
        self.clipped = 0

    @classmethod
    def create_from_bundle(cls, head_bundle: SplitSide | str | os.PathLike, url: str, token: str, *,
                           threads: int = 1, timeout: float = 60.0,
                           max_batch: int = protocol.DEFAULT_MAX_BATCH) -> SplitClient:
        """A client of the verified device side ``head_bundle`` (``OUT/device``) for the tail at ``url``."""
        head = head_bundle if isinstance(head_bundle, SplitSide) else load_side(head_bundle, HEAD_KIND)
        return cls(head, url, token, threads=threads, timeout=timeout, max_batch=max_batch)

    def infer(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's outputs for a batch of ``inputs`` (an array for a one-input graph, else
        arrays by input name), computed by the head here and the tail on the edge."""
        named = self._name_inputs(inputs)
        try:
            batch = check_tensors(self.spec.inputs, named, max_batch=self.max_batch)
        except TensorCodecError as error:
            raise SplitClientError(str(error)) from None
        started = time.perf_counter()
        made = {} if self._runner is None else {
            self._made[name]: value for name, value in self._runner.run(
                {name: named[graph_name] for name, graph_name in self._feeds.items()}).items()}
        head_ms = (time.perf_counter() - started) * 1000.0 if self._runner is not None else 0.0
        crossing = {spec.name: named[spec.name] if spec.name in named else made[spec.name]
                    for spec in self.spec.crossing}
        started = time.perf_counter()
        try:
            arrays, clipped = self.spec.codec.encode_counting(crossing)
        except TensorCodecError as error:
            raise SplitClientError(f"cannot send the crossing tensors: {error}") from None
        frame = wire.encode(wire.Message(wire.MessageType.REQUEST, {protocol.SPLIT_KEY: self.spec.identity},
                                         arrays), self._request_limits)
        encode_ms = (time.perf_counter() - started) * 1000.0
        started = time.perf_counter()
        answer = self._post(frame)
        round_trip_ms = (time.perf_counter() - started) * 1000.0
        outputs, tail_ms = self._read_answer(answer, batch)
        self.last = CallStats(batch, head_ms, encode_ms, len(frame), len(answer), round_trip_ms, tail_ms,
                              clipped)
        self.calls += 1
        self.bytes_sent += len(frame)
        self.bytes_received += len(answer)
        self.head_ms += head_ms
        self.clipped += clipped
        return outputs

    @staticmethod
    def _head_runner(head: SplitSide, threads: int) -> tuple[Runner | None, dict[str, str], dict[str, str]]:
        """The head's runner and how its input and output tensors map to the graph's names."""
        model = head.model
        if model is None:
            return None, {}, {}
        options = RunnerOptions(num_threads=threads)
        if model.suffix != TFLiteRunner.suffix:
            runner: Runner = ONNXRunner.create_from_file(model, options)
            return (runner, {spec.name: spec.name for spec in runner.input_specs},
                    {spec.name: spec.name for spec in runner.output_specs})
        runner = TFLiteRunner.create_from_file(model, options)
        names = head.head_tensors
        assert names is not None  # load_side checked that a head.tflite comes with its names
        feeds, made = names
        for what, specs, mapping in (("inputs", runner.input_specs, feeds),
                                     ("outputs", runner.output_specs, made)):
            found = sorted(spec.name for spec in specs)
            if found != sorted(mapping):
                raise SplitClientError(f"{model}: the model's {what} {found[:4]} are not those its manifest "
                                       f"names {sorted(mapping)[:4]}")
        return runner, feeds, made

    def _name_inputs(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` by name, each in its graph dtype (a safe cast of the same kind, such as
        float64 to float32, is made; anything else refused)."""
        expected = [spec.name for spec in self.spec.inputs]
        if isinstance(inputs, Mapping):
            if set(inputs) != set(expected):
                missing = [name for name in expected if name not in inputs]
                unknown = [str(name) for name in list(inputs)[:4] if name not in expected]
                raise SplitClientError(f"the graph's inputs are {expected[:4]}; missing {missing[:4]}, "
                                       f"unknown {unknown}")
            given = dict(inputs)
        elif len(expected) == 1:
            given = {expected[0]: inputs}
        else:
            raise SplitClientError(f"the graph takes {len(expected)} inputs {expected[:4]}: pass them "
                                   "by name")
        named = {}
        for spec in self.spec.inputs:
            value = np.asarray(given[spec.name])
            target = spec.numpy_dtype
            if value.dtype != target and not (value.dtype.kind in "biuf"
                                              and np.can_cast(value.dtype, target, casting="same_kind")):
                raise SplitClientError(f"input {spec.name!r} must be {target.name}, got {value.dtype.name}")
            named[spec.name] = np.ascontiguousarray(value, dtype=target)
        return named

    def _post(self, frame: bytes) -> bytes:
        request = urllib.request.Request(self.url + protocol.INFER_PATH, data=frame, method="POST", headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": protocol.CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = response.read(self._max_response_bytes + 1)
        except urllib.error.HTTPError as error:
            detail = " ".join(error.read(_MAX_DETAIL_BYTES).decode("utf-8", "replace").split())
            raise SplitClientError(f"POST {protocol.INFER_PATH}: HTTP {error.code}: "
                                   f"{detail}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise SplitClientError(f"cannot reach the split service at {self.url}: {reason}") from None
        if len(answer) > self._max_response_bytes:
            raise SplitClientError(f"the answer from {self.url} is over the {self._max_response_bytes}-byte "
                                   "limit of the graph's outputs")
        return answer

    def _read_answer(self, answer: bytes, batch: int) -> tuple[dict[str, np.ndarray], float]:
        try:
            message = wire.decode(answer, self._response_limits)
        except wire.WireError as error:
            raise SplitClientError(f"malformed answer from {self.url}: {error}") from None
        tail_ms = message.header.get(protocol.TAIL_MS_KEY)
        if message.type != wire.MessageType.RESPONSE or not isinstance(tail_ms, int | float):
            raise SplitClientError(f"malformed answer from {self.url}: not a split RESPONSE frame")
        try:
            answered = check_tensors(self.spec.outputs, message.arrays, max_batch=batch)
        except TensorCodecError as error:
            raise SplitClientError(f"the answer from {self.url} is not the graph's outputs: "
                                   f"{error}") from None
        if answered != batch:
            raise SplitClientError(f"the answer from {self.url} has {answered} samples, the request {batch}")
        return {name: np.array(value) for name, value in message.arrays.items()}, float(tail_ms)


__all__ = ["CallStats", "SplitClient", "SplitClientError"]
