"""On-device model runtimes behind one :class:`Runner` interface.

Example::

    from coinfer.device.runtime import create_runner

    runner = create_runner("artifacts/digits-int8")      # an artifact dir or a model file
    scores = runner.run(images)["output_0"]

TFLite runs on LiteRT (``ai_edge_litert``), falling back to ``tflite_runtime`` and then
``tensorflow.lite``; ONNX runs on ONNX Runtime. Both are imported only when a model of
that kind is loaded. What is not a model is refused before any runtime is imported:

>>> import tempfile
>>> from coinfer.device.runtime import create_runner
>>> from coinfer.sdk.artifact import Manifest, save_artifact
>>> create_runner("digits.h5")
Traceback (most recent call last):
    ...
coinfer.device.runtime.base.RunnerError: digits.h5: unknown model format (expected one of .tflite, .onnx)
>>> work = tempfile.TemporaryDirectory()
>>> links = save_artifact(f"{work.name}/links", Manifest(capability="mlink", kind="link-graph"),
...                       {"weights.npz": b"..."})
>>> create_runner(links)
Traceback (most recent call last):
    ...
coinfer.sdk.artifact.ArtifactError: .../links: expected exactly one model file ending in ..., found none
>>> work.cleanup()
"""

from __future__ import annotations

import os
from pathlib import Path

from coinfer.device.runtime.base import Runner, RunnerError, RunnerOptions
from coinfer.device.runtime.onnx import ONNXRunner
from coinfer.device.runtime.tflite import TFLiteRunner
from coinfer.sdk.artifact import Artifact, load_artifact

RUNNERS: dict[str, type[Runner]] = {TFLiteRunner.suffix: TFLiteRunner, ONNXRunner.suffix: ONNXRunner}


def create_runner(source: Artifact | str | os.PathLike, options: RunnerOptions | None = None) -> Runner:
    """A runner for an artifact (object or directory) or a bare ``.tflite`` / ``.onnx`` file."""
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        source = load_artifact(source)
    if isinstance(source, Artifact):
        model = source.single_model_file(tuple(RUNNERS))
        return RUNNERS[model.suffix].create_from_artifact(source, options)
    path = Path(source)
    if path.suffix not in RUNNERS:
        raise RunnerError(f"{path}: unknown model format (expected one of {', '.join(RUNNERS)})")
    return RUNNERS[path.suffix].create_from_file(path, options)


__all__ = ["ONNXRunner", "Runner", "RunnerError", "RunnerOptions", "TFLiteRunner", "create_runner"]
