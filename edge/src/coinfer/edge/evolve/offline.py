"""One NestEvo round on the edge, offline, for every device at once (``coinfer evolve run``).

Why: when a device asks, the evolution service (:mod:`coinfer.edge.evolve.service`) evolves
it on its own against the global model, which that leaves as it is: NestEvo's *device-only*
evolution. NestEvo's round (Algorithm 2) looks at the whole fleet first: it
measures how far each camera's frames drifted from the source domain, and when enough cameras
drifted (``epsilon`` of them above ``gamma``, :class:`~coinfer.sdk.evolve.drift.DriftPolicy`)
the global model's supervision is no longer trusted, so every camera's model *co-evolves* with
it (:func:`~coinfer.sdk.evolve.coevolution.co_evolve`), which also makes a new global model.
That round needs every device's frames at once, and takes minutes. It runs as one command
on frames the operator brings (recordings of the cameras), on the configuration and ``root``
of the service, which then serves the models published here and starts from the global model
written here; or inside the service, on the frames its devices uploaded.

:func:`evolve_offline` labels the frames with the annotators
(:func:`~coinfer.edge.evolve.service.annotate`) and runs the round on them with
:func:`run_round`, which the service also runs on the frames its devices uploaded and it
labelled (``POST /v1/evolve/round``):

1. the labelled frames go through the global model's frozen prefix once;
2. each device's drift from the configuration's ``source`` statistics
   (:func:`~coinfer.sdk.evolve.drift.class_drift` of the configured global model's
   embeddings, those the statistics were made with, whichever global model the round starts
   from);
3. ``mode``: ``auto`` lets the policy choose (co-evolution: every given device takes part;
   device-only: only the drifted ones evolve, the others are left as they are),
   ``device-only`` and ``co-evolution`` force the mode for every given device;
4. training in this process: device-only distils the global model's outputs and the labels
   into each device model (:func:`~coinfer.sdk.evolve.training.distill`, the configuration's
   ``training`` options), co-evolution runs ``rounds`` federated rounds;
5. every new model is exported first, then each is published (its weights behind it, then the
   store's atomic publication), and only then, after co-evolution, the new global model is
   written as ``root/global/vN.npz``. Whatever fails before the publications publishes nothing.

Each device starts from its latest published weights (else its configured state) and the
global model from the newest ``root/global/vN.npz`` (else the configured one), as the service
does. The caller of :func:`run_round` holds the root: :func:`evolve_offline` takes its lock
(:class:`~coinfer.edge.evolve.service.RootLock`), so it is refused while a service runs on the
root, and a service is refused while it runs; the service holds the lock already.

What is checked before any model is loaded:

>>> from coinfer.edge.evolve.service import EvolutionConfig
>>> config = EvolutionConfig.from_dict({
...     "root": "edge", "global": {"architecture": {"family": "efficientnet-lite0", "input_size": 64},
...                                "state": "global.npz"},
...     "devices": [{"id": name, "architecture": {"family": "tiny", "input_size": 64},
...                  "state": f"{name}.npz"} for name in ("cam1", "cam2")]}, base="/srv/evolve")
>>> check_plan(config, ["cam1", "cam2"], "co-evolution")
>>> check_plan(config, ["cam1", "cam3"], "co-evolution")
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: unknown device 'cam3' (configured: cam1, cam2)
>>> check_plan(config, ["cam1"], "auto")
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: mode 'auto' needs the configuration's source statistics ...
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.edge.evolve.service import (
    EvolutionConfig,
    ExportedModel,
    Exporter,
    RootLock,
    annotate,
    check_weights,
    drift_network,
    export_model,
    latest_global,
    latest_state,
    load_network,
    open_store,
    publish_model,
    write_global,
)
from coinfer.edge.evolve.store import ModelStore
from coinfer.edge.models.detectors import create_detector
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.coevolution import CoEvolutionOptions, Participant, co_evolve
from coinfer.sdk.evolve.drift import DriftPolicy
from coinfer.sdk.evolve.networks import load_pretrained

#: What ``mode`` may be: let the drift policy choose, or force one of the policy's modes.
AUTO, DEVICE_ONLY, CO_EVOLUTION = "auto", "device-only", "co-evolution"
MODES = (AUTO, DEVICE_ONLY, CO_EVOLUTION)

Say = Callable[[str], None]


def check_plan(config: EvolutionConfig, devices: Sequence[str], mode: str) -> None:
    """Refuse, in one line, a round that cannot run: an unknown ``mode``, no device, a device
    given twice or not configured, or mode ``auto`` without source statistics to measure
    drift against."""
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {str(mode)[:40]!r}")
    if not devices:
        raise InvalidArgumentError("a round needs the frames of at least one device")
    configured = [entry.id for entry in config.devices]
    seen: set[str] = set()
    for device in devices:
        if device not in configured:
            raise InvalidArgumentError(f"unknown device {str(device)[:64]!r} (configured: "
                                       f"{', '.join(configured[:8])})")
        if device in seen:
            raise InvalidArgumentError(f"device '{device}' is given more than once")
        seen.add(device)
    if mode == AUTO and config.source is None:
        raise InvalidArgumentError("mode 'auto' needs the configuration's source statistics ('source') to "
                                   f"measure drift: add them, or choose mode '{DEVICE_ONLY}' or "
                                   f"'{CO_EVOLUTION}'")


def check_frames(config: EvolutionConfig, frames: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The frames of each device, refused in one line unless uint8 (N >= 1, S, S, 3) at the
    models' input size ``S``."""
    side = config.input_size
    checked = {}
    for device, batch in frames.items():
        array = np.asarray(batch)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (side, side, 3) or not len(array):
            raise InvalidArgumentError(f"frames of device '{device}' must be uint8 (N >= 1, {side}, {side}, "
                                       f"3), got {array.dtype} {array.shape}")
        checked[device] = array
    return checked


