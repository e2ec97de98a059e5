"""``coinfer infi run``: an exported filter over a records file, on LiteRT, as a device runs it.

    coinfer infi run --filter filters/faces-int8 --records faces.npz
    coinfer infi run --filter filters/people-reuse --records stream.npz --json run.json

A skip filter reports its ``filter_rate`` (fraction of inputs skipped) and, when the records
carry outputs, scores the decisions with the measurement the artifact records:
``redundant_fraction``, ``skip_precision`` (skipped inputs that were truly redundant) and
``accuracy`` (1 - wrongly skipped / records: what training's --target-accuracy aims at).
A reuse filter streams the records in order through its cache; a miss inserts the record's
output (what the model would have returned) and ``reuse_rate`` and ``accuracy`` (reused
results interchangeable with the true one, plus every miss) are reported. TensorFlow is
not imported: the filter runs through :mod:`coinfer.device.infi`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_json, add_records
from coinfer.sdk.cli.report import report

#: The artifact kinds ``coinfer infi export`` writes -> filter kind.
EXPORTED = {"infi-skip-tflite": "skip", "infi-reuse-tflite": "reuse"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", type=Path, required=True, metavar="DIR",
                        help="an exported filter (coinfer infi export --out)")
    add_records(parser, "'inputs' and, to score the decisions, the model's 'outputs'")
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    from coinfer.device.infi import load_reuse_cache, load_skip_filter
    from coinfer.sdk.artifact import ArtifactError, load_artifact
    from coinfer.sdk.infi import MeasurementError, Records, measurements_from_description

    records = Records.load(args.records, require_outputs=False)
    artifact = load_artifact(args.filter, capability="infi")
    kind = EXPORTED.get(artifact.manifest.kind)
    if kind is None:
        raise ArtifactError(f"{args.filter}: a {artifact.manifest.kind!r} artifact is not an exported "
                            "filter; export a trained one with coinfer infi export")
    described = artifact.manifest.metadata.get("measurements")
    try:
        measurements = {} if described is None else measurements_from_description(described)
    except MeasurementError as error:
        raise ArtifactError(f"{args.filter}: {error}") from error
    measurement = next(iter(measurements.values())) if len(measurements) == 1 else None
    metrics: dict[str, Any] = {"filter": kind, "records": len(records)}
    if kind == "skip":
        metrics.update(_run_skip(load_skip_filter(args.filter), records, measurement))
    else:
        if records.outputs is None:
            raise MeasurementError(f"{args.records}: a reuse filter replays the model's outputs; "
                                   "the records need 'outputs'")
        if measurement is None:
            raise ArtifactError(f"{args.filter}: the manifest names no single measurement (exported by an "
                                "older coinfer?); export the filter again")
        metrics.update(_run_reuse(load_reuse_cache(args.filter), records, measurement))
    report("coinfer infi run", metrics, args.json)
    return 0


def _run_skip(skip: Any, records: Any, measurement: Any) -> dict[str, Any]:
    skipped = skip.skip(records.inputs)
    metrics: dict[str, Any] = {"filter_rate": float(skipped.mean())}
    if records.outputs is None:
        return metrics
    if measurement is None:
        print("the filter records no single measurement (exported by an older coinfer?): "
              "its decisions are not scored", file=sys.stderr)
        return metrics
    redundant = measurement.redundant_many(records.outputs_for(measurement))
    metrics.update(redundant_fraction=float(redundant.mean()),
                   skip_precision=float(redundant[skipped].mean()) if skipped.any() else None,
                   accuracy=float(1.0 - (skipped & ~redundant).mean()))
    return metrics


def _run_reuse(cache: Any, records: Any, measurement: Any) -> dict[str, Any]:
    from coinfer.sdk.infi import replay

    outputs = records.outputs_for(measurement)
    hits, accuracy = replay(cache, cache.embed(records.inputs), outputs, measurement.keys(outputs),
                            measurement.same)
    return {"reuse_rate": float(hits.mean()), "accuracy": accuracy, "homogeneity": cache.options.homogeneity}
