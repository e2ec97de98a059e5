"""Decoder worker processes: each stream pinned to one worker, which keeps its decoder state.

A decoder is only exact while it holds the reference pictures of its stream, so stream
``s`` always goes to worker ``s % workers`` and that worker keeps one
:class:`~coinfer.edge.gate.decoding.StreamDecoder` per stream it owns for the whole run.
Each round the parent sends every worker its streams' plans (packet bytes + headers) and
the frames to infer; the worker decodes, runs the inference plug-in on those frames when
they come out of the decoder (with B-frames possibly a later round), and answers with the
results, its decode and inference seconds and its error counts.

Workers are started with ``spawn`` (the parent may run threads; a forked copy of a
threaded process can deadlock) and import only numpy, PyAV and the plug-in's own models,
never TensorFlow or PyTorch. They ignore Ctrl-C: the parent owns interruption and stops
them on exit. Every wait in the parent has a deadline, so a worker that crashes or hangs
raises :class:`DecoderPoolError` naming it instead of blocking the gateway.

Example::

    with DecoderPool(workers=2, plugin=DetectorPlugin(("faces",))) as pool:
        pool.open_streams({0: params0, 1: params1})
        outcomes = pool.run([StreamWork(0, plan, infer=(pts,))])
        outcomes[0].results                      # [FrameResult(stream=0, key=pts, results={...})]
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from coinfer.edge.gate.decoding import StreamDecoder, capture_decoder_errors, frame_array
from coinfer.edge.gate.inference import InferencePlugin
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.gate.packet import PacketInfo

if TYPE_CHECKING:
    from coinfer.device.gate.source import StreamParameters

#: Frames a stream may wait for before the oldest is given up as lost. H.264 and HEVC hold
#: back at most 16 pictures for reordering, so a frame still missing after this many has
#: been dropped by the decoder (its packet was damaged).
MAX_OUTSTANDING = 32
#: Seconds a worker gets to finish its round and exit before it is terminated.
STOP_GRACE_S = 5.0
#: Longest wait for a worker that was signalled, or whose pipe closed, to exit; the wait ends
#: as soon as it has, so only a process stuck in the kernel ever takes this long.
EXIT_WAIT_S = 30.0


class DecoderPoolError(CoinferError):
    """A decoder worker crashed, timed out or failed; the message names it and its streams."""


@dataclass(frozen=True)
class StreamWork:
    """One stream's share of a round: packets to decode in order, frames to infer.

    ``infer`` holds frame keys (:func:`~coinfer.edge.gate.decoding.frame_key`) whose picture
    goes to the plug-in when the decoder outputs it; ``flush`` ends the stream: the decoder
    is drained and released.
    """

    stream: int
    plan: Sequence[tuple[PacketInfo, bytes]] = ()
    infer: tuple[int, ...] = ()
    flush: bool = False


@dataclass(frozen=True)
class FrameResult:
    """The plug-in's results on one frame of one stream."""

    stream: int
    key: int
    results: dict[str, Any]


@dataclass
class StreamOutcome:
    """What one worker did for one stream in one round.

    ``decoded`` holds every picture the decoder output (decoder planes, by key) only when
    the pool audits; ``lost`` lists frames to infer that the decoder never output.
    """

    stream: int
    worker: int
    pid: int
    packets: int = 0
    frames: int = 0
    decode_seconds: float = 0.0
    infer_seconds: float = 0.0
    errors: int = 0
    corrupt: int = 0
    messages: list[str] = field(default_factory=list)
    results: list[FrameResult] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    decoded: dict[int, np.ndarray] = field(default_factory=dict)


