"""Record what the MLink model zoo outputs on every step of your videos or a scene set, with its costs.

A step is one decoded frame and the audio the camera heard during it
(:func:`iterate_steps`). The steps come from a generated scene set with audio, or from a
folder of your own video files (:class:`VideoFolder`): each video is a camera, its audio
track is decoded with PyAV and resampled to 16 kHz mono, and frame ``k`` gets the samples
from its time on for one frame interval; a video without an audio track gets silence.
:func:`record_outputs` runs the zoo (:mod:`coinfer.edge.mlink.zoo`) on every step, cameras
in order, and keeps the aligned outputs in an :class:`~coinfer.sdk.mlink.table.OutputTable`
with the per-step context and each model's costs. The context is ``camera`` and ``index``
(the frame's number in its video) for every source; only a generated scene set adds what
its generator knows (night, truth people count, truth speech, clock), which a table of
real videos leaves out rather than invent. The costs are:

- ``ms``: the median wall time of the model's call per step, measured while recording, on
  one thread (OpenCV set to one thread, every onnxruntime session built with one);
  ``ms_mean`` the mean, which for a model whose work depends on the content (``words``
  reads only where text was detected) is the cost of running it on every step.
- ``mib``: the model's peak memory, measured in a fresh child process per model (spawned):
  the resident high-water mark (:func:`peak_rss_bytes`) after the libraries are imported,
  then the model is loaded and run on :data:`MEMORY_STEPS` steps (those where it found
  something first, so that ``words`` really runs its recogniser), and the increase of
  that high-water mark is reported in MiB. It counts the weights, the runtime's arenas and
  buffers, and the first onnxruntime session's runtime set-up; it is not the current
  resident size. The numbers can be cached in a JSON file (keyed by model, frame size and
  the crowd CNN's sha256), so a benchmark pays the child processes once.

``coinfer mlink record`` is the command line of :func:`record_outputs`.

Example::

    from coinfer.edge.mlink.recording import nonempty_fraction, record_outputs
    from coinfer.edge.mlink.zoo import create_zoo

    table = record_outputs("data/scenes", create_zoo("models/crowd"))
    print(table.costs["words"], nonempty_fraction(table)["words"])
    mine = record_outputs(VideoFolder("videos/"), create_zoo("models/crowd"))   # your own videos
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np

from coinfer.edge.mlink.zoo import MODEL_NAMES, CrowdModel, Step, ZooModel, create_model
from coinfer.edge.models.crowd import (
    MIN_VISIBLE,
    PEOPLE_KINDS,
)
from coinfer.edge.models.detectors import single_threaded
from coinfer.edge.recorder import AUDIO_RATE, VideoInfo, decode_audio, decode_video, find_videos, probe_video
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.fsutil import atomic_write_json
from coinfer.sdk.mlink.outputs import OutputSpec
from coinfer.sdk.mlink.table import OutputTable
from coinfer.sdk.scenes import NO_AUDIO_HINT, SceneCamera, SceneSet

#: Steps each model runs on in its memory-measuring child process.
MEMORY_STEPS = 10
#: Memory-measuring child processes at a time (each measures its own high-water mark).
MEMORY_WORKERS = 2
MEMORY_FORMAT = "coinfer-mlink-memory"
# ru_maxrss is in KiB on Linux and in bytes on macOS.
RSS_BYTES = 1 if sys.platform == "darwin" else 1024


def decode_camera(camera: SceneCamera) -> Iterator[np.ndarray]:
    """A camera's frames as RGB uint8, checked against the count its index promises."""
    count = 0
    with av.open(str(camera.video_path)) as container:
        for frame in container.decode(video=0):
            if count == camera.frame_count:
                raise CoinferError(f"{camera.video_path} holds more frames than the {camera.frame_count} "
                                   f"its scene set lists")
            yield frame.to_ndarray(format="rgb24")
            count += 1
    if count != camera.frame_count:
        raise CoinferError(f"{camera.video_path}: decoded {count} frames, its scene set lists "
                           f"{camera.frame_count}")


