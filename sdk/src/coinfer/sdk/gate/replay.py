"""Replay logged streams through a gate to measure accuracy and decode cost offline.

A trace is what a decode-all pass over a stream records: its packets (decode order, with
parsed headers) and the downstream model's result for every frame. Replaying a policy
under a budget reproduces what the live system would report (the inferred result for
decoded frames, the last reported result carried over for skipped ones) and scores it
against decode-all, as in the paper. Decoding itself is exact under gating (tested with
real decoders in the edge runtime), so the replay needs no decoder.

It also produces the inference logs the contextual predictor is trained on
(:func:`collect_training_rows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.dependencies import PacketBatch
from coinfer.sdk.gate.errors import GateError
from coinfer.sdk.gate.packet import PacketInfo
from coinfer.sdk.gate.policies import Policy
from coinfer.sdk.gate.predictor import PredictorDataset
from coinfer.sdk.gate.redundancy import CountChanged, RedundancyMeasure, result_count
from coinfer.sdk.gate.scheduler import GateDecision, GateOptions, PacketGate


@dataclass
class StreamTrace:
    """One stream's packets in decode order and the decode-all result of every frame.

    ``frames[k]`` is the display index of packet k's picture; ``results[task][d]`` is the
    model's result on display frame d (a count, a box array, a label).
    """

    packets: list[PacketInfo]
    frames: np.ndarray
    results: Mapping[str, Sequence[Any]]

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.packets):
            raise GateError(f"{len(self.packets)} packets but {len(self.frames)} frame indices")
        for task, results in self.results.items():
            if len(self.frames) and int(np.max(self.frames)) >= len(results):
                raise GateError(f"task {task!r}: {len(results)} results but frame {np.max(self.frames)}")


@dataclass
class ReplayResult:
    """Accuracy (fraction of frames whose reported result agrees with decode-all) and cost."""

    policy: str
    budget: float
    accuracy: float
    task_accuracy: dict[str, float]
    spent: float
    decode_all_cost: float
    inferred_fraction: float
    round_accuracy: np.ndarray = field(repr=False)
    #: Seconds spent inside the gate (scoring, selecting, planning, feedback): its overhead.
    gate_seconds: float = 0.0
    packets: int = 0

    @property
    def cost_fraction(self) -> float:
        return self.spent / self.decode_all_cost if self.decode_all_cost else 0.0

    @property
    def savings(self) -> float:
        return 1.0 - self.cost_fraction


def _empty_like(results: Sequence[Any]) -> Any:
    sample = results[0]
    return 0 if np.ndim(sample) == 0 else np.zeros((0, 4), dtype=np.float32)


class _Reporter:
    """Per task: the last reported result of every stream; scores and updates each round."""

    def __init__(self, columns: _Columns, measures: Mapping[str, RedundancyMeasure]) -> None:
        traces = columns.traces
        self.columns, self.measures = columns, measures
        self.tasks = list(measures)
        self.counts = {task: isinstance(measures[task], CountChanged) for task in self.tasks}
        self.results: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        for task in self.tasks:
            per_stream = [trace.results[task] for trace in traces]
            if self.counts[task]:
                matrix = np.zeros(columns.present.shape, dtype=np.int64)
                for i, results in enumerate(per_stream):
                    n = len(traces[i].packets)
                    counts = np.array([result_count(r) for r in results], dtype=np.int64)
                    matrix[:n, i] = counts[columns.frames[:n, i]]
                self.results[task] = matrix
                self.last[task] = np.zeros(len(traces), dtype=np.int64)
            else:
                self.results[task] = per_stream
                self.last[task] = [_empty_like(rs) for rs in per_stream]

    def current(self, task: str, t: int) -> Any:
        if self.counts[task]:
            return self.results[task][t]
        present, frames = self.columns.present[t], self.columns.frames[t]
        per_stream = self.results[task]
        return [per_stream[i][frames[i]] if present[i] else self.last[task][i] for i in range(len(frames))]

    def necessity(self, t: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(any task necessary, per task agreement of carrying the old result over)."""
        present = self.columns.present[t]
        any_needed = np.zeros(present.shape, dtype=bool)
        agree = {}
        for task in self.tasks:
            measure = self.measures[task]
            now = self.current(task, t)
            needed = measure.necessary_many(self.last[task], now) & present
            any_needed |= needed
            if measure.agreement_is_negation:
                agree[task] = ~needed
            else:
                agree[task] = measure.agrees_many(self.last[task], now)
        return any_needed, agree

    def necessity_per_task(self, t: int) -> np.ndarray:
        return np.stack([self.measures[task].necessary_many(self.last[task], self.current(task, t))
                         for task in self.tasks], axis=1)

    def report(self, selected: np.ndarray, t: int) -> None:
        for task in self.tasks:
            now = self.current(task, t)
            if self.counts[task]:
                self.last[task] = np.where(selected, now, self.last[task])
            else:
                for i in np.flatnonzero(selected):
                    self.last[task][i] = now[i]


