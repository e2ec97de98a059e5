"""The MLink bench's workload, built in a work directory and reused from there.

:func:`build_workload` makes the scene set (with audio), the crowd CNN (trained on a
separate, more varied scene set: :data:`TRAIN_CAMERAS` short clips instead of a few long
ones, because a CNN trained on four cameras learned their backgrounds and scored below the
majority rate on new ones) and the recorded output table
(:func:`coinfer.edge.mlink.recording.record_outputs`); :func:`build_drifting_day` another
day on which the people in view go quiet.

Example::

    from coinfer.bench.mlink.workload import build_workload, summary

    table = build_workload("work", cameras=4, seconds=12.0, seed=0)
    print(summary(table))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coinfer.bench.data.scenes import SceneOptions, generate_scenes
from coinfer.edge.mlink.recording import decode_camera, nonempty_fraction, record_outputs
from coinfer.edge.mlink.zoo import MODEL_NAMES, create_model, create_zoo
from coinfer.edge.models.crowd import (
    CrowdClassifier,
    crowd_labels,
    downscale,
    save_crowd_classifier,
    train_crowd_classifier,
)
from coinfer.sdk.artifact import Artifact
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink.table import OutputTable, TableError
from coinfer.sdk.scenes import SceneSet

# The crowd CNN's training set: seed offset from the workload's, and many short cameras at
# a doubled crowd. Measured held-out accuracy on a 4 x 12 s workload (majority rate 0.69):
# 0.53 trained on 4 cameras x 12 s, 0.75 on 48 x 4 s, 0.86 on 96 x 4 s.
TRAIN_SEED_OFFSET = 1000
TRAIN_CAMERAS = 96
TRAIN_SECONDS = 4.0
TRAIN_CROWD = 2.0
CROWD_EPOCHS = 20
# The work directory's layout (build_workload).
SCENES_DIR = "scenes"
TRAIN_SCENES_DIR = "crowd-train-scenes"
CROWD_DIR = "crowd"
TABLE_FILE = "outputs.npz"
MEMORY_FILE = "outputs.memory.json"
# The drifting day (build_drifting_day): another seed, its own scenes and table.
DRIFT_SEED_OFFSET = 2000
DRIFT_SCENES_DIR = "drift-scenes"
DRIFT_TABLE_FILE = "drift-outputs.npz"

def _scene_set(directory: Path, options: SceneOptions, progress: bool) -> SceneSet:
    """The scene set in ``directory`` if it was made with ``options``' seed and sizes, else
    generated there; another set there is an error, not something to overwrite."""
    if not directory.exists():
        return generate_scenes(directory, options, progress=progress)
    scene_set = SceneSet.load(directory)
    index = scene_set.index
    found = {"cameras": len(index["cameras"]), "seconds": index["seconds"], "seed": index["seed"],
             "crowd": index["crowd"], "audio": "audio" in index, "fps": index["fps"],
             "width": index["width"], "height": index["height"],
             "day_start": index["clock"]["start"], "day_end": index["clock"]["end"],
             "silent_from": index.get("audio", {}).get("silent_from")}
    wanted = {key: getattr(options, key) for key in found}
    if found != wanted:
        raise CoinferError(f"{directory} holds a scene set made with {found}, not the {wanted} asked "
                           f"for; use another work directory or delete it")
    return scene_set


def crowd_data(scene_set: SceneSet, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of a scene set downscaled for the crowd CNN, and its crowd class."""
    from tqdm import tqdm

    inputs, labels = [], []
    for camera in tqdm(scene_set.cameras, desc="crowd frames", unit="camera", disable=not progress):
        inputs.append(downscale(np.stack(list(decode_camera(camera)))))
        labels.append(crowd_labels(camera))
    return np.concatenate(inputs), np.concatenate(labels)


def train_crowd_artifact(train_set: SceneSet, held_out: SceneSet, out: str | os.PathLike,
                         epochs: int = CROWD_EPOCHS, seed: int = 0, progress: bool = True) -> Artifact:
    """Train the crowd CNN on ``train_set``, score it on ``held_out`` (other cameras) and save
    it with its accuracies (and the held-out majority-class rate to compare with)."""
    inputs, labels = crowd_data(train_set, progress)
    onnx_bytes = train_crowd_classifier(inputs, labels, epochs, seed, progress)
    classifier = CrowdClassifier(onnx_bytes)
    test_inputs, test_labels = crowd_data(held_out, progress)
    metrics = {
        "train_accuracy": float(np.mean(classifier.predict(inputs).argmax(axis=1) == labels)),
        "held_out_accuracy": float(np.mean(classifier.predict(test_inputs).argmax(axis=1) == test_labels)),
        "held_out_majority_rate": float(np.bincount(test_labels).max() / len(test_labels)),
        "train_frames": len(labels), "held_out_frames": len(test_labels), "epochs": epochs, "seed": seed,
    }
    return save_crowd_classifier(out, onnx_bytes, metrics)


