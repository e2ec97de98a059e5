"""Gate one camera's packets before upload: send what the edge needs, within an uplink budget.

A camera (or the Raspberry Pi beside it) sees every compressed packet of its stream but
has only ``uplink_bytes_per_s`` to reach the edge. :class:`CameraGate` decides per packet,
before anything is decoded, whether to upload it for inference; an uploaded packet travels
with the reference packets it needs that were not sent yet, so the edge decodes it exactly.

Decision. The value of a packet is the contextual predictor's necessity probability
(:class:`~coinfer.sdk.gate.predictor.ContextualPredictor` in numpy, or its TFLite export run
through :func:`coinfer.device.runtime.create_runner`), or the temporal UCB estimate when no
predictor is given. Its cost is the bytes to send now: its size plus the sizes of its
pending references (:class:`~coinfer.sdk.gate.dependencies.DependencyTracker` with own
costs = packet sizes). One stream has no other packets to rank against, so
:class:`~coinfer.sdk.gate.uplink.UplinkPrice` answers the online-knapsack question with a
price per byte and a token bucket (``burst_bytes`` deep, refilled at the budget on the
stream's clock): send when ``value >= price * cost`` and the request body fits the bucket;
the price then moves with the over- or underspend so the long-run spend tracks the budget.

``spent`` is whole request bodies (frame headers and the parameters included; HTTP and
TCP overhead are not counted).

The first decodable packet (a random-access picture) is always sent, even on an empty
bucket, so the edge can start; so is a picture larger than the whole bucket once the
bucket is full. Both may overdraw the bucket; the debt is repaid before anything else goes.

Feedback (optional). A sink may answer with the edge's necessity results (did the
inference result change?). The newest one is what the temporal estimator records for
every packet sent for inference; without feedback every such packet counts as necessary.

Wire messages: :mod:`coinfer.sdk.gate.protocol` (parameters, packet chunks, end; the edge
answers JSON with necessity results and ``resync``, which asks the camera to resend its
parameters and restart at a random-access packet).

Transport: :class:`GatewayUploader` POSTs bodies to
``{url}/v1/gate/streams/{stream}/frames`` with ``Authorization: Bearer <token>`` (urllib only),
retrying with backoff; any callable taking the body bytes works as a sink too.

Example::

    with PacketSource.open("rtsp://127.0.0.1:8554/cam0") as source:
        uploader = GatewayUploader("http://edge:8100", "cam0", token)
        gate = CameraGate(source.parameters, uploader, CameraGateOptions(uplink_bytes_per_s=40_000),
                          stream="cam0", predictor=create_runner("out/predictor-tflite"))
        stats = gate.run(source)
"""

from __future__ import annotations

import http.client
import json
import math
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.device.gate.source import SourcePacket
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.gate.dependencies import DependencyTracker
from coinfer.sdk.gate.estimator import SlidingWindowUCB
from coinfer.sdk.gate.features import SizeWindows
from coinfer.sdk.gate.packet import PacketInfo
from coinfer.sdk.gate.predictor import ContextualPredictor
from coinfer.sdk.gate.protocol import (
    CONTENT_TYPE,
    StreamParameters,
    check_stream_id,
    encode_end,
    encode_packets,
    encode_parameters,
    frames_path,
)
from coinfer.sdk.gate.uplink import UplinkPrice

__all__ = [
    "CameraGate",
    "CameraGateOptions",
    "CameraGateStats",
    "GatewayUploader",
    "PacketDecision",
    "Sink",
    "UplinkError",
    "UplinkPrice",
    "UplinkRefused",
]

_DEFAULT_FRAME_RATE = 25

#: Receives one request body (one or more frames); returns the edge's JSON reply, or None.
Sink = Callable[[bytes], Mapping[str, Any] | None]


# ----------------------------------------------------------------------------- transport


class UplinkError(CoinferError):
    """The gateway could not be reached or kept failing; the camera resyncs and goes on."""


class UplinkRefused(UplinkError):
    """The gateway refused a request (bad token, malformed body): retrying will not help."""


