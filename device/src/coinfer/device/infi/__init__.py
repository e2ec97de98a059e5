"""InFi filters on the device: exported TFLite skip filters and reuse caches.

The edge trains a filter (:mod:`coinfer.sdk.infi.training`) and exports it with
``coinfer infi export``; the device loads that artifact here and runs it with LiteRT
(no TensorFlow). Inputs are fed by name, so multi-modal filters work unchanged; an int8
export is quantised and dequantised by the runner with the scales stored in the model.

Example::

    from coinfer.device.infi import load_skip_filter

    skip = load_skip_filter("filters/face-skip-int8")
    needed = ~skip.skip(frames)            # run the detector (here or on the edge) on these
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from coinfer.device.runtime import create_runner
from coinfer.sdk.artifact import Artifact, ArtifactError, load_artifact
from coinfer.sdk.infi.modalities import ModalitySpec
from coinfer.sdk.infi.networks import sigmoid
from coinfer.sdk.infi.reuse import CacheOptions, ReuseCache
from coinfer.sdk.infi.skip import SkipFilter


def _load(path: str | os.PathLike, kind: str) -> tuple[Artifact, dict[str, ModalitySpec], Any]:
    artifact = load_artifact(path, capability="infi", kind=f"infi-{kind}-tflite")
    meta = artifact.manifest.metadata
    try:
        inputs = {name: ModalitySpec.from_dict(spec) for name, spec in meta["inputs"].items()}
    except (KeyError, AttributeError) as error:
        raise ArtifactError(f"{artifact.path}: the manifest does not describe the filter's inputs") from error
    runner = create_runner(artifact)
    names = [spec.name for spec in runner.input_specs]
    if sorted(names) != sorted(inputs):
        raise ArtifactError(f"{artifact.path}: the model's inputs {names} differ from the manifest's "
                            f"{sorted(inputs)}")
    return artifact, inputs, runner


def _first_output(runner: Any, arrays: list[np.ndarray], names: list[str]) -> np.ndarray:
    outputs = runner.run(dict(zip(names, arrays, strict=True)))
    return np.asarray(next(iter(outputs.values())), dtype=np.float32)


def load_skip_filter(path: str | os.PathLike) -> SkipFilter:
    """A :class:`SkipFilter` running an exported TFLite skip filter."""
    artifact, inputs, runner = _load(path, "skip")
    meta = artifact.manifest.metadata
    try:
        thresholds = [float(t) for t in meta["thresholds"]]
        tasks = [str(t) for t in meta["tasks"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{artifact.path}: bad thresholds or tasks in the manifest: {error}") from error
    names = list(inputs)
    # Exports since the logits change output logits; older ones output probabilities.
    squash = sigmoid if meta.get("scores") == "logits" else np.asarray
    return SkipFilter(lambda arrays: squash(_first_output(runner, arrays, names)), inputs, thresholds, tasks)


def load_reuse_cache(path: str | os.PathLike, options: CacheOptions | None = None) -> ReuseCache:
    """A :class:`ReuseCache` whose keys come from an exported TFLite embedding network.

    ``options`` defaults to the artifact's homogeneity threshold with the default size and K.
    """
    artifact, inputs, runner = _load(path, "reuse")
    meta = artifact.manifest.metadata
    try:
        weights = np.asarray(meta["pair_weights"], dtype=np.float32)
        bias = float(meta["pair_bias"])
        homogeneity = float(meta["homogeneity"])
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{artifact.path}: bad pair head in the manifest: {error}") from error
    names = list(inputs)
    specs = list(inputs.values())

    def embed(batch: Any) -> np.ndarray:
        if isinstance(batch, dict):
            arrays = [spec.check(batch[name]) for name, spec in inputs.items()]
        else:
            arrays = [specs[0].check(batch)]
        return _first_output(runner, arrays, names)

    return ReuseCache(embed, weights, bias, options or CacheOptions(homogeneity=homogeneity))


__all__ = ["load_reuse_cache", "load_skip_filter"]