class DecoderPool:
    """``workers`` decoder processes running ``plugin``; stream ``s`` lives on worker ``s % workers``.

    ``timeout_s`` bounds the wait for a worker's answer to each round; ``start_timeout_s``
    (default: ``timeout_s``) the wait for start-up (spawning, loading the plug-in's models)
    and for opening streams, which a loaded machine may make much slower than a round.
    ``audit`` makes workers return every decoded picture, to check gated decoding against
    decode-all.
    """

    def __init__(self, workers: int, plugin: InferencePlugin, *, timeout_s: float = 60.0,
                 start_timeout_s: float | None = None, audit: bool = False) -> None:
        if workers < 1:
            raise InvalidArgumentError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise InvalidArgumentError(f"timeout_s must be positive, got {timeout_s}")
        if start_timeout_s is not None and start_timeout_s <= 0:
            raise InvalidArgumentError(f"start_timeout_s must be positive, got {start_timeout_s}")
        self.workers = workers
        self.plugin = plugin
        self.timeout_s = timeout_s
        self.start_timeout_s = timeout_s if start_timeout_s is None else start_timeout_s
        self.audit = audit
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._connections: list[Connection] = []
        self._owned: dict[int, list[int]] = {index: [] for index in range(workers)}
        self._failed = False

    def owner(self, stream: int) -> int:
        """The worker that decodes ``stream``, for the whole run."""
        return stream % self.workers

    @property
    def pids(self) -> list[int]:
        return [process.pid or 0 for process in self._processes]

    def start(self) -> DecoderPool:
        """Start the workers and wait until each has loaded the plug-in's models."""
        if self._processes:
            return self
        context = multiprocessing.get_context("spawn")
        for index in range(self.workers):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(index, child, self.plugin, self.audit),
                                      name=f"coinfer-decoder-{index}", daemon=True)
            process.start()
            child.close()
            self._processes.append(process)
            self._connections.append(parent)
        try:
            self._collect(range(self.workers), "start", self.start_timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def open_streams(self, parameters: Mapping[int, StreamParameters]) -> None:
        """Create a decoder for each stream on the worker that owns it."""
        requests: dict[int, dict[int, StreamParameters]] = {}
        for stream, params in parameters.items():
            requests.setdefault(self.owner(stream), {})[stream] = params
            self._owned[self.owner(stream)].append(stream)
        for worker, streams in requests.items():
            self._send(worker, ("open", streams))
        self._collect(requests, "opening streams", self.start_timeout_s)

    def run(self, work: Sequence[StreamWork]) -> list[StreamOutcome]:
        """Decode and infer one round; outcomes are in the order of ``work``."""
        unopened = sorted({item.stream for item in work} - set().union(*self._owned.values()))
        if unopened:
            raise DecoderPoolError(f"stream(s) {unopened} were never opened: call open_streams first")
        shares: dict[int, list[StreamWork]] = {}
        for item in work:
            shares.setdefault(self.owner(item.stream), []).append(item)
        for worker, items in shares.items():
            self._send(worker, ("round", items))
        replies = self._collect(shares, "decoding a round", self.timeout_s)
        by_stream = {outcome.stream: outcome for outcomes in replies.values() for outcome in outcomes}
        return [by_stream[item.stream] for item in work]

    def close(self) -> None:
        """Stop the workers: ask politely, then terminate what does not exit in time (at once after
        a failure, when a worker may be stuck)."""
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.send(("stop",))
        deadline = time.monotonic() + (0.0 if self._failed else STOP_GRACE_S)
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join(EXIT_WAIT_S)
        for connection in self._connections:
            connection.close()
        self._processes, self._connections = [], []

    def __enter__(self) -> DecoderPool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _describe(self, worker: int) -> str:
        process = self._processes[worker]
        streams = self._owned[worker]
        owned = f" owning streams {streams}" if streams else ""
        return f"decoder worker {worker} (pid {process.pid}){owned}"

    def _send(self, worker: int, message: tuple[Any, ...]) -> None:
        if not self._processes:
            raise DecoderPoolError("the decoder pool is not running: start it or use it as a context manager")
        try:
            self._connections[worker].send(message)
        except OSError as error:
            self._failed = True
            raise self._crashed(worker, f"could not be reached ({error})") from error

    def _crashed(self, worker: int, what: str) -> DecoderPoolError:
        process = self._processes[worker]
        process.join(EXIT_WAIT_S)  # its pipe closed or it died: it has exited or is exiting
        code = process.exitcode
        status = f"; exit code {code}" if code is not None else ""
        if code is not None and code < 0:
            status = f"; killed by signal {-code}"
        return DecoderPoolError(f"{self._describe(worker)} {what}{status}")

    def _collect(self, workers: Iterable[int], doing: str, timeout_s: float) -> dict[int, Any]:
        """Wait for one reply from each of ``workers``, within ``timeout_s``."""
        try:
            return self._replies(workers, doing, timeout_s)
        except BaseException:  # crashed, timed out or interrupted: workers may be stuck mid-round
            self._failed = True
            raise

    def _replies(self, workers: Iterable[int], doing: str, timeout_s: float) -> dict[int, Any]:
        pending = {self._connections[worker]: worker for worker in workers}
        sentinels = {self._processes[worker].sentinel: worker for worker in pending.values()}
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            ready = wait([*pending, *sentinels], timeout=max(0.0, remaining)) if remaining > 0 else []
            if not ready:
                late = sorted(pending.values())
                raise DecoderPoolError(f"{', '.join(self._describe(w) for w in late)} did not answer within "
                                       f"{timeout_s:g} s while {doing}")
            for handle in ready:
                # wait() hands back what it was given: connections and (int) process sentinels.
                worker = (pending.get(handle) if isinstance(handle, Connection)
                          else sentinels.get(handle) if isinstance(handle, int) else None)
                if worker is None or worker in replies:
                    continue
                connection = self._connections[worker]
                if not connection.poll():
                    raise self._crashed(worker, f"died while {doing}")
                try:
                    status, payload = connection.recv()
                except (EOFError, OSError) as error:
                    raise self._crashed(worker, f"died while {doing}") from error
                if status == "error":
                    raise DecoderPoolError(f"{self._describe(worker)} failed while {doing}:\n{payload}")
                replies[worker] = payload
                del pending[connection]
                del sentinels[self._processes[worker].sentinel]
        return replies


class _OwnedStream:
    """A worker's state for one stream: its decoder and the frames still to infer."""

    def __init__(self, parameters: StreamParameters) -> None:
        self.decoder = StreamDecoder(parameters)
        self.wanted: OrderedDict[int, None] = OrderedDict()
        self.reported_messages = 0


class _Worker:
    """The loop inside one decoder process."""

    def __init__(self, index: int, plugin: InferencePlugin, audit: bool) -> None:
        self.index, self.pid = index, os.getpid()
        self.plugin, self.audit = plugin, audit
        self.streams: dict[int, _OwnedStream] = {}

    def handle(self, message: tuple[Any, ...]) -> Any:
        if message[0] == "open":
            for stream, parameters in message[1].items():
                self.streams[stream] = _OwnedStream(parameters)
            return len(self.streams)
        if message[0] == "round":
            return [self.process(item) for item in message[1]]
        raise DecoderPoolError(f"decoder worker {self.index}: unknown request {message[0]!r}")

    def process(self, work: StreamWork) -> StreamOutcome:
        state = self.streams.get(work.stream)
        if state is None:
            raise DecoderPoolError(f"stream {work.stream} was never opened on decoder worker {self.index}")
        decoder = state.decoder
        before = (decoder.packets, decoder.frames, decoder.seconds, decoder.errors, decoder.corrupt)
        frames = decoder.decode(work.plan)
        state.wanted.update(dict.fromkeys(work.infer))
        if work.flush:
            frames.update(decoder.flush())
        outcome = StreamOutcome(work.stream, self.index, self.pid)
        for key, frame in frames.items():
            if self.audit:
                outcome.decoded[key] = frame_array(frame, None)
            if key in state.wanted:
                del state.wanted[key]
                start = time.perf_counter()
                results = self.plugin.infer(frame_array(frame))
                outcome.infer_seconds += time.perf_counter() - start
                outcome.results.append(FrameResult(work.stream, key, results))
        while len(state.wanted) > MAX_OUTSTANDING:
            outcome.lost.append(state.wanted.popitem(last=False)[0])
        if work.flush:
            outcome.lost.extend(state.wanted)
            del self.streams[work.stream]
        outcome.packets = decoder.packets - before[0]
        outcome.frames = decoder.frames - before[1]
        outcome.decode_seconds = decoder.seconds - before[2]
        outcome.errors = decoder.errors - before[3]
        outcome.corrupt = decoder.corrupt - before[4]
        outcome.messages = decoder.messages[state.reported_messages:]
        state.reported_messages = len(decoder.messages)
        return outcome


def _worker_main(index: int, connection: Connection, plugin: InferencePlugin, audit: bool) -> None:
    """Entry point of a decoder process: answer each request with ("ok", payload) or ("error", text)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    capture_decoder_errors()
    try:
        plugin.prepare()
    except Exception:
        connection.send(("error", traceback.format_exc()))
        return
    worker = _Worker(index, plugin, audit)
    connection.send(("ok", worker.pid))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        try:
            reply = ("ok", worker.handle(message))
        except Exception:
            reply = ("error", traceback.format_exc())
        connection.send(reply)
