"""The edge gateway's ingest service: cameras upload gated packets, the edge decodes and infers.

Each camera runs :class:`coinfer.device.gate.CameraGate`, which POSTs the packets it chose
(and the references they need) as wire frames; this service keeps one decoder per stream,
decodes every packet in arrival order (bit-identical to decoding the whole stream, because
the camera never omits a needed reference), runs an optional
:class:`~coinfer.edge.gate.inference.InferencePlugin` on the pictures the camera chose, and
answers with necessity feedback: did a task's result differ from the stream's last one,
per the task's redundancy measure (``count`` unless ``redundancy`` says otherwise).
The message formats are specified in :mod:`coinfer.sdk.gate.protocol`.

Endpoints (all but ``/healthz`` need ``Authorization: Bearer <token>``):

- ``POST /v1/gate/streams/{stream_id}/frames``: a body of one or more frames. 401 without the
  token, 413 over the size limit or the packet limit, 400 with a message for anything
  malformed or a chunk numbered too far ahead (the stream's state is untouched then), 429
  when every stream slot is taken. Answers JSON with the packets accepted, frames decoded,
  decode errors, the new results and ``resync``.
- ``GET /v1/gate/streams/{stream_id}``: the stream's status and counters.
- ``GET /healthz``.

Robustness: a chunk whose ``seq`` was seen is a retry and is ignored; after a gap (a lost
request), a new session or a decoder restart the stream waits for a random-access packet
and asks the camera to resync. Parameters (a new session, or the camera's resync) restart
the numbering. The session id is no secret from other token holders, so ``seq`` is bounded:
a chunk more than ``max_seq_gap`` past the last one is refused, and one that far behind is
no retry (the camera is asked to resync). Work is bounded: at most ``max_packets_per_request``
packets are decoded per request, counted before any is. Memory per stream is bounded: one
decoder, a bounded map of packets awaiting their pictures, a bounded list of recent results;
idle streams are evicted when a new one needs their slot.

Example::

    coinfer gate serve --port 8100 --tasks faces   # token from COINFER_TOKEN or --token-file

    app = create_gateway_app(GatewayOptions(plugin=DetectorPlugin(("faces",))), token)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from coinfer.edge.gate.decoding import StreamDecoder, capture_decoder_errors, frame_array, frame_key
from coinfer.edge.gate.inference import InferencePlugin
from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.gate.packet import PacketInfo
from coinfer.sdk.gate.protocol import (
    FRAMES_PATH,
    EndMessage,
    GateMessage,
    GateProtocolError,
    PacketsMessage,
    ParametersMessage,
    StreamParameters,
    check_stream_id,
    parse_body,
)
from coinfer.sdk.gate.redundancy import REDUNDANCY, create_measure
from coinfer.sdk.service import (
    ServiceError,
    ThreadedServer,
    create_service_app,
    evict_idle,
    read_limited_body,
)

STATUS_PATH = "/v1/gate/streams/{stream_id}"
#: Packets fed to a decoder whose picture has not come out yet; more means the stream is broken.
MAX_AWAITING = 512

#: Sees every decoded picture: (stream id, its packet, the picture, whether the camera chose it).
FrameHook = Callable[[str, PacketInfo, av.VideoFrame, bool], None]


class GatewayError(ServiceError):
    """A request the gateway refuses; ``status`` is the HTTP status to answer with."""


@dataclass(frozen=True)
class GatewayOptions:
    """What one gateway accepts and does.

    ``plugin`` runs on the pictures the camera chose for inference; ``redundancy`` maps
    its tasks to measures as in :class:`~coinfer.edge.gate.runtime.RuntimeOptions`.
    ``frame_hook`` sees every decoded picture, references included (to record or forward).
    ``max_packets_per_request`` bounds the decoding one request costs under its stream's
    lock; the default, 1024, is a 34-second group of pictures at 30 frames per second (a
    camera sends at most the references since the last random-access packet with a picture).
    ``max_seq_gap``: how far a chunk's ``seq`` may be from the stream's last one (see above).
    """

    max_request_bytes: int = 64 << 20
    max_streams: int = 64
    max_frames_per_request: int = 256
    max_packets_per_frame: int = 4096
    max_packets_per_request: int = 1024
    max_seq_gap: int = 1024
    stream_idle_seconds: float = 600.0
    results_kept: int = 32
    codecs: tuple[str, ...] = ("h264", "hevc", "vp9", "av1", "mjpeg")
    plugin: InferencePlugin | None = None
    redundancy: Mapping[str, str] = field(default_factory=dict)
    frame_hook: FrameHook | None = None

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_streams", "max_frames_per_request", "max_packets_per_frame",
                     "max_packets_per_request", "max_seq_gap", "results_kept"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")
        REDUNDANCY.check(self.redundancy.values())

    @property
    def limits(self) -> wire.WireLimits:
        return wire.WireLimits(max_header_bytes=min(self.max_request_bytes, 4 << 20),
                               max_payload_bytes=self.max_request_bytes, max_arrays=1, max_ndim=1)


@dataclass
class _Stream:
    """One camera's state; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    session: str | None = None
    parameters: StreamParameters | None = None
    decoder: StreamDecoder | None = None
    last_seq: int | None = None
    wait_random_access: bool = True
    awaiting: OrderedDict[int, tuple[PacketInfo, bool]] = field(default_factory=OrderedDict)
    reported: dict[str, Any] | None = None
    results: deque[dict[str, Any]] = field(default_factory=deque)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests", "bytes_received", "packets_received", "packets_decoded", "packets_dropped",
         "duplicate_chunks", "frames_decoded", "frames_inferred", "resyncs_requested", "sessions"), 0))
    #: Errors and corrupt pictures of decoders this stream already replaced.
    retired_errors: int = 0
    retired_corrupt: int = 0
    last_active: float = field(default_factory=time.monotonic)


