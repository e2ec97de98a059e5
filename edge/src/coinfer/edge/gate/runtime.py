"""PacketGame over live streams: demux everything, gate each round, decode in pinned workers.

Each round takes the next packet of every source (``None`` where a source has nothing),
lets :class:`~coinfer.sdk.gate.scheduler.PacketGate` choose under the round's decode
budget, sends the chosen packets and their pending references to the decoder workers
(:class:`~coinfer.edge.gate.workers.DecoderPool`), and runs the inference plug-in on the
chosen frames. Every result is compared with the last result reported for its stream
(the task's redundancy measure); "it differed" is the feedback the gate learns from, and
every frame gets a reported result: its own when inferred, the carried-over one otherwise.

Demuxing happens in one place, this runtime's thread. Files are read directly; a live
source (any URL that is not a local path: rtsp://, tcp://, ...) is read by its own thread
into a bounded queue, and a round waits at most ``round_timeout_s`` for all of them, so a
stalled camera only misses rounds and never blocks the others. A source that cannot be
opened or fails mid-stream is reported and the others go on.

With B-frames a decoder outputs a picture only after later packets were fed, so a chosen
frame's result may arrive in a later round. The gate then gets, for a stream chosen this
round, the necessity of the results that arrived for it this round, or else the last one
known (a lag of one selection; ``True`` before the first), which keeps its estimate unbiased.

A long-running host (the gateway daemon) sets ``loop`` so that a local file stands in for a
camera: it starts over when it ends, its packets numbered on and its timestamps shifted past
the last pass, so the gate and the decoders carry on as over one endless stream. It sets
``history`` so that each stream keeps only its latest frame reports, and changes the budget
of a running runtime with :meth:`GateRuntime.set_budget`.

Example::

    options = RuntimeOptions(budget_fraction=0.4, policy="temporal", tasks=("faces",))
    with GateRuntime(["cam0.mp4", "tcp://10.0.0.5:9000"], options) as runtime:
        for report in runtime.rounds():
            print(report.round, report.selected, runtime.metrics.decoded)
        summary = runtime.summary()
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from coinfer.device.gate.source import PacketSource, PacketSourceError, SourcePacket, StreamParameters
from coinfer.edge.gate.decoding import frame_key
from coinfer.edge.gate.inference import DetectorPlugin, InferencePlugin
from coinfer.edge.gate.workers import DecoderPool, FrameResult, StreamOutcome, StreamWork
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.gate import policies
from coinfer.sdk.gate.costs import DecodeCostModel, calibrate_decode_costs
from coinfer.sdk.gate.packet import PacketInfo
from coinfer.sdk.gate.predictor import ContextualPredictor
from coinfer.sdk.gate.redundancy import REDUNDANCY, RedundancyMeasure, create_measure
from coinfer.sdk.gate.scheduler import PacketGate

POLICIES = ("packetgame", "temporal", "round-robin", "random", "decode-all")
#: Budget fraction of decode-all used when neither a fraction nor seconds are given.
DEFAULT_BUDGET_FRACTION = 0.5


@dataclass(frozen=True)
class RuntimeOptions:
    """How to gate: the budget, the policy, the tasks and how results are compared, the workers.

    The budget is ``budget_s`` seconds of decoding per round, or ``budget_fraction`` of what
    decoding every packet of the round would cost (default 0.5), so over any stretch of
    rounds the gate may spend that fraction of decode-all; it banks what a round leaves
    unspent for a few rounds (:class:`~coinfer.sdk.gate.scheduler.GateOptions`). ``policy``
    defaults to ``packetgame`` when a ``predictor`` directory is given, else ``temporal``.
    ``redundancy`` maps a task to its measure (``count``, ``iou``, ``label``,
    ``class-subset``; default ``count``). ``costs`` fixes the decode cost model instead of
    calibrating one per (codec, size) at start-up. ``max_rounds`` stops live runs.
    ``source_timeout_s`` is how long a live source may stay silent before it is reported as
    failed (default :data:`~coinfer.device.gate.source.LIVE_TIMEOUT_S`). ``loop`` starts
    every local file over when it ends (live sources are unaffected). ``history`` bounds
    the frame reports each stream keeps (the latest ones; ``None`` keeps all, which a run
    over files summarises).
    """

    budget_s: float | None = None
    budget_fraction: float | None = None
    policy: str | None = None
    predictor: str | None = None
    tasks: tuple[str, ...] = ("faces", "cats")
    redundancy: Mapping[str, str] = field(default_factory=dict)
    workers: int = 2
    round_timeout_s: float = 1.0
    max_rounds: int | None = None
    worker_timeout_s: float = 60.0
    source_timeout_s: float | None = None
    queue_packets: int = 256
    seed: int = 0
    costs: DecodeCostModel | None = None
    loop: bool = False
    history: int | None = None

    def __post_init__(self) -> None:
        if self.budget_s is not None and self.budget_fraction is not None:
            raise CoinferError("give a decode budget in seconds or as a fraction of decode-all, not both")
        if self.budget_s is not None and not self.budget_s > 0:
            raise CoinferError(f"the budget must be a positive number of seconds, got {self.budget_s}")
        if self.budget_fraction is not None and not 0 < self.budget_fraction <= 1:
            raise CoinferError(f"the budget fraction must be in (0, 1], got {self.budget_fraction}")
        if self.policy is not None and self.policy not in POLICIES:
            raise CoinferError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.policy_name == "packetgame" and self.predictor is None:
            raise CoinferError("the packetgame policy needs a trained predictor (--predictor DIR)")
        if self.predictor is not None and self.policy_name != "packetgame":
            raise CoinferError(f"a predictor is only used by the packetgame policy, not {self.policy!r}")
        REDUNDANCY.check(self.redundancy.values())
        if self.history is not None and self.history < 1:
            raise CoinferError(f"history must be >= 1 frame, got {self.history}")
        for name in ("workers", "queue_packets"):
            if getattr(self, name) < 1:
                raise CoinferError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise CoinferError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if self.round_timeout_s <= 0 or self.worker_timeout_s <= 0:
            raise CoinferError("round_timeout_s and worker_timeout_s must be positive")
        if self.source_timeout_s is not None and self.source_timeout_s <= 0:
            raise CoinferError(f"source_timeout_s must be positive, got {self.source_timeout_s}")

    @property
    def policy_name(self) -> str:
        if self.policy is not None:
            return self.policy
        return "packetgame" if self.predictor is not None else "temporal"

    def measure(self, task: str) -> RedundancyMeasure:
        return create_measure(self.redundancy.get(task, "count"))


@dataclass
class RuntimeMetrics:
    """Running totals; ``*_cost_s`` are the cost model's estimates, ``*_seconds`` measured in workers."""

    rounds: int = 0
    packets: int = 0
    stalls: int = 0
    inferred: int = 0
    decoded: int = 0
    results: int = 0
    necessary: int = 0
    spent_cost_s: float = 0.0
    budget_cost_s: float = 0.0
    decode_all_cost_s: float = 0.0
    decode_seconds: float = 0.0
    infer_seconds: float = 0.0
    decoder_errors: int = 0
    corrupt_frames: int = 0
    lost_frames: int = 0
    parse_errors: int = 0
    failed_sources: int = 0
    wall_seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.packets - self.decoded

    @property
    def cost_fraction(self) -> float:
        """Estimated decoding spent relative to decoding every packet."""
        return self.spent_cost_s / self.decode_all_cost_s if self.decode_all_cost_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.update(skipped=self.skipped, cost_fraction=self.cost_fraction,
                      packets_per_second=self.packets / self.wall_seconds if self.wall_seconds else 0.0)
        return values


