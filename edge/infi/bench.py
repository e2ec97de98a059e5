"""``coinfer infi bench``: InFi filters against the optimum and the baselines, on real models.

One run builds the tasks of :mod:`coinfer.edge.infi.tasks` (generated scenes, speech and
messages; the real detector, VAD and MiniLM classifier produce the outputs), trains one
InFi filter per task on the training split and scores the held-out split:

- per skip task: ``filter_rate_at_90`` (the highest fraction of inputs skipped while >= 90%
  of reported results agree with the model), ``optimal_at_90`` (a perfect filter:
  redundant fraction + 0.1), ``ratio_to_optimal``, the baselines' rates
  (``baselines``), and the ``analysis`` of ``coinfer infi analyze`` with measured costs;
- ``reuse_filter_rate_at_90`` (InFi-Reuse's cache on the counting task, per test camera)
  against ``foggycache_rate_at_90``;
- ``tflite_decision_agreement``: the exported int8 image filter's skip decisions against
  Keras'; ``filter_cost_ratio``: TFLite filter latency / the detector's latency, same CPU.

``--quick`` shrinks every workload; the full run uses more data and longer training.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.edge.infi.tasks import FilterTask


@dataclass(frozen=True)
class BenchScale:
    """Workload sizes and training length of one configuration."""

    cameras: int
    train_cameras: int
    seconds: float
    frame_size: tuple[int, int]
    filter_size: tuple[int, int]
    clips: int
    messages: int
    epochs: int
    reuse_epochs: int
    crowd: float = 2.0


QUICK = BenchScale(cameras=6, train_cameras=4, seconds=12.0, frame_size=(320, 180), filter_size=(80, 48),
                   clips=240, messages=500, epochs=8, reuse_epochs=8)
FULL = BenchScale(cameras=16, train_cameras=11, seconds=30.0, frame_size=(320, 180), filter_size=(112, 64),
                  clips=1000, messages=3000, epochs=20, reuse_epochs=20)
TARGET = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the small configuration")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the metrics here")
    parser.add_argument("--workdir", type=Path, help="keep generated data and filters here (default: temp)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from coinfer.sdk.cli.demo import machine_description
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json

    scale = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="coinfer-infi-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        report = run_configuration(scale, workdir, args.seed)
    report["machine"] = machine_description()
    if args.json is not None:
        atomic_write_json(args.json, report)
    rows: dict[str, Any] = {}
    for name, task in report["tasks"].items():
        if "filter_rate_at_90" in task:
            rows[f"{name}: rate / optimal / ratio"] = " / ".join(
                f"{task[key]:.3f}" for key in ("filter_rate_at_90", "optimal_at_90", "ratio_to_optimal"))
            best = max(task["baselines"].items(), key=lambda item: item[1], default=None)
            if best is not None:
                rows[f"{name}: best baseline"] = f"{best[0]} {best[1]:.3f}"
    for key in ("reuse_filter_rate_at_90", "foggycache_rate_at_90", "tflite_decision_agreement",
                "filter_cost_ratio", "seconds"):
        rows[key] = report.get(key)
    print_metrics("coinfer infi bench" + (" --quick" if args.quick else ""), rows)
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0


def run_configuration(scale: BenchScale, workdir: Path, seed: int) -> dict[str, Any]:
    """Build the tasks, train and score a filter per task, compare with the baselines."""
    from coinfer.edge.infi import tasks as task_builders
    from coinfer.sdk.data.scenes import SceneOptions, generate_scenes

    start = time.perf_counter()
    timings: dict[str, float] = {}
    scenes = workdir / "scenes"
    if not (scenes / "index.json").exists():
        width, height = scale.frame_size
        generate_scenes(scenes, SceneOptions(cameras=scale.cameras, seconds=scale.seconds, width=width,
                                             height=height, tasks=("faces",), seed=seed, crowd=scale.crowd),
                        progress=False, overwrite=True)
    frames = task_builders.decode_scene_frames(scenes, scale.filter_size)
    timings["scenes"] = time.perf_counter() - start
    tasks = task_builders.scene_tasks(frames, scale.train_cameras)
    mark = time.perf_counter()
    tasks.append(task_builders.speech_task(scale.clips, 1.0, seed))
    timings["speech"] = time.perf_counter() - mark
    mark = time.perf_counter()
    tasks.extend(task_builders.text_tasks(scale.messages, seed))
    timings["text"] = time.perf_counter() - mark
    report: dict[str, Any] = {"scale": asdict(scale), "seed": seed, "target_accuracy": TARGET, "tasks": {}}
    for task in tasks:
        mark = time.perf_counter()
        if task.kind == "skip":
            report["tasks"][task.name] = skip_task_report(task, scale, seed, workdir, report)
        else:
            report["tasks"][task.name] = reuse_task_report(task, scale, seed, report)
        timings[task.name] = time.perf_counter() - mark
    report["timings"] = {name: round(value, 2) for name, value in timings.items()}
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def skip_task_report(task: FilterTask, scale: BenchScale, seed: int, workdir: Path,
                     report: dict[str, Any]) -> dict[str, Any]:
    """Train InFi-Skip, read its curve at 90%, run the baselines and the analysis."""
    from coinfer.sdk.infi import FilterCurve, FilterOptions, analyze, optimal_rate, train_skip_filter

    train_redundant = task.redundant(task.train_y)
    test_redundant = task.redundant(task.test_y)
    inputs = {"input": task.spec}
    trained = train_skip_filter(task.train_x, train_redundant.astype(np.float32), inputs, (task.name,),
                                {task.name: task.measurement},
                                FilterOptions(epochs=scale.epochs, seed=seed, target_accuracy=TARGET))
    scores = trained.scores(task.test_x)[:, 0]
    curve = FilterCurve.from_scores(scores, test_redundant)
    rate = curve.rate_at(TARGET)
    optimum = optimal_rate(float(test_redundant.mean()), TARGET)
    threshold = float(trained.thresholds[0])
    skipped = scores >= threshold
    out: dict[str, Any] = {
        "modality": task.spec.kind,
        "measurement": task.measurement.name,
        "model": task.model_name,
        "train_inputs": len(task.train_y),
        "test_inputs": len(task.test_y),
        "redundant_fraction": round(float(test_redundant.mean()), 4),
        "filter_rate_at_90": round(rate, 4),
        "optimal_at_90": round(optimum, 4),
        "ratio_to_optimal": round(rate / optimum, 4) if optimum else None,
        "deployed_threshold": round(threshold, 4),
        "deployed_rate": round(float(skipped.mean()), 4),
        "deployed_accuracy": round(float(1.0 - np.mean(skipped & ~test_redundant)), 4),
        "model_ms": round(task.model_ms, 3),
        "baselines": baseline_rates(task, test_redundant),
    }
    filter_ms = export_and_time(trained, task, workdir, seed, scores >= threshold, out)
    if task.spec.kind == "image":
        report["tflite_decision_agreement"] = out["tflite_int8_agreement"]
        report["filter_cost_ratio"] = round(filter_ms / task.model_ms, 4)
        report["filter_cost_ratio_int8"] = round(out["tflite_int8_ms"] / task.model_ms, 4)
    out["filter_ms"] = round(filter_ms, 3)
    out["analysis"] = analyze(task.measurement, filter_ms=filter_ms, model_ms=task.model_ms,
                              filter_rate=rate).to_dict()
    return out


def export_and_time(trained: Any, task: FilterTask, workdir: Path, seed: int, keras_skips: np.ndarray,
                    out: dict[str, Any]) -> float:
    """Export the filter to TFLite (float32, and int8 when its inputs are not token ids), run it
    as a device would, compare its decisions with Keras' and time one input on this CPU.

    Returns the latency of the faster export, the one a device would deploy."""
    from coinfer.device.infi import load_skip_filter
    from coinfer.edge.infi.tasks import median_ms

    rng = np.random.default_rng(seed)
    calibration = task.train_x[rng.choice(len(task.train_x), size=min(200, len(task.train_x)), replace=False)]
    quantizations = ("float32",) if task.spec.kind == "text" else ("float32", "int8")
    timings = {}
    for quantization in quantizations:
        path = workdir / "filters" / f"{task.name}-{quantization}"
        trained.export_tflite(path, quantization=quantization, calibration=calibration,
                              samples=task.test_x[:64], overwrite=True)
        device = load_skip_filter(path)
        agreement = float(np.mean(device.skip(task.test_x) == keras_skips))
        out[f"tflite_{quantization}_agreement"] = round(agreement, 4)
        one = task.test_x[:1]
        timings[quantization] = median_ms(lambda device=device, one=one: device.skip(one), repeats=30)
        out[f"tflite_{quantization}_ms"] = round(timings[quantization], 3)
    deployed = min(timings, key=timings.__getitem__)
    out["deployed_quantization"] = deployed
    return timings[deployed]


def baseline_rates(task: FilterTask, test_redundant: np.ndarray) -> dict[str, float]:
    """Filter rate at 90% of every baseline that applies to the task's modality."""
    from coinfer.edge.infi.baselines_run import skip_baseline_rates

    return skip_baseline_rates(task, test_redundant, TARGET)


