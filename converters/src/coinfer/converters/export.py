"""What every export shares: the parity check against the source model and the artifact it writes.

An export is only written once the converted model has run on sample inputs next to the
original; the parity numbers go into the artifact's manifest so a device can see how far
the model it receives may drift from the one that was trained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.device.runtime import Runner, create_runner
from coinfer.sdk import metrics
from coinfer.sdk.artifact import Artifact, Manifest, save_artifact
from coinfer.sdk.errors import CoinferError

Samples = np.ndarray | Sequence[np.ndarray]
#: Maps a list of input batches (model input order) to a list of output batches.
Reference = Callable[[list[np.ndarray]], list[np.ndarray]]


class ExportError(CoinferError):
    """Conversion failed, or the converted model disagrees with its source beyond a threshold."""


@dataclass(frozen=True)
class ParityReport:
    """How closely an exported model reproduces its source on the same sample inputs."""

    samples: int
    max_abs_err: float
    mean_abs_err: float
    min_cosine: float
    top1_agreement: float | None
    model_bytes: int
    latency_ms: float
    reference_latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportResult:
    artifact: Artifact
    parity: ParityReport


@dataclass(frozen=True)
class ParityLimits:
    """Thresholds an export must meet before its artifact is written (``None``: report only)."""

    max_abs_err: float | None = None
    min_top1: float | None = None


@dataclass(frozen=True)
class ExportOptions:
    """What every export writes besides the model: manifest fields, limits, overwrite policy.

    ``kind`` defaults to the converter's own (``tflite-int8``, ``onnx``, ...).
    """

    capability: str = "generic"
    kind: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    limits: ParityLimits = ParityLimits()
    overwrite: bool = False


DEFAULT_OPTIONS = ExportOptions()


def as_sample_list(samples: Samples) -> list[np.ndarray]:
    arrays = [np.asarray(samples)] if isinstance(samples, np.ndarray) else [np.asarray(s) for s in samples]
    if not arrays:
        raise ExportError("parity check needs at least one sample input")
    return arrays


def measure_parity(reference: Reference, runner: Runner, samples: list[np.ndarray],
                   model_bytes: int, input_names: Sequence[str] | None = None) -> ParityReport:
    """Run both models on ``samples`` and compare every output."""
    feeds: Mapping[str, np.ndarray] | list[np.ndarray] = (
        dict(zip(input_names, samples, strict=True)) if input_names else samples
    )
    expected = [np.asarray(out, dtype=np.float32) for out in reference(samples)]
    produced = [np.asarray(out, dtype=np.float32) for out in runner.run(feeds).values()]
    if len(expected) != len(produced):
        raise ExportError(f"source has {len(expected)} output(s), export has {len(produced)}")
    errors, cosines, top1 = [], [], []
    for want, got in zip(expected, produced, strict=True):
        if want.shape != got.shape:
            raise ExportError(f"output shape differs: source {want.shape}, export {got.shape}")
        if not np.all(np.isfinite(got)):
            raise ExportError("exported model produced non-finite outputs on the samples")
        errors.append(np.abs(want - got).ravel())
        if want.ndim >= 1 and want.shape[-1] > 1:
            cosines.append(float(np.min(metrics.cosine_similarity(want, got))))
            if want.ndim == 2:
                top1.append(metrics.top1_agreement(want, got))
    all_errors = np.concatenate(errors) if errors else np.zeros(1)
    first = [s[:1] for s in samples]
    first_feeds = dict(zip(input_names, first, strict=True)) if input_names else first
    return ParityReport(
        samples=int(samples[0].shape[0]) if samples[0].ndim else 1,
        max_abs_err=float(all_errors.max()),
        mean_abs_err=float(all_errors.mean()),
        min_cosine=min(cosines) if cosines else 1.0,
        top1_agreement=min(top1) if top1 else None,
        model_bytes=model_bytes,
        latency_ms=metrics.median_latency_ms(lambda: runner.run(first_feeds)),
        reference_latency_ms=metrics.median_latency_ms(lambda: reference(first)),
    )


def write_export(model_file: Path, out: str | os.PathLike, *, reference: Reference, samples: Samples,
                 options: ExportOptions, default_kind: str, metadata: Mapping[str, Any],
                 input_names: Sequence[str] | None = None) -> ExportResult:
    """Check ``model_file`` against ``reference``; write the artifact only if it passes."""
    runner = create_runner(model_file)
    parity = measure_parity(reference, runner, as_sample_list(samples), model_file.stat().st_size,
                            input_names)
    limits = options.limits
    if limits.max_abs_err is not None and parity.max_abs_err > limits.max_abs_err:
        raise ExportError(
            f"max abs error {parity.max_abs_err:.3g} exceeds the limit {limits.max_abs_err:.3g}; "
            "no artifact written"
        )
    if limits.min_top1 is not None and (parity.top1_agreement or 0.0) < limits.min_top1:
        raise ExportError(
            f"top-1 agreement {parity.top1_agreement} is below the limit {limits.min_top1}; "
            "no artifact written"
        )
    manifest = Manifest(
        capability=options.capability,
        kind=options.kind or default_kind,
        inputs=list(runner.input_specs),
        outputs=list(runner.output_specs),
        preprocessing=dict(options.preprocessing),
        metadata={**metadata, **options.metadata, "parity": parity.to_dict()},
    )
    artifact = save_artifact(out, manifest, {f"model{model_file.suffix}": model_file},
                             overwrite=options.overwrite)
    return ExportResult(artifact, parity)