@dataclass
class FrameReport:
    """One packet's frame: whether it was inferred or decoded, and the result reported for it."""

    index: int
    pts: int | None
    round: int
    inferred: bool = False
    decoded: bool = False
    results: Mapping[str, Any] | None = None


@dataclass
class StreamReport:
    """Per-stream totals, the worker(s) that served it, and every frame's reported result.

    ``frames`` starts at packet index ``first_frame`` (0 unless ``history`` dropped older
    reports); ``loops`` counts the times a looping file started over; ``ended`` says the
    source has ended (or failed: ``error``).
    """

    stream: int
    url: str
    error: str | None = None
    packets: int = 0
    stalls: int = 0
    inferred: int = 0
    decoded: int = 0
    results: int = 0
    decode_seconds: float = 0.0
    infer_seconds: float = 0.0
    decoder_errors: int = 0
    corrupt_frames: int = 0
    lost_frames: int = 0
    parse_errors: int = 0
    loops: int = 0
    first_frame: int = 0
    ended: bool = False
    workers: set[int] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)
    frames: list[FrameReport] = field(default_factory=list)

    def frame(self, index: int) -> FrameReport | None:
        """The report of packet ``index``, or ``None`` once ``history`` dropped it."""
        position = index - self.first_frame
        return self.frames[position] if position >= 0 else None

    def counts(self, task: str) -> list[int | None]:
        """The reported number of detections of ``task`` for every frame (``None`` before the first)."""
        return [None if frame.results is None else _count(frame.results[task]) for frame in self.frames]


