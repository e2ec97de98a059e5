"""The device of the latency bench: a process under the CPU quota, on the shaped link.

Run as ``python -m coinfer.bench.split.device_worker`` (the bench does, through
:class:`~coinfer.bench.split.testbed.Testbed`); it speaks the JSON lines of
:mod:`coinfer.bench.split.worker_io`. Why its own process: the quota limits a cgroup, and
the profile that predicts must be taken where the requests run, with the same runtime, one
intra-op thread and a warmed-up session, or the prediction measures another device.

Commands (arrays travel as ``.npz`` files the bench writes; nothing is unpickled):

- ``time_heads``: each head's median milliseconds through :class:`ONNXRunner` (what
  :class:`~coinfer.device.split.SplitClient` runs), and per encoding the milliseconds and
  bytes of the request frame its crossing tensors make (codec + wire, as the client does);
- ``profile_nodes``: ONNX Runtime's per-kernel trace of the whole model here
  (:func:`coinfer.sdk.split.profile.profile_nodes`), for the operator model's predictions;
- ``jpeg_profile``: Pillow JPEG encoding time and sizes of 224 x 224 images;
- ``open_split`` / ``run_split``: a real :class:`SplitClient` of an exported device side,
  and N requests through it to the edge's tail service;
- ``run_jpeg``: the all-edge JPEG baseline: encode here, POST to the edge's baseline endpoint;
- ``ping`` / ``sink``: the round trip of a tiny request, and of a POST of N bytes;
- ``set_pace``: the paced fallback link (sleep ``bytes x 8 / rate`` after each exchange).

Between timed runs the worker pauses (``pause_ms``), as a device does between requests, so
that every timed run starts, like a request's head, with the quota's period refilled.
"""

from __future__ import annotations

import io
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError

#: The path of the edge's bench-only endpoints (:mod:`coinfer.bench.split.edge_worker`).
JPEG_PATH, SINK_PATH = "/v1/baseline/jpeg", "/v1/baseline/sink"
#: The header in which the baseline endpoint reports its own milliseconds.
EDGE_MS_HEADER = "X-Edge-Ms"
#: A request's split header names a 64-hex fingerprint and a 16-hex cut: same bytes as a real one.
_DUMMY_IDENTITY = {"fingerprint": "0" * 64, "cut": "0" * 16}

