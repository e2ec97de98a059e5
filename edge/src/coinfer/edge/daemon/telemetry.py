"""Prometheus metrics of the daemon, read from the same status ``/v1/status`` answers.

The daemon keeps its counts where they are made (the gate runtimes, the filter, the services'
own counters); a scrape asks for the daemon's status and turns it into metric families
(:class:`StatusCollector`), so ``/metrics``, ``/v1/status`` and the status page never
disagree and nothing is counted twice. Every name starts with ``coinfer_``; counters end in
``_total``. The one count made here is :class:`ResponseCounts`, the HTTP answers by service
and status code, which the ASGI middleware :class:`CountResponses` fills in: refusals (401,
413, 400) show up in ``coinfer_http_responses_total`` without any service knowing.

Example:

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> status = {"version": "0.1.0", "started": 0.0, "reloads": {"applied": 1, "refused": 0},
...           "gate": {"budget_fraction": 0.4}, "streams": [], "uploads": None, "infi": None,
...           "split": None, "evolve": None}
>>> registry.register(StatusCollector(lambda: status, ResponseCounts()))
>>> text = generate_latest(registry).decode()
>>> "coinfer_gate_budget_fraction 0.4" in text, 'coinfer_gateway_reloads_total{result="applied"} 1.0' in text
(True, True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CountResponses", "ResponseCounts", "StatusCollector", "service_of"]

#: Which service a request path belongs to (the label of coinfer_http_responses_total).
_PREFIXES = (("/v1/gate/", "uploads"), ("/v1/infi/", "infi"), ("/v1/split/", "split"),
             ("/v1/evolve/", "evolve"))

#: Per-stream counters of the gate: (metric, status key, help).
_STREAM_COUNTERS = (
    ("coinfer_gate_packets", "packets", "Packets demuxed from the stream"),
    ("coinfer_gate_decoded", "decoded", "Packets the gate had decoded"),
    ("coinfer_gate_inferred", "inferred", "Frames the gate chose for inference"),
    ("coinfer_stream_errors", "errors", "Decoder errors and source failures of the stream"),
    ("coinfer_stream_restarts", "restarts", "Times the stream's gate runtime started again"),
    ("coinfer_stream_loops", "loops", "Times a looping file started over"),
)
#: Per-stream counters of the camera-gate uploads (keys of the gateway's stream status).
_UPLOAD_COUNTERS = (
    ("coinfer_uploads_requests", "requests", "Upload requests of the camera stream"),
    ("coinfer_uploads_bytes_received", "bytes_received", "Bytes of upload bodies received"),
    ("coinfer_uploads_packets_received", "packets_received", "Packets the camera uploaded"),
    ("coinfer_uploads_packets_decoded", "packets_decoded", "Uploaded packets decoded"),
    ("coinfer_uploads_packets_dropped", "packets_dropped", "Uploaded packets dropped (awaiting a key frame)"),
    ("coinfer_uploads_frames_decoded", "frames_decoded", "Pictures decoded from uploads"),
    ("coinfer_uploads_frames_inferred", "frames_inferred", "Uploaded pictures the detectors ran on"),
    ("coinfer_uploads_decode_errors", "decode_errors", "Decoder errors of the uploaded stream"),
)


def service_of(path: str) -> str:
    """The service a request path belongs to.

    >>> service_of("/v1/gate/streams/cam0/frames"), service_of("/metrics")
    ('uploads', 'gateway')
    """
    return next((service for prefix, service in _PREFIXES if path.startswith(prefix)), "gateway")


class ResponseCounts:
    """HTTP answers by (service, status code); thread-safe."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, service: str, status: int) -> None:
        with self._lock:
            key = (service, str(status))
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class CountResponses:
    """ASGI middleware counting every HTTP answer into ``counts`` (requests the client left
    before any answer are not counted)."""

    def __init__(self, app: Any, counts: ResponseCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered: list[int] = []

        async def sending(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if answered:
                self.counts.add(service_of(scope["path"]), answered[0])


def _family(kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, documentation: str,
            labels: tuple[str, ...], rows: list[tuple[tuple[str, ...], float]]) -> Metric:
    family = kind(name, documentation, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


class StatusCollector(Collector):
    """Metric families made from ``status()`` (the daemon's ``/v1/status``) at each scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]], responses: ResponseCounts) -> None:
        self.status = status
        self.responses = responses

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names are fixed and coinfer_ prefixed

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        yield _family(GaugeMetricFamily, "coinfer_gateway_info", "The gateway daemon's version", ("version",),
                      [((status["version"],), 1.0)])
        yield GaugeMetricFamily("coinfer_gateway_start_time_seconds", "When the daemon started (Unix time)",
                                value=status["started"])
        yield _family(CounterMetricFamily, "coinfer_gateway_reloads", "Configuration reloads by result",
                      ("result",), [((result,), count) for result, count in status["reloads"].items()
                                    if result in ("applied", "refused")])
        yield GaugeMetricFamily("coinfer_gate_budget_fraction", "The decode budget, a fraction of decode-all",
                                value=status["gate"]["budget_fraction"])
        yield from self._streams(status["streams"])
        yield from self._mlink(status.get("mlink"))
        yield from self._services(status)
        yield _family(CounterMetricFamily, "coinfer_http_responses", "HTTP answers by service and status",
                      ("service", "code"), list(self.responses.snapshot().items()))

    @staticmethod
    def _streams(streams: list[dict[str, Any]]) -> Iterator[Metric]:
        for name, key, documentation in _STREAM_COUNTERS:
            yield _family(CounterMetricFamily, name, documentation, ("stream",),
                          [((stream["name"],), stream[key]) for stream in streams])
        yield _family(GaugeMetricFamily, "coinfer_gate_decode_saved_ratio", "Fraction of packets not decoded",
                      ("stream",), [((stream["name"],), stream["decode_saved"]) for stream in streams])
        yield _family(GaugeMetricFamily, "coinfer_stream_up", "1 while the stream is being gated, else 0",
                      ("stream",), [((s["name"],), float(s["state"] == "running")) for s in streams])
        filtered = [stream for stream in streams if stream["filter"] is not None]
        yield _family(CounterMetricFamily, "coinfer_infi_filter_frames", "Frames shown to the skip filter",
                      ("stream",), [((stream["name"],), stream["filter_frames"]) for stream in filtered])
        yield _family(CounterMetricFamily, "coinfer_infi_filter_skipped", "Frames the skip filter skipped",
                      ("stream",), [((stream["name"],), stream["filter_skipped"]) for stream in filtered])

    @staticmethod
    def _mlink(mlink: dict[str, Any] | None) -> Iterator[Metric]:
        if mlink is None:
            return
        models = mlink["models"]
        yield _family(CounterMetricFamily, "coinfer_mlink_model_runs", "Frames the model ran on under MLink",
                      ("model",), [((name,), counts["runs"]) for name, counts in models.items()])
        yield _family(CounterMetricFamily, "coinfer_mlink_model_predictions",
                      "Frames MLink's links predicted the model's output on",
                      ("model",), [((name,), counts["predictions"]) for name, counts in models.items()])

    @staticmethod
    def _services(status: dict[str, Any]) -> Iterator[Metric]:
        uploads = status["uploads"]
        if uploads is not None:
            streams = uploads["streams"]
            yield GaugeMetricFamily("coinfer_uploads_streams", "Camera streams uploading", value=len(streams))
            for name, key, documentation in _UPLOAD_COUNTERS:
                yield _family(CounterMetricFamily, name, documentation, ("stream",),
                              [((stream["stream"],), stream[key]) for stream in streams])
        infi = status["infi"]
        if infi is not None:
            yield CounterMetricFamily("coinfer_infi_detect_requests", "Frames the detection service answered",
                                      value=infi["requests"])
            yield CounterMetricFamily("coinfer_infi_detect_bytes_received", "Bytes of frames posted to it",
                                      value=infi["bytes_received"])
        split = status["split"]
        if split is not None:
            for key in ("requests", "samples", "bytes_received"):
                yield CounterMetricFamily(f"coinfer_split_{key}", f"Split tail: {key.replace('_', ' ')}",
                                          value=split[key])
        evolve = status["evolve"]
        if evolve is not None:
            yield GaugeMetricFamily("coinfer_evolve_devices", "Devices the evolution service evolves",
                                    value=evolve["devices"])
            yield GaugeMetricFamily("coinfer_evolve_global_version", "Version of the global model",
                                    value=evolve["global_version"])
            yield _family(GaugeMetricFamily, "coinfer_evolve_jobs", "Evolution jobs by status", ("status",),
                          [((state,), count) for state, count in evolve["jobs"].items()])