def build_workload(workdir: str | os.PathLike, cameras: int = 4, seconds: float = 12.0, seed: int = 0,
                   progress: bool = True, *, train_cameras: int = TRAIN_CAMERAS,
                   crowd_epochs: int = CROWD_EPOCHS, crowd: float = 1.0,
                   hours: tuple[str, str] = ("00:00", "24:00")) -> OutputTable:
    """The workload's output table, made in ``workdir`` (reusing what is already there):
    ``scenes/`` (generated with audio), ``crowd/`` (the crowd CNN, trained on
    ``crowd-train-scenes/`` of seed ``seed + 1000``), ``outputs.npz`` and its peak-memory
    cache ``outputs.memory.json``."""
    workdir = Path(workdir)
    options = SceneOptions(cameras=cameras, seconds=seconds, tasks=(), audio=True, seed=seed, crowd=crowd,
                           day_start=hours[0], day_end=hours[1])
    scene_set = _scene_set(workdir / SCENES_DIR, options, progress)
    table_path = workdir / TABLE_FILE
    table = _recorded(table_path, scene_set, MODEL_NAMES)
    if table is not None:
        return table
    crowd_dir = workdir / CROWD_DIR
    if not crowd_dir.exists():
        train_options = SceneOptions(cameras=train_cameras, seconds=TRAIN_SECONDS, tasks=(),
                                     crowd=TRAIN_CROWD, seed=seed + TRAIN_SEED_OFFSET)
        train_set = _scene_set(workdir / TRAIN_SCENES_DIR, train_options, progress)
        train_crowd_artifact(train_set, scene_set, crowd_dir, epochs=crowd_epochs, seed=seed,
                             progress=progress)
    table = record_outputs(scene_set, create_zoo(crowd_dir), progress, memory_cache=workdir / MEMORY_FILE)
    table.save(table_path)
    return table


def _recorded(path: Path, scene_set: SceneSet, models: Sequence[str]) -> OutputTable | None:
    """The table at ``path`` if it holds ``models`` on every step of ``scene_set``."""
    if not path.exists():
        return None
    try:
        table = OutputTable.load(path)
    except TableError as error:
        raise CoinferError(f"{error}; delete it to record the workload again") from None
    steps = sum(camera.frame_count for camera in scene_set.cameras)
    return table if len(table) == steps and set(table.models) == set(models) else None


def build_drifting_day(workdir: str | os.PathLike, silent_from: str, models: Sequence[str],
                       cameras: int = 4, seconds: float = 12.0, seed: int = 0, progress: bool = True, *,
                       crowd: float = 1.0, hours: tuple[str, str] = ("00:00", "24:00")) -> OutputTable:
    """Another day of the workload (seed ``seed + DRIFT_SEED_OFFSET``) on which the people in
    view keep quiet from ``silent_from``: ``models`` recorded on every step into
    ``drift-outputs.npz`` from ``drift-scenes/``, with the crowd CNN of
    :func:`build_workload` (made first, in the same ``workdir``)."""
    workdir = Path(workdir)
    crowd_dir = workdir / CROWD_DIR
    if "crowd" in models and not crowd_dir.exists():
        raise CoinferError(f"{crowd_dir} does not exist: build the workload in {workdir} first")
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        raise CoinferError(f"unknown model(s) {unknown}; the zoo has {', '.join(MODEL_NAMES)}")
    options = SceneOptions(cameras=cameras, seconds=seconds, tasks=(), audio=True,
                           seed=seed + DRIFT_SEED_OFFSET, crowd=crowd, day_start=hours[0], day_end=hours[1],
                           silent_from=silent_from)
    scene_set = _scene_set(workdir / DRIFT_SCENES_DIR, options, progress)
    table_path = workdir / DRIFT_TABLE_FILE
    table = _recorded(table_path, scene_set, models)
    if table is None:
        zoo = {name: create_model(name, crowd_dir if name == "crowd" else None) for name in models}
        table = record_outputs(scene_set, zoo, progress, memory_cache=workdir / MEMORY_FILE)
        table.save(table_path)
    return table


def summary(table: OutputTable) -> str:
    """One line per model: ms per step, peak MiB and the share of steps with a finding."""
    found = nonempty_fraction(table)
    lines = [f"{'model':8s} {'ms':>8s} {'MiB':>8s} {'non-empty':>10s}"]
    for name in table.models:
        costs = table.costs.get(name, {})
        lines.append(f"{name:8s} {costs.get('ms', float('nan')):8.2f} {costs.get('mib', float('nan')):8.1f} "
                     f"{found[name]:10.3f}")
    return "\n".join(lines)


