"""NestEvo and the paper's baselines, run on a drift set: who gets how accurate after evolving.

A *world* is what deployment left behind: a global model (the unpruned architecture) and one
device model per camera, all fine-tuned on the drift set's ``source`` domain, and each
camera's frames: the uploaded part (what evolution may train on, labelled on the edge by the
annotators, as the paper labels with its big detector) and the held-out part (what accuracy
is measured on). Prefix features are computed once for every frame (the trunk is frozen and
shared), so each method only pays for its training.

The methods (paper section 7.1):

- ``no_evolution`` (A3): the deployed device models;
- ``independent_distillation`` (A4): the original global model distilled into each device
  model on its camera's uploaded frames;
- ``domain_adaptation`` (A1): each device model aligned to its camera's (unlabelled) frames
  while keeping the source task (CORAL feature alignment);
- ``co_evolution_without_generation`` (A2): each device model learns mutually with a middle
  copy of the global model, in federated rounds whose middle models are averaged into a new
  global (FedAvg on MLink's aggregate); each device model is then distilled from its own
  last middle model (:mod:`coinfer.sdk.evolve.coevolution`);
- ``nestevo``: drift decides (:class:`~coinfer.sdk.evolve.drift.DriftPolicy`); below
  ``epsilon`` drifted cameras it is A4 on the drifted cameras, otherwise A2 with the
  conditional feature generator: after every round but the last the generator learns from
  the middle models' predictors and the next rounds also train on generated samples.

Both co-evolution methods hold out a quarter of each camera's uploads and end each device as
the candidate that labels them best (co-evolved, distilled from the old global model, or
kept: :mod:`coinfer.sdk.evolve.coevolution`); ``per_camera`` says which.

Accuracy is the balanced accuracy over tasks (:func:`coinfer.sdk.evolve.training.
balanced_accuracy`): 0.5 is chance whatever the class balance. The time a camera waits for its
new model (``seconds``) is the training time its model depended on, run alone on this machine.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.bench.data.drift import DriftSet
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve import training
from coinfer.sdk.evolve.coevolution import CoEvolutionOptions, CoEvolutionResult, Participant, co_evolve
from coinfer.sdk.evolve.drift import DriftPolicy, class_drift
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network

METHODS = ("no_evolution", "independent_distillation", "domain_adaptation",
           "co_evolution_without_generation", "nestevo")
#: Device architectures, assigned to cameras in turn: pruned 30%, 50%, 70% and the tiny body.
DEVICE_ARCHITECTURES = (("M1", 0.7), ("M2", 0.5), ("M3", 0.3), ("tiny", 1.0))

Say = Callable[[str], None]


@dataclass(frozen=True)
class EvolveOptions:
    """How the world is built and evolved: ``cameras`` (domain ids of the drift set),
    ``pretrain`` and ``evolve`` training options, the ``generator`` options, the drift
    policy's ``gamma`` (eq. 12, on the global model's 128-wide embeddings: on the full drift set
    the source's own two halves differ by about 17 and the drifted cameras by 40 to 48) and
    ``epsilon``, the co-evolution's federated ``rounds`` and the ``aggregate`` of its middle
    models."""

    cameras: tuple[str, ...] = ("A", "D", "E", "F")
    pretrain: training.TrainOptions = field(default_factory=lambda: training.TrainOptions(epochs=8))
    evolve: training.TrainOptions = field(default_factory=lambda: training.TrainOptions(epochs=6))
    generator: training.GeneratorOptions = field(default_factory=training.GeneratorOptions)
    gamma: float = 30.0
    epsilon: int = 2
    rounds: int = 3
    aggregate: str = "mean"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) or "source" in self.cameras:
            raise InvalidArgumentError(f"cameras must be distinct domain ids other than source, "
                                       f"got {self.cameras}")


#: ``coinfer evolve bench --quick``: fewer epochs, rounds and generator steps (a smoke run).
QUICK_OPTIONS = EvolveOptions(pretrain=training.TrainOptions(epochs=4),
                              evolve=training.TrainOptions(epochs=2),
                              generator=training.GeneratorOptions(steps=100), rounds=2)


@dataclass
class Camera:
    """One camera: its domain, its device architecture, the prefix features and labels of its
    uploaded and held-out frames, and the uploaded frames themselves with their small-object
    flags (for adaptive compression)."""

    id: str
    architecture: ArchitectureSpec
    upload: np.ndarray
    upload_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    upload_frames: np.ndarray
    upload_small: np.ndarray


@dataclass
class World:
    """The deployed state every method starts from (see the module docstring)."""

    cameras: list[Camera]
    source: np.ndarray
    source_labels: np.ndarray
    source_test: np.ndarray
    source_test_labels: np.ndarray
    global_model: Any
    devices: dict[str, Any]
    pretrained: Any
    seconds: dict[str, float] = field(default_factory=dict)


def _accuracy(model: Any, features: np.ndarray, labels: np.ndarray) -> float:
    return training.balanced_accuracy(training.logits(model, features) > 0, labels)


def build_world(drift: DriftSet, pretrained: Any, options: EvolveOptions, say: Say = print) -> World:
    """Fine-tune the global model and one device model per camera on the source domain."""
    import torch

    torch.manual_seed(options.seed)
    size = drift.size
    global_model = build_network(ArchitectureSpec("efficientnet-lite0", input_size=size), pretrained)
    source = drift.domain("source")
    started = time.perf_counter()
    features = training.prefix_features(global_model, source.frames)
    cameras = []
    for index, camera_id in enumerate(options.cameras):
        domain = drift.domain(camera_id)
        name, keep = DEVICE_ARCHITECTURES[index % len(DEVICE_ARCHITECTURES)]
        family = "tiny" if name == "tiny" else "efficientnet-lite0"
        spec = ArchitectureSpec(family, keep=keep, input_size=size)
        camera_features = training.prefix_features(global_model, domain.frames)
        train, test = domain.train(), domain.test()
        cameras.append(Camera(camera_id, spec, camera_features[train], domain.labels[train],
                              camera_features[test], domain.labels[test], domain.frames[train],
                              domain.small[train]))
    prefix_seconds = time.perf_counter() - started
    say(f"prefix features of {len(source) + sum(len(c.upload) + len(c.test) for c in cameras)} frames: "
        f"{prefix_seconds:.1f} s")
    train, test = source.train(), source.test()
    started = time.perf_counter()
    training.fine_tune(global_model, features[train], source.labels[train], options.pretrain)
    devices = {}
    for camera in cameras:
        device = build_network(camera.architecture, pretrained)
        training.fine_tune(device, features[train], source.labels[train], options.pretrain)
        devices[camera.id] = device
    say(f"deployed models fine-tuned on the source: {time.perf_counter() - started:.1f} s")
    return World(cameras, features[train], source.labels[train], features[test], source.labels[test],
                 global_model, devices, pretrained, {"prefix": prefix_seconds})


@dataclass
class MethodResult:
    """Accuracy before and after one method, per camera, and the global model's."""

    name: str
    device_before: dict[str, float]
    device_after: dict[str, float]
    global_before: float
    global_after: float
    seconds: dict[str, float]
    mode: str = ""
    deltas: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, str] = field(default_factory=dict)


