"""The cloud package's Prometheus metrics: what an operator graphs and alerts on.

Each running cloud app owns one :class:`CloudMetrics` (its own registry, so two apps in one
process, as in tests, never share counts), served at ``/metrics`` behind the token. Request
counts and refusals come from an ASGI middleware that sees every answer's status, so no
route has to remember to count; the STIP forward time is measured around the model call
(:class:`TimedStipServer`); sessions, rounds and update counts are read from the services
when Prometheus scrapes, so they can never drift from what the services hold.

Metric names start with ``coinfer_``:

- ``coinfer_stip_requests_total{code}``, ``coinfer_mlink_requests_total{code}``: answers per
  service and HTTP status;
- ``coinfer_requests_refused_total{reason}``: answers of 400 and above, by reason (``token``,
  ``too_large``, ``malformed``, ``forbidden``, ``not_found``, ``conflict``, ``busy``, ...);
- ``coinfer_stip_forward_seconds{call}`` (histogram): model time of a ``forward`` or a session
  ``step``, the wait for the model included; ``coinfer_stip_sessions`` and
  ``coinfer_stip_sessions_max``: open generation sessions and their limit;
- ``coinfer_mlink_round``, ``coinfer_mlink_staged``, ``coinfer_mlink_updates_total{outcome}``,
  ``coinfer_mlink_updates_clipped_total``, ``coinfer_mlink_rounds_rejected_total``,
  ``coinfer_mlink_bytes_total{direction}``.

Example:

>>> metrics = CloudMetrics()
>>> metrics.count_answer("/v1/forward", 413)
>>> metrics.count_answer("/v1/mlink/status", 200)
>>> text = metrics.exposition()
>>> 'coinfer_stip_requests_total{code="413"} 1.0' in text
True
>>> 'coinfer_requests_refused_total{reason="too_large"} 1.0' in text
True
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coinfer.cloud.mlink.server import LinkAggregator
from coinfer.cloud.stip.server import ServerOptions, StipModelServer
from coinfer.sdk.mlink.fedavg import GRAPH_PATH
from coinfer.sdk.stip import protocol

__all__ = ["REFUSAL_REASONS", "CloudMetrics", "RequestCounter", "TimedStipServer", "service_of"]

#: The ``reason`` label of a refused answer, by HTTP status (other 4xx: ``refused``, 5xx: ``error``).
REFUSAL_REASONS = {400: "malformed", 401: "token", 403: "forbidden", 404: "not_found", 405: "method",
                   409: "conflict", 413: "too_large", 415: "media_type", 422: "malformed", 429: "busy",
                   503: "unavailable"}
#: Every MLink endpoint lives below this prefix.
MLINK_PREFIX = GRAPH_PATH.rsplit("/", 1)[0] + "/"
#: Buckets of the forward histogram: a token step on a small model to a long batch on a large one.
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def service_of(path: str) -> str | None:
    """Which service answers ``path``: ``"stip"``, ``"mlink"``, or None (health, metrics, unknown).

    >>> service_of("/v1/sessions/abc/step"), service_of("/v1/mlink/updates"), service_of("/healthz")
    ('stip', 'mlink', None)
    """
    if path.startswith(MLINK_PREFIX):
        return "mlink"
    if path in (protocol.INFO_PATH, protocol.FORWARD_PATH) or path == protocol.SESSIONS_PATH \
            or path.startswith(protocol.SESSIONS_PATH + "/"):
        return "stip"
    return None


def refusal_reason(status: int) -> str:
    """The ``reason`` label of an answer with ``status`` (400 or above)."""
    return REFUSAL_REASONS.get(status, "error" if status >= 500 else "refused")


class CloudMetrics:
    """The registry of one cloud app and the counters its middleware and services feed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = {
            service: Counter(f"coinfer_{service}_requests", f"requests answered by the {title}", ["code"],
                             registry=self.registry)
            for service, title in (("stip", "STIP model server"), ("mlink", "MLink aggregation service"))}
        self.refused = Counter("coinfer_requests_refused", "requests answered with a status of 400 or above, "
                               "by reason", ["reason"], registry=self.registry)
        self.forward_seconds = Histogram("coinfer_stip_forward_seconds",
                                         "seconds a STIP forward or session step spent in the server, the "
                                         "wait for the model included", ["call"], buckets=FORWARD_BUCKETS,
                                         registry=self.registry)

    def count_answer(self, path: str, status: int) -> None:
        """Count one answer with ``status`` to a request for ``path``."""
        service = service_of(path)
        if service is not None:
            self.requests[service].labels(str(status)).inc()
        if status >= 400:
            self.refused.labels(refusal_reason(status)).inc()

    def watch_stip(self, server: StipModelServer) -> None:
        """Report ``server``'s open sessions (and their limit) at every scrape."""
        self.registry.register(_StipCollector(server))

    def watch_mlink(self, aggregator: LinkAggregator) -> None:
        """Report ``aggregator``'s round, staged updates and counters at every scrape."""
        self.registry.register(_MLinkCollector(aggregator))

    def exposition(self) -> str:
        """The registry in Prometheus' text format (what ``/metrics`` answers)."""
        return generate_latest(self.registry).decode()