def reuse_task_report(task: FilterTask, scale: BenchScale, seed: int,
                      report: dict[str, Any]) -> dict[str, Any]:
    """InFi-Reuse per test camera (a cache per stream) against the FoggyCache-style cache."""
    from coinfer.edge.infi.baselines_run import foggycache_rate
    from coinfer.sdk.infi import CacheOptions, FilterOptions, reuse_curve, train_reuse_filter

    trained = train_reuse_filter(task.train_x, task.train_y, {"input": task.spec}, task.measurement,
                                 FilterOptions(epochs=scale.reuse_epochs, seed=seed))
    weights, bias = trained.pair_head()
    embeddings = trained.embed(task.test_x)
    options = CacheOptions(capacity=200, k=5)
    streams = task.streams_test
    rates, optima, sizes = [], [], []
    for stream in np.unique(streams):
        rows = np.flatnonzero(streams == stream)
        outputs = [task.test_y[i] for i in rows]
        curve = reuse_curve(embeddings[rows], outputs, task.measurement.same, task.measurement.key, weights,
                            bias, options)
        rates.append(curve.rate_at(TARGET))
        optima.append(curve.optimal_at_90)
        sizes.append(rows.size)
    rate = float(np.average(rates, weights=sizes))
    foggy = foggycache_rate(task, options, TARGET)
    report["reuse_filter_rate_at_90"] = round(rate, 4)
    report["foggycache_rate_at_90"] = round(foggy, 4) if foggy is not None else None
    return {
        "modality": task.spec.kind,
        "measurement": task.measurement.name,
        "reuse_filter_rate_at_90": round(rate, 4),
        "optimal_at_90": round(float(np.average(optima, weights=sizes)), 4),
        "foggycache_rate_at_90": report["foggycache_rate_at_90"],
        "cache": asdict(options),
    }
