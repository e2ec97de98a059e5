"""MLink budgeted serving on the daemon's live streams: run some models, predict the others.

A frame the gate chose for inference would otherwise run every detector. Under ``[mlink]``
it runs only the models MLink's planner picks under a per-frame budget (milliseconds of model
time), and the trained links predict the others' outputs from theirs (Algorithm 5.2). The
planning is :mod:`coinfer.sdk.mlink.serving`'s, taken one frame at a time
(:class:`FramePlanner`): every ``period`` frames the plan is made again from the links'
recent performance (:class:`~coinfer.sdk.mlink.serving.LinkScores`,
:func:`~coinfer.sdk.mlink.serving.plan_period`), and on a random ``profile_fraction`` of the
frames (and on the first one) every model runs, which scores the links on fresh outputs and,
when no costs are configured, measures each model's time once. A budget too small for any
model runs the cheapest one: the links need something to predict from.

The models are the zoo's that read an image alone (:mod:`coinfer.edge.mlink.zoo`: faces,
cats, people, text, crowd); the gateway's streams carry no audio. :class:`MlinkServing` runs
in the decoder worker processes, inside the stream's plug-in
(:class:`~coinfer.edge.daemon.filtering.StreamPlugin`): it pickles as its settings and loads
the links and the models in :meth:`MlinkServing.prepare`. Each result holds, per model, a
count the gate's redundancy measure compares (:func:`output_count`) and, under
:data:`MLINK_KEY`, the served outputs and which models ran or were predicted; the daemon
counts those into :class:`MlinkTotals` (``/metrics``, ``/v1/status``, the status page).

Example:

>>> import numpy as np
>>> from coinfer.sdk.mlink import OutputSpec
>>> output_count(OutputSpec.classes(4), np.array([0, 0, 1, 0], np.float32))
2
>>> output_count(OutputSpec.boxes(), np.zeros(4, np.float32)), nothing(OutputSpec.classes(3)).tolist()
(0, [1.0, 0.0, 0.0])
>>> totals = MlinkTotals()
>>> totals.add({"ran": ["faces"], "predicted": ["cats"], "filtered": [], "plan": ["faces"],
...             "outputs": {"faces": [1.0, 0.0, 0.0, 0.0], "cats": [0.1]}})
>>> totals.plan_line()
'faces (predicted: cats)'
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink import LinkGraph, OutputSpec, Plan
from coinfer.sdk.mlink.serving import LinkScores, plan_period

__all__ = ["IMAGE_MODELS", "MLINK_KEY", "FramePlanner", "LinksInfo", "MlinkServing", "MlinkSettings",
           "MlinkTotals", "inspect_links", "nothing", "output_count"]

#: The key of every result that holds the MLink outputs and which models ran.
MLINK_KEY = "mlink"
#: The zoo models that read a frame alone (the streams carry no audio).
IMAGE_MODELS = ("faces", "cats", "people", "text", "crowd")
#: Profiled frames the link scores are kept for (as ServingOptions.history).
HISTORY = 200


@dataclass(frozen=True)
class MlinkSettings:
    """What the plug-in needs to serve: the links and their ``models``, the budget in ms per
    frame, the costs in ms per model (empty: measured on the first frame), the planning period
    in frames, the fraction of frames every model runs on, the crowd CNN's artifact when the
    links use it, and ``digest`` (:class:`LinksInfo`)."""

    links: Path
    models: tuple[str, ...]
    budget: float
    costs: tuple[tuple[str, float], ...] = ()
    period: int = 100
    profile_fraction: float = 0.01
    crowd: Path | None = None
    digest: str = ""


@dataclass(frozen=True)
class LinksInfo:
    """A link graph's models and ``digest``, the sha256 of its manifest (and of the crowd
    CNN's when there is one), so that a reload sees links retrained in place."""

    models: tuple[str, ...]
    digest: str


def _manifest_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        manifest = path / "manifest.json"
        digest.update(manifest.read_bytes() if manifest.is_file() else str(path).encode())
    return digest.hexdigest()


def inspect_links(links: str | os.PathLike, crowd: str | os.PathLike | None = None) -> LinksInfo:
    """Load the link graph at ``links`` (hashes checked) and describe it; refuse models that do
    not read an image alone, and a crowd model without its CNN (or a CNN nothing uses)."""
    graph = LinkGraph.load(links)
    other = [name for name in graph.models if name not in IMAGE_MODELS]
    if other:
        raise CoinferError(f"{links}: links model(s) {other}; the streams serve only "
                           f"{', '.join(IMAGE_MODELS)}")
    if "crowd" in graph.models and crowd is None:
        raise CoinferError(f"{links}: the links use the crowd model: give its CNN (crowd = \"DIR\")")
    if "crowd" not in graph.models and crowd is not None:
        raise CoinferError(f"{links}: the links do not use the crowd model, so crowd is not needed")
    if crowd is not None:
        from coinfer.edge.models.crowd import CrowdClassifier

        CrowdClassifier(crowd)
    paths = [Path(links)] + ([] if crowd is None else [Path(crowd)])
    return LinksInfo(tuple(graph.models), _manifest_digest(paths))


