"""``coinfer split bench``: the planner on a slow device and a shaped link, and bottlenecks
against image codecs, on EfficientNet-Lite0 and held-out real images.

    coinfer split bench --quick --json split.json [--workdir W] [--part latency|rate|all]

Two halves, one JSON:

- latency (:mod:`coinfer.bench.split.latency`): the device side runs in its own process under
  a CPU quota, the link is tbf on a network namespace's loopback (or paced in process where
  the machine cannot, said in ``shaping`` and ``device_quota``); every cut of both models
  profiled (``cuts``), then a bandwidth sweep with the planner's choice measured end to end
  against the best measured configuration and the single tiers (``plan_error``,
  ``plan_regret``, ``speedup_vs_best_single_tier``);
- rate (:mod:`coinfer.bench.split.rate`): a ladder of FrankenSplit bottlenecks against JPEG
  and WebP (``rate_accuracy``, ``bytes_ratio_vs_best_codec_at_95``,
  ``encoder_ms_over_head_ms``, ``bit_exact_decode``).

The full run (without ``--quick``) also writes two plots beside the JSON: latency against
bandwidth per configuration, and agreement against bytes per codec.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_bench

#: The headline keys printed after a run.
HEADLINE = ("shaping", "device_quota", "plan_error", "plan_regret", "bytes_ratio_vs_best_codec_at_95",
            "encoder_ms_over_head_ms", "bit_exact_decode")
PARTS = ("all", "latency", "rate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bench(parser, "fewer cuts, rates and training steps: a few minutes on 2 cores")
    parser.add_argument("--part", choices=PARTS, default="all",
                        help="run only the latency or the rate half (default all)")


def run(args: argparse.Namespace) -> int:
    from coinfer.bench.machine import machine_description
    from coinfer.bench.split.latency import latency_bench
    from coinfer.bench.split.rate import rate_bench
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json

    started = time.perf_counter()
    report: dict[str, Any] = {"quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="coinfer-split-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        if args.part in ("all", "latency"):
            report.update(latency_bench(args.quick, workdir / "latency"))
        if args.part in ("all", "rate"):
            report.update(rate_bench(args.quick, workdir / "rate"))
    report["machine"] = machine_description()
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json is not None:
        if not args.quick:
            report["plots"] = [str(path) for path in write_plots(report, args.json.with_suffix(""))]
        atomic_write_json(args.json, report)
    print_metrics("coinfer split bench" + (" --quick" if args.quick else ""),
                  {key: report[key] for key in HEADLINE if key in report})
    for bandwidth, speedup in report.get("speedup_vs_best_single_tier", {}).items():
        print(f"  speedup over the best single tier at {bandwidth} Mbit/s: {speedup}")
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0


def write_plots(report: dict[str, Any], stem: Path) -> list[Path]:
    """Measured latency against bandwidth per configuration, and agreement against bytes per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for model, points in report.get("sweep", {}).items():
        figure, axis = plt.subplots(figsize=(7, 4))
        series: dict[str, list[tuple[float, float]]] = {}
        for point in points:
            series.setdefault("planner", []).append((point["bandwidth_mbps"], point["plan"]["measured_ms"]))
            for name in ("all_device_ms", "all_edge_jpeg_ms"):
                if point.get(name) is not None:
                    series.setdefault(name.removesuffix("_ms").replace("_", "-"), []).append(
                        (point["bandwidth_mbps"], point[name]))
        for name, values in series.items():
            axis.plot(*zip(*values, strict=True), marker="o", label=name)
        axis.set(xscale="log", xlabel="link (Mbit/s)", ylabel="end-to-end ms (median)",
                 title=f"{model}: latency against bandwidth")
        axis.legend()
        written.append(_save(figure, stem, f"latency-{model}"))
        plt.close(figure)
    curves = report.get("rate_accuracy")
    if curves:
        figure, axis = plt.subplots(figsize=(7, 4))
        for method, points in curves.items():
            axis.plot([p["bytes_per_image"] for p in points], [p["agreement"] for p in points], marker="o",
                      label=method)
        axis.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        axis.set(xscale="log", xlabel="bytes per image", ylabel="top-1 agreement with the unsplit network",
                 title="EfficientNet-Lite0: accuracy against bytes")
        axis.legend()
        written.append(_save(figure, stem, "rate-accuracy"))
        plt.close(figure)
    return written


def _save(figure: Any, stem: Path, name: str) -> Path:
    path = stem.parent / f"{stem.name}-{name}.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
