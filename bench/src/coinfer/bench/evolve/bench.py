"""``coinfer evolve bench``: NestEvo against the paper's baselines on a drifting workload.

    coinfer evolve bench --quick --json evolve.json [--workdir W] [--part methods|compression|scheduler|all]

- ``drift_drop`` and ``source_accuracy``: the deployed device and global models (fine-tuned on
  the drift set's source domain) on the source's held-out frames and on every camera's;
- ``methods`` (:mod:`coinfer.bench.evolve.methods`): ``nestevo`` and the baselines A1-A4, each
  with device accuracy before and after, ``device_gain``, the global model's accuracy before
  and after and the life-cycle performance ``lcp`` (the camera serves its old model while its
  evolution trains: ``t_evolving`` is that training time on this machine, ``t_total`` the
  ``--life-seconds`` the model serves in all);
- ``compression`` (:mod:`coinfer.bench.evolve.compression`): adaptive pooling of frames
  without small objects, bytes and training time saved and the accuracy it costs;
- ``scheduler`` (:mod:`coinfer.bench.evolve.scheduling`): evolution tasks of several devices
  and rounds trained in real processes under a memory budget by the knapsack scheduler and the
  serial and random baselines.

The workload is ``coinfer data drift`` (the quick or the full preset), generated into the
work directory unless one is there already. With ``--json`` the run also writes its plots beside
the JSON (:mod:`coinfer.bench.evolve.plots`): accuracy over time per camera and method, and
latency per scheduler.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_bench, positive

HEADLINE = ("drift_drop_cameras_over_15", "nestevo_device_gain", "independent_distillation_device_gain",
            "no_evolution_device_gain", "global_accuracy_before", "nestevo_global_accuracy_after",
            "upload_bytes_saved", "training_time_saved", "accuracy_drop", "dp_mean_latency_s",
            "serial_mean_latency_s", "random_mean_latency_s", "budget_violations", "memory_prediction_error")
PARTS = ("all", "methods", "compression", "scheduler")
#: How long a device model serves in all (the paper's clips run 10 minutes).
LIFE_SECONDS = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bench(parser, "the quick drift set and fewer epochs: a few minutes on 2 cores")
    parser.add_argument("--part", choices=PARTS, default="all", help="run one part only (default all)")
    parser.add_argument("--life-seconds", type=positive(float), default=LIFE_SECONDS,
                        help=f"how long each device model serves, for the life-cycle performance "
                             f"(default {LIFE_SECONDS:g})")


def _drift_set(workdir: Path, quick: bool, say: Any) -> Any:
    from coinfer.bench.data.drift import FULL, QUICK, DriftSet, generate_drift

    path = workdir / ("drift-quick" if quick else "drift-full")
    if (path / "drift.json").is_file():
        say(f"reusing the drift set in {path}")
        return DriftSet.load(path)
    say(f"generating the {'quick' if quick else 'full'} drift set in {path}")
    return generate_drift(path, QUICK if quick else FULL, progress=False)


def methods_report(world: Any, options: Any, life_seconds: float, say: Any) -> dict[str, Any]:
    """Every method's summary with its life-cycle performance."""
    from coinfer.bench.evolve.methods import METHODS, run_method, summarize
    from coinfer.sdk.evolve.lcp import life_cycle_performance

    report = {}
    for name in METHODS:
        started = time.perf_counter()
        result = run_method(name, world, options, say)
        summary = summarize(result)
        lcps = [life_cycle_performance(result.device_before[c], result.device_after[c],
                                       min(result.seconds[c], life_seconds), life_seconds)
                for c in result.device_before
                if math.isfinite(result.device_before[c]) and math.isfinite(result.device_after[c])]
        summary["lcp"] = sum(lcps) / len(lcps) if lcps else float("nan")
        summary["seconds"] = round(time.perf_counter() - started, 1)
        say(f"{name}: device {summary['device_accuracy_before']:.3f} -> "
            f"{summary['device_accuracy_after']:.3f}, "
            f"global {summary['global_accuracy_before']:.3f} -> {summary['global_accuracy_after']:.3f}")
        report[name] = summary
    return report


def run(args: argparse.Namespace) -> int:
    from coinfer.bench.evolve.methods import (
        QUICK_OPTIONS,
        EvolveOptions,
        build_world,
        drift_drop,
        source_accuracy,
    )
    from coinfer.bench.machine import machine_description
    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json

    started = time.perf_counter()
    report: dict[str, Any] = {"quick": args.quick}
    options = QUICK_OPTIONS if args.quick else EvolveOptions()
    with tempfile.TemporaryDirectory(prefix="coinfer-evolve-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        if args.part in ("all", "methods", "compression"):
            drift = _drift_set(workdir, args.quick, print)
            world = build_world(drift, load_efficientnet_lite0(), options, print)
            source = source_accuracy(world)
            drops = drift_drop(world, source)
            report["source_accuracy"] = source
            report["drift_drop"] = drops
            report["drift_drop_cameras_over_15"] = sum(
                1 for drop in drops.values() if drop["device"] >= 0.15 or drop["global"] >= 0.15)
            report["cameras"] = {c.id: c.architecture.id for c in world.cameras}
            if args.part in ("all", "methods"):
                report["methods"] = methods_report(world, options, args.life_seconds, print)
                for name, summary in report["methods"].items():
                    report[f"{name}_device_gain"] = summary["device_gain"]
                report["global_accuracy_before"] = report["methods"]["nestevo"]["global_accuracy_before"]
                nestevo = report["methods"]["nestevo"]
                report["nestevo_global_accuracy_after"] = nestevo["global_accuracy_after"]
            if args.part in ("all", "compression"):
                from coinfer.bench.evolve.compression import compression_section

                report["compression"] = compression_section(world, options, print)
                report.update({key: report["compression"][key]
                               for key in ("upload_bytes_saved", "training_time_saved", "accuracy_drop")})
        if args.part in ("all", "scheduler"):
            from coinfer.bench.evolve.scheduling import run_scheduler_bench

            report["scheduler"] = run_scheduler_bench(args.quick, say=print)
            report.update({key: report["scheduler"][key] for key in HEADLINE if key in report["scheduler"]})
    report["machine"] = machine_description()
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json is not None:
        from coinfer.bench.evolve.plots import write_plots

        plots = write_plots(report, args.json.with_suffix(""), args.life_seconds)
        report["plots"] = [str(path) for path in plots]
        atomic_write_json(args.json, report)
    print_metrics("coinfer evolve bench" + (" --quick" if args.quick else ""),
                  {key: report[key] for key in HEADLINE if key in report})
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0