class _RoundPackets(Sequence):
    """Stream i's packet of round t, looked up only when the gate decodes it."""

    def __init__(self, traces: Sequence[StreamTrace], t: int) -> None:
        self._traces, self._t = traces, t

    def __len__(self) -> int:
        return len(self._traces)

    def __getitem__(self, stream: int) -> PacketInfo | None:  # type: ignore[override]
        packets = self._traces[stream].packets
        return packets[self._t] if self._t < len(packets) else None


class _Columns:
    """All traces' packet metadata as (rounds, streams) arrays, so a round is a row slice."""

    def __init__(self, traces: Sequence[StreamTrace]) -> None:
        self.traces = traces
        rounds = max(len(trace.packets) for trace in traces)
        shape = (rounds, len(traces))
        self.present = np.zeros(shape, dtype=bool)
        self.sizes = np.zeros(shape)
        self.pictures = np.zeros(shape, dtype=np.int64)
        self.reference = np.zeros(shape, dtype=bool)
        self.random_access = np.zeros(shape, dtype=bool)
        self.frames = np.zeros(shape, dtype=np.int64)
        for i, trace in enumerate(traces):
            n = len(trace.packets)
            self.present[:n, i] = True
            self.sizes[:n, i] = [p.size for p in trace.packets]
            self.pictures[:n, i] = [int(p.header.picture) for p in trace.packets]
            self.reference[:n, i] = [p.header.reference for p in trace.packets]
            self.random_access[:n, i] = [p.header.random_access for p in trace.packets]
            self.frames[:n, i] = trace.frames
        self.rounds = rounds

    def batch(self, t: int) -> PacketBatch:
        return PacketBatch(_RoundPackets(self.traces, t), self.present[t], self.sizes[t], self.pictures[t],
                           self.reference[t], self.random_access[t])


def replay(traces: Sequence[StreamTrace], policy: Policy, costs: DecodeCostModel, budget: float,
           measures: Mapping[str, RedundancyMeasure], options: GateOptions | None = None,
           on_round: Callable[[int, GateDecision], None] | None = None) -> ReplayResult:
    """Run ``policy`` under ``budget`` seconds per round over all traces at once.

    ``on_round(t, decision)`` sees every round's decision (e.g. to decode its plans for real).
    """
    streams = len(traces)
    gate = PacketGate(streams, costs, policy, budget, options)
    columns = _Columns(traces)
    reporter = _Reporter(columns, measures)
    rounds = columns.rounds
    agree_total = {task: 0 for task in measures}
    frames_total, spent, decode_all, inferred, gate_seconds = 0, 0.0, 0.0, 0, 0.0
    round_accuracy = np.zeros(rounds)
    table = costs.table
    for t in range(rounds):
        present = columns.present[t]
        needed, agree = reporter.necessity(t)
        batch = columns.batch(t)
        start = time.perf_counter()
        decision = gate.step(batch, oracle=needed)
        gate.feedback(needed)
        gate_seconds += time.perf_counter() - start
        decode_all += float(table[batch.pictures[present]].sum())
        spent += decision.spent
        selected = decision.selected
        inferred += int(selected.sum())
        reporter.report(selected, t)
        count = int(present.sum())
        frames_total += count
        correct = np.zeros(streams)
        for task in measures:
            ok = (agree[task] | selected) & present
            agree_total[task] += int(ok.sum())
            correct += ok
        round_accuracy[t] = correct.sum() / (count * len(measures)) if count else 1.0
        if on_round is not None:
            on_round(t, decision)
    task_accuracy = {task: agree_total[task] / max(frames_total, 1) for task in measures}
    return ReplayResult(policy.name, budget, float(np.mean(list(task_accuracy.values()))), task_accuracy,
                        spent, decode_all, inferred / max(frames_total, 1), round_accuracy, gate_seconds,
                        frames_total)


def collect_training_rows(traces: Sequence[StreamTrace], policy: Policy, costs: DecodeCostModel,
                          budget: float, measures: Mapping[str, RedundancyMeasure],
                          options: GateOptions | None = None) -> PredictorDataset:
    """Inference logs for the predictor: the views of every packet and, per task, whether
    inferring it would have been necessary given what the running policy had reported."""
    streams = len(traces)
    gate = PacketGate(streams, costs, policy, budget, options)
    columns = _Columns(traces)
    reporter = _Reporter(columns, measures)
    rows: dict[str, list[np.ndarray]] = {"i": [], "p": [], "t": [], "y": []}
    for t in range(columns.rounds):
        needed, _ = reporter.necessity(t)
        per_task = reporter.necessity_per_task(t)
        decision = gate.step(columns.batch(t), oracle=needed)
        context = decision.context
        usable = context.present & np.isfinite(context.costs)
        rows["i"].append(context.i_view[usable])
        rows["p"].append(context.p_view[usable])
        rows["t"].append(context.temporal[usable])
        rows["y"].append(per_task[usable])
        gate.feedback(needed)
        reporter.report(decision.selected, t)
    return PredictorDataset(np.concatenate(rows["i"]), np.concatenate(rows["p"]),
                            np.concatenate(rows["t"]).astype(np.float32),
                            np.concatenate(rows["y"]).astype(np.float32))