def _union(world: World) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([camera.test for camera in world.cameras]),
            np.concatenate([camera.test_labels for camera in world.cameras]))


def drift_deltas(world: World) -> tuple[dict[str, float], float]:
    """Each camera's drift (eq. 11) on the global model's embeddings of its uploaded frames
    against the source's, and the source's own drift between its two halves (the noise floor)."""
    source = training.embeddings(world.global_model, world.source)
    half = len(source) // 2
    floor = float(class_drift(source[:half], world.source_labels[:half], source[half:],
                              world.source_labels[half:]).delta)
    deltas = {camera.id: float(class_drift(source, world.source_labels,
                                           training.embeddings(world.global_model, camera.upload),
                                           camera.upload_labels).delta)
              for camera in world.cameras}
    return deltas, floor


def run_method(name: str, world: World, options: EvolveOptions, say: Say = print) -> MethodResult:
    """Evolve ``world``'s device models with method ``name`` (one of :data:`METHODS`); the
    world itself is left as it was."""
    if name not in METHODS:
        raise InvalidArgumentError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    union, union_labels = _union(world)
    before = {c.id: _accuracy(world.devices[c.id], c.test, c.test_labels) for c in world.cameras}
    global_before = _accuracy(world.global_model, union, union_labels)
    devices = {c.id: copy.deepcopy(world.devices[c.id]) for c in world.cameras}
    seconds = {c.id: 0.0 for c in world.cameras}
    global_after, mode = global_before, ""
    deltas: dict[str, float] = {}
    chosen: dict[str, str] = {}
    evolve = options.evolve
    if name == "independent_distillation":
        _distill_all(world, world.global_model, devices, seconds, evolve)
    elif name == "domain_adaptation":
        for camera in world.cameras:
            started = time.perf_counter()
            training.align_domains(devices[camera.id], world.source, world.source_labels, camera.upload,
                                   evolve)
            seconds[camera.id] += time.perf_counter() - started
    elif name in ("co_evolution_without_generation", "nestevo"):
        generate = name == "nestevo"
        if generate:
            deltas, floor = drift_deltas(world)
            gamma = options.gamma
            decision = DriftPolicy(gamma=gamma, epsilon=options.epsilon).decide(deltas)
            mode = decision.mode
            measured = ", ".join(f"{k} {v:.2f}" for k, v in deltas.items())
            say(f"drift: {measured} (gamma {gamma:.2f}, the source's own halves {floor:.2f}) -> {mode}")
            if mode == "device-only":
                drifted = [c for c in world.cameras if c.id in decision.drifted]
                _distill_all(world, world.global_model, devices, seconds, evolve, drifted)
        if mode != "device-only":
            evolved = _co_evolve(world, devices, seconds, options, generate, say)
            global_after = _accuracy(evolved.global_model, union, union_labels)
            chosen = evolved.chosen
    after = {c.id: _accuracy(devices[c.id], c.test, c.test_labels) for c in world.cameras}
    return MethodResult(name, before, after, global_before, global_after, seconds, mode, deltas, chosen)


