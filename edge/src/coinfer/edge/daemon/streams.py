"""Live camera streams under PacketGame, kept running for as long as the daemon runs.

PacketGame shares one decode budget across cameras: the gate spends it where a frame is
worth most, so the streams run under one :class:`~coinfer.edge.gate.runtime.GateRuntime`
(one gate, one budget), each with its own plug-in
(:class:`~coinfer.edge.daemon.filtering.StreamPlugin`: the detectors, behind the stream's InFi
filter if it has one, or MLink's plan under ``[mlink]``). The one split is between
streams that run for good (cameras, and files that loop) and files that end: each kind is a
:class:`StreamGroup` of its own, so a file that ends stops only its own gate.

A group runs its runtime on a thread of its own, paces local files at their frame rate
(a file stands in for a camera, not for a benchmark; ``[gate] realtime``), counts what the
filters skipped, and starts its runtime again when it fails (a camera that went away, a
decoder worker that crashed) after a delay that doubles up to :data:`RETRY_MAX_S`. Counters
are totals over the group's runtimes, and carried over to the group that replaces it on a
reload, so Prometheus sees counters that only grow; MLink's per-model counts are the
manager's (:class:`~coinfer.edge.daemon.mlink_serving.MlinkTotals`), shared by its groups.

Example::

    manager = StreamManager(config.gate, config.streams, EventLog())
    manager.start()
    manager.set_budget(0.3)                        # the next rounds of every group
    [status.to_dict() for status in manager.statuses()]
    manager.close()                                # stops the runtimes and their workers
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from coinfer.edge.daemon.config import GateConfig, StreamConfig
from coinfer.edge.daemon.events import EventLog
from coinfer.edge.daemon.filtering import FILTER_KEY, StreamPlugin
from coinfer.edge.daemon.mlink_serving import MLINK_KEY, MlinkTotals
from coinfer.edge.gate.runtime import GateRuntime, RoundReport, RuntimeOptions, StreamReport
from coinfer.sdk.errors import one_line

__all__ = ["ENDLESS", "FINITE", "HISTORY", "RETRY_FIRST_S", "RETRY_MAX_S", "StreamGroup", "StreamManager",
           "StreamStatus", "StreamTotals", "group_key", "plan_groups", "public_url"]

#: Frame reports a runtime keeps per stream (the daemon reports totals, not frames).
HISTORY = 256
#: First delay before a failed group starts again; it doubles up to RETRY_MAX_S.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
#: A paced group that fell further behind than this stops catching up (no burst of rounds).
MAX_LAG_S = 1.0
#: The frame rate assumed for a file that does not declare one.
DEFAULT_RATE = 25.0
#: The groups: streams that run for good (cameras, looping files), and files that end.
ENDLESS, FINITE = "endless", "finite"
#: Longest wait for a group's thread to stop its runtime and workers.
STOP_TIMEOUT_S = 120.0
_CREDENTIALS = re.compile(r"//[^/@]*@")


def public_url(url: str) -> str:
    """``url`` with any user and password removed, for logs, metrics and the status page.

    >>> public_url("rtsp://admin:secret@10.0.0.5:554/live")
    'rtsp://***@10.0.0.5:554/live'
    """
    return _CREDENTIALS.sub("//***@", url, count=1)


@dataclass
class StreamTotals:
    """One stream's counters since the daemon started (over every runtime that served it)."""

    packets: int = 0
    decoded: int = 0
    inferred: int = 0
    results: int = 0
    errors: int = 0
    loops: int = 0
    restarts: int = 0
    filter_frames: int = 0
    filter_skipped: int = 0

    def plus(self, report: StreamReport) -> StreamTotals:
        """These totals with a runtime's report of the stream added."""
        return replace(self, packets=self.packets + report.packets, decoded=self.decoded + report.decoded,
                       inferred=self.inferred + report.inferred, results=self.results + report.results,
                       errors=self.errors + report.decoder_errors + int(report.error is not None),
                       loops=self.loops + report.loops)


@dataclass(frozen=True)
class StreamStatus:
    """What ``/v1/status``, ``/metrics`` and the status page show of one stream.

    ``state``: ``starting``, ``running``, ``failed`` (its source failed; the group retries
    while the stream is live or loops), ``retrying``, ``ended`` (a file that does not loop)
    or ``stopped``.
    """

    name: str
    url: str
    filter: str | None
    state: str
    totals: StreamTotals
    last_error: str | None = None

    @property
    def decode_saved(self) -> float:
        """The fraction of packets the gate did not decode."""
        totals = self.totals
        return 1.0 - totals.decoded / totals.packets if totals.packets else 0.0

    @property
    def filter_skip_rate(self) -> float | None:
        """The fraction of inferred frames the filter skipped (``None`` without a filter or frames)."""
        totals = self.totals
        return totals.filter_skipped / totals.filter_frames if totals.filter_frames else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": public_url(self.url), "filter": self.filter, "state": self.state,
                **asdict(self.totals), "decode_saved": self.decode_saved,
                "filter_skip_rate": self.filter_skip_rate, "last_error": self.last_error}