def output_count(spec: OutputSpec, row: Any) -> int:
    """A model's output as the count the gate's redundancy measure compares: the class of a
    classifier (the faces' count, the crowd's 0, 1, 2+), 1 for a present label or a found box,
    else 0, the length of a sequence."""
    if spec.is_sequence:
        return len(row)
    values = np.asarray(row, np.float32)
    if spec.task == "softmax":
        return int(np.argmax(values))
    if spec.metric == "iou":
        return int(values[2] * values[3] > 0)
    return int(np.sum(values >= 0.5))


def nothing(spec: OutputSpec) -> np.ndarray:
    """The output of a model that found nothing (what a skip filter predicts): class 0 of a
    classifier, zeros otherwise."""
    row = np.zeros(spec.size, np.float32)
    if spec.task == "softmax":
        row[0] = 1.0
    return row


class FramePlanner:
    """Algorithm 5.2 one frame at a time over ``graph``'s models: which models to run on the
    next frame (:meth:`choose`), what the run ones say (:meth:`record`) and the outputs of all
    (:meth:`serve`). ``costs`` in ms per model; ``None`` measures them on the first frame."""

    def __init__(self, graph: LinkGraph, budget: float, costs: Mapping[str, float] | None = None, *,
                 period: int = 100, profile_fraction: float = 0.01, seed: int = 0) -> None:
        if not budget > 0 or period < 1 or not 0 <= profile_fraction <= 1:
            raise CoinferError(f"budget must be > 0, period >= 1 and profile_fraction in [0, 1]; got "
                               f"{budget}, {period}, {profile_fraction}")
        self.graph = graph
        self.budget = budget
        self.costs = None if not costs else {name: float(costs[name]) for name in graph.models}
        self.period = period
        self.profile_fraction = profile_fraction
        self.scores = LinkScores(graph, HISTORY)
        self.plan: Plan | None = None
        self.frames = 0
        self._profiled = False
        self._rng = np.random.default_rng(seed)

    @property
    def profiled(self) -> bool:
        """Whether the frame :meth:`choose` last answered for runs every model."""
        return self._profiled

    def choose(self) -> tuple[str, ...]:
        """The models to run on the next frame: all of them on a profiled frame (the first,
        then about ``profile_fraction`` of them), else the plan's, made again every ``period``
        frames."""
        index = self.frames
        self.frames += 1
        costs, performance = self.costs, self.scores.performance()
        if costs is not None and performance and (self.plan is None or index % self.period == 0):
            self.plan = self._plan(costs, performance)
        self._profiled = costs is None or not performance or self._rng.random() < self.profile_fraction
        if self._profiled or self.plan is None:
            return tuple(self.graph.models)
        return self.plan.active

    def _plan(self, costs: Mapping[str, float], performance: Mapping[tuple[str, str], float]) -> Plan:
        plan = plan_period(costs, performance, self.budget)
        if plan.active:
            return plan
        cheapest = min(costs, key=lambda name: (costs[name], name))
        return Plan((cheapest,), costs[cheapest], self.budget)

    def record(self, outputs: Mapping[str, Any], milliseconds: Mapping[str, float]) -> None:
        """Score the links on a frame where every model ran (``outputs`` of each); without
        configured costs, its times become the costs."""
        if set(outputs) != set(self.graph.models):
            raise CoinferError(f"a profiled frame needs every model's output, got {sorted(outputs)}")
        if self.costs is None:
            self.costs = {name: max(float(milliseconds[name]), 1e-3) for name in self.graph.models}
        self.scores.add({name: _rows(self.graph.endpoints[name].spec, row) for name, row in outputs.items()})

    def serve(self, executed: Mapping[str, Any]) -> dict[str, Any]:
        """Every model's output on the frame: the executed ones as they are, the others
        predicted by their ensembles from them."""
        rows = {name: _rows(self.graph.endpoints[name].spec, row) for name, row in executed.items()}
        predicted = self.graph.predict(rows)
        return {name: predicted[name][0] for name in self.graph.models}


def _rows(spec: OutputSpec, row: Any) -> Any:
    """One step's output as a batch of one."""
    return [tuple(row)] if spec.is_sequence else np.asarray(row, np.float32)[None]


