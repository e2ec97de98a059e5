"""Training on the user's own videos: `coinfer gate train --videos` and `coinfer mlink record --videos`.

The clips are real photographs from scikit-image (the astronaut has a face, chelsea is a
cat, coffee is the background) panned, zoomed and cut between, encoded with real codecs;
the real detectors run on them. Nothing here comes from the scene generator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from coinfer.edge.gate.traces import load_camera, load_cameras
from coinfer.edge.mlink.recording import VideoFolder
from coinfer.edge.mlink.zoo import MODEL_NAMES
from coinfer.edge.models.detectors import face_detector
from coinfer.edge.recorder import record_videos
from coinfer.sdk.cli.main import main
from coinfer.sdk.gate.predictor import ContextualPredictor
from coinfer.sdk.mlink.table import OutputTable
from coinfer.sdk.scenes import NO_TRUTH, NoTruthError, SceneSet

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

WIDTH, HEIGHT, FPS, FRAMES = 160, 120, 10, 40
AUDIO_RATE = 16000
TONE_FROM = 2.0  # a.mp4 is silent before this second and plays a tone after it


def view(image: np.ndarray, cx: float, cy: float, zoom: float) -> np.ndarray:
    """The WIDTH x HEIGHT window of ``image`` centred at (cx, cy) (fractions), ``zoom`` x in."""
    height, width = image.shape[:2]
    crop_h = height / zoom
    crop_w = crop_h * WIDTH / HEIGHT
    x0 = np.clip(cx * width - crop_w / 2, 0, max(0, width - crop_w))
    y0 = np.clip(cy * height - crop_h / 2, 0, max(0, height - crop_h))
    scale = WIDTH / crop_w
    matrix = np.array([[scale, 0, -x0 * scale], [0, HEIGHT / crop_h, -y0 * HEIGHT / crop_h]], np.float32)
    return cv2.warpAffine(image, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def shots(shift: int) -> list[np.ndarray]:
    """Background pan, zoom on the astronaut, the cat, a pan back over the astronaut: the face
    count changes with the cuts. ``shift`` rotates the order, so the two clips differ."""
    astronaut, cat, coffee = skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee()
    frames = [view(coffee, 0.3 + 0.02 * k, 0.5, 1.2) for k in range(10)]
    frames += [view(astronaut, 0.3 + 0.03 * k, 0.35, 1.0 + 0.1 * k) for k in range(10)]
    frames += [view(cat, 0.5, 0.4, 1.0 + 0.05 * k) for k in range(10)]
    frames += [view(astronaut, 0.6 - 0.03 * k, 0.35, 1.5) for k in range(10)]
    return frames[shift:] + frames[:shift]


def encode(path: Path, frames: list[np.ndarray], audio: np.ndarray | None = None,
           container_format: str | None = None) -> None:
    """H.264 with B-frames and a 1 s GOP, and optionally a mono AAC track."""
    with av.open(str(path), "w", format=container_format) as container:
        video = container.add_stream("libx264", rate=FPS, options={
            "preset": "veryfast", "crf": "23", "x264-params": "keyint=10:bframes=2"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=AUDIO_RATE)
            sound.layout = "mono"
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            for start in range(0, len(audio), 1024):
                chunk = av.AudioFrame.from_ndarray(audio[None, start:start + 1024], format="fltp",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = AUDIO_RATE, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))


def decoded_frames(path: Path) -> list[np.ndarray]:
    """The clip's frames as a user would decode them with PyAV (RGB, display order)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """a.mp4 (with a tone from TONE_FROM on) and b.mkv (no audio track)."""
    folder = tmp_path_factory.mktemp("own") / "videos"
    folder.mkdir()
    t = np.arange(FRAMES * AUDIO_RATE // FPS) / AUDIO_RATE
    tone = np.where(t >= TONE_FROM, 0.3 * np.sin(2 * np.pi * 440 * t), 0).astype(np.float32)
    encode(folder / "a.mp4", shots(0), tone)
    encode(folder / "b.mkv", shots(15))
    (folder / "notes.txt").write_text("not a video, and not named like one: skipped\n")
    return folder


@pytest.fixture(scope="module")
def logs(videos, tmp_path_factory) -> SceneSet:
    return record_videos(videos, ("faces",), tmp_path_factory.mktemp("logs") / "faces", progress=False)


def test_the_logs_hold_what_the_detector_finds_on_every_decoded_frame(videos, logs):
    detector = face_detector()
    assert [camera.id for camera in logs.cameras] == ["a.mp4", "b.mkv"]
    for camera in logs.cameras:
        frames = decoded_frames(videos / camera.id)
        assert camera.frame_count == len(frames) == FRAMES
        expected = [len(detector(frame)) for frame in frames]
        assert camera.counts("faces").tolist() == expected
        assert 0 < sum(expected) < FRAMES  # the cuts make the count change over time
        assert camera.video_path == videos / camera.id


def test_the_logs_are_a_scene_set_without_generative_truth(videos, logs):
    index = json.loads((logs.root / "scenes.json").read_text())
    assert index["format"] == "coinfer-scenes" and index["version"] == 1
    assert set(index["files"]) == {"a.mp4.npz", "b.mkv.npz"}
    assert set(index["videos"]["files"]) == {"a.mp4", "b.mkv"}
    camera = SceneSet.load(logs.root).cameras[0]
    assert not logs.has_truth and not camera.has_truth and camera.has_packet_log
    for ask in (lambda: camera.night, lambda: camera.clock_hours, lambda: camera.truth_counts("face"),
                lambda: camera.truth(), lambda: logs.actor_kinds):
        with pytest.raises(NoTruthError, match=NO_TRUTH):
            ask()


def test_the_packet_log_is_the_decode_all_pass(logs):
    """Training from the logs sees the packets, display order and picture types that decoding
    the videos again gives (only the measured decode times differ)."""
    logged = load_cameras(logs.cameras, ("faces",), progress=False)
    for camera, trace in zip(logs.cameras, logged, strict=True):
        decoded = load_camera(camera, ("faces",))
        assert trace.trace.packets == decoded.trace.packets
        assert trace.trace.frames.tolist() == decoded.trace.frames.tolist()
        assert trace.decoded_pictures.tolist() == decoded.decoded_pictures.tolist()
        assert trace.parameters.codec == "h264" and trace.decode_seconds.shape == (FRAMES,)


def test_a_raw_annex_b_stream_is_recorded_in_display_order(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    encode(folder / "clip.h264", shots(0), container_format="h264")
    recorded = record_videos(folder, ("faces",), tmp_path / "logs", progress=False)
    camera = recorded.cameras[0]
    detector = face_detector()
    assert camera.counts("faces").tolist() == [len(detector(f)) for f in decoded_frames(folder / "clip.h264")]
    assert sorted(camera.arrays["packets.frame"].tolist()) == list(range(FRAMES))


def test_a_changed_video_is_refused_by_name(videos, tmp_path, capsys):
    moved = tmp_path / "videos"
    shutil.copytree(videos, moved)
    copy = record_videos(moved, ("faces",), tmp_path / "logs", progress=False).root
    with open(moved / "b.mkv", "ab") as handle:
        handle.write(b"\0")
    for argv in (["--logs", str(copy)], ["--videos", str(moved), "--detector", "faces", "--logs", str(copy)]):
        assert main(["gate", "train", *argv, "--out", str(tmp_path / "predictor")]) == 1
        assert "b.mkv changed since" in one_line_error(capsys)
    assert not (tmp_path / "predictor").exists()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", ["empty folder", "text named x.mp4", "unknown detector", "no detector"])
def test_bad_input_is_one_line_and_leaves_nothing(case, videos, tmp_path, capsys):
    folder, detector = videos, "faces"
    if case == "empty folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "text named x.mp4":
        folder = tmp_path / "text"
        folder.mkdir()
        shutil.copy(videos / "a.mp4", folder / "a.mp4")
        (folder / "x.mp4").write_text("this is not a video\n")
    elif case == "unknown detector":
        detector = "faces,unicorns"
    out = tmp_path / "predictor"
    argv = ["gate", "train", "--videos", str(folder), "--out", str(out), "--quiet"]
    code = main(argv if case == "no detector" else [*argv, "--detector", detector])
    err = one_line_error(capsys)
    assert code != 0
    assert {"empty folder": "no video files", "text named x.mp4": "x.mp4 is not a readable video",
            "unknown detector": "unknown detector(s) unicorns",
            "no detector": "--videos needs --detector"}[case] in err
    assert not out.exists() and not (tmp_path / "predictor-logs").exists()


def test_exactly_one_source(videos, tmp_path, capsys):
    out = str(tmp_path / "predictor")
    assert main(["gate", "train", "--out", out]) == 1
    assert "--videos DIR" in one_line_error(capsys)
    with pytest.raises(SystemExit) as usage:
        main(["gate", "train", "--videos", str(videos), "--scenes", str(videos), "--out", out])
    assert usage.value.code == 2 and "not allowed with argument" in one_line_error(capsys)
    assert main(["gate", "train", "--scenes", str(videos), "--logs", str(videos), "--out", out]) == 1
    assert "give one" in one_line_error(capsys)


@pytest.mark.slow
def test_gate_train_on_own_videos_then_again_from_the_logs(videos, tmp_path, capsys):
    out = tmp_path / "predictor"
    code = main(["gate", "train", "--videos", str(videos), "--detector", "faces", "--out", str(out),
                 "--epochs", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    predictor = ContextualPredictor.load(out)
    assert predictor.options.tasks == ("faces",) and predictor.metrics["rows"] > 0
    logs_dir = tmp_path / "predictor-logs"  # the default: next to --out
    logs = SceneSet.load(logs_dir)
    detector = face_detector()
    for camera in logs.cameras:
        expected = [len(detector(frame)) for frame in decoded_frames(camera.video_path)]
        assert camera.counts("faces").tolist() == expected
    stamps = {path.name: path.stat().st_mtime_ns for path in logs_dir.iterdir()}
    capsys.readouterr()

    # Again from the logs alone, and with --videos pointing at logs that already hold them.
    for argv in (["--logs", str(logs_dir)],
                 ["--videos", str(videos), "--detector", "faces", "--logs", str(logs_dir)]):
        again = tmp_path / f"again-{len(argv)}"
        assert main(["gate", "train", *argv, "--out", str(again), "--epochs", "2", "--quiet"]) == 0
        assert ContextualPredictor.load(again).metrics["rows"] == predictor.metrics["rows"]
        assert f"reusing the detections recorded in {logs_dir}" in capsys.readouterr().err
    assert {path.name: path.stat().st_mtime_ns for path in logs_dir.iterdir()} == stamps

    # Logs of other detectors are not silently reused.
    assert main(["gate", "train", "--videos", str(videos), "--detector", "cats", "--logs", str(logs_dir),
                 "--out", str(tmp_path / "cats")]) == 1
    assert "has no detections of cats" in one_line_error(capsys)


def test_video_steps_pair_each_frame_with_the_audio_heard_during_it(videos):
    folder = VideoFolder(videos)
    assert [path.name for path in folder.silent] == ["b.mkv"]
    steps = list(folder.steps())
    assert [(step.camera, step.index) for step in steps] == [(c, k) for c in (0, 1) for k in range(FRAMES)]
    rms = np.array([np.sqrt(np.mean(step.audio ** 2)) for step in steps])
    assert all(step.audio.shape == (AUDIO_RATE // FPS,) for step in steps)
    tone = int(TONE_FROM * FPS)
    assert rms[:tone - 1].max() < 0.02 and rms[tone + 1:FRAMES].min() > 0.1  # AAC smears one frame
    assert rms[FRAMES:].max() == 0.0  # b.mkv: silence
    np.testing.assert_array_equal(steps[FRAMES + 3].frame, decoded_frames(videos / "b.mkv")[3])


@pytest.fixture(scope="module")
def crowd(tmp_path_factory) -> Path:
    """A crowd CNN trained for one epoch: the zoo needs one, these tests do not need it good."""
    from coinfer.edge.models.crowd import save_crowd_classifier, train_crowd_classifier

    pytest.importorskip("torch")
    frames = np.stack(shots(0)[::4])
    path = tmp_path_factory.mktemp("crowd") / "crowd"
    save_crowd_classifier(path, train_crowd_classifier(frames, np.arange(len(frames)) % 3, epochs=1))
    return path


@pytest.mark.slow
def test_mlink_record_train_and_plan_on_own_videos(videos, crowd, tmp_path, capsys):
    table_path = tmp_path / "outputs.npz"
    code = main(["mlink", "record", "--videos", str(videos), "--crowd", str(crowd), "--out", str(table_path),
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "notice: b.mkv has no audio track" in captured.err
    table = OutputTable.load(table_path)
    assert table.models == list(MODEL_NAMES) and len(table) == 2 * FRAMES
    assert set(table.context) == {"camera", "index"}  # no invented night, clock or truth
    assert table.context["camera"].tolist() == [0] * FRAMES + [1] * FRAMES
    faces = face_detector()
    counts = [min(len(faces(frame)), 3) for name in ("a.mp4", "b.mkv")
              for frame in decoded_frames(videos / name)]
    assert np.argmax(table.outputs["faces"], axis=1).tolist() == counts
    assert all(table.costs[name]["ms"] > 0 for name in MODEL_NAMES)

    links = tmp_path / "links"
    assert main(["mlink", "train", "--records", str(table_path), "--epochs", "2", "--out", str(links),
                 "--json", str(tmp_path / "train.json")]) == 0
    assert json.loads((tmp_path / "train.json").read_text())["held-out steps"] == 24
    assert main(["mlink", "plan", "--links", str(links), "--records", str(table_path),
                 "--budget-fraction", "0.5", "--json", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["cost"] <= plan["budget"] and 0 <= plan["expected accuracy"] <= 1