class _Pacer:
    """Spaces rounds at ``rate`` per second (none when ``rate`` is None), never in bursts."""

    def __init__(self, rate: float | None, stop: threading.Event) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.stop = stop
        self.start = time.monotonic()
        self.rounds = 0

    def wait(self) -> None:
        if not self.interval:
            return
        self.rounds += 1
        due = self.start + self.rounds * self.interval
        now = time.monotonic()
        if now - due > MAX_LAG_S:
            self.start = now - self.rounds * self.interval
            return
        self.stop.wait(max(0.0, due - now))


def _frame_rate(streams: Sequence[StreamConfig]) -> float | None:
    """The highest frame rate of the local files among ``streams`` (None: only live sources)."""
    from coinfer.device.gate.source import PacketSource, PacketSourceError

    rates = []
    for stream in streams:
        if stream.live:
            continue
        try:
            with PacketSource.open(stream.url) as source:
                rate = source.parameters.frame_rate
        except PacketSourceError:
            continue  # the runtime reports the file when it opens it
        rates.append(float(rate) if rate else DEFAULT_RATE)
    return max(rates, default=None)


class StreamGroup:
    """``streams`` (all endless, or all files that end) gated by one runtime on a thread.

    ``carried`` holds totals of streams of a group this one replaces (by name); ``mlink``
    counts what MLink ran and predicted (under ``[mlink]``).
    """

    def __init__(self, streams: Sequence[StreamConfig], gate: GateConfig, events: EventLog,
                 carried: Mapping[str, StreamTotals] | None = None, mlink: MlinkTotals | None = None) -> None:
        self.streams = tuple(streams)
        self.gate = gate
        self.events = events
        self.mlink = mlink or MlinkTotals()
        self._budget = gate.budget_fraction
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._runtime: GateRuntime | None = None
        self._phase = "starting"
        carried = carried or {}
        self._totals = {stream.name: carried.get(stream.name, StreamTotals()) for stream in self.streams}
        self._errors: dict[str, str | None] = dict.fromkeys(self._totals)
        self._costs: Any = None
        self._delay = RETRY_FIRST_S
        names = ", ".join(self._totals)
        self._thread = threading.Thread(target=self._run, name=f"coinfer-streams-{names}", daemon=True)

    @property
    def key(self) -> str:
        return group_key(self.streams[0])

    @property
    def names(self) -> list[str]:
        return [stream.name for stream in self.streams]

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop after its current round; :meth:`join` waits for it."""
        self._stop.set()

    def join(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self.events.error(f"streams {', '.join(self.names)} did not stop within {timeout:g} s")

    def set_budget(self, fraction: float) -> None:
        """The decode budget of the next rounds (and of any later runtime of the group)."""
        with self._lock:
            self._budget = fraction
            self.gate = replace(self.gate, budget_fraction=fraction)
            if self._runtime is not None:
                self._runtime.set_budget(budget_fraction=fraction)

    def totals(self) -> dict[str, StreamTotals]:
        """Every stream's totals so far, the running runtime's counts included."""
        with self._lock:
            runtime = self._runtime
            reports = runtime.streams if runtime is not None and self._phase == "running" else None
            return {name: totals.plus(reports[index]) if reports else replace(totals)
                    for index, (name, totals) in enumerate(self._totals.items())}

    def statuses(self) -> list[StreamStatus]:
        with self._lock:
            runtime = self._runtime if self._phase == "running" else None
            phase = self._phase
            errors = dict(self._errors)
        totals = self.totals()
        out = []
        for index, stream in enumerate(self.streams):
            state, error = phase, errors[stream.name]
            if runtime is not None:
                report = runtime.streams[index]
                error = report.error or error
                state = "failed" if report.error else "ended" if report.ended else "running"
            source = None if stream.filter is None else str(stream.filter)
            out.append(StreamStatus(stream.name, stream.url, source, state, totals[stream.name], error))
        return out

    # -- the group's thread ------------------------------------------------------------------

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                with self._lock:
                    for totals in self._totals.values():
                        totals.restarts += 1
            first = False
            ran = self._run_once()
            if self._stop.is_set():
                break
            if ran and not self._restartable():
                self._set_phase("ended")
                self.events.info(f"streams {', '.join(self.names)} ended")
                return
            self._set_phase("retrying")
            self._stop.wait(RETRY_FIRST_S if ran else self._delay)
            self._delay = RETRY_FIRST_S if ran else min(self._delay * 2, RETRY_MAX_S)
        self._set_phase("stopped")

    def _restartable(self) -> bool:
        """Whether a runtime that ended should start again: a live source reconnects; a
        looping file only ends when it failed."""
        return self.key == ENDLESS

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def _run_once(self) -> bool:
        """Start a runtime and run it until its sources end or the group stops; ``False`` when
        it could not start or failed, or when a stream that should run for good (a camera, a
        looping file) ended and its reconnection is due: the others run on until then."""
        rate = _frame_rate(self.streams) if self.gate.realtime else None
        with self._lock:
            self._phase = "starting"
            options = RuntimeOptions(
                budget_fraction=self._budget, policy=self.gate.policy, tasks=self.gate.tasks,
                predictor=None if self.gate.predictor is None else str(self.gate.predictor),
                workers=self.gate.workers, loop=self.key == ENDLESS, history=HISTORY, costs=self._costs)
        runtime: GateRuntime | None = None
        try:
            default, plugins = self._plugins()
            runtime = GateRuntime([stream.url for stream in self.streams], options, plugin=default,
                                  plugins=plugins)
            with self._lock:
                self._runtime = runtime
            runtime.start()
            self._costs = runtime.cost_model
            with self._lock:
                self._phase = "running"
            pacer = _Pacer(rate, self._stop)
            began, lost = time.monotonic(), None
            for report in runtime.rounds():
                self._count(report)
                if self._stop.is_set():
                    break
                if lost is None and self.key == ENDLESS and any(stream.ended for stream in runtime.streams):
                    lost = time.monotonic()
                    if lost - began > RETRY_MAX_S:  # it ran well for a while: reconnect soon
                        self._delay = RETRY_FIRST_S
                if lost is not None and time.monotonic() - lost >= self._delay:
                    return False
                pacer.wait()
            return True
        except Exception as error:  # a group's thread must report and retry, whatever failed
            message = one_line(error)
            self.events.error(f"streams {', '.join(self.names)}: {message}")
            with self._lock:
                for name, totals in self._totals.items():
                    totals.errors += 1
                    self._errors[name] = message
            return False
        finally:
            if runtime is not None:
                runtime.close()
                self._retire(runtime)

    def _plugins(self) -> tuple[StreamPlugin, dict[int, StreamPlugin]]:
        """The plug-in of the streams without a filter, and one per filter for the others (its
        streams share it, and its decoder workers)."""
        by_filter: dict[Path, StreamPlugin] = {}
        mlink = self.gate.mlink
        for stream in self.streams:
            if stream.filter is not None and stream.filter not in by_filter:
                by_filter[stream.filter] = StreamPlugin(self.gate.tasks, stream.filter, mlink)
        plugins = {index: by_filter[stream.filter] for index, stream in enumerate(self.streams)
                   if stream.filter is not None}
        return StreamPlugin(self.gate.tasks, mlink=mlink), plugins

    def _count(self, report: RoundReport) -> None:
        """Count the filters' decisions and what MLink ran and predicted in a round's results."""
        for result in report.results:
            marks = result.results.get(MLINK_KEY)
            if marks is not None:
                self.mlink.add(marks)
        with self._lock:
            for result in report.results:
                skipped = result.results.get(FILTER_KEY)
                if skipped is None:
                    continue
                totals = self._totals[self.streams[result.stream].name]
                totals.filter_frames += 1
                totals.filter_skipped += int(skipped)

    def _retire(self, runtime: GateRuntime) -> None:
        """Fold a finished runtime's counts into the totals (once the runtime has started)."""
        with self._lock:
            started = runtime.gate is not None
            self._runtime = None
            for index, stream in enumerate(self.streams):
                report = runtime.streams[index]
                if started:
                    self._totals[stream.name] = self._totals[stream.name].plus(report)
                if report.error is not None:
                    self._errors[stream.name] = report.error
        for index, stream in enumerate(self.streams):
            error = runtime.streams[index].error
            if started and error is not None:
                self.events.error(f"stream {stream.name}: {error}")


