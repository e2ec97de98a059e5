"""The evolve bench's figures, drawn from its JSON report (PNG, matplotlib's Agg backend).

- accuracy over time: per camera, each method's device accuracy across the model's life; a
  camera serves its old model until its evolution finishes (the method's training time for it),
  then the new one, so the area under each step is the life-cycle performance;
- latency per scheduler: every evolution task's latency (arrival to finish) under the knapsack
  DP, the serial and the random policies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_over_time(methods: dict[str, Any], life_seconds: float, path: Path) -> Path:
    """One panel per camera: accuracy (y) against time since the drift was noticed (x) for
    every method in ``methods`` (the bench's ``methods`` section)."""
    plt = _pyplot()
    cameras = list(next(iter(methods.values()))["per_camera"])
    columns = min(2, len(cameras))
    rows = math.ceil(len(cameras) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows), squeeze=False)
    for axis, camera in zip(axes.flat, cameras, strict=False):
        for name, summary in methods.items():
            entry = summary["per_camera"][camera]
            switch = min(entry["seconds"], life_seconds)
            axis.step([0.0, switch, life_seconds], [entry["before"], entry["after"], entry["after"]],
                      where="post", label=name)
        axis.set_title(f"camera {camera}", fontsize=9)
        axis.set_xlabel("seconds since evolution began")
        axis.set_ylabel("balanced accuracy")
        axis.set_xscale("symlog", linthresh=10)
    for axis in list(axes.flat)[len(cameras):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def scheduler_latency(policies: dict[str, Any], path: Path) -> Path:
    """A box per policy of its tasks' latencies, the mean marked (the scheduler section's
    ``policies``)."""
    plt = _pyplot()
    names = list(policies)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.boxplot([policies[name]["latencies_s"] for name in names], showmeans=True)
    axis.set_xticks(range(1, len(names) + 1), names)
    axis.set_ylabel("evolution latency (s)")
    axis.set_title("latency per evolution task, by scheduler", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_plots(report: dict[str, Any], stem: Path, life_seconds: float) -> list[Path]:
    """The figures ``report`` has data for, named after ``stem`` (the JSON path without its
    suffix): ``<stem>-accuracy.png`` and ``<stem>-latency.png``."""
    paths = []
    if "methods" in report:
        paths.append(accuracy_over_time(report["methods"], life_seconds,
                                        stem.with_name(stem.name + "-accuracy.png")))
    if "scheduler" in report:
        paths.append(scheduler_latency(report["scheduler"]["policies"],
                                       stem.with_name(stem.name + "-latency.png")))
    return paths