def _load(scenes: str | os.PathLike | SceneSet) -> SceneSet:
    scene_set = scenes if isinstance(scenes, SceneSet) else SceneSet.load(scenes)
    if scene_set.recorded:
        raise CoinferError(f"{scene_set.root} holds detections recorded from real video, not the frames "
                           f"and audio the zoo needs: run it on the videos themselves with "
                           f"`coinfer mlink record --videos {scene_set.index['videos']['directory']}`")
    if not scene_set.has_audio:
        raise CoinferError(f"scene set {scene_set.root} has no audio track, which the zoo's speech "
                           f"model needs: {NO_AUDIO_HINT}")
    return scene_set


class VideoFolder:
    """A folder of your own video files as MLink steps: each video (sorted by name) is a
    camera, each decoded frame a step, paired with :data:`AUDIO_RATE` mono samples of the
    video's audio from the frame's time on for one frame interval (zeros past the track's
    ends). A video without an audio track gets silence; :attr:`silent` names those, so a
    command can say so. Every file is opened once here, so a bad one fails before any work."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.root = Path(directory)
        self.videos: list[VideoInfo] = [probe_video(path) for path in find_videos(directory)]
        self.silent = [video.path for video in self.videos if not video.has_audio]

    @property
    def size(self) -> tuple[int, int]:
        """The first video's (width, height), what the peak-memory cache is keyed by."""
        return self.videos[0].width, self.videos[0].height

    @property
    def frames(self) -> int | None:
        """Frames of all videos as their containers state them, None if one does not say."""
        return sum(video.frames for video in self.videos) if all(video.frames for video in self.videos) \
            else None

    def steps(self) -> Iterator[Step]:
        for number, video in enumerate(self.videos):
            track = decode_audio(video.path, AUDIO_RATE)
            samples, start = track if track is not None else (np.zeros(0, np.float32), 0.0)
            window = max(1, round(AUDIO_RATE / video.fps))
            for index, (seconds, frame) in enumerate(decode_video(video.path)):
                yield Step(frame, audio_window(samples, start, seconds, window), number, index)


def audio_window(samples: np.ndarray, start: float, seconds: float, length: int) -> np.ndarray:
    """``length`` samples at :data:`AUDIO_RATE` of a track whose first sample is at time
    ``start``, from time ``seconds`` on; zeros where the track does not reach."""
    window = np.zeros(length, np.float32)
    first = round((seconds - start) * AUDIO_RATE)
    low, high = max(first, 0), min(first + length, len(samples))
    if high > low:
        window[low - first:high - first] = samples[low:high]
    return window


def iterate_steps(scenes: str | os.PathLike | SceneSet | VideoFolder) -> Iterator[Step]:
    """Every step of a scene set with audio (frame ``k`` of a camera, decoded with PyAV,
    paired with the audio window ``k`` it owns) or of a :class:`VideoFolder`: cameras in order."""
    if isinstance(scenes, VideoFolder):
        yield from scenes.steps()
        return
    scene_set = _load(scenes)
    for number, camera in enumerate(scene_set.cameras):
        for index, frame in enumerate(decode_camera(camera)):
            yield Step(frame, camera.audio_window(index), number, index)


def scene_context(scenes: str | os.PathLike | SceneSet) -> dict[str, np.ndarray]:
    """Per-step context in :func:`iterate_steps` order: ``camera``, ``index``, ``night``,
    ``people`` (faces and walkers more than 30% visible, the truth), ``speech_truth``
    (speech audible in the step's audio) and ``clock_hours``."""
    cameras = _load(scenes).cameras
    return {
        "camera": np.concatenate([np.full(c.frame_count, n, np.int32) for n, c in enumerate(cameras)]),
        "index": np.concatenate([np.arange(c.frame_count, dtype=np.int32) for c in cameras]),
        "night": np.concatenate([c.night for c in cameras]).astype(bool),
        "people": np.concatenate([sum(c.truth_counts(kind, MIN_VISIBLE) for kind in PEOPLE_KINDS)
                                  for c in cameras]).astype(np.int64),
        "speech_truth": np.concatenate([c.speech for c in cameras]).astype(bool),
        "clock_hours": np.concatenate([c.clock_hours for c in cameras]).astype(np.float32),
    }


def nonempty(spec: OutputSpec, outputs: Any) -> np.ndarray:
    """Per row, whether a model's output says it found something: a class other than 0 (the
    zoo's classifiers put "none" first), a presence over 0.5, a box that is not all zero,
    a sequence with a token."""
    if spec.is_sequence:
        return np.array([len(row) > 0 for row in outputs], bool)
    array = np.asarray(outputs)
    if spec.task == "softmax":
        return array.argmax(axis=1) != 0
    if spec.task == "sigmoid":
        return np.any(array > 0.5, axis=1)
    return np.any(array != 0, axis=1)