_clients: dict[str, Any] = {}
_pace: dict[str, float | None] = {"mbit": None}


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` the bench wrote (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def median_ms(run: Callable[[], Any], repeats: int, warmup: int, pause_ms: float) -> tuple[float, Any]:
    """The median milliseconds of ``run()`` over ``repeats`` timed calls after ``warmup``
    untimed ones, pausing ``pause_ms`` before each; and the last result."""
    result = None
    for _ in range(warmup):
        result = run()
    elapsed = []
    for _ in range(repeats):
        time.sleep(pause_ms / 1e3)
        started = time.perf_counter()
        result = run()
        elapsed.append((time.perf_counter() - started) * 1e3)
    return float(statistics.median(elapsed)), result


def _pace_s(nbytes: int) -> float:
    """Sleep what ``nbytes`` take on the paced link (0 when the kernel shapes it); the seconds slept."""
    from coinfer.bench.split.testbed import paced_delay_s

    rate = _pace["mbit"]
    if rate is None:
        return 0.0
    delay = paced_delay_s(nbytes, rate)
    time.sleep(delay)
    return delay


def set_pace(mbit: float | None) -> None:
    """Pace every exchange at ``mbit`` (the fallback link), or not at all (``None``)."""
    if mbit is not None and not mbit > 0:
        raise InvalidArgumentError(f"the pacing rate must be > 0 Mbit/s, got {mbit}")
    _pace["mbit"] = None if mbit is None else float(mbit)


def frame_of(crossing: Mapping[str, np.ndarray], encoding: str) -> bytes:
    """The request frame :class:`SplitClient` sends for these crossing tensors in ``encoding``."""
    from coinfer.sdk import wire
    from coinfer.sdk.split import protocol
    from coinfer.sdk.split.tensors import TensorCodec
    from coinfer.sdk.tensor import TensorSpec

    specs = [TensorSpec(name, (None, *value.shape[1:]), value.dtype.name) for name, value in crossing.items()]
    codec = TensorCodec(specs, encoding)
    arrays = codec.encode(crossing)
    header = {protocol.SPLIT_KEY: {**_DUMMY_IDENTITY, "encoding": encoding}}
    return wire.encode(wire.Message(wire.MessageType.REQUEST, header, arrays), codec.limits(1))


def time_heads(heads: Sequence[Mapping[str, Any]], inputs: str, repeats: int = 5, warmup: int = 1,
               pause_ms: float = 10.0) -> list[dict[str, Any]]:
    """Per head ``{"cut", "path" (None: no head), "crossing": [names], "encodings": [...]}``:
    ``{"cut", "head_ms", "encode_ms": {enc: ms}, "frame_bytes": {enc: bytes}}``."""
    from coinfer.device.runtime.base import RunnerOptions
    from coinfer.device.runtime.onnx import ONNXRunner

    feeds = load_arrays(inputs)
    measured = []
    for head in heads:
        available = dict(feeds)
        head_ms = 0.0
        if head.get("path"):
            runner = ONNXRunner.create_from_file(head["path"], RunnerOptions(num_threads=1))
            named = {spec.name: feeds[spec.name] for spec in runner.input_specs}
            head_ms, made = median_ms(partial(runner.run, named), repeats, warmup, pause_ms)
            available.update(made)
            del runner
        crossing = {name: np.ascontiguousarray(available[name]) for name in head["crossing"]}
        encode_ms, frame_bytes = {}, {}
        for encoding in head["encodings"]:
            ms, frame = median_ms(partial(frame_of, crossing, encoding), repeats, 1, pause_ms)
            encode_ms[encoding], frame_bytes[encoding] = ms, len(frame)
        measured.append({"cut": head["cut"], "head_ms": head_ms, "encode_ms": encode_ms,
                         "frame_bytes": frame_bytes})
    return measured


def node_profile(model: str, inputs: str, repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """:func:`~coinfer.sdk.split.profile.profile_nodes` of the whole model here, as JSON."""
    from coinfer.sdk.split.graph import SplitGraph
    from coinfer.sdk.split.profile import profile_nodes

    graph = SplitGraph.load(model)
    nodes = profile_nodes(graph, load_arrays(inputs), threads=1, repeats=repeats, warmup=warmup)
    return {"graph_sha256": nodes.graph_sha256, "node_ms": {str(k): v for k, v in nodes.node_ms.items()},
            "other_ms": nodes.other_ms, "run_ms": nodes.run_ms, "threads": nodes.threads,
            "batch": nodes.batch, "repeats": nodes.repeats, "runtime": nodes.runtime}


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """An RGB uint8 image as JPEG bytes (Pillow), as a camera would send it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_profile(images: str, quality: int = 90, repeats: int = 3, pause_ms: float = 10.0) -> dict[str, Any]:
    """Median encoding milliseconds over the images (``images`` key of the npz) and their sizes."""
    batch = load_arrays(images)["images"]
    times, sizes = [], []
    for image in batch:
        ms, data = median_ms(partial(encode_jpeg, image, quality), repeats, 1, pause_ms)
        times.append(ms)
        sizes.append(len(data))
    return {"encode_ms": float(statistics.median(times)), "bytes": sizes}


def open_split(key: str, bundle: str, url: str, token: str) -> None:
    """A :class:`SplitClient` of the exported device side ``bundle`` against ``url``, kept as ``key``."""
    from coinfer.device.split import SplitClient

    if key not in _clients:
        _clients[key] = SplitClient.create_from_bundle(bundle, url, token, threads=1, timeout=600.0,
                                                       max_batch=1)


def _sample(arrays: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    count = len(next(iter(arrays.values())))
    return {name: value[index % count:index % count + 1] for name, value in arrays.items()}


def run_split(key: str, inputs: str, requests: int, offset: int = 0, pause_ms: float = 50.0,
              ) -> list[dict[str, float]]:
    """``requests`` inferences through the client ``key``, request i on sample ``offset + i``
    of ``inputs``; per request its total and the client's own breakdown."""
    client = _clients.get(key)
    if client is None:
        raise InvalidArgumentError(f"no split client {key!r}; open_split it first")
    arrays = load_arrays(inputs)
    measured = []
    for index in range(requests):
        named = _sample(arrays, offset + index)
        time.sleep(pause_ms / 1e3)
        started = time.perf_counter()
        client.infer(named)
        stats = client.last
        paced = _pace_s(stats.bytes_sent + stats.bytes_received)
        total = (time.perf_counter() - started) * 1e3
        measured.append({"total_ms": total, "head_ms": stats.head_ms, "encode_ms": stats.encode_ms,
                         "round_trip_ms": stats.round_trip_ms + paced * 1e3, "tail_ms": stats.tail_ms,
                         "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received})
    return measured


def _post(url: str, token: str | None, body: bytes | None) -> tuple[bytes, Mapping[str, str]]:
    """POST ``body`` (or GET without one) and read the whole answer; an HTTP error status is an
    answer too (the round trip is what is timed)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.read(), dict(error.headers)


def run_jpeg(url: str, token: str, images: str, requests: int, offset: int = 0, quality: int = 90,
             pause_ms: float = 50.0) -> list[dict[str, float]]:
    """The all-edge JPEG baseline: per request encode image ``offset + i`` here and POST it to
    the edge's :data:`JPEG_PATH`, which decodes it and runs the whole model."""
    batch = load_arrays(images)["images"]
    measured = []
    for index in range(requests):
        image = batch[(offset + index) % len(batch)]
        time.sleep(pause_ms / 1e3)
        started = time.perf_counter()
        data = encode_jpeg(image, quality)
        encoded = time.perf_counter()
        answer, headers = _post(url + JPEG_PATH, token, data)
        if EDGE_MS_HEADER not in headers:
            raise InvalidArgumentError(f"the baseline endpoint refused the JPEG: {answer[:200]!r}")
        _pace_s(len(data) + len(answer))
        done = time.perf_counter()
        measured.append({"total_ms": (done - started) * 1e3, "encode_ms": (encoded - started) * 1e3,
                         "round_trip_ms": (done - encoded) * 1e3, "edge_ms": float(headers[EDGE_MS_HEADER]),
                         "bytes_sent": len(data), "bytes_received": len(answer)})
    return measured


def ping(url: str, count: int = 5, pause_ms: float = 50.0) -> list[float]:
    """Milliseconds of ``count`` tiny GETs of ``url`` (any status, e.g. 401 without a token):
    the request's fixed cost on this device and link."""
    times = []
    for _ in range(count):
        time.sleep(pause_ms / 1e3)
        started = time.perf_counter()
        answer, _ = _post(url, None, None)
        _pace_s(len(answer))
        times.append((time.perf_counter() - started) * 1e3)
    return times


def sink(url: str, token: str, nbytes: int, count: int = 1, pause_ms: float = 50.0) -> list[float]:
    """Milliseconds of ``count`` POSTs of ``nbytes`` to the edge's :data:`SINK_PATH`."""
    body = bytes(nbytes)
    times = []
    for _ in range(count):
        time.sleep(pause_ms / 1e3)
        started = time.perf_counter()
        answer, _ = _post(url + SINK_PATH, token, body)
        _pace_s(nbytes + len(answer))
        times.append((time.perf_counter() - started) * 1e3)
    return times


HANDLERS: dict[str, Callable[..., Any]] = {
    "time_heads": time_heads, "profile_nodes": node_profile, "jpeg_profile": jpeg_profile,
    "open_split": open_split, "run_split": run_split, "run_jpeg": run_jpeg, "ping": ping, "sink": sink,
    "set_pace": set_pace,
}


def main() -> None:
    from coinfer.bench.split.worker_io import serve

    serve(HANDLERS)


__all__ = ["EDGE_MS_HEADER", "HANDLERS", "JPEG_PATH", "SINK_PATH", "encode_jpeg", "frame_of", "load_arrays",
           "median_ms", "node_profile", "time_heads"]

if __name__ == "__main__":
    main()