class EdgeGateway:
    """Per-stream ingest state and logic, without HTTP (the app and in-process sinks share it).

    Example::

        gateway = EdgeGateway(GatewayOptions())
        gate = CameraGate(parameters, lambda body: gateway.ingest("cam0", body), options, stream="cam0")
    """

    def __init__(self, options: GatewayOptions | None = None) -> None:
        self.options = options or GatewayOptions()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        plugin = self.options.plugin
        self._measures = {} if plugin is None else {
            task: create_measure(self.options.redundancy.get(task, "count")) for task in plugin.tasks}
        if plugin is not None:
            plugin.prepare()
        capture_decoder_errors()

    def ingest(self, stream_id: str, body: bytes) -> dict[str, Any]:
        """Validate a whole body, then apply its frames in order; returns the JSON reply."""
        try:
            check_stream_id(stream_id)
            messages = parse_body(body, stream_id, limits=self.options.limits,
                                  max_frames=self.options.max_frames_per_request,
                                  max_packets=self.options.max_packets_per_frame, codecs=self.options.codecs)
        except GateProtocolError as error:
            raise GatewayError(str(error)) from error
        packets = sum(len(message.packets) for message in messages if isinstance(message, PacketsMessage))
        if packets > self.options.max_packets_per_request:
            raise GatewayError(f"the request carries {packets} packets, over the limit of "
                               f"{self.options.max_packets_per_request} per request; send fewer at a time",
                               status=413)
        state = self._stream(stream_id, create=True)
        reply: dict[str, Any] = {"stream": stream_id, "accepted": 0, "dropped": 0, "duplicates": 0,
                                 "frames": 0, "decode_errors": 0, "results": [], "resync": False}
        with state.lock:
            self._check_seq(state, messages)
            state.last_active = time.monotonic()
            state.counters["requests"] += 1
            state.counters["bytes_received"] += len(body)
            errors_before = _errors(state)
            for message in messages:
                if isinstance(message, ParametersMessage):
                    self._start(state, message)
                elif isinstance(message, PacketsMessage):
                    self._packets(stream_id, state, message, reply)
                else:
                    self._end(stream_id, state, message, reply)
            reply["decode_errors"] = _errors(state) - errors_before
        return reply

    def status(self, stream_id: str) -> dict[str, Any]:
        try:
            check_stream_id(stream_id)
        except GateProtocolError as error:
            raise GatewayError(str(error)) from error
        state = self._stream(stream_id, create=False)
        with state.lock:
            parameters = state.parameters
            return {
                "stream": stream_id,
                "session": state.session,
                "codec": parameters.codec if parameters else None,
                "width": parameters.width if parameters else None,
                "height": parameters.height if parameters else None,
                "waiting_for_random_access": state.wait_random_access,
                "last_seq": state.last_seq,
                **state.counters,
                "decode_errors": _errors(state),
                "corrupt_frames": state.retired_corrupt + (state.decoder.corrupt if state.decoder else 0),
                "decoder_messages": list(state.decoder.messages) if state.decoder else [],
                "last_results": list(state.results),
            }

    def streams(self) -> list[str]:
        with self._lock:
            return sorted(self._streams)

    def _stream(self, stream_id: str, *, create: bool) -> _Stream:
        with self._lock:
            state = self._streams.get(stream_id)
            if state is not None or not create:
                if state is None:
                    raise GatewayError(f"no stream {stream_id!r}", status=404)
                return state
            if len(self._streams) >= self.options.max_streams:
                evict_idle(self._streams, self.options.stream_idle_seconds)
                if len(self._streams) >= self.options.max_streams:
                    raise GatewayError(f"all {self.options.max_streams} stream slots are in use", status=429)
            state = self._streams[stream_id] = _Stream(results=deque(maxlen=self.options.results_kept))
            return state

    def _check_seq(self, state: _Stream, messages: list[GateMessage]) -> None:
        """Refuse the request, before any of it is applied, if one of its chunks is numbered
        more than ``max_seq_gap`` past the stream's last chunk (as the chunks before it in the
        request and its parameters, which restart the numbering, will leave it)."""
        gap = self.options.max_seq_gap
        last, session = state.last_seq, state.session
        for message in messages:
            if isinstance(message, ParametersMessage):
                last, session = None, message.session
            elif isinstance(message, PacketsMessage) and message.session == session:
                if last is not None and message.seq > last + gap:
                    raise GatewayError(f"chunk seq {message.seq} is more than {gap} past the stream's last "
                                       f"seq {last}; send the parameters first to restart the numbering")
                last = message.seq if last is None else max(last, message.seq)

    def _start(self, state: _Stream, message: ParametersMessage) -> None:
        """Apply the stream parameters; a new session or new parameters restart the decoder,
        and any of them (the camera's resync too) restarts the chunk numbering."""
        if (state.session, state.parameters) == (message.session, message.parameters) \
                and state.decoder is not None:
            state.last_seq = None  # a repeat (retry or resync) of what is running
            return
        try:
            decoder = StreamDecoder(message.parameters)
        except (av.FFmpegError, ValueError) as error:
            raise GatewayError(f"cannot create a {message.parameters.codec} decoder: {error}") from error
        if state.session != message.session:
            state.counters["sessions"] += 1
            state.reported = None
        self._retire(state)
        state.session, state.parameters, state.decoder = message.session, message.parameters, decoder
        state.last_seq = None

    def _packets(self, stream_id: str, state: _Stream, message: PacketsMessage,
                 reply: dict[str, Any]) -> None:
        count = len(message.packets)
        state.counters["packets_received"] += count
        if state.decoder is None or message.session != state.session:
            self._drop(state, count, reply, resync=True)
            return
        if state.last_seq is not None and message.seq <= state.last_seq - self.options.max_seq_gap:
            state.wait_random_access = True  # too far behind for a retry: the numbering went astray
            self._drop(state, count, reply, resync=True)
            return
        if state.last_seq is not None and message.seq <= state.last_seq:
            state.counters["duplicate_chunks"] += 1
            reply["duplicates"] += 1
            return
        if state.last_seq is not None and message.seq != state.last_seq + 1:
            state.wait_random_access = True  # a chunk went missing: references may be lost
        state.last_seq = message.seq
        packets = message.packets
        if state.wait_random_access:
            start = next((n for n, (info, _, _) in enumerate(packets) if info.random_access), None)
            if start is None:
                self._drop(state, count, reply, resync=True)
                return
            self._drop(state, start, reply, resync=False)
            packets = packets[start:]
            state.wait_random_access = False
        for info, _, inferred in packets:
            state.awaiting[frame_key(info)] = (info, inferred)
            while len(state.awaiting) > MAX_AWAITING:
                state.awaiting.popitem(last=False)
        frames = state.decoder.decode([(info, data) for info, data, _ in packets])
        state.counters["packets_decoded"] += len(packets)
        reply["accepted"] += len(packets)
        self._pictures(stream_id, state, frames, reply)

    def _end(self, stream_id: str, state: _Stream, message: EndMessage, reply: dict[str, Any]) -> None:
        if state.decoder is None or message.session != state.session:
            return
        self._pictures(stream_id, state, state.decoder.flush(), reply)
        self._retire(state)

    @staticmethod
    def _retire(state: _Stream) -> None:
        """Drop the stream's decoder (keeping its error counts); the next packets need a key frame."""
        if state.decoder is not None:
            state.retired_errors += state.decoder.errors
            state.retired_corrupt += state.decoder.corrupt
        state.decoder = None
        state.awaiting.clear()
        state.wait_random_access = True

    def _drop(self, state: _Stream, count: int, reply: dict[str, Any], *, resync: bool) -> None:
        state.counters["packets_dropped"] += count
        reply["dropped"] += count
        if resync and not reply["resync"]:
            reply["resync"] = True
            state.counters["resyncs_requested"] += 1

    def _pictures(self, stream_id: str, state: _Stream, frames: dict[int, av.VideoFrame],
                  reply: dict[str, Any]) -> None:
        """Count decoded pictures and run the plug-in on the ones the camera chose."""
        state.counters["frames_decoded"] += len(frames)
        reply["frames"] += len(frames)
        for key in sorted(frames):
            info, inferred = state.awaiting.pop(key, (None, False))
            if info is None:
                continue  # its packet was forgotten (MAX_AWAITING): nothing to attribute it to
            if self.options.frame_hook is not None:
                self.options.frame_hook(stream_id, info, frames[key], inferred)
            if self.options.plugin is None or not inferred:
                continue
            results = self.options.plugin.infer(frame_array(frames[key]))
            last = state.reported
            necessary = last is None or any(measure.necessary(last[task], results[task])
                                            for task, measure in self._measures.items())
            state.reported = results
            state.counters["frames_inferred"] += 1
            entry = {"index": info.index, "pts": info.pts, "necessary": necessary}
            reply["results"].append(entry)
            state.results.append({**entry, "results": _jsonable(results)})


