"""The device app's camera pipeline, without a display: demux once, gate, decode, filter, count.

The camera-side gate and the InFi skip filter answer different questions about the same
stream. The gate (:class:`~coinfer.device.gate.CameraGate`) decides per *compressed packet*,
before anything is decoded, whether the edge should see it, within the uplink budget; the
filter (:func:`~coinfer.device.infi.load_skip_filter`) decides per *decoded frame* whether a
detector would learn anything from it. On a device both run on one demuxer: each packet is
read once, handed to the gate (which may upload it with the references it needs), and decoded
here for the view and the filter. Nothing is decoded twice and the gate never waits for the
decoder, so the uplink decisions are the ones a camera without a screen would make.

:class:`CameraPipeline` is that loop as a generator of :class:`ProcessedFrame`;
:class:`PipelineRunner` runs it on a thread at the video's own pace and keeps the newest
frame and :class:`LiveNumbers` for the UI to poll, so the kivy code only draws. A gateway
that refuses the token stops the uploads (the view and the filter go on, and the refusal is
shown); an unreachable one is retried by the gate, which counts the failures.

Example (the numbers a screen shows):

>>> numbers = LiveNumbers(frames=40, skipped=10, packets_seen=40, packets_sent=12, bytes_sent=30500)
>>> numbers.skip_rate
0.25
>>> numbers.labels()["skip_rate"], numbers.labels()["packets"]
('skip rate 0.25 (10 of 40)', 'packets sent 12 of 40')
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from coinfer.device.gate import (
    CameraGate,
    CameraGateOptions,
    GatewayUploader,
    PacketSource,
    SourcePacket,
    UplinkRefused,
)
from coinfer.device.gate.camera import Sink
from coinfer.device.infi import load_skip_filter
from coinfer.sdk.errors import InvalidArgumentError, one_line
from coinfer.sdk.infi.skip import SkipFilter
from coinfer.sdk.service import client_token

if TYPE_CHECKING:  # the app's settings module; the pipeline runs without it too
    from settings import AppSettings

__all__ = ["CameraPipeline", "GatewayLink", "LiveNumbers", "PipelineRunner", "ProcessedFrame"]


class GatewayLink:
    """A :class:`CameraGate` sink that passes bodies on (to a :class:`GatewayUploader`) and
    adds up what the gateway answered: packets accepted, pictures decoded, necessity results."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.accepted = self.frames = self.results = self.necessary = self.decode_errors = 0

    def __call__(self, body: bytes) -> Mapping[str, Any] | None:
        reply = self._sink(body)
        if reply:
            self.accepted += int(reply.get("accepted", 0))
            self.frames += int(reply.get("frames", 0))
            self.decode_errors += int(reply.get("decode_errors", 0))
            results = [r for r in reply.get("results") or [] if isinstance(r, Mapping)]
            self.results += len(results)
            self.necessary += sum(r.get("necessary") is True for r in results)
        return reply


@dataclass(frozen=True)
class LiveNumbers:
    """One snapshot of the counters; ``state`` is running, finished, stopped or failed."""

    frames: int = 0
    skipped: int = 0
    filter_on: bool = True
    decode_errors: int = 0
    packets_seen: int = 0
    packets_sent: int = 0
    packets_inferred: int = 0
    bytes_sent: int = 0
    send_failures: int = 0
    gateway_on: bool = True
    gateway_accepted: int = 0
    gateway_frames: int = 0
    gateway_results: int = 0
    gateway_necessary: int = 0
    state: str = "running"
    problem: str | None = None

    @property
    def skip_rate(self) -> float:
        """The share of frames the filter skipped so far."""
        return self.skipped / self.frames if self.frames else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every field and the skip rate, as JSON-ready values."""
        return {**asdict(self), "skip_rate": self.skip_rate}

    def labels(self) -> dict[str, str]:
        """The text of each number on the camera screen, by widget id."""
        status = self.state if self.problem is None else f"{self.state}: {self.problem}"
        return {
            "frames": f"frames {self.frames}",
            "skip_rate": (f"skip rate {self.skip_rate:.2f} ({self.skipped} of {self.frames})"
                          if self.filter_on else "skip filter off"),
            "packets": f"packets sent {self.packets_sent} of {self.packets_seen}",
            "bytes": f"bytes sent {self.bytes_sent}" if self.gateway_on else "gateway off",
            "gateway": (f"gateway decoded {self.gateway_frames} results {self.gateway_results}"
                        if self.gateway_on else ""),
            "status": status,
        }


@dataclass(frozen=True)
class ProcessedFrame:
    """A decoded frame scaled for the view; ``skipped`` is the filter's verdict (None: no filter)."""

    rgb: np.ndarray
    time_s: float
    skipped: bool | None


