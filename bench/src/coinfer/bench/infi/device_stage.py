"""The bench's device side: exported TFLite filters on LiteRT, in a process of their own.

A device never has TensorFlow, and the bench should not either where it measures the
device: with TensorFlow training, the TFLite converter and LiteRT's interpreter in one
process, training crashed with a segmentation fault after the first exports (both
libraries bundle their own TFLite kernels). So the bench trains and exports in its main
process and hands the exported filters to ``python -m coinfer.bench.infi.device_stage``,
which loads them with :mod:`coinfer.device.infi`, compares their skip decisions with
Keras', times one input at a time and reports back as JSON. The report records that
TensorFlow was never imported there.

The plan is a JSON file::

    {"filters": [{"name": "faces-int8", "path": "filters/faces-int8",
                  "inputs": "device/faces.npz"}], "repeats": 30,
     "deployments": {"filter": "filters/faces-float32", "frames": "device/frames.npz"}}

where each ``inputs`` archive holds ``test_x`` and Keras' decisions ``keras_skips``, and
the optional ``deployments`` entry names a faces filter and the test frames (``small``,
the filter's inputs, and ``full``) to measure the on-device and offload deployments on
(:mod:`coinfer.bench.infi.deployments`, the Haar detector as the model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.fsutil import atomic_write_json


def evaluate_on_device(plan: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Run ``plan`` in a child process and return its report."""
    directory.mkdir(parents=True, exist_ok=True)
    plan_path, report_path = directory / "plan.json", directory / "report.json"
    atomic_write_json(plan_path, plan)
    report_path.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "coinfer.bench.infi.device_stage", "--plan", str(plan_path),
                    "--out", str(report_path)], check=True)
    return json.loads(report_path.read_text())


def evaluate_filter(path: str, inputs: str, repeats: int) -> dict[str, Any]:
    """Decision agreement with Keras on the test inputs, the device's decisions, and the
    latency of one input."""
    from coinfer.bench.infi.tasks import median_ms
    from coinfer.device.infi import load_skip_filter

    device = load_skip_filter(path)
    with np.load(inputs, allow_pickle=False) as archive:
        test_x, keras_skips = archive["test_x"], archive["keras_skips"]
    skips = device.skip(test_x)
    one = test_x[:1]
    return {"agreement": round(float(np.mean(skips == keras_skips)), 4),
            "skip_rate": round(float(np.mean(skips)), 4), "skips": skips.tolist(),
            "ms": round(median_ms(lambda: device.skip(one), repeats=repeats), 4)}


def measure_deployments(filter: str, frames: str) -> dict[str, Any]:
    """On-device and offload (loopback HTTP) deployments of a faces filter on the test frames."""
    from coinfer.bench.infi.deployments import offload_report, on_device_report
    from coinfer.edge.models.detectors import face_detector, single_threaded

    with np.load(frames, allow_pickle=False) as archive:
        small, full = archive["small"], archive["full"]
    with single_threaded():
        return {**offload_report(filter, small, full),
                **on_device_report(filter, small, full, face_detector())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    report: dict[str, Any] = {"filters": {}}
    for entry in plan["filters"]:
        report["filters"][entry["name"]] = evaluate_filter(entry["path"], entry["inputs"], plan["repeats"])
    if "deployments" in plan:
        report["deployments"] = measure_deployments(**plan["deployments"])
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
