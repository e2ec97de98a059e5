"""The edge of the latency bench: tail services and tail timings, on the shaped link, no quota.

Run as ``python -m coinfer.bench.split.edge_worker`` (the bench does, inside the link's
network namespace); it speaks the JSON lines of :mod:`coinfer.bench.split.worker_io`.
Commands:

- ``measure_cuts``: :func:`coinfer.sdk.split.profile.measure_cuts` of chosen cuts here (the
  tails are the edge's times; the heads, unquota'd, show how much slower the device is);
- ``decode_costs``: per cut and encoding, the milliseconds of reading a request frame
  (wire + codec decode), what the tail service does before the tail;
- ``profile_nodes``: ONNX Runtime's per-kernel trace of the whole model here;
- ``serve_split``: the real tail service (:class:`coinfer.edge.split.SplitServer`) of an
  exported edge side, one per bundle, started once and reused across bandwidths (the edge
  tier serves one bundle per service; several run side by side on their own ports here);
- ``serve_baseline`` / ``jpeg_edge_ms``: a bench-only endpoint for what the tail service does
  not do: the all-edge JPEG baseline (decode, preprocess, whole model: :data:`JPEG_PATH`)
  and a byte sink for link probes (:data:`SINK_PATH`). It is the standard library's HTTP
  server, one connection per request like the device's client, behind the same bearer token.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from coinfer.bench.split.device_worker import (
    EDGE_MS_HEADER,
    JPEG_PATH,
    SINK_PATH,
    frame_of,
    load_arrays,
    median_ms,
    node_profile,
)

#: The most the baseline endpoint reads from one request.
MAX_BASELINE_BODY = 64 << 20

_servers: dict[str, Any] = {}


def measure_tails(model: str, inputs: str, cuts: Sequence[int], repeats: int = 5,
                  warmup: int = 1) -> dict[str, Any]:
    """:func:`measure_cuts` of ``cuts`` here, one intra-op thread, as JSON (``CutTimes.to_dict``)."""
    from coinfer.sdk.split.graph import SplitGraph
    from coinfer.sdk.split.profile import measure_cuts

    graph = SplitGraph.load(model)
    times = measure_cuts(graph, load_arrays(inputs), threads=1, repeats=repeats, warmup=warmup, cuts=cuts)
    return times.to_dict()


def decode_costs(items: Sequence[Mapping[str, Any]], repeats: int = 5) -> list[dict[str, Any]]:
    """Per ``{"cut", "tensors": [{"name", "shape", "dtype"}], "encodings"}`` (per-sample
    shapes): ``{"cut", "decode_ms": {enc: ms}}`` of reading a frame of random values."""
    from coinfer.sdk import wire
    from coinfer.sdk.split.tensors import TensorCodec
    from coinfer.sdk.tensor import TensorSpec

    rng = np.random.default_rng(0)
    measured = []
    for item in items:
        crossing = {}
        for tensor in item["tensors"]:
            shape, dtype = (1, *tensor["shape"]), np.dtype(tensor["dtype"])
            values = rng.standard_normal(shape) if dtype.kind == "f" else np.zeros(shape)
            crossing[tensor["name"]] = values.astype(dtype)
        specs = [TensorSpec(name, (None, *value.shape[1:]), value.dtype.name)
                 for name, value in crossing.items()]
        costs = {}
        for encoding in item["encodings"]:
            codec = TensorCodec(specs, encoding)
            frame, limits = frame_of(crossing, encoding), codec.limits(1)

            def read(c: Any = codec, f: bytes = frame, lim: Any = limits) -> Any:
                return c.decode(wire.decode(f, lim).arrays)

            costs[encoding] = median_ms(read, repeats, 1, 0.0)[0]
        measured.append({"cut": item["cut"], "decode_ms": costs})
    return measured


def serve_split(bundle: str, token: str) -> str:
    """The URL of the tail service of the edge side ``bundle`` (started on first use)."""
    from coinfer.edge.split import SplitServer, SplitServiceOptions

    if bundle not in _servers:
        _servers[bundle] = SplitServer(bundle, token, SplitServiceOptions(max_batch=1))
    return str(_servers[bundle].url)


class _WholeModel:
    """The whole model behind a lock (one request at a time, one thread), for the JPEG baseline."""

    def __init__(self, model: str) -> None:
        from coinfer.device.runtime.base import RunnerOptions
        from coinfer.device.runtime.onnx import ONNXRunner

        self.runner = ONNXRunner.create_from_file(model, RunnerOptions(num_threads=1))
        self.lock = threading.Lock()

    def from_jpeg(self, data: bytes) -> np.ndarray:
        """Decode, preprocess as EfficientNet-Lite is (224 x 224, ``(x - 127) / 128``), run."""
        from PIL import Image

        from coinfer.bench.models.efficientnet_lite import preprocess

        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
        feeds = {self.runner.input_specs[0].name: preprocess(pixels)}
        with self.lock:
            outputs = self.runner.run(feeds)
        return np.ascontiguousarray(next(iter(outputs.values())), dtype="<f4")


def _handler(token: str, model: _WholeModel | None) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes, edge_ms: float | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if edge_ms is not None:
                self.send_header(EDGE_MS_HEADER, f"{edge_ms:.4f}")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(404 if self.headers.get("Authorization") == expected else 401, b"")

        def do_POST(self) -> None:
            if self.headers.get("Authorization") != expected:
                return self._answer(401, b"token")
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_BASELINE_BODY:
                return self._answer(413, b"body")
            body = self.rfile.read(int(length))
            if self.path == SINK_PATH:
                return self._answer(200, b"ok")
            if self.path == JPEG_PATH and model is not None:
                started = time.perf_counter()
                try:
                    logits = model.from_jpeg(body)
                except Exception as error:  # a body that is no JPEG: refuse, keep serving
                    return self._answer(422, str(error).encode()[:200])
                return self._answer(200, logits.tobytes(), (time.perf_counter() - started) * 1e3)
            return self._answer(404, b"path")

    return Handler


def serve_baseline(token: str, model: str | None = None) -> str:
    """The URL of the bench-only endpoint (sink always; JPEG baseline when ``model`` is given)."""
    key = f"baseline:{model}"
    if key not in _servers:
        whole = _WholeModel(model) if model else None
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(token, whole))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _servers[key] = server
    host, port = _servers[key].server_address[:2]
    return f"http://{host}:{port}"


def jpeg_edge_ms(model: str, images: str, quality: int = 90, repeats: int = 3) -> float:
    """Median milliseconds of decode + preprocess + whole model for JPEGs of the npz's ``images``."""
    from coinfer.bench.split.device_worker import encode_jpeg

    whole = _WholeModel(model)
    times = []
    for image in load_arrays(images)["images"]:
        data = encode_jpeg(image, quality)
        times.append(median_ms(partial(whole.from_jpeg, data), repeats, 1, 0.0)[0])
    return float(statistics.median(times))


def stop_all() -> None:
    """Stop every service (the worker's exit does too)."""
    for server in _servers.values():
        if isinstance(server, ThreadingHTTPServer):
            server.shutdown()
        else:
            server.stop()
    _servers.clear()


HANDLERS: dict[str, Callable[..., Any]] = {
    "measure_cuts": measure_tails, "decode_costs": decode_costs, "profile_nodes": node_profile,
    "serve_split": serve_split, "serve_baseline": serve_baseline, "jpeg_edge_ms": jpeg_edge_ms,
    "stop_all": stop_all,
}


def main() -> None:
    from coinfer.bench.split.worker_io import serve

    try:
        serve(HANDLERS)
    finally:
        stop_all()


__all__ = ["HANDLERS", "decode_costs", "jpeg_edge_ms", "measure_tails", "serve_baseline", "serve_split"]

if __name__ == "__main__":
    main()