class CameraPipeline:
    """Packets in decode order -> gate -> decoder -> filter; iterate :meth:`frames`.

    ``view_width`` caps the width of the frames handed to the view (a 1080p camera is not
    drawn at full size on a 7" screen); the filter gets its own input size from PyAV's scaler.
    """

    def __init__(self, source: PacketSource, *, skip_filter: SkipFilter | None = None,
                 gate: CameraGate | None = None, link: GatewayLink | None = None,
                 view_width: int = 640) -> None:
        self.source, self.skip_filter, self.gate, self.link = source, skip_filter, gate, link
        self._filter_input: tuple[str, int, int] | None = None
        if skip_filter is not None:
            specs = list(skip_filter.inputs.items())
            if len(specs) != 1 or specs[0][1].kind != "image" or specs[0][1].shape[2] != 3:
                raise InvalidArgumentError(f"the camera needs a skip filter with one RGB image input, got "
                                           f"{ {name: spec.shape for name, spec in specs} }")
            name, spec = specs[0]
            self._filter_input = (name, spec.shape[0], spec.shape[1])
        parameters = source.parameters
        width = min(view_width, parameters.width) // 4 * 4  # whole 32-bit words per RGB row
        self._view = (width, max(2, round(width * parameters.height / parameters.width) // 2 * 2))
        self._decoder = parameters.create_decoder()
        self._time_base = float(parameters.time_base)
        self._frame_period = 1 / float(parameters.frame_rate or 25)
        self._frames = self._skipped = self._packets = self._decode_errors = 0
        self._uploading = gate is not None
        self._problem: str | None = None
        self._closed = False

    @classmethod
    def open(cls, settings: AppSettings) -> CameraPipeline:
        """Open the video (or camera), load the filter and connect the gate, as ``settings`` say."""
        skip_filter = load_skip_filter(settings.filter) if settings.filter is not None else None
        if settings.video:
            source = PacketSource.open(settings.video)
        else:
            source = PacketSource.open(str(settings.camera), format="v4l2", options={"input_format": "h264"})
        try:
            gate = link = None
            if settings.gateway_url:
                token = client_token(settings.gateway_token_file)
                link = GatewayLink(GatewayUploader(settings.gateway_url, settings.stream, token))
                gate = CameraGate(source.parameters, link, CameraGateOptions(settings.uplink_bytes_per_s),
                                  stream=settings.stream)
            return cls(source, skip_filter=skip_filter, gate=gate, link=link)
        except BaseException:
            source.close()
            raise

    def frames(self) -> Iterator[ProcessedFrame]:
        """Every frame of the source, processed; at the end the gate tells the gateway so."""
        for packet in self.source:
            self._packets += 1
            self._gate(packet)
            chunk = av.Packet(packet.data)
            chunk.pts, chunk.dts = packet.info.pts, packet.info.dts
            yield from self._decode(chunk)
        yield from self._decode(None)
        self._close_gate()

    def numbers(self, state: str = "running") -> LiveNumbers:
        """The counters now, with ``state`` (running, finished, stopped or failed)."""
        numbers = LiveNumbers(frames=self._frames, skipped=self._skipped,
                              filter_on=self.skip_filter is not None,
                              decode_errors=self._decode_errors, packets_seen=self._packets,
                              gateway_on=self.gate is not None, state=state, problem=self._problem)
        if self.gate is not None:
            gate = self.gate.stats
            numbers = replace(numbers, packets_sent=gate.packets_uploaded,
                              packets_inferred=gate.packets_inferred, bytes_sent=gate.bytes_sent,
                              send_failures=gate.send_failures)
        if self.link is not None:
            link = self.link
            numbers = replace(numbers, gateway_accepted=link.accepted, gateway_frames=link.frames,
                              gateway_results=link.results, gateway_necessary=link.necessary)
        return numbers

    def close(self) -> None:
        """Send the gate's end message (if the stream did not end by itself) and close the source."""
        if not self._closed:
            self._closed = True
            self._close_gate()
            self.source.close()

    def _gate(self, packet: SourcePacket) -> None:
        if self.gate is None or not self._uploading:
            return
        try:
            self.gate.push(packet)
        except UplinkRefused as error:
            self._refused(error)

    def _close_gate(self) -> None:
        if self.gate is not None and self._uploading:
            self._uploading = False
            try:
                self.gate.close()
            except UplinkRefused as error:
                self._refused(error)

    def _refused(self, error: UplinkRefused) -> None:
        """A refusal (wrong token, malformed body) will not heal by retrying: stop uploading."""
        self._uploading = False
        self._problem = f"the gateway refused the uploads: {error}"

    def _decode(self, chunk: av.Packet | None) -> Iterator[ProcessedFrame]:
        try:
            frames = self._decoder.decode(chunk)
        except av.FFmpegError:
            self._decode_errors += 1
            return
        for frame in frames:
            yield self._process(frame)

    def _process(self, frame: av.VideoFrame) -> ProcessedFrame:
        skipped = None
        if self._filter_input is not None and self.skip_filter is not None:
            name, height, width = self._filter_input
            pixels = frame.to_ndarray(width=width, height=height, format="rgb24")
            skipped = bool(self.skip_filter.skip({name: pixels[None].astype(np.float32) / 255})[0])
            self._skipped += skipped
        seconds = frame.pts * self._time_base if frame.pts is not None else self._frames * self._frame_period
        self._frames += 1
        view = frame.to_ndarray(width=self._view[0], height=self._view[1], format="rgb24")
        return ProcessedFrame(view, seconds, skipped)


class PipelineRunner:
    """Runs a :class:`CameraPipeline` on its own thread at the video's pace; the UI polls :meth:`latest`.

    Uploads and TFLite calls block, so they stay off the UI thread; the UI only copies the
    newest frame into a texture. Frames are released at their presentation times (a file
    plays like a camera; a live camera is never waited for). ``max_frames`` ends the run
    after that many frames. The thread closes the pipeline itself: PyAV wants a source
    closed by the thread that reads it. Any failure ends the run in the state ``failed``
    with the error as the problem line, so the screen says what went wrong.
    """

    def __init__(self, pipeline: CameraPipeline, max_frames: int | None = None) -> None:
        self._pipeline = pipeline
        self._max_frames = max_frames
        self._lock = threading.Lock()
        self._frame: ProcessedFrame | None = None
        self._published = 0
        self._numbers = pipeline.numbers()
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end after the frame in hand (see :attr:`finished`)."""
        self._stop.set()

    def latest(self) -> tuple[int, ProcessedFrame | None, LiveNumbers]:
        """How many frames were published, the newest one, and the numbers after it."""
        with self._lock:
            return self._published, self._frame, self._numbers

    def _run(self) -> None:
        state, problem = "finished", None
        clock: tuple[float, float] | None = None  # (wall time, media time) of the first frame
        try:
            for frame in self._pipeline.frames():
                if clock is None:
                    clock = (time.monotonic(), frame.time_s)
                due = clock[0] + frame.time_s - clock[1]
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    state = "stopped"
                    break
                with self._lock:
                    self._frame, self._published = frame, self._published + 1
                    self._numbers = self._pipeline.numbers()
                if self._max_frames is not None and self._published >= self._max_frames:
                    break
        except Exception as error:  # the thread's boundary: the screen shows it, the run ends
            state, problem = "failed", one_line(error)
        finally:
            try:
                self._pipeline.close()
            except Exception as error:
                state, problem = "failed", problem or one_line(error)
            numbers = self._pipeline.numbers(state)
            with self._lock:
                self._numbers = replace(numbers, problem=problem or numbers.problem)
            self.finished.set()