@dataclass
class _Device:
    """What the round knows of one device's frames."""

    frames: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    drift: float | None


#: Each device's frames, uint8 (N, S, S, 3), and their labels, bool (N, T).
Labelled = Mapping[str, tuple[np.ndarray, np.ndarray]]


def check_labels(config: EvolutionConfig, labelled: Labelled) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The frames (as :func:`check_frames` wants them) and labels of each device, the labels
    refused in one line unless bool (N, T): one row per frame, one column per task."""
    frames = check_frames(config, {device: pair[0] for device, pair in labelled.items()})
    checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for device, batch in frames.items():
        labels = np.asarray(labelled[device][1])
        if labels.dtype != bool or labels.shape != (len(batch), len(config.tasks)):
            raise InvalidArgumentError(f"labels of device '{device}' must be bool ({len(batch)}, "
                                       f"{len(config.tasks)}), got {labels.dtype} {labels.shape}")
        checked[device] = (batch, labels)
    return checked


def evolve_offline(config: EvolutionConfig, frames: Mapping[str, np.ndarray], exporter: Exporter, *,
                   mode: str = AUTO, gamma: float = 30.0, epsilon: int = 2, rounds: int = 3,
                   validation: float = 0.25, pretrained: Any = None, say: Say = print) -> dict[str, Any]:
    """Run one round on ``frames`` (device id -> uint8 (N, S, S, 3)) and return its report.

    ``exporter`` writes a device-model artifact
    (:func:`coinfer.converters.evolve_models.export_device_model`); ``gamma`` and ``epsilon``
    are the drift policy's thresholds; ``rounds`` the co-evolution's federated rounds and
    ``validation`` the share of each device's frames it holds out to choose the device's model
    (:class:`~coinfer.sdk.evolve.coevolution.CoEvolutionOptions`; a device whose old model
    validates best is not republished);
    ``pretrained`` the ImageNet EfficientNet-Lite0 (loaded when not given); ``say`` gets the
    progress lines.

    Everything is checked before the root is touched; then, with the root's lock held, the
    annotators label the frames and :func:`run_round` runs the round. The report is
    :func:`run_round`'s, its ``seconds`` counting the labelling too.
    """
    started = time.perf_counter()
    check_plan(config, list(frames), mode)
    uploads = check_frames(config, frames)
    policy = DriftPolicy(gamma, epsilon)
    options = CoEvolutionOptions(train=config.training, rounds=rounds, validation=validation)
    source = check_weights(config)
    with RootLock(config.root):
        annotators = {task: create_detector(task) for task in config.tasks}
        labelled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, batch in uploads.items():
            say(f"{name}: labelling {len(batch)} frames")
            labelled[name] = (batch, annotate(batch, annotators, config.tasks, config.annotate_side))
        report = run_round(config, labelled, exporter, mode=mode, policy=policy, options=options,
                           source=source, pretrained=pretrained, say=say)
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def run_round(config: EvolutionConfig, labelled: Labelled, exporter: Exporter, *, mode: str = AUTO,
              policy: DriftPolicy, options: CoEvolutionOptions, source: tuple[np.ndarray, np.ndarray] | None,
              pretrained: Any = None, store: ModelStore | None = None, say: Say = print) -> dict[str, Any]:
    """Run one round on frames already labelled and return its report; the caller holds the
    root (:class:`~coinfer.edge.evolve.service.RootLock`, or the service that holds it).

    ``labelled``: device id -> (uint8 frames (N, S, S, 3), bool labels (N, T), a column per
    task); ``mode``: one of :data:`MODES`; ``policy``: the drift thresholds; ``options``: the
    co-evolution's; ``source``: the source statistics
    (:func:`~coinfer.edge.evolve.service.load_source`; mode ``auto`` needs them);
    ``pretrained``: the ImageNet EfficientNet-Lite0 (loaded when not given); ``store``: the
    root's model store (opened when not given; a service passes its own, which then serves what
    the round publishes); ``say`` gets the progress lines.

    The report (JSON values): ``mode`` (the one run) and ``reason`` (the policy's decision, or
    the mode asked for), ``requested_mode``, ``gamma``, ``epsilon``, ``rounds``, ``drifted``
    (the devices above ``gamma``, sorted), ``global_from_version`` (the global model the round
    started from; 1 is the configured one), ``global_version`` (the one co-evolution wrote, else
    None), ``seconds`` (this call's; :func:`evolve_offline`'s count the labelling too) and
    ``devices``: per device ``frames``, ``positives``
    (frames per task the annotators found it on), ``drift`` (None without source statistics),
    ``drifted`` (None when not measured), ``from_version`` (the published version whose weights
    its evolution started from, 1 for the configured state; None if it did not evolve),
    ``version`` (published; None if it did not evolve or kept its model), ``candidate`` (after
    co-evolution: co-evolved, distilled or kept; else None) and ``seconds`` (its training and
    export).
    """
    from coinfer.sdk.evolve import training
    from coinfer.sdk.evolve.drift import class_drift

    started = time.perf_counter()
    check_plan(config, list(labelled), mode)
    checked = check_labels(config, labelled)
    if mode == AUTO and source is None:
        raise InvalidArgumentError("mode 'auto' needs the source statistics to measure drift: pass "
                                   "source=load_source(config)")
    if pretrained is None:
        pretrained = load_pretrained()
    global_from, global_state = latest_global(config)
    global_model = load_network(config.global_architecture, global_state, "global model", pretrained)
    drift_model = None if source is None else drift_network(config, global_from, global_model, pretrained)
    say(f"global model: version {global_from} ({global_state})")
    if store is None:
        store = open_store(config)
    devices: dict[str, _Device] = {}
    for name, (batch, labels) in checked.items():
        features = training.prefix_features(global_model, batch)
        drift = None
        if source is not None:
            embedded = training.embeddings(drift_model, features)
            drift = class_drift(source[0], source[1], embedded, labels).delta
        devices[name] = _Device(batch, labels, features, drift)
        found = ", ".join(f"{task} {count}" for task, count in zip(config.tasks, labels.sum(0), strict=True))
        say(f"{name}: positives {found}; drift " + ("not measured" if drift is None else f"{drift:.3f}"))

    measured = {name: device.drift for name, device in devices.items() if device.drift is not None}
    drifted = {name: drift > policy.gamma for name, drift in measured.items()}
    if mode == AUTO:
        decision = policy.decide(measured)
        chosen: str = decision.mode
        reason = (f"{decision.delta_global} of {len(devices)} device(s) drifted above gamma "
                  f"{policy.gamma:g}, " + ("at least" if chosen == CO_EVOLUTION else "fewer than")
                  + f" epsilon {policy.epsilon}")
        evolving = list(devices) if chosen == CO_EVOLUTION else [name for name in devices if drifted[name]]
    else:
        chosen, reason, evolving = mode, f"mode '{mode}' was asked for", list(devices)
    say(f"decision: {chosen} ({reason}); evolving {', '.join(evolving) or 'no device'}")

    seconds = dict.fromkeys(evolving, 0.0)
    starts: dict[str, int] = {}
    models: dict[str, Any] = {}
    for name in evolving:
        starts[name], arrays = latest_state(config, store, name)
        models[name] = _device_network(config, name, arrays, pretrained)
    new_global = None
    candidates: dict[str, str] = {}
    if chosen == CO_EVOLUTION:
        say(f"training: co-evolution of {len(evolving)} device model(s) with the global model, "
            f"{options.rounds} round(s)")
        participants = [Participant(name, models[name], devices[name].features, devices[name].labels)
                        for name in evolving]
        result = co_evolve(global_model, participants, options, say=say)
        new_global = result.global_model
        seconds.update(result.seconds)
        candidates = result.chosen
    else:
        for name in evolving:
            say(f"{name}: training: distilling the global model ({len(devices[name].frames)} frames)")
            clock = time.perf_counter()
            teacher = training.logits(global_model, devices[name].features)
            training.distill(models[name], teacher, devices[name].features, devices[name].labels,
                             config.training)
            seconds[name] += time.perf_counter() - clock

    exported: list[ExportedModel] = []
    work = config.root / "work"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="coinfer-evolve-run-", dir=work) as scratch:
        for name in evolving:
            if candidates.get(name) == "kept":
                say(f"{name}: every new model validated worse than the one it has: nothing to publish")
                continue
            clock = time.perf_counter()
            metrics: dict[str, Any] = {"evolution": chosen, "frames": len(devices[name].frames)}
            if name in candidates:
                metrics["candidate"] = candidates[name]
            if devices[name].drift is not None:
                metrics["drift"] = devices[name].drift
            exported.append(export_model(config, store, exporter, name, training.state_arrays(models[name]),
                                         devices[name].frames, metrics, Path(scratch), pretrained))
            seconds[name] += time.perf_counter() - clock
            say(f"{name}: exported version {exported[-1].version}")
        for item in exported:
            publish_model(config, store, item)
            say(f"{item.device}: published version {item.version}")
    global_version = None
    if new_global is not None:
        global_version = write_global(config, new_global)
        say(f"global model: wrote version {global_version}")

    published = {item.device: item.version for item in exported}
    return {
        "mode": chosen, "reason": reason, "requested_mode": mode, "gamma": policy.gamma,
        "epsilon": policy.epsilon, "rounds": options.rounds,
        "drifted": sorted(name for name, above in drifted.items() if above),
        "global_from_version": global_from, "global_version": global_version,
        "seconds": round(time.perf_counter() - started, 3),
        "devices": {name: {
            "frames": len(device.frames),
            "positives": {task: int(count)
                          for task, count in zip(config.tasks, device.labels.sum(0), strict=True)},
            "drift": device.drift, "drifted": drifted.get(name), "from_version": starts.get(name),
            "version": published.get(name), "candidate": candidates.get(name),
            "seconds": round(seconds[name], 3) if name in seconds else None,
        } for name, device in devices.items()},
    }


def _device_network(config: EvolutionConfig, device: str, arrays: Mapping[str, np.ndarray],
                    pretrained: Any) -> Any:
    """``device``'s network (its configured architecture, the pretrained prefix) holding ``arrays``."""
    from coinfer.sdk.evolve.networks import build_network
    from coinfer.sdk.evolve.training import load_state_arrays

    network = build_network(config.device(device).architecture, pretrained)
    load_state_arrays(network, arrays)
    return network


__all__ = ["AUTO", "CO_EVOLUTION", "DEVICE_ONLY", "MODES", "check_frames", "check_labels", "check_plan",
           "evolve_offline", "run_round"]