def nonempty_fraction(table: OutputTable) -> dict[str, float]:
    """Share of the steps where each model found something (see :func:`nonempty`)."""
    return {name: float(nonempty(table.specs[name], table.outputs[name]).mean()) for name in table.models}


def _crowd_onnx(zoo: Mapping[str, ZooModel]) -> bytes | None:
    model = zoo.get("crowd")
    return model.classifier.onnx_bytes if isinstance(model, CrowdModel) else None


def _memory_key(name: str, size: tuple[int, int], crowd_onnx: bytes | None) -> str:
    """What a cached peak memory depends on: the model, the frame size, the crowd CNN's weights."""
    key = f"{name}@{size[0]}x{size[1]}"
    if name == "crowd" and crowd_onnx is not None:
        key += f"#{hashlib.sha256(crowd_onnx).hexdigest()[:16]}"
    return key


def peak_rss_bytes() -> int:
    """This process's resident high-water mark in bytes.

    ``ru_maxrss`` on Linux also holds the size of the parent at the fork that preceded this
    process's exec (the kernel folds the forked copy's high-water mark in at exec), so a
    spawned child of a 400 MB parent starts at 400 MB and a 50 MB model never shows. Linux
    therefore reads the address space's own mark, ``VmHWM`` in /proc/self/status, which is
    what ``ru_maxrss`` reports for a process with no such inheritance; elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    import resource

    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_BYTES


def _peak_memory_mib(name: str, crowd_onnx: bytes | None, steps: Sequence[Step]) -> float:
    """In a fresh child process: MiB the resident high-water mark rises by while ``name``
    loads and runs on ``steps`` (which arrived with the call, before the baseline)."""
    for library in ("cv2", "onnxruntime"):  # the libraries are not the model's memory
        importlib.import_module(library)
    with single_threaded():
        before = peak_rss_bytes()
        model = create_model(name, crowd_onnx)
        for step in steps:
            model(step)
        after = peak_rss_bytes()
    return max(0, after - before) / 2**20


def _spread(rows: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``rows``, evenly spaced."""
    if count <= 0 or not len(rows):
        return rows[:0]
    return rows[np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int)]


def _memory_steps(source: SceneSet | VideoFolder, found: Mapping[str, np.ndarray],
                  count: int) -> dict[str, list[Step]]:
    """``count`` steps per model, spread over the recording: those where the model found
    something first, then others."""
    chosen: dict[str, np.ndarray] = {}
    for name, mask in found.items():
        hits = _spread(np.flatnonzero(mask), count)
        chosen[name] = np.concatenate([hits, _spread(np.flatnonzero(~mask), count - len(hits))])
    wanted = set(np.concatenate(list(chosen.values())).tolist())
    steps: dict[int, Step] = {}
    for row, step in enumerate(iterate_steps(source)):
        if row in wanted:
            steps[row] = step
            if len(steps) == len(wanted):  # the rest need not be decoded
                break
    return {name: [steps[int(row)] for row in rows] for name, rows in chosen.items()}


def _frame_size(source: SceneSet | VideoFolder) -> tuple[int, int]:
    return source.size if isinstance(source, VideoFolder) else (int(source.index["width"]),
                                                                 int(source.index["height"]))


def _step_count(source: SceneSet | VideoFolder) -> int:
    if isinstance(source, VideoFolder):
        return sum(1 for _ in iterate_steps(source))
    return sum(camera.frame_count for camera in source.cameras)


