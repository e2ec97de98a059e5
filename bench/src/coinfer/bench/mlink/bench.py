"""``coinfer mlink bench``: MLink on seven real models watching generated scenes with audio.

    coinfer mlink bench --quick --json mlink.json [--workdir W]

The workload (:mod:`coinfer.bench.mlink.workload`): scenes with an aligned audio track, the
zoo's seven black-box models (Haar faces and cats, HOG people, the PP-OCRv4 detector and
recogniser, Silero VAD, and a crowd CNN trained here) run on every step, with measured
latency and peak memory. Then, all on those recorded outputs:

- ``links``: every source->target link's performance on held-out steps, and
  ``ensemble_beats_best_single``: targets whose ensemble of all other models beats the
  best single link;
- budgeted inference at half the time of running every model: MLink (each model run on
  every step, on frame change, or predicted by its links, re-planned every period from
  profiled steps) against the same loop choosing only run-or-link (``links_only``),
  standalone, random subsets, Reducto-style reuse and the brute-force optimum over
  run-or-link subsets (``budget_accuracy``, ``budget_time_saved``, ``optimal_gap``). Its
  links learn from three quarters of the training blocks, its first plan is profiled on
  the rest, and the reuse thresholds are calibrated on the training blocks;
- ``memory_budget``: the same loop, run or link, when the models kept loaded may take at
  most half the peak memory of all models, against standalone, random and the optimum;
- ``online``: one link (crowd CNN -> VAD) trained on the workload's training steps, then
  serving another day of as many cameras in clock order (the cameras interleaved) on which
  the people in view keep quiet from 09:00 (``coinfer data scenes --silent-from``): the
  relation the link learned stops holding. Offline-init against periodic, uncertainty and
  loss-prediction updates, each labelling 5 steps per 50;
- ``federated``: edge clients on disjoint camera groups train the links through the real
  aggregation service on loopback; the global links are scored on an unseen camera group;
- ``domain_adaptation``: the crowd CNN (trained on other scenes) as deployed, against its
  link and the ensemble of the links from it, the face counter, the people detector and
  the VAD to the generator's truth, each trained on 10% of the steps.

The split for links and budgets is in blocks of time within each camera (every third
block held out), so train and test see the same hours; the online stream is another day, in
time order.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.bench.mlink.experiments import (
    OnlineSetup,
    budget_report,
    domain_report,
    federated_report,
    link_report,
    memory_report,
    online_report,
)
from coinfer.sdk.cli.flags import add_bench, add_seed, positive
from coinfer.sdk.cli.report import print_metrics
from coinfer.sdk.splits import block_split

#: Share of the all-models time per step the budgeted experiment may spend.
HALF_BUDGET = 0.5
#: Time blocks of the split (steps), every SPLIT_EVERY-th held out.
SPLIT_BLOCK = 20
SPLIT_EVERY = 3
#: The budgeted experiment's links learn from the training steps but every
#: VALIDATION_EVERY-th half block, on which its first plan is profiled.
VALIDATION_EVERY = 4
#: The link the online experiment keeps up to date: speech (the VAD) from the crowd CNN's
#: output, learned on the workload's training steps, then serving a day on which the people
#: keep quiet from SILENT_FROM (a library opening), as it comes.
ONLINE = OnlineSetup(source="crowd", target="speech")
SILENT_FROM = "09:00"


@dataclass(frozen=True)
class BenchScale:
    """Workload size and training lengths."""

    cameras: int
    seconds: float
    epochs: int
    period: int
    profile_fraction: float
    federated_rounds: int
    federated_epochs: int
    crowd_train_cameras: int = 96
    crowd_epochs: int = 20
    crowd: float = 2.0
    hours: tuple[str, str] = ("06:00", "22:00")


QUICK = BenchScale(cameras=6, seconds=12.0, epochs=40, period=30, profile_fraction=0.02,
                   federated_rounds=3, federated_epochs=5)
FULL = BenchScale(cameras=12, seconds=60.0, epochs=100, period=200, profile_fraction=0.01,
                  federated_rounds=5, federated_epochs=10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bench(parser, "the small configuration (6 cameras x 12 s)")
    add_seed(parser, "the generated workload")
    parser.add_argument("--epochs", type=positive(int),
                        help="override the configuration's link training epochs")


def run(args: argparse.Namespace) -> int:
    from coinfer.bench.machine import machine_description
    from coinfer.sdk.fsutil import atomic_write_json

    scale = QUICK if args.quick else FULL
    if args.epochs is not None:
        scale = BenchScale(**{**asdict(scale), "epochs": args.epochs})
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run_configuration(scale, args.workdir, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="coinfer-mlink-bench-") as scratch:
            report = run_configuration(scale, Path(scratch), args.seed)
    report["machine"] = machine_description()
    if args.json is not None:
        atomic_write_json(args.json, report)
    rows: dict[str, Any] = {key: report[key] for key in (
        "ensemble_beats_best_single", "budget_accuracy", "budget_time_saved", "optimal_gap")}
    for name, entry in report["budget"]["baselines"].items():
        rows[f"{name} accuracy"] = entry["accuracy"]
    memory = report["memory_budget"]
    rows["half memory: accuracy / saved"] = f"{memory['accuracy']} / {memory['memory_saved']}"
    rows["half memory: optimum / standalone"] = (f"{memory['baselines']['optimum']['accuracy']} / "
                                                 f"{memory['baselines']['standalone']['accuracy']}")
    for key in ("offline_init", "periodic", "uncertainty", "loss_prediction"):
        rows[f"online {key}"] = report["online"][key]
    for key in ("untrained_accuracy", "global_accuracy", "bytes_per_round"):
        rows[f"federated {key}"] = report["federated"][key]
    domain = report["domain_adaptation"]
    rows["domain before / after"] = f"{domain['before']} / {domain['after']}"
    rows["seconds"] = report["seconds"]
    print_metrics("coinfer mlink bench" + (" --quick" if args.quick else ""), rows)
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0


def thumbnails(scene_dir: Path) -> np.ndarray:
    """A 32x18 grey thumbnail per step, what the Reducto-style baseline compares."""
    import cv2

    from coinfer.edge.mlink.recording import iterate_steps

    return np.stack([cv2.resize(cv2.cvtColor(step.frame, cv2.COLOR_RGB2GRAY), (32, 18),
                                interpolation=cv2.INTER_AREA) for step in iterate_steps(scene_dir)])


def run_configuration(scale: BenchScale, workdir: Path, seed: int) -> dict[str, Any]:
    """The workload, the links, then every experiment (see the module docstring)."""
    from coinfer.bench.data.scenes import parse_clock
    from coinfer.bench.mlink.workload import SCENES_DIR, build_drifting_day, build_workload, summary
    from coinfer.sdk.mlink import LinkGraph, LinkOptions
    from coinfer.sdk.mlink.reuse import calibrate_reuse
    from coinfer.sdk.mlink.serving import ServingOptions

    start = time.perf_counter()
    timings: dict[str, float] = {}
    table = build_workload(workdir, cameras=scale.cameras, seconds=scale.seconds, seed=seed, progress=True,
                           train_cameras=scale.crowd_train_cameras, crowd_epochs=scale.crowd_epochs,
                           crowd=scale.crowd, hours=scale.hours)
    print(summary(table))
    thumbs = thumbnails(workdir / SCENES_DIR)
    timings["workload"] = time.perf_counter() - start
    cameras = table.context["camera"]
    train = block_split(cameras, SPLIT_BLOCK, SPLIT_EVERY)
    options = LinkOptions(epochs=scale.epochs, seed=seed)
    mark = time.perf_counter()
    graph = LinkGraph.train(table.take(train).outputs, table.specs, options)
    timings["links"] = time.perf_counter() - mark
    test = table.take(~train)
    mark = time.perf_counter()
    fit = train.copy()
    fit[train] = block_split(cameras[train], block=SPLIT_BLOCK // 2, every=VALIDATION_EVERY)
    serving_graph = LinkGraph.train(table.take(fit).outputs, table.specs, options)
    timings["serving links"] = time.perf_counter() - mark
    models = {name: {"ms": round(table.costs[name]["ms"], 3), "mib": round(table.costs[name]["mib"], 1)}
              for name in table.models}
    report: dict[str, Any] = {"scale": asdict(scale), "seed": seed, "steps": len(table), "models": models}
    report.update(link_report(graph, test))
    mark = time.perf_counter()
    calibration = calibrate_reuse(table.take(train), thumbs[train])
    serving = ServingOptions(budget=0.0, period=scale.period, seed=seed,
                             profile_fraction=scale.profile_fraction)
    validation = table.take(train & ~fit)
    report["budget"] = budget_report(serving_graph, validation, test, thumbs[~train], calibration,
                                     HALF_BUDGET, serving)
    for key in ("budget_accuracy", "budget_time_saved", "optimal_gap"):
        report[key] = report["budget"][key]
    report["memory_budget"] = memory_report(serving_graph, validation, test, HALF_BUDGET, serving)
    timings["budget"] = time.perf_counter() - mark
    mark = time.perf_counter()
    drifting = build_drifting_day(workdir, SILENT_FROM, [ONLINE.source, ONLINE.target], cameras=scale.cameras,
                                  seconds=scale.seconds, seed=seed, progress=True, crowd=scale.crowd,
                                  hours=scale.hours)
    drifted = drifting.context["clock_hours"] >= parse_clock(SILENT_FROM)
    report["online"] = {"silent_from": SILENT_FROM,
                        **online_report(table.take(train), drifting, drifted, ONLINE, options)}
    timings["online"] = time.perf_counter() - mark
    mark = time.perf_counter()
    vector_models = [name for name in table.models if not table.specs[name].is_sequence]
    camera_ids = np.unique(cameras)
    unseen = np.flatnonzero(cameras == camera_ids[-1])
    groups = {f"edge-{k}": np.flatnonzero(np.isin(cameras, part))
              for k, part in enumerate(np.array_split(camera_ids[:-1], 3))}
    report["federated"] = federated_report(table, vector_models, groups, unseen, scale.federated_rounds,
                                           scale.federated_epochs, options)
    timings["federated"] = time.perf_counter() - mark
    mark = time.perf_counter()
    truth = np.minimum(table.context["people"], 2).astype(np.int64)
    sources: list[str] = [name for name in ("crowd", "faces", "people", "speech") if name in table.specs]
    report["domain_adaptation"] = domain_report(table, "crowd", sources, truth, 3, 0.1, options, seed)
    timings["domain"] = time.perf_counter() - mark
    report["timings"] = {name: round(value, 2) for name, value in timings.items()}
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