@dataclass
class RoundReport:
    """What one round did: who was present and chosen, what was decoded and learnt."""

    round: int
    present: np.ndarray
    selected: np.ndarray
    decoded: np.ndarray
    necessary: np.ndarray
    spent_cost_s: float
    budget_cost_s: float
    results: list[FrameResult]


def _count(result: Any) -> int:
    return int(result) if np.ndim(result) == 0 else len(result)


def _is_local(url: str) -> bool:
    return url.startswith("file:") or os.path.exists(url)


class _End:
    """A source's end (``error`` set when it failed)."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error


class _FileFeed:
    """A local file: read on demand in the runtime's thread; ``reopen`` makes it loop.

    Each pass after the first numbers its packets on from the last one and shifts their
    timestamps past the highest so far, so frame keys never repeat.
    """

    def __init__(self, source: PacketSource, reopen: Callable[[], PacketSource] | None = None) -> None:
        self.source = source
        self.loops = 0
        self._reopen = reopen
        self._handed = 0
        self._pass_start = 0
        self._shift: int | None = 0
        self._top = -1
        self._retired_parse_errors = 0

    @property
    def parse_errors(self) -> int:
        return self._retired_parse_errors + self.source.parse_errors

    def next(self, deadline: float) -> SourcePacket | _End | None:
        try:
            try:
                packet = next(self.source)
            except StopIteration:
                if self._reopen is None or self._handed == self._pass_start:
                    return _End()
                self._start_over(self._reopen)
                packet = next(self.source)
        except StopIteration:
            return _End()
        except PacketSourceError as error:
            return _End(str(error))
        self._handed += 1
        return self._shifted(packet)

    def _start_over(self, reopen: Callable[[], PacketSource]) -> None:
        source = reopen()
        self._retired_parse_errors += self.source.parse_errors
        self.source.close()
        self.source = source
        self.loops += 1
        self._pass_start, self._shift = self._handed, None

    def _shifted(self, packet: SourcePacket) -> SourcePacket:
        info = packet.info
        stamps = [stamp for stamp in (info.pts, info.dts) if stamp is not None]
        if self._shift is None:
            self._shift = self._top + 1 - min(stamps, default=0)
        self._top = max([self._top, *(stamp + self._shift for stamp in stamps)])
        if self.loops == 0:
            return packet
        shift = self._shift
        moved = replace(info, index=info.index + self._pass_start,
                        pts=None if info.pts is None else info.pts + shift,
                        dts=None if info.dts is None else info.dts + shift)
        return SourcePacket(moved, packet.data)

    def close(self) -> None:
        self.source.close()


class _LiveFeed:
    """A live source read by its own thread into a bounded queue (the thread closes the source)."""

    def __init__(self, source: PacketSource, capacity: int) -> None:
        self.source = source
        self._queue: queue.Queue[SourcePacket | _End] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"coinfer-source-{source.url}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        end = _End()
        try:
            for packet in self.source:
                if not self._put(packet):
                    return
        except PacketSourceError as error:
            end = _End(str(error))
        except Exception as error:  # a reader thread must always end its feed, or rounds would wait on it
            end = _End(f"reading {self.source.url!r} failed: {error!r}")
        finally:
            self.source.close()
        self._put(end)

    def _put(self, item: SourcePacket | _End) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    @property
    def parse_errors(self) -> int:
        return self.source.parse_errors

    def next(self, deadline: float) -> SourcePacket | _End | None:
        try:
            return self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class _PacketStore:
    """Bytes of the packets a stream's next plan may still need (mirrors the gate's pending refs)."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}
        self.synced = False

    def arrive(self, packet: SourcePacket) -> None:
        info = packet.info
        if info.random_access:
            self.data.clear()
            self.synced = True
        if self.synced:
            self.data[info.index] = packet.data

    def take(self, plan: Sequence[PacketInfo]) -> list[tuple[PacketInfo, bytes]]:
        items = [(info, self.data[info.index]) for info in plan]
        last = plan[-1].index
        for index in [index for index in self.data if index <= last]:
            del self.data[index]
        return items

    def settle(self, info: PacketInfo) -> None:
        """End of the packet's round: a skipped non-reference packet is never needed again."""
        if not info.reference:
            self.data.pop(info.index, None)