class GatewayUploader:
    """POSTs bodies to an edge gateway with a bearer token; a :data:`Sink`.

    Transport failures, 429 and 5xx answers are retried ``retries`` times with exponential
    backoff; other 4xx answers raise :class:`UplinkRefused` at once. ``bytes_sent`` counts the
    bodies of every attempt that reached the network (retries included).

    Example::

        uploader = GatewayUploader("http://127.0.0.1:8100", "cam0", token)
        reply = uploader(body)
    """

    def __init__(self, url: str, stream: str, token: str, *, timeout: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2, max_reply_bytes: int = 1 << 20) -> None:
        if retries < 0 or backoff_s < 0:
            raise InvalidArgumentError(f"retries and backoff_s must be >= 0, got {retries}, {backoff_s}")
        self.url = url.rstrip("/") + frames_path(stream)
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self.max_reply_bytes = max_reply_bytes
        self._token = token
        self.bytes_sent = 0
        self.requests = 0
        self.failed_attempts = 0

    def __call__(self, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": CONTENT_TYPE})
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    self.bytes_sent += len(body)
                    reply = response.read(self.max_reply_bytes + 1)
            except urllib.error.HTTPError as error:
                self.bytes_sent += len(body)
                detail = error.read(4096).decode("utf-8", "replace")
                if error.code != 429 and error.code < 500:
                    raise UplinkRefused(f"POST {self.url}: HTTP {error.code}: {detail}") from error
                last = f"HTTP {error.code}: {detail}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                last = str(getattr(error, "reason", error))
            else:
                if len(reply) > self.max_reply_bytes:
                    raise UplinkRefused(f"POST {self.url}: reply over {self.max_reply_bytes} bytes")
                try:
                    answer = json.loads(reply) if reply else {}
                except ValueError as error:
                    raise UplinkRefused(f"POST {self.url}: reply is not JSON: {error}") from error
                if not isinstance(answer, dict):
                    raise UplinkRefused(f"POST {self.url}: reply is not a JSON object")
                return answer
            self.failed_attempts += 1
        raise UplinkError(f"POST {self.url} failed {self.retries + 1} times; last: {last}")


# ----------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class CameraGateOptions:
    """Uplink budget and gate settings.

    ``burst_seconds`` sizes the token bucket (``burst_bytes`` overrides it);
    ``price_step`` and ``price_step_full`` are the price's reaction per round budget of over-
    or underspend, the latter while the bucket is full (see :class:`UplinkPrice`);
    ``max_pending_bytes`` bounds the unsent references held for later (beyond it the gate
    forgets them and waits for the next random-access packet).
    """

    uplink_bytes_per_s: float
    burst_seconds: float = 2.0
    burst_bytes: float | None = None
    price_step: float = 0.05
    price_step_full: float = 0.25
    ucb_window: int = 30
    feedback: bool = True
    max_packets_per_frame: int = 1024
    max_pending_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        if not self.uplink_bytes_per_s > 0 or not self.burst_seconds > 0:
            raise InvalidArgumentError(f"uplink_bytes_per_s and burst_seconds must be > 0, got "
                                       f"{self.uplink_bytes_per_s}, {self.burst_seconds}")
        if self.burst_bytes is not None and not self.burst_bytes > 0:
            raise InvalidArgumentError(f"burst_bytes must be > 0, got {self.burst_bytes}")
        if self.max_packets_per_frame < 1 or self.max_pending_bytes < 1:
            raise InvalidArgumentError(f"max_packets_per_frame and max_pending_bytes must be >= 1, got "
                                       f"{self.max_packets_per_frame} and {self.max_pending_bytes}")


@dataclass(frozen=True)
class PacketDecision:
    """What happened to one packet: ``sent`` means uploaded for inference, ``packets`` and
    ``bytes`` what went up with it (its pending references and the parameters included)."""

    index: int
    value: float
    cost: float
    price: float
    sent: bool
    packets: int
    bytes: int


@dataclass
class CameraGateStats:
    """Running totals; ``necessary_results`` is the edge's feedback in arrival order."""

    packets_seen: int = 0
    packets_inferred: int = 0
    packets_uploaded: int = 0
    bytes_sent: int = 0
    media_seconds: float = 0.0
    blocked_rounds: int = 0
    send_failures: int = 0
    resyncs: int = 0
    dropped_pending: int = 0
    necessary_results: list[bool] = field(default_factory=list)

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_sent / self.media_seconds if self.media_seconds > 0 else 0.0


class CameraGate:
    """Budgeted uplink gating of one stream; feed packets in decode order with :meth:`push`.

    ``predictor``: a :class:`ContextualPredictor`, a runner of its TFLite export (anything
    with ``run({"i_view", "p_view", "temporal"}) -> {name: probabilities}``), or None for
    the temporal estimate alone. ``sink`` receives each request body (see :data:`Sink`).

    Example::

        gate = CameraGate(source.parameters, collected.append, CameraGateOptions(uplink_bytes_per_s=8000))
        stats = gate.run(source)          # push every packet, then send the end message
    """

    def __init__(self, parameters: StreamParameters, sink: Sink, options: CameraGateOptions, *,
                 stream: str = "camera", predictor: Any = None) -> None:
        self.parameters = parameters
        self.options = options
        self.stream = check_stream_id(stream)
        self.session = secrets.token_hex(8)
        self.stats = CameraGateStats()
        self._sink = sink
        self._predictor = predictor
        rate = float(parameters.frame_rate or _DEFAULT_FRAME_RATE)
        burst = options.burst_bytes or options.uplink_bytes_per_s * options.burst_seconds
        self.price = UplinkPrice(options.uplink_bytes_per_s, burst, options.uplink_bytes_per_s / rate,
                                 options.price_step, options.price_step_full)
        self._windows = SizeWindows(1, _predictor_window(predictor))
        self._estimator = SlidingWindowUCB(1, options.ucb_window)
        self._tracker = DependencyTracker(1)
        self._held: dict[int, tuple[PacketInfo, bytes]] = {}
        self._held_bytes = 0
        self._seq = 0
        self._announce = True
        self._starting = True
        self._necessary = True
        self._clock_start: float | None = None
        self._last_time: float | None = None

    def run(self, packets: Iterable[SourcePacket]) -> CameraGateStats:
        for packet in packets:
            self.push(packet)
        self.close()
        return self.stats

    def push(self, packet: SourcePacket) -> PacketDecision:
        """Decide on one packet (decode order); upload it with its pending references if chosen."""
        info = packet.info
        tracker = self._tracker  # a failed upload or a resync request replaces it
        self._advance_clock(info)
        self.stats.packets_seen += 1
        if info.random_access:
            self._forget_pending()
        cost = float(self._tracker.arrive([info], np.array([float(info.size)]))[0])
        i_view, p_view = self._windows.push(np.array([info.size]), np.array([int(info.picture)]))
        value = self._value(i_view, p_view, self._estimator.estimate())
        price = self.price.price
        decodable = math.isfinite(cost)
        mandatory = decodable and self._starting
        sent, blocked, spent, count = False, False, 0, 0
        if decodable and (mandatory or self.price.admits(value, cost)):
            plan = [*((held, data, False) for held, data in self._held.values()), (info, packet.data, True)]
            body = self._body(plan)
            if mandatory or self.price.affordable(len(body)):
                sent = self._deliver(body, plan)
                spent, count = (len(body), len(plan)) if sent else (0, 0)
            else:
                blocked = True
                self.stats.blocked_rounds += 1
        if not sent and decodable and info.reference and tracker is self._tracker:
            self._hold(info, packet.data)
        self._estimator.update(np.array([sent]), np.array([self._necessary]))
        self._windows.mark_decoded(np.array([sent]))
        self.price.settle(spent, blocked)
        return PacketDecision(info.index, value, cost, price, sent, count, spent)

    def close(self) -> None:
        """Tell the edge the stream ended (it flushes its decoder and reports the last results)."""
        delivered, reply = self._transmit(encode_end(self.stream, self.session))
        if delivered and reply:
            self._apply(reply)

    def resync(self) -> None:
        """Resend the parameters and restart at the next random-access packet (edge restart, lost data)."""
        self.stats.resyncs += 1
        self._tracker = DependencyTracker(1)
        self._forget_pending()
        self._announce = True
        self._starting = True

    def _advance_clock(self, info: PacketInfo) -> None:
        """Refill the bucket by the media time since the previous packet (wall time for a bare stream)."""
        stamp = info.dts if info.dts is not None else info.pts
        if stamp is not None:
            now = float(stamp * self.parameters.time_base)
        elif self.parameters.frame_rate:
            now = float(info.index / self.parameters.frame_rate)
        else:
            now = time.monotonic()
        if self._clock_start is None or self._last_time is None:  # the first packet: both are None
            self._clock_start = self._last_time = now
        elapsed = max(now - self._last_time, 0.0)
        self._last_time = max(now, self._last_time)
        self.stats.media_seconds = self._last_time - self._clock_start
        self.price.refill(elapsed)

    def _value(self, i_view: np.ndarray, p_view: np.ndarray, temporal: np.ndarray) -> float:
        if self._predictor is None:
            return float(temporal[0])
        if isinstance(self._predictor, ContextualPredictor):
            probabilities = self._predictor.predict(i_view, p_view, temporal)
        else:
            outputs = self._predictor.run({"i_view": i_view, "p_view": p_view,
                                           "temporal": temporal.reshape(-1, 1).astype(np.float32)})
            probabilities = next(iter(outputs.values()))
        return float(np.max(probabilities))

    def _body(self, plan: list[tuple[PacketInfo, bytes, bool]]) -> bytes:
        """The request body for ``plan``: the parameters first when due, then its chunks."""
        step = self.options.max_packets_per_frame
        chunks = [plan[start:start + step] for start in range(0, len(plan), step)]
        parts = [encode_parameters(self.stream, self.session, self.parameters)] if self._announce else []
        parts += [encode_packets(self.stream, self.session, self._seq + number, chunk)
                  for number, chunk in enumerate(chunks)]
        return b"".join(parts)

    def _deliver(self, body: bytes, plan: list[tuple[PacketInfo, bytes, bool]]) -> bool:
        # A failed request may still have reached the edge, so its numbers are used up either
        # way: reusing them would make the edge drop the next chunk as a retry.
        self._seq += -(-len(plan) // self.options.max_packets_per_frame)
        delivered, reply = self._transmit(body)
        if not delivered:
            return False
        decoded = self._tracker.decode(np.array([True]))[0]
        if [p.index for p in decoded] != [info.index for info, _, _ in plan]:
            raise CoinferError("camera gate lost track of its pending references")  # an internal bug
        self._forget_pending()
        self._announce = self._starting = False
        self.stats.packets_inferred += 1
        self.stats.packets_uploaded += len(plan)
        if reply:
            self._apply(reply)
        return True

    def _transmit(self, body: bytes) -> tuple[bool, Mapping[str, Any] | None]:
        """Hand ``body`` to the sink; a transport failure costs a resync, a refusal propagates."""
        try:
            reply = self._sink(body)
        except UplinkRefused:
            raise
        except UplinkError:
            self.stats.send_failures += 1
            self.resync()
            return False, None
        self.stats.bytes_sent += len(body)
        self.price.spend(len(body))
        return True, reply

    def _apply(self, reply: Mapping[str, Any]) -> None:
        if self.options.feedback:
            for result in reply.get("results") or []:
                if isinstance(result, Mapping) and isinstance(result.get("necessary"), bool):
                    self._necessary = result["necessary"]
                    self.stats.necessary_results.append(self._necessary)
        if reply.get("resync") is True:
            self.resync()

    def _hold(self, info: PacketInfo, data: bytes) -> None:
        """Keep an unsent reference for later; past the memory bound, forget and wait for a key frame."""
        if self._held_bytes + len(data) > self.options.max_pending_bytes:
            self.stats.dropped_pending += len(self._held) + 1
            self._tracker = DependencyTracker(1)
            self._forget_pending()
            return
        self._held[info.index] = (info, data)
        self._held_bytes += len(data)

    def _forget_pending(self) -> None:
        self._held.clear()
        self._held_bytes = 0


def _predictor_window(predictor: Any) -> int:
    if predictor is None:
        return 5
    if isinstance(predictor, ContextualPredictor):
        return predictor.options.window
    for spec in predictor.input_specs:
        if spec.name == "i_view":
            return int(spec.shape[1])
    raise CoinferError("the predictor runner has no 'i_view' input; is it a contextual predictor export?")