def _errors(state: _Stream) -> int:
    return state.retired_errors + (state.decoder.errors if state.decoder else 0)


def _jsonable(value: Any) -> Any:
    """A JSON-friendly copy of a plug-in result for the status endpoint."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def create_gateway_app(options: GatewayOptions | None, token: str) -> FastAPI:
    """The FastAPI app; its :class:`EdgeGateway` is ``app.state.gateway``."""
    if not token:
        raise CoinferError("the edge gateway needs a non-empty token")
    gateway = EdgeGateway(options)
    limit = gateway.options.max_request_bytes
    app, authorize = create_service_app("coinfer edge gateway", GatewayError, token)
    app.state.gateway = gateway

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "streams": len(gateway.streams())}

    @app.post(FRAMES_PATH, dependencies=[Depends(authorize)])
    async def frames(stream_id: str, request: Request) -> dict[str, Any]:
        body = await read_limited_body(request, limit, GatewayError)
        return await run_in_threadpool(gateway.ingest, stream_id, body)

    @app.get(STATUS_PATH, dependencies=[Depends(authorize)])
    def status(stream_id: str) -> dict[str, Any]:
        return gateway.status(stream_id)

    return app


class GatewayServer(ThreadedServer):
    """The gateway on a uvicorn thread (port 0 picks a free one); for samples and tests.

    Example::

        with GatewayServer(GatewayOptions(), token) as server:
            uploader = GatewayUploader(server.url, "cam0", token)
    """

    def __init__(self, options: GatewayOptions | None, token: str, host: str = "127.0.0.1", port: int = 0,
                 start_timeout: float = 30.0) -> None:
        app = create_gateway_app(options, token)
        self.gateway: EdgeGateway = app.state.gateway
        super().__init__(app, host, port, start_timeout, name="the edge gateway")