class MlinkServing:
    """The models of the links at ``settings.links`` served under the budget, in a worker."""

    def __init__(self, settings: MlinkSettings) -> None:
        self.settings = settings
        self.tasks = settings.models
        self._planner: FramePlanner | None = None
        self._zoo: dict[str, Any] = {}

    def prepare(self) -> None:
        """Load the links and the models (in the worker, before its first frame)."""
        self._loaded()

    def _loaded(self) -> FramePlanner:
        if self._planner is None:
            import torch

            from coinfer.edge.mlink.zoo import create_model

            torch.set_num_threads(1)  # one decoder worker per core already
            settings = self.settings
            graph = LinkGraph.load(settings.links)
            crowd = None if settings.crowd is None else str(settings.crowd)
            self._zoo = {name: create_model(name, crowd if name == "crowd" else None)
                         for name in graph.models}
            self._planner = FramePlanner(graph, settings.budget, dict(settings.costs) or None,
                                         period=settings.period, profile_fraction=settings.profile_fraction)
        return self._planner

    def specs(self) -> dict[str, OutputSpec]:
        """Each model's output format (the links loaded if they were not)."""
        graph = self._loaded().graph
        return {name: graph.endpoints[name].spec for name in graph.models}

    def infer(self, frame: np.ndarray, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Serve one RGB frame; ``known`` holds outputs already decided (a skip filter's
        "nothing"), which stand in for those models' own. Returns each model's count and,
        under :data:`MLINK_KEY`, the outputs and which models ran, were predicted or filtered."""
        from coinfer.edge.mlink.zoo import Step
        from coinfer.edge.models.detectors import single_threaded

        planner = self._loaded()
        known = dict(known or {})
        chosen = planner.choose()
        step = Step(frame, np.zeros(0, np.float32), 0, planner.frames - 1)
        executed: dict[str, Any] = dict(known)
        milliseconds: dict[str, float] = {}
        with single_threaded():
            for name in chosen:
                if name in known:
                    continue
                start = time.perf_counter()
                executed[name] = self._zoo[name](step)
                milliseconds[name] = 1000.0 * (time.perf_counter() - start)
        if planner.profiled and not known:
            planner.record(executed, milliseconds)
        served = planner.serve(executed)
        specs = self.specs()
        results: dict[str, Any] = {name: output_count(specs[name], served[name]) for name in self.tasks}
        plan = planner.plan.active if planner.plan is not None else tuple(planner.graph.models)
        results[MLINK_KEY] = {
            "ran": sorted(milliseconds), "filtered": sorted(known),
            "predicted": [name for name in self.tasks if name not in executed],
            "plan": list(plan), "outputs": {name: served[name] for name in self.tasks}}
        return results

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "tasks": self.tasks, "_planner": None, "_zoo": {}}


class MlinkTotals:
    """What the daemon counts of MLink's results since it started: per model, frames it ran on
    and frames the links predicted it on, and the latest plan and outputs; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: dict[str, int] = {}
        self.predictions: dict[str, int] = {}
        self.plan: list[str] = []
        self.last: dict[str, dict[str, Any]] = {}

    def add(self, marks: Mapping[str, Any]) -> None:
        """Count one frame's :data:`MLINK_KEY` entry."""
        with self._lock:
            predicted = set(marks["predicted"])
            for name in marks["outputs"]:
                self.runs.setdefault(name, 0)
                self.predictions.setdefault(name, 0)
            for name in marks["ran"]:
                self.runs[name] += 1
            for name in predicted:
                self.predictions[name] += 1
            self.plan = list(marks["plan"])
            self.last = {name: {"output": np.asarray(value, np.float32).tolist(),
                                "predicted": name in predicted} for name, value in marks["outputs"].items()}

    def plan_line(self) -> str:
        """The plan in force, as the status page says it: ``faces, people (predicted: cats)``."""
        with self._lock:
            models = list(self.runs)
            plan = list(self.plan)
        if not plan:
            return "not made yet"
        rest = [name for name in models if name not in plan]
        return ", ".join(plan) + (f" (predicted: {', '.join(rest)})" if rest else "")

    def status(self) -> dict[str, Any]:
        """The counts, the plan and the latest served outputs, JSON-ready."""
        line = self.plan_line()
        with self._lock:
            return {"plan": list(self.plan),
                    "predicted": [name for name in self.runs if self.plan and name not in self.plan],
                    "plan_line": line,
                    "models": {name: {"runs": self.runs[name], "predictions": self.predictions[name]}
                               for name in self.runs},
                    "last": {name: dict(entry) for name, entry in self.last.items()}}