class RequestCounter:
    """ASGI middleware counting every HTTP answer in :class:`CloudMetrics`, refusals included;
    a request whose handler raised is counted as the 500 the server then answers."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: CloudMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self.metrics.count_answer(scope["path"], status)


class TimedStipServer(StipModelServer):
    """A :class:`~coinfer.cloud.stip.server.StipModelServer` whose forwards and session steps are
    timed into ``coinfer_stip_forward_seconds`` (refused ones are not: they never ran the model)."""

    def __init__(self, model: Any, info: dict[str, Any], options: ServerOptions,
                 metrics: CloudMetrics) -> None:
        super().__init__(model, info, options)
        self._seconds = metrics.forward_seconds

    def forward(self, embeds: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        start = time.perf_counter()
        output = super().forward(embeds, mask)
        self._seconds.labels("forward").observe(time.perf_counter() - start)
        return output

    def step(self, session_id: str, embeds: np.ndarray | None,
             token_ids: np.ndarray | None = None) -> np.ndarray:
        start = time.perf_counter()
        output = super().step(session_id, embeds, token_ids)
        self._seconds.labels("step").observe(time.perf_counter() - start)
        return output


class _StipCollector(Collector):
    def __init__(self, server: StipModelServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("coinfer_stip_sessions", "STIP generation sessions holding a KV cache",
                                value=self.server.open_sessions)
        yield GaugeMetricFamily("coinfer_stip_sessions_max", "the most STIP sessions open at once",
                                value=self.server.options.max_sessions)


class _MLinkCollector(Collector):
    def __init__(self, aggregator: LinkAggregator) -> None:
        self.aggregator = aggregator

    def collect(self) -> Iterator[Metric]:
        status = self.aggregator.status()
        yield GaugeMetricFamily("coinfer_mlink_round", "the MLink aggregation round open now",
                                value=status["round"])
        yield GaugeMetricFamily("coinfer_mlink_staged", "updates staged for the open round",
                                value=len(status["staged"]))
        updates = CounterMetricFamily("coinfer_mlink_updates", "MLink updates received, by outcome",
                                      labels=["outcome"])
        updates.add_metric(["accepted"], status["updates_accepted"])
        updates.add_metric(["refused"], status["updates_refused"])
        yield updates
        yield CounterMetricFamily("coinfer_mlink_updates_clipped", "updates whose norm was clipped",
                                  value=status["updates_clipped"])
        yield CounterMetricFamily("coinfer_mlink_rounds_rejected", "rounds discarded as diverging",
                                  value=status["rounds_rejected"])
        moved = CounterMetricFamily("coinfer_mlink_bytes", "MLink update and global-link bytes, by direction",
                                    labels=["direction"])
        moved.add_metric(["received"], status["bytes_received"])
        moved.add_metric(["sent"], status["bytes_sent"])
        yield moved
