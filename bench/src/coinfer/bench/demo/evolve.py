"""Stage ``evolve`` of ``coinfer demo``: one NestEvo round for cameras whose scenes drifted.

Why this shape: a device model fine-tuned on what its camera saw before deployment loses
accuracy when the scene changes (the country on a cheap monochrome sensor, the night in
infrared), and NestEvo's round on the edge brings it back: it measures each camera's drift
from the source statistics, lets the drift policy choose device-only evolution or
co-evolution with the global model, trains, converts the new device models to TFLite and
publishes them. The stage builds that situation from the quick drift set (``coinfer data
drift --quick``): a global EfficientNet-Lite0 body and one small device model per camera
(:data:`CAMERAS`), fine-tuned on the source domain; writes the configuration the evolution
service and ``coinfer evolve run`` read; runs the round
(:func:`coinfer.edge.evolve.offline.run_round`) on each camera's uploaded frames with the
labels the real annotators gave them; and scores every device model on the camera's held-out
frames before (the deployed PyTorch model) and after (the published TFLite model, installed
in the device's :class:`~coinfer.device.evolve.slot.ModelSlot` and run by LiteRT). Accuracy is
the balanced accuracy over the tasks (0.5 is chance).

>>> CAMERAS
('D', 'E')
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np

from coinfer.bench.demo.tour import Plot, StageResult, Tour, figure_png, new_figure

#: The drifted domains of the drift set, one camera each: rural on a monochrome sensor, night.
CAMERAS = ("D", "E")
#: Pixels of the square frames every model takes (the quick drift set's).
SIZE = 64
PRETRAIN_EPOCHS = 10
EVOLVE_EPOCHS = 6
ROUNDS = 2
GENERATOR_STEPS = 100
#: The drift policy: a camera drifted above GAMMA (class drift of the global model's
#: embeddings); EPSILON drifted cameras make the round co-evolve.
GAMMA = 30.0
EPSILON = 2


def _device_id(domain: str) -> str:
    return f"cam-{domain.lower()}"


def run_evolve(tour: Tour) -> StageResult:
    """Deploy on the source, run one round on the drifted cameras, score before and after."""
    import torch

    from coinfer.bench.data.drift import QUICK, generate_drift
    from coinfer.converters.evolve_models import export_device_model
    from coinfer.device.evolve.slot import ModelSlot
    from coinfer.edge.evolve.offline import run_round
    from coinfer.edge.evolve.service import EvolutionConfig, RootLock, load_source, open_store
    from coinfer.sdk.evolve import training
    from coinfer.sdk.evolve.coevolution import CoEvolutionOptions
    from coinfer.sdk.evolve.drift import DriftPolicy
    from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network
    from coinfer.sdk.npz import write_arrays

    folder = tour.folder("evolve")
    tour.say("generating the quick drift set")
    drift = generate_drift(folder / "drift", QUICK, progress=False, overwrite=True)
    pretrained = tour.pretrained()
    torch.manual_seed(0)
    global_spec = ArchitectureSpec("efficientnet-lite0", input_size=SIZE)
    device_spec = ArchitectureSpec("tiny", input_size=SIZE)
    global_model = build_network(global_spec, pretrained)
    source = drift.domain("source")
    features = training.prefix_features(global_model, source.frames[source.train()])
    labels = source.labels[source.train()]
    pretrain = training.TrainOptions(epochs=PRETRAIN_EPOCHS)
    tour.say("fine-tuning the global and the device models on the source domain")
    training.fine_tune(global_model, features, labels, pretrain)
    deployed = {}
    for domain in CAMERAS:
        deployed[domain] = build_network(device_spec, pretrained)
        training.fine_tune(deployed[domain], features, labels, pretrain)
        write_arrays(folder / f"{_device_id(domain)}.npz", training.state_arrays(deployed[domain]))
    write_arrays(folder / "global.npz", training.state_arrays(global_model))
    write_arrays(folder / "source.npz", {"embeddings": training.embeddings(global_model, features),
                                         "labels": labels})
    (folder / "evolve.json").write_text(json.dumps({
        "root": "edge", "global": {"architecture": global_spec.to_dict(), "state": "global.npz"},
        "devices": [{"id": _device_id(domain), "architecture": device_spec.to_dict(),
                     "state": f"{_device_id(domain)}.npz"} for domain in CAMERAS],
        "training": {"epochs": EVOLVE_EPOCHS}, "source": "source.npz"}, indent=1))
    config = EvolutionConfig.load(folder / "evolve.json")
    shutil.rmtree(config.root, ignore_errors=True)  # a root of an earlier tour in --out: start afresh
    uploads = {_device_id(domain): (drift.domain(domain).frames[drift.domain(domain).train()],
                                    drift.domain(domain).labels[drift.domain(domain).train()])
               for domain in CAMERAS}
    options = CoEvolutionOptions(train=config.training, rounds=ROUNDS,
                                 generator=training.GeneratorOptions(steps=GENERATOR_STEPS))
    with RootLock(config.root):
        report = run_round(config, uploads, export_device_model, policy=DriftPolicy(GAMMA, EPSILON),
                           options=options, source=load_source(config), pretrained=pretrained, say=tour.say)
    store = open_store(config)
    before, after = {}, {}
    for domain in CAMERAS:
        name, camera = _device_id(domain), drift.domain(domain)
        test_frames, test_labels = camera.frames[camera.test()], camera.labels[camera.test()]
        test_features = training.prefix_features(global_model, test_frames)
        before[domain] = training.balanced_accuracy(training.logits(deployed[domain], test_features) > 0,
                                                    test_labels)
        latest = store.latest(name)
        if latest is not None:
            slot = ModelSlot(name, device_spec.id, store.root / name / f"v{latest.version}")
            after[domain] = training.balanced_accuracy(slot.predict(test_frames) > 0, test_labels)
    evolved = [domain for domain in CAMERAS if report["devices"][_device_id(domain)]["version"] is not None]
    metrics: dict[str, Any] = {
        "cameras": ", ".join(f"{domain} ({drift.domain(domain).entry['description']})" for domain in CAMERAS),
        "mode": report["mode"], "reason": report["reason"], "drifted": ", ".join(report["drifted"]) or "none",
        **{f"drift.{domain}": round(report["devices"][_device_id(domain)]["drift"], 2) for domain in CAMERAS},
        **{f"accuracy_before.{domain}": round(before[domain], 4) for domain in CAMERAS},
        **{f"accuracy_after.{domain}": round(after.get(domain, before[domain]), 4) for domain in CAMERAS},
        "mean_accuracy_before": round(float(np.mean(list(before.values()))), 4),
        "mean_accuracy_after": round(float(np.mean([after.get(d, before[d]) for d in CAMERAS])), 4),
        "published": ", ".join(f"{_device_id(d)} v{report['devices'][_device_id(d)]['version']}"
                               for d in evolved) or "nothing",
        "global_version": report["global_version"], "round_seconds": report["seconds"],
    }
    checks = {
        "every camera's drift was measured": all(report["devices"][_device_id(d)]["drift"] is not None
                                                 for d in CAMERAS),
        "each evolved camera's published TFLite model installs in its device slot":
            set(after) == set(evolved),
        "the round's decision follows the drift policy": report["mode"] == (
            "co-evolution" if len(report["drifted"]) >= EPSILON else "device-only"),
    }
    return StageResult(metrics, checks, [_accuracy_plot(before, after)])


def _accuracy_plot(before: dict[str, float], after: dict[str, float]) -> Plot:
    figure, axis = new_figure()
    cameras = list(before)
    positions = np.arange(len(cameras))
    axis.bar(positions - 0.2, [before[c] for c in cameras], width=0.4, label="before (deployed)")
    axis.bar(positions + 0.2, [after.get(c, before[c]) for c in cameras], width=0.4,
             label="after the round (TFLite)")
    axis.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axis.set_xticks(positions, [f"camera {c}" for c in cameras])
    axis.set(ylim=(0, 1), ylabel="balanced accuracy on held-out frames",
             title="evolve: device model accuracy before and after one round")
    axis.legend(loc="lower right")
    return Plot("device model accuracy before and after the round", figure_png(figure))