def _distill_all(world: World, teacher: Any, devices: dict[str, Any], seconds: dict[str, float],
                 options: training.TrainOptions, cameras: Sequence[Camera] | None = None) -> None:
    for camera in world.cameras if cameras is None else cameras:
        started = time.perf_counter()
        teacher_logits = training.logits(teacher, camera.upload)
        training.distill(devices[camera.id], teacher_logits, camera.upload, camera.upload_labels, options)
        seconds[camera.id] += time.perf_counter() - started


def _co_evolve(world: World, devices: dict[str, Any], seconds: dict[str, float], options: EvolveOptions,
               generate: bool, say: Say) -> CoEvolutionResult:
    """Every camera's device model co-evolved (:func:`coinfer.sdk.evolve.coevolution.co_evolve`),
    with the generator or without (A2)."""
    participants = [Participant(c.id, devices[c.id], c.upload, c.upload_labels) for c in world.cameras]
    result = co_evolve(world.global_model, participants, CoEvolutionOptions(
        train=options.evolve, rounds=options.rounds, generator=options.generator if generate else None,
        aggregate=options.aggregate), say)
    for camera_id, spent in result.seconds.items():
        seconds[camera_id] += spent
    return result


def summarize(result: MethodResult) -> dict[str, Any]:
    """The bench JSON entry of one method (means over cameras)."""
    cameras = list(result.device_before)
    def mean(values: Mapping[str, float]) -> float:
        """Over the cameras whose accuracy is defined (a camera whose held-out labels hold one
        class of every task has none)."""
        finite = [values[c] for c in cameras if math.isfinite(values[c])]
        return float(np.mean(finite)) if finite else float("nan")

    return {
        "device_accuracy_before": mean(result.device_before),
        "device_accuracy_after": mean(result.device_after),
        "device_gain": mean({c: result.device_after[c] - result.device_before[c] for c in cameras}),
        "global_accuracy_before": result.global_before,
        "global_accuracy_after": result.global_after,
        "per_camera": {c: {"before": result.device_before[c], "after": result.device_after[c],
                           "seconds": result.seconds[c],
                           **({"chosen": result.chosen[c]} if c in result.chosen else {})} for c in cameras},
        **({"mode": result.mode, "drift": result.deltas} if result.mode else {}),
    }


def source_accuracy(world: World) -> dict[str, Any]:
    """The deployed models on the source's held-out frames (what drift is measured from)."""
    return {"global": _accuracy(world.global_model, world.source_test, world.source_test_labels),
            **{c.id: _accuracy(world.devices[c.id], world.source_test, world.source_test_labels)
               for c in world.cameras}}


def drift_drop(world: World, source: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per camera: accuracy on the source minus on the camera, for its device and the global model."""
    return {c.id: {"device": source[c.id] - _accuracy(world.devices[c.id], c.test, c.test_labels),
                   "global": source["global"] - _accuracy(world.global_model, c.test, c.test_labels)}
            for c in world.cameras}