def group_key(stream: StreamConfig) -> str:
    """:data:`ENDLESS` for a camera or a looping file, :data:`FINITE` for a file that ends."""
    return ENDLESS if stream.live or stream.loop else FINITE


def plan_groups(streams: Sequence[StreamConfig]) -> dict[str, tuple[StreamConfig, ...]]:
    """The streams of each group, groups and streams in configuration order.

    >>> from pathlib import Path
    >>> streams = [StreamConfig("a", "a.mp4"), StreamConfig("b", "b.mp4", loop=True, filter=Path("f")),
    ...            StreamConfig("c", "rtsp://cam/c")]
    >>> [[stream.name for stream in group] for group in plan_groups(streams).values()]
    [['a'], ['b', 'c']]
    """
    groups: dict[str, list[StreamConfig]] = {}
    for stream in streams:
        groups.setdefault(group_key(stream), []).append(stream)
    return {key: tuple(members) for key, members in groups.items()}


class StreamManager:
    """Every configured stream, in groups; reconfigured in place by :meth:`apply` on a reload."""

    def __init__(self, gate: GateConfig, streams: Sequence[StreamConfig], events: EventLog) -> None:
        self.gate = gate
        self.events = events
        self._order = [stream.name for stream in streams]
        self.mlink = MlinkTotals()
        self._groups = [StreamGroup(members, gate, events, mlink=self.mlink)
                        for members in plan_groups(streams).values()]
        self._lock = threading.Lock()

    @property
    def budget_fraction(self) -> float:
        return self.gate.budget_fraction

    def start(self) -> None:
        for group in self._groups:
            group.start()

    def set_budget(self, fraction: float) -> None:
        with self._lock:
            self.gate = replace(self.gate, budget_fraction=fraction)
            for group in self._groups:
                group.set_budget(fraction)

    def apply(self, gate: GateConfig, streams: Sequence[StreamConfig]) -> list[str]:
        """Run ``streams`` under ``gate`` from now on: change the budget of the groups that stay,
        restart the groups whose streams or gate settings changed; return what changed. One
        caller at a time (the daemon's reload thread); status reads go on meanwhile."""
        changes: list[str] = []
        if gate.budget_fraction != self.gate.budget_fraction:
            changes.append(f"budget {self.gate.budget_fraction:g} -> {gate.budget_fraction:g}")
        restart_all = gate.runtime_changes(self.gate)
        if restart_all:
            changes.append(f"{', '.join(restart_all)} changed: every stream restarts")
        planned = plan_groups(streams)
        with self._lock:
            groups = list(self._groups)
        kept = [group for group in groups if not restart_all and planned.get(group.key) == group.streams]
        stopped = [group for group in groups if group not in kept]
        for group in kept:
            group.set_budget(gate.budget_fraction)
        for group in stopped:
            group.request_stop()
        carried: dict[str, StreamTotals] = {}
        for group in stopped:
            group.join()
            carried.update(group.totals())
        kept_keys = {group.key for group in kept}
        started = [StreamGroup(members, gate, self.events, carried, self.mlink)
                   for key, members in planned.items() if key not in kept_keys]
        by_key = {group.key: group for group in [*kept, *started]}
        with self._lock:
            self._groups = [by_key[key] for key in planned]
            old, self._order = set(self._order), [stream.name for stream in streams]
            self.gate = gate
        for group in started:
            group.start()
        added = [name for name in self._order if name not in old]
        removed = sorted(old - set(self._order))
        restarted = sorted({name for group in started for name in group.names} - set(added))
        moves = (("added", added), ("removed", removed), ("restarted", restarted))
        changes += [f"{what} stream(s) {', '.join(names)}" for what, names in moves if names]
        return changes

    def mlink_status(self) -> dict[str, Any] | None:
        """MLink's settings, per-model counts, plan and latest outputs (``None`` without ``[mlink]``)."""
        settings = self.gate.mlink
        if settings is None:
            return None
        return {"links": str(settings.links), "budget_ms": settings.budget, "period": settings.period,
                "profile_fraction": settings.profile_fraction, "costs": dict(settings.costs) or None,
                **self.mlink.status()}

    def statuses(self) -> list[StreamStatus]:
        """Every stream's status, in configuration order."""
        with self._lock:
            groups = list(self._groups)
            order = list(self._order)
        found = {status.name: status for group in groups for status in group.statuses()}
        return [found[name] for name in order if name in found]

    def close(self) -> None:
        """Stop every group: their runtimes, sources and decoder workers."""
        with self._lock:
            groups = list(self._groups)
        for group in groups:
            group.request_stop()
        for group in groups:
            group.join()