def measure_peak_memory(scene_set: SceneSet | VideoFolder, zoo: Mapping[str, ZooModel],
                        found: Mapping[str, np.ndarray] | None = None, steps: int = MEMORY_STEPS,
                        cache: str | os.PathLike | None = None, progress: bool = True) -> dict[str, float]:
    """Each model's peak memory increase in MiB (see the module doc), from ``cache`` where it
    holds the model's key, else measured in child processes (and written back to ``cache``).
    ``found``: per model, a bool per step saying where it found something (those steps are
    preferred for the runs; without it the runs are spread over all steps)."""
    from tqdm import tqdm

    unknown = [name for name in zoo if name not in MODEL_NAMES]
    if unknown:
        raise CoinferError(f"peak memory is measured by rebuilding each model in a child process, which "
                           f"only the zoo's models ({', '.join(MODEL_NAMES)}) can do; got {unknown}")
    crowd_onnx = _crowd_onnx(zoo)
    keys = {name: _memory_key(name, _frame_size(scene_set), crowd_onnx) for name in zoo}
    cached = _read_memory_cache(Path(cache)) if cache is not None else {}
    result = {name: cached[key] for name, key in keys.items() if key in cached}
    missing = [name for name in zoo if name not in result]
    if missing:
        hits = dict(found or {})
        if not set(missing) <= set(hits):  # without hits, the runs are spread over every step
            nothing = np.zeros(_step_count(scene_set), bool)
            hits.update({name: nothing for name in missing if name not in hits})
        runs = _memory_steps(scene_set, {name: hits[name] for name in missing}, steps)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(MEMORY_WORKERS, len(missing)), mp_context=context,
                                 max_tasks_per_child=1) as pool:
            futures = {name: pool.submit(_peak_memory_mib, name, crowd_onnx, runs[name]) for name in missing}
            for name in tqdm(missing, desc="peak memory", unit="model", disable=not progress):
                result[name] = futures[name].result()
        if cache is not None:
            cached.update({keys[name]: result[name] for name in missing})
            atomic_write_json(cache, {"format": MEMORY_FORMAT, "version": 1, "mib": cached})
    return {name: result[name] for name in zoo}


def _read_memory_cache(path: Path) -> dict[str, float]:
    """A memory cache's entries; a missing file is an empty cache, a bad one an error."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") == MEMORY_FORMAT and data.get("version") == 1:
            return {str(key): float(value) for key, value in data["mib"].items()}
        problem = f"not a version-1 {MEMORY_FORMAT} file"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        problem = str(error)
    raise CoinferError(f"{path}: unreadable peak-memory cache ({problem}); delete it to measure again")


def record_outputs(scene_dir: str | os.PathLike | SceneSet | VideoFolder, zoo: Mapping[str, ZooModel],
                   progress: bool = True, *, memory_cache: str | os.PathLike | None = None,
                   memory_steps: int = MEMORY_STEPS) -> OutputTable:
    """Run every model on every step (cameras in order, ``reset()`` at each camera's start)
    of a scene set with audio or a :class:`VideoFolder`, and return the aligned outputs with
    their context and costs (see the module doc)."""
    from tqdm import tqdm

    if not zoo:
        raise CoinferError("the zoo is empty: give at least one model")
    source = scene_dir if isinstance(scene_dir, VideoFolder) else _load(scene_dir)
    outputs: dict[str, list[Any]] = {name: [] for name in zoo}
    seconds: dict[str, list[float]] = {name: [] for name in zoo}
    total = source.frames if isinstance(source, VideoFolder) else _step_count(source)
    camera = None
    where: dict[str, list[int]] = {"camera": [], "index": []}
    with single_threaded(), tqdm(total=total, desc="mlink record", unit="step", disable=not progress) as bar:
        for step in iterate_steps(source):
            if step.camera != camera:
                for model in zoo.values():
                    model.reset()
                camera = step.camera
            for name, model in zoo.items():
                start = time.perf_counter()
                outputs[name].append(model(step))
                seconds[name].append(time.perf_counter() - start)
            where["camera"].append(step.camera)
            where["index"].append(step.index)
            bar.update()
    if not where["camera"]:
        raise CoinferError(f"{source.root} gave no steps: its videos hold no frames")
    specs = {name: model.spec for name, model in zoo.items()}
    found = {name: nonempty(specs[name], specs[name].check(outputs[name], name)) for name in zoo}
    mib = measure_peak_memory(source, zoo, found, steps=memory_steps, cache=memory_cache,
                              progress=progress)
    costs = {name: {"ms": float(np.median(seconds[name]) * 1e3),
                    "ms_mean": float(np.mean(seconds[name]) * 1e3), "mib": mib[name]} for name in zoo}
    context = scene_context(source) if isinstance(source, SceneSet) else \
        {key: np.asarray(values, np.int32) for key, values in where.items()}
    return OutputTable(specs, outputs, context, costs)