class GateRuntime:
    """Gated multi-stream decoding and inference over ``sources`` (paths or URLs); stream i = sources[i].

    ``plugin`` defaults to :class:`~coinfer.edge.gate.inference.DetectorPlugin` of the
    options' tasks. ``plugins`` gives streams a plug-in of their own (an InFi filter in front
    of the detectors, say; the same tasks): the streams of each plug-in are decoded by a pool
    of their own (``workers`` processes, at most one per stream; :attr:`pool` is the first),
    all under the one gate and its budget. ``audit`` keeps every decoded picture (decoder
    planes, by stream and pts) in :attr:`decoded`, to check gated decoding against decode-all.
    """

    def __init__(self, sources: Sequence[str], options: RuntimeOptions | None = None, *,
                 plugin: InferencePlugin | None = None, plugins: Mapping[int, InferencePlugin] | None = None,
                 audit: bool = False) -> None:
        if not sources:
            raise CoinferError("give at least one video source")
        self.urls = list(sources)
        self.options = options or RuntimeOptions()
        self.plugin = plugin
        self.plugins = dict(plugins or {})
        unknown = sorted(set(self.plugins) - set(range(len(self.urls))))
        if unknown:
            raise CoinferError(f"plug-ins are given for stream(s) {unknown}, but there are {len(self.urls)} "
                               f"streams")
        self.audit = audit
        self.metrics = RuntimeMetrics()
        self.streams = [StreamReport(stream, url) for stream, url in enumerate(self.urls)]
        self.decoded: dict[int, dict[int, np.ndarray]] = {stream: {} for stream in range(len(self.urls))}
        self.gate: PacketGate | None = None
        self.pool: DecoderPool | None = None
        self.pools: list[DecoderPool] = []
        self._pool_of: dict[int, DecoderPool] = {}
        self._rounds: ThreadPoolExecutor | None = None
        self.cost_model: DecodeCostModel | None = None
        self._feeds: list[_FileFeed | _LiveFeed | None] = []
        self._stores = [_PacketStore() for _ in self.urls]
        self._measures: dict[str, RedundancyMeasure] = {}
        self._reported: list[Mapping[str, Any] | None] = [None] * len(self.urls)
        self._last_necessary = np.ones(len(self.urls), dtype=bool)
        self._keys: list[dict[int, FrameReport]] = [{} for _ in self.urls]
        self._started = 0.0

    # -- set-up ------------------------------------------------------------------------------

    def start(self) -> GateRuntime:
        """Open the sources, price decoding, build the gate and start the decoder workers."""
        self._started = time.monotonic()
        plugin = self.plugin or DetectorPlugin(self.options.tasks)
        self.plugin = plugin
        self._measures = {task: self.options.measure(task) for task in plugin.tasks}
        other = sorted(stream for stream, own in self.plugins.items()
                       if tuple(own.tasks) != tuple(plugin.tasks))
        if other:
            raise CoinferError(f"the plug-ins of stream(s) {other} run other tasks than {list(plugin.tasks)}")
        try:
            policy = self._policy()  # loads the predictor: a bad one is refused before any source opens
            parameters = self._open_sources()
            self.cost_model = self.options.costs or _calibrate(parameters.values())
            # Set per round; positive from the start so the gate banks enough for its dearest picture.
            self.gate = PacketGate(len(self.urls), self.cost_model, policy,
                                   self._budget(len(parameters) * self.cost_model.i_seconds))
            self._start_pools(plugin, parameters)
        except BaseException:
            self.close()
            raise
        return self

    def _start_pools(self, default: InferencePlugin, parameters: Mapping[int, StreamParameters]) -> None:
        """A decoder pool per distinct plug-in, each opening the streams it decodes."""
        groups: dict[int, tuple[InferencePlugin, list[int]]] = {}
        for stream in range(len(self.urls)):
            plugin = self.plugins.get(stream, default)
            groups.setdefault(id(plugin), (plugin, []))[1].append(stream)
        for plugin, streams in groups.values():
            pool = DecoderPool(min(self.options.workers, len(streams)), plugin,
                               timeout_s=self.options.worker_timeout_s, audit=self.audit)
            self.pools.append(pool)  # before it starts: close() stops what started when one fails
            pool.start()
            pool.open_streams({stream: parameters[stream] for stream in streams if stream in parameters})
            self._pool_of.update(dict.fromkeys(streams, pool))
        self.pool = self.pools[0]
        if len(self.pools) > 1:
            self._rounds = ThreadPoolExecutor(max_workers=len(self.pools), thread_name_prefix="coinfer-pools")

    def _run_pools(self, work: Sequence[StreamWork]) -> list[StreamOutcome]:
        """One round of ``work`` on the pools of its streams (at once when there are several)."""
        if not work:
            return []
        if self._rounds is None:
            assert self.pool is not None  # started
            return self.pool.run(work)
        shares: dict[int, tuple[DecoderPool, list[StreamWork]]] = {}
        for item in work:
            pool = self._pool_of[item.stream]
            shares.setdefault(id(pool), (pool, []))[1].append(item)
        futures = [self._rounds.submit(pool.run, items) for pool, items in shares.values()]
        by_stream = {outcome.stream: outcome for future in futures for outcome in future.result()}
        return [by_stream[item.stream] for item in work]

    def _open_sources(self) -> dict[int, StreamParameters]:
        def open_one(stream: int) -> PacketSource | str:
            try:
                return PacketSource.open(self.urls[stream], stream_id=stream,
                                         timeout_s=self.options.source_timeout_s)
            except PacketSourceError as error:
                return str(error)

        with ThreadPoolExecutor(max_workers=min(16, len(self.urls))) as executor:
            opened = list(executor.map(open_one, range(len(self.urls))))
        parameters: dict[int, StreamParameters] = {}
        for stream, source in enumerate(opened):
            if isinstance(source, str):
                self._fail(stream, source)
                self._feeds.append(None)
                continue
            parameters[stream] = source.parameters
            if _is_local(self.urls[stream]):
                reopen = self._opener(stream) if self.options.loop else None
                self._feeds.append(_FileFeed(source, reopen))
            else:
                self._feeds.append(_LiveFeed(source, self.options.queue_packets))
        if not parameters:
            raise CoinferError("no video source could be opened: " +
                               "; ".join(str(report.error) for report in self.streams))
        return parameters

    def _opener(self, stream: int) -> Callable[[], PacketSource]:
        def reopen() -> PacketSource:
            return PacketSource.open(self.urls[stream], stream_id=stream,
                                     timeout_s=self.options.source_timeout_s)

        return reopen

    def set_budget(self, *, budget_fraction: float | None = None, budget_s: float | None = None) -> None:
        """Give the next rounds another budget (seconds, or a fraction of decode-all), checked as
        :class:`RuntimeOptions` checks it; safe to call from another thread while rounds run."""
        self.options = replace(self.options, budget_fraction=budget_fraction, budget_s=budget_s)

    def _policy(self) -> policies.Policy:
        streams, name = len(self.urls), self.options.policy_name
        if name == "packetgame":
            assert self.options.predictor is not None  # RuntimeOptions refuses packetgame without one
            return policies.PredictorPolicy(streams, ContextualPredictor.load(self.options.predictor))
        if name == "random":
            return policies.RandomPolicy(streams, seed=self.options.seed)
        return {"temporal": policies.TemporalPolicy, "round-robin": policies.RoundRobinPolicy,
                "decode-all": policies.DecodeAllPolicy}[name](streams)

    def _fail(self, stream: int, message: str) -> None:
        self.streams[stream].error = message
        self.streams[stream].ended = True
        self.metrics.failed_sources += 1

    # -- rounds ------------------------------------------------------------------------------

    def rounds(self) -> Iterator[RoundReport]:
        """Run rounds until every source has ended or ``max_rounds``; yield each round's report."""
        if self.gate is None:
            self.start()
        while self.options.max_rounds is None or self.metrics.rounds < self.options.max_rounds:
            report = self._round()
            if report is None:
                return
            yield report
        self._finish([stream for stream, feed in enumerate(self._feeds) if feed is not None])

    def run(self) -> RuntimeMetrics:
        """Run to the end and return the totals."""
        for _ in self.rounds():
            pass
        return self.metrics

    def _pull(self) -> tuple[list[SourcePacket | None], list[int]]:
        """The next packet of every source (``None``: stalled or ended) and the streams that just ended."""
        deadline = time.monotonic() + self.options.round_timeout_s
        packets: list[SourcePacket | None] = []
        ended: list[int] = []
        for stream, feed in enumerate(self._feeds):
            item = feed.next(deadline) if feed is not None else None
            if isinstance(feed, _FileFeed):
                self.streams[stream].loops = feed.loops
            if isinstance(item, _End):
                ended.append(stream)
                self.streams[stream].ended = True
                if item.error is not None:
                    self._fail(stream, item.error)
                self._close_feed(stream)
                item = None
            elif item is None and feed is not None:
                self.streams[stream].stalls += 1
                self.metrics.stalls += 1
            packets.append(item)
        return packets, ended

    def _round(self) -> RoundReport | None:
        assert self.gate is not None and self.pools and self.cost_model is not None
        packets, ended = self._pull()
        infos = [packet.info if packet is not None else None for packet in packets]
        present = np.array([info is not None for info in infos])
        if not present.any() and all(feed is None for feed in self._feeds):
            self._finish(ended)
            return None
        t = self.metrics.rounds
        for stream, packet in enumerate(packets):
            if packet is not None:
                self._stores[stream].arrive(packet)
                report = self.streams[stream]
                frame = FrameReport(packet.info.index, packet.info.pts, t)
                report.frames.append(frame)
                report.packets += 1
                self._keys[stream][frame_key(packet.info)] = frame
        pictures = [info.picture for info in infos if info is not None]
        decode_all = float(self.cost_model.cost_of(pictures).sum())
        budget = self.gate.budget = self._budget(decode_all)
        decision = self.gate.step(infos)
        work, decoded = self._work(decision.plans, decision.selected, ended)
        outcomes = self._run_pools(work)
        necessary = self._absorb(outcomes, decision.selected)
        self.gate.feedback(necessary)
        for stream, info in enumerate(infos):
            if info is not None:
                self._stores[stream].settle(info)
                settled = self.streams[stream].frame(info.index)
                if settled is not None and not settled.inferred:
                    settled.results = self._reported[stream]
                    self._keys[stream].pop(frame_key(info), None)
        self._forget_frames()
        m = self.metrics
        m.rounds += 1
        m.packets += int(present.sum())
        m.inferred += int(decision.selected.sum())
        m.decoded += int(decoded.sum())
        m.spent_cost_s += decision.spent
        m.budget_cost_s += budget
        m.decode_all_cost_s += decode_all
        m.wall_seconds = time.monotonic() - self._started
        results = [result for outcome in outcomes for result in outcome.results]
        return RoundReport(t, present, decision.selected.copy(), decoded, necessary, decision.spent,
                           budget, results)

    def _forget_frames(self) -> None:
        """Keep the latest ``history`` frame reports per stream (trimmed in batches of as many)."""
        keep = self.options.history
        if keep is None:
            return
        for report in self.streams:
            if len(report.frames) >= 2 * keep:
                drop = len(report.frames) - keep
                del report.frames[:drop]
                report.first_frame += drop

    def _budget(self, decode_all: float) -> float:
        """This round's budget: fixed seconds, or the fraction of what decoding it all would cost."""
        if self.options.budget_s is not None:
            return self.options.budget_s
        return (self.options.budget_fraction or DEFAULT_BUDGET_FRACTION) * decode_all

    def _work(self, plans: list[list[PacketInfo]], selected: np.ndarray,
              ended: Sequence[int]) -> tuple[list[StreamWork], np.ndarray]:
        work = []
        decoded = np.zeros(len(plans), dtype=np.int64)
        for stream, plan in enumerate(plans):
            flush = stream in ended
            if not plan and not flush:
                continue
            items = self._stores[stream].take(plan) if plan else []
            infer: tuple[int, ...] = ()
            if selected[stream]:
                infer = (frame_key(plan[-1]),)
                self._keys[stream][infer[0]].inferred = True
                self.streams[stream].inferred += 1
            for info in plan:
                frame = self.streams[stream].frame(info.index)
                if frame is not None:
                    frame.decoded = True
            decoded[stream] = len(plan)
            self.streams[stream].decoded += len(plan)
            work.append(StreamWork(stream, items, infer, flush))
        return work, decoded

    def _absorb(self, outcomes: Sequence[StreamOutcome], selected: np.ndarray) -> np.ndarray:
        """Book the workers' outcomes; return each stream's necessity feedback for the gate."""
        arrived = np.zeros(len(self.urls), dtype=bool)
        necessary = np.zeros(len(self.urls), dtype=bool)
        for outcome in outcomes:
            report = self.streams[outcome.stream]
            report.workers.add(outcome.worker)
            report.decode_seconds += outcome.decode_seconds
            report.infer_seconds += outcome.infer_seconds
            report.decoder_errors += outcome.errors
            report.corrupt_frames += outcome.corrupt
            report.lost_frames += len(outcome.lost)
            report.messages.extend(outcome.messages)
            m = self.metrics
            m.decode_seconds += outcome.decode_seconds
            m.infer_seconds += outcome.infer_seconds
            m.decoder_errors += outcome.errors
            m.corrupt_frames += outcome.corrupt
            m.lost_frames += len(outcome.lost)
            if self.audit:
                self.decoded[outcome.stream].update(outcome.decoded)
            for key in outcome.lost:
                frame = self._keys[outcome.stream].pop(key, None)
                if frame is not None:
                    frame.results = self._reported[outcome.stream]
            for result in outcome.results:
                needed = self._report(result)
                necessary[result.stream] |= needed
                arrived[result.stream] = True
        self._last_necessary = np.where(arrived, necessary, self._last_necessary)
        return np.where(arrived, necessary, selected & self._last_necessary)

    def _report(self, result: FrameResult) -> bool:
        """Make ``result`` its stream's reported result; return whether it differed from the last one."""
        stream = self.streams[result.stream]
        last = self._reported[result.stream]
        needed = last is None or any(measure.necessary(last[task], result.results[task])
                                     for task, measure in self._measures.items())
        self._reported[result.stream] = result.results
        frame = self._keys[result.stream].pop(result.key, None)
        if frame is not None:
            frame.results = result.results
        stream.results += 1
        self.metrics.results += 1
        self.metrics.necessary += int(needed)
        return needed

    def _finish(self, streams: Sequence[int]) -> None:
        """The run is over: drain the decoders of ``streams`` so held-back results still arrive."""
        if streams:
            outcomes = self._run_pools([StreamWork(stream, flush=True) for stream in streams])
            self._absorb(outcomes, np.zeros(len(self.urls), dtype=bool))
        for stream in streams:
            self._close_feed(stream)
        self.metrics.wall_seconds = time.monotonic() - self._started

    # -- results and shutdown ----------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Options, totals and per-stream results (per-frame reported counts per task), JSON-ready."""
        tasks = list(self._measures)
        streams = []
        for report in self.streams:
            streams.append({
                "stream": report.stream, "url": report.url, "error": report.error,
                "packets": report.packets, "stalls": report.stalls, "inferred": report.inferred,
                "decoded": report.decoded, "results": report.results,
                "decode_seconds": report.decode_seconds, "infer_seconds": report.infer_seconds,
                "decoder_errors": report.decoder_errors, "corrupt_frames": report.corrupt_frames,
                "lost_frames": report.lost_frames, "parse_errors": report.parse_errors,
                "loops": report.loops, "workers": sorted(report.workers), "messages": report.messages,
                "frames": {
                    "index": [frame.index for frame in report.frames],
                    "pts": [frame.pts for frame in report.frames],
                    "inferred": [frame.inferred for frame in report.frames],
                    "decoded": [frame.decoded for frame in report.frames],
                    "counts": {task: report.counts(task) for task in tasks},
                },
            })
        options = {key: value for key, value in asdict(self.options).items() if key != "costs"}
        options["policy"] = self.options.policy_name
        return {
            "options": options,
            "cost_model": self.cost_model.to_dict() if self.cost_model is not None else None,
            "tasks": tasks,
            "metrics": self.metrics.as_dict(),
            "streams": streams,
        }

    def _close_feed(self, stream: int) -> None:
        feed = self._feeds[stream]
        if feed is None:
            return
        self._feeds[stream] = None
        self.streams[stream].parse_errors = feed.parse_errors
        self.metrics.parse_errors += feed.parse_errors
        feed.close()

    def close(self) -> None:
        """Stop the source readers and the decoder workers (safe to call twice, and after Ctrl-C)."""
        for stream in range(len(self._feeds)):
            self._close_feed(stream)
        for pool in self.pools:
            pool.close()
        if self._rounds is not None:
            self._rounds.shutdown(wait=True)
            self._rounds = None
        self.pools, self._pool_of, self.pool = [], {}, None

    def __enter__(self) -> GateRuntime:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _calibrate(parameters: Iterable[StreamParameters]) -> DecodeCostModel:
    """A cost model per distinct (codec, size); several are merged into the dearest per picture type."""
    models = []
    for codec, width, height in sorted({(p.codec, p.width, p.height) for p in parameters}):
        try:
            models.append(calibrate_decode_costs(codec, width, height))
        except ValueError as error:
            raise CoinferError(f"cannot price decoding {codec} {width}x{height}: {error}") from error
    if len(models) == 1:
        return models[0]
    return DecodeCostModel(i_seconds=max(model.i_seconds for model in models),
                           p_seconds=max(model.p_seconds for model in models),
                           b_seconds=max(model.b_seconds for model in models), codec="mixed")
