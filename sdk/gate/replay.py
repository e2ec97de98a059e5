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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.packet import PacketInfo
from coinfer.sdk.gate.policies import Policy
from coinfer.sdk.gate.predictor import PredictorDataset
from coinfer.sdk.gate.redundancy import CountChanged, RedundancyMeasure
from coinfer.sdk.gate.scheduler import GateOptions, PacketGate


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
            raise ValueError(f"{len(self.packets)} packets but {len(self.frames)} frame indices")
        for task, results in self.results.items():
            if len(self.frames) and int(np.max(self.frames)) >= len(results):
                raise ValueError(f"task {task!r}: {len(results)} results but frame {np.max(self.frames)}")


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

    def __init__(self, traces: Sequence[StreamTrace], measures: Mapping[str, RedundancyMeasure]) -> None:
        self.traces, self.measures = traces, measures
        self.tasks = list(measures)
        self.counts = {task: isinstance(measures[task], CountChanged) for task in self.tasks}
        self.results = {}
        self.last: dict[str, Any] = {}
        for task in self.tasks:
            per_stream = [trace.results[task] for trace in traces]
            if self.counts[task]:
                self.results[task] = [np.asarray([_scalar(r) for r in rs]) for rs in per_stream]
                self.last[task] = np.zeros(len(traces), dtype=np.int64)
            else:
                self.results[task] = per_stream
                self.last[task] = [_empty_like(rs) for rs in per_stream]

    def current(self, task: str, frames: np.ndarray, present: np.ndarray) -> Any:
        per_stream = self.results[task]
        if self.counts[task]:
            return np.array([per_stream[i][frames[i]] if present[i] else 0 for i in range(len(frames))])
        return [per_stream[i][frames[i]] if present[i] else self.last[task][i] for i in range(len(frames))]

    def necessity(self, frames: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(any task necessary, per task agreement of carrying the old result over)."""
        any_needed = np.zeros(len(frames), dtype=bool)
        agree = {}
        for task in self.tasks:
            measure = self.measures[task]
            now = self.current(task, frames, present)
            needed = measure.necessary_many(self.last[task], now) & present
            any_needed |= needed
            if measure.agreement_is_negation:
                agree[task] = ~needed
            else:
                agree[task] = measure.agrees_many(self.last[task], now)
        return any_needed, agree

    def report(self, selected: np.ndarray, frames: np.ndarray, present: np.ndarray) -> None:
        for task in self.tasks:
            now = self.current(task, frames, present)
            if self.counts[task]:
                self.last[task] = np.where(selected, now, self.last[task])
            else:
                for i in np.flatnonzero(selected):
                    self.last[task][i] = now[i]


def _scalar(result: Any) -> int:
    return int(result) if np.ndim(result) == 0 else len(result)


def _round_packets(traces: Sequence[StreamTrace], t: int) -> tuple[list[PacketInfo | None], np.ndarray,
                                                                   np.ndarray]:
    packets = [trace.packets[t] if t < len(trace.packets) else None for trace in traces]
    present = np.array([packet is not None for packet in packets])
    frames = np.array([trace.frames[t] if t < len(trace.packets) else 0 for trace in traces])
    return packets, present, frames


def replay(traces: Sequence[StreamTrace], policy: Policy, costs: DecodeCostModel, budget: float,
           measures: Mapping[str, RedundancyMeasure], options: GateOptions | None = None,
           on_round: Callable[[int, np.ndarray], None] | None = None) -> ReplayResult:
    """Run ``policy`` under ``budget`` seconds per round over all traces at once."""
    streams = len(traces)
    gate = PacketGate(streams, costs, policy, budget, options)
    reporter = _Reporter(traces, measures)
    rounds = max(len(trace.packets) for trace in traces)
    agree_total = {task: 0 for task in measures}
    frames_total, spent, decode_all, inferred = 0, 0.0, 0.0, 0
    round_accuracy = np.zeros(rounds)
    for t in range(rounds):
        packets, present, frames = _round_packets(traces, t)
        needed, agree = reporter.necessity(frames, present)
        decision = gate.step(packets, oracle=needed)
        decode_all += float(costs.cost_of([p.picture for p in packets if p is not None]).sum())
        spent += decision.spent
        selected = decision.selected
        inferred += int(selected.sum())
        gate.feedback(needed)
        reporter.report(selected, frames, present)
        count = int(present.sum())
        frames_total += count
        correct = np.zeros(streams)
        for task in measures:
            ok = (agree[task] | selected) & present
            agree_total[task] += int(ok.sum())
            correct += ok
        round_accuracy[t] = correct.sum() / (count * len(measures)) if count else 1.0
        if on_round is not None:
            on_round(t, selected)
    task_accuracy = {task: agree_total[task] / max(frames_total, 1) for task in measures}
    return ReplayResult(policy.name, budget, float(np.mean(list(task_accuracy.values()))), task_accuracy,
                        spent, decode_all, inferred / max(frames_total, 1), round_accuracy)


def collect_training_rows(traces: Sequence[StreamTrace], policy: Policy, costs: DecodeCostModel,
                          budget: float, measures: Mapping[str, RedundancyMeasure],
                          options: GateOptions | None = None) -> PredictorDataset:
    """Inference logs for the predictor: the views of every packet and, per task, whether
    inferring it would have been necessary given what the running policy had reported."""
    streams = len(traces)
    gate = PacketGate(streams, costs, policy, budget, options)
    reporter = _Reporter(traces, measures)
    rounds = max(len(trace.packets) for trace in traces)
    rows: dict[str, list[np.ndarray]] = {"i": [], "p": [], "t": [], "y": []}
    for t in range(rounds):
        packets, present, frames = _round_packets(traces, t)
        needed, _ = reporter.necessity(frames, present)
        per_task = np.stack([measures[task].necessary_many(reporter.last[task],
                                                           reporter.current(task, frames, present))
                             for task in measures], axis=1)
        decision = gate.step(packets, oracle=needed)
        context = decision.context
        usable = context.present & np.isfinite(context.costs)
        rows["i"].append(context.i_view[usable])
        rows["p"].append(context.p_view[usable])
        rows["t"].append(context.temporal[usable])
        rows["y"].append(per_task[usable])
        gate.feedback(needed)
        reporter.report(decision.selected, frames, present)
    return PredictorDataset(np.concatenate(rows["i"]), np.concatenate(rows["p"]),
                            np.concatenate(rows["t"]).astype(np.float32),
                            np.concatenate(rows["y"]).astype(np.float32))
