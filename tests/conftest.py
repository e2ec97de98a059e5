"""Shared fixtures: small real models exported once per session, camera frames cut from real
photographs, and scene-set tampering."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import functools
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"tensorflow", "torch", "transformers", "keras", "jax"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked on this device")
        return None
sys.meta_path.insert(0, Blocker())
"""


def _run_blocked(body: str) -> str:
    result = subprocess.run([sys.executable, "-c", BLOCKER + body], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def run_blocked():
    """``run_blocked(code)``: run ``code`` in a fresh interpreter where importing tensorflow,
    torch, transformers, keras or jax raises ImportError (a device); returns its stdout."""
    return _run_blocked


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _command_server(argv: list[str], token: str, ready: Callable[[int], Any]) -> Iterator[tuple[int, Any]]:
    """Run ``coinfer ARGV --port P`` as its own process (bearer ``token``) until ``ready(P)``
    answers without raising; yield ``(P, its answer)``; stop the process afterwards. The wait
    ends when the server answers or its process exits; the deadline only guards against a hang."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "coinfer.sdk.cli", *argv, "--port", str(port)],
                              env=dict(os.environ, COINFER_TOKEN=token), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                answer = ready(port)
                break
            except Exception:
                if server.poll() is not None:
                    raise AssertionError(server.communicate()[1].decode()) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield port, answer
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="session")
def command_server():
    """``with command_server(argv, token, ready) as (port, answer)``: a ``coinfer ... serve`` process."""
    return _command_server


@pytest.fixture(scope="session")
def filter_data() -> tuple[np.ndarray, np.ndarray]:
    """A separable 'skip this input?' problem: 6 features, label 1 when their sum is positive."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    return x, y


@pytest.fixture(scope="session")
def keras_filter(filter_data):
    """A trained two-class Keras filter (softmax over keep/skip)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = filter_data
    model = keras.Sequential([
        keras.Input((6,), name="features"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def filter_artifacts(tmp_path_factory, keras_filter, filter_data):
    """The Keras filter exported as float32 and int8 TFLite artifacts."""
    from coinfer.converters import ExportOptions, keras_to_tflite

    x, _ = filter_data
    root = tmp_path_factory.mktemp("filters")
    return {
        quant: keras_to_tflite(keras_filter, root / quant, quantization=quant,
                               representative_data=x, samples=x,
                               options=ExportOptions(capability="infi", kind="skip-filter"))
        for quant in ("float32", "int8")
    }


@pytest.fixture(scope="session")
def torch_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).eval()


def _synthetic_traces(streams: int, rounds: int, seed: int = 0) -> list:
    """IPPP... streams whose count changes now and then; a change inflates the packet size."""
    from coinfer.sdk.gate.packet import PacketInfo, PictureInfo, PictureType
    from coinfer.sdk.gate.replay import StreamTrace

    rng = np.random.default_rng(seed)
    traces = []
    for s in range(streams):
        counts = np.cumsum(rng.random(rounds) < 0.05) % 3
        changed = np.r_[True, counts[1:] != counts[:-1]]
        packets = []
        for t in range(rounds):
            kind = "I" if t % 10 == 0 else "P"
            size = (4000 if kind == "I" else 300) + (1500 if changed[t] else 0) + int(rng.integers(0, 50))
            packets.append(PacketInfo(s, t, size, t, t, kind == "I", PictureInfo(
                PictureType[kind], reference=True, random_access=kind == "I")))
        results: dict[str, Any] = {"count": counts}
        traces.append(StreamTrace(packets, np.arange(rounds), results))
    return traces


@pytest.fixture(scope="session")
def synthetic_traces():
    """Factory of hand-made packet streams for the gate's algorithm tests."""
    return _synthetic_traces


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    data = pytest.importorskip("skimage.data")
    return data.astronaut(), data.chelsea(), data.coffee(), data.rocket()


def _photo_frames(count: int, seed: int, size: int = 64) -> np.ndarray:
    """``count`` square crops of skimage's astronaut, cat, coffee and rocket photos in turn (a
    random side from a third of the photo's short side to all of it, at a random place), each
    scaled to ``size`` by area averaging: uint8 (count, size, size, 3). cv2 and skimage are
    imported here, so a test that asks without them is skipped."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    photos = _photos()
    frames = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        frames.append(cv2.resize(photo[top:top + side, left:left + side], (size, size),
                                 interpolation=cv2.INTER_AREA))
    return np.stack(frames)


@pytest.fixture(scope="session")
def photo_frames() -> Callable[..., np.ndarray]:
    """``photo_frames(count, seed, size=64)``: real photographs cut into uint8 camera frames
    (count, size, size, 3), the same for the same arguments."""
    return _photo_frames


@pytest.fixture
def rewrite_results():
    """``rewrite(root, "cam000.npz", change)``: apply ``change`` to a scene set's results file
    arrays and re-hash it in scenes.json, so that only the loader's checks can object."""
    import json

    from coinfer.sdk import scenes
    from coinfer.sdk.datadir import sha256_file

    def rewrite(root, name: str, change) -> None:
        path = root / name
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        change(arrays)
        scenes.write_npz(path, arrays)
        index = json.loads((root / "scenes.json").read_text())
        index["files"][name] = sha256_file(path)
        (root / "scenes.json").write_text(json.dumps(index))

    return rewrite


#: The size a camera frame is scaled to (PyAV's ``to_ndarray(width=, height=)``) before the
#: :func:`face_skip_filter` sees it: (height, width).
FILTER_FRAME_SIZE = (27, 48)


@pytest.fixture(scope="session")
def small_scenes(tmp_path_factory):
    """A generated scene set: 2 cameras x 4 s (H.264, 640x360) of people walking by, faces
    counted per frame by the real Haar detector."""
    from coinfer.sdk.cli.main import main

    root = tmp_path_factory.mktemp("small-scenes") / "scenes"
    assert main(["data", "scenes", "--cameras", "2", "--seconds", "4", "--day-start", "08:00",
                 "--day-end", "09:00", "--crowd", "2", "--tasks", "faces", "--out", str(root)]) == 0
    return root


@pytest.fixture(scope="session")
def face_skip_filter(small_scenes, tmp_path_factory):
    """A real InFi skip filter for the task ``faces`` ("no face in view": skip), trained on the
    frames of :func:`small_scenes` scaled to :data:`FILTER_FRAME_SIZE` by PyAV, exported as a
    float32 TFLite artifact; returns its directory."""
    import av

    from coinfer.converters.filters import export_filter
    from coinfer.sdk.infi import FilterOptions, ModalitySpec, create_measurement, redundancy_labels
    from coinfer.sdk.infi.training import train_skip_filter
    from coinfer.sdk.scenes import SceneSet

    height, width = FILTER_FRAME_SIZE
    frames, counts = [], []
    for camera in SceneSet.load(small_scenes).cameras:
        with av.open(str(camera.video_path)) as container:
            frames += [frame.to_ndarray(width=width, height=height, format="rgb24")
                       for frame in container.decode(video=0)]
        counts += list(camera.counts("faces"))
    inputs = np.stack(frames).astype(np.float32) / 255
    measurement = create_measurement("empty")
    labels = redundancy_labels({"faces": counts}, {"faces": measurement})
    trained = train_skip_filter(inputs, labels, {"frame": ModalitySpec.image(height, width)}, ("faces",),
                                {"faces": measurement}, FilterOptions(epochs=4))
    out = tmp_path_factory.mktemp("face-filter") / "faces-float32"
    export_filter(trained, out, quantization="float32", samples=inputs[:32])
    return out
