"""`coinfer data scenes`: deterministic multi-camera workloads with real detector results."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from coinfer.bench.data import scenes
from coinfer.bench.data.scenes import SceneOptions, generate_scenes
from coinfer.sdk.cli.main import main
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.scenes import SceneFormatError, SceneSet, write_npz

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage")

# A whole day in 6 s per camera (night, dawn, rush hours, dusk) and a busy daytime set.
DAY_AND_NIGHT = SceneOptions(cameras=3, seconds=6, fps=5, width=192, height=108, tasks=("faces", "cats"))
DAYTIME = SceneOptions(cameras=6, seconds=10, fps=5, width=192, height=108, tasks=("faces",),
                       day_start="07:00", day_end="19:00")
# Measured on DAYTIME with seeds 0-3 and 5: 0.93-1.0 of fully visible faces found by day
# (about 60 instances each); at 320x180 over 64 cameras, 0.87.
FACE_RECALL_BOUND = 0.8


@pytest.fixture(scope="module")
def day_and_night(tmp_path_factory) -> SceneSet:
    root = tmp_path_factory.mktemp("scenes")
    return generate_scenes(root / "set", DAY_AND_NIGHT, workers=1, progress=False)


@pytest.fixture(scope="module")
def daytime(tmp_path_factory) -> SceneSet:
    return generate_scenes(tmp_path_factory.mktemp("scenes") / "day", DAYTIME, workers=1, progress=False)


def file_hashes(scene_set: SceneSet) -> dict[str, str]:
    return json.loads((scene_set.root / "scenes.json").read_text())["files"]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x, y, w, h boxes."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter)


def decoded(camera) -> np.ndarray:
    return np.stack([frame for _, frame in scenes.decode_frames(camera.video_path)])


# --- format --------------------------------------------------------------------------


def test_index_and_arrays_follow_the_documented_format(day_and_night):
    index = json.loads((day_and_night.root / "scenes.json").read_text())
    assert index["format"] == "coinfer-scenes" and index["version"] == 1
    assert index["frames"] == 30 and index["gop"] == 10 and index["container"] == "mp4"
    assert index["time_base"] == [1, 5] and index["clock"] == {"start": "00:00", "end": "24:00"}
    assert index["actor_kinds"] == ["face", "cat", "sign", "person"]
    assert sorted(index["files"]) == sorted(f"cam{i:03d}.{ext}" for i in range(3) for ext in ("mp4", "npz"))
    for camera in day_and_night.cameras:
        with np.load(camera.results_path, allow_pickle=False) as archive:
            names = set(archive.files)
        assert names == {"pts", "clock_hours", "night", "activity", "faces.offsets", "faces.boxes",
                         "cats.offsets", "cats.boxes", "truth.offsets", "truth.boxes", "truth.kinds",
                         "truth.ids", "truth.visible"}
        assert camera.frame_count == 30 and list(camera.pts) == list(range(30))
        boxes = camera.boxes("faces")
        assert len(boxes) == 30 and all(b.dtype == np.float32 and b.shape[1:] == (4,) for b in boxes)
        np.testing.assert_array_equal(camera.counts("faces"), [len(b) for b in boxes])
        truth = camera.arrays
        assert np.all((truth["truth.visible"] > 0) & (truth["truth.visible"] <= 1))
        x, y, w, h = truth["truth.boxes"].T
        assert np.all((x >= 0) & (y >= 0) & (w > 0) & (h > 0) & (x + w <= 192) & (y + h <= 108))


def test_packets_have_a_fixed_closed_gop_and_pts_equal_to_the_frame_index(day_and_night):
    for camera in day_and_night.cameras:
        with av.open(str(camera.video_path)) as container:
            stream = container.streams.video[0]
            assert stream.time_base == 1 / 5 or float(stream.time_base) == pytest.approx(0.2)
            packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        assert sorted(pts for pts, _ in packets) == list(range(30))
        assert sorted(pts for pts, key in packets if key) == [0, 10, 20]


@pytest.mark.parametrize(("codec", "suffix", "bframes"), [("hevc", "mp4", 2), ("vp9", "webm", 0)])
def test_hevc_and_vp9_scenes(tmp_path, codec, suffix, bframes):
    options = SceneOptions(cameras=1, seconds=3, fps=5, width=160, height=96, codec=codec, gop=5,
                           bframes=bframes, tasks=("faces",))
    (camera,) = generate_scenes(tmp_path / codec, options, workers=1, progress=False).cameras
    assert camera.video_path.suffix == f".{suffix}" and camera.frame_count == 15
    with av.open(str(camera.video_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
    step = 200 if codec == "vp9" else 1  # WebM counts milliseconds
    assert list(camera.pts) == [k * step for k in range(15)]
    assert sorted(pts for pts, key in packets if key) == [0, 5 * step, 10 * step]


# --- determinism ---------------------------------------------------------------------


@pytest.mark.slow  # renders the scene set again in two worker processes
def test_same_seed_gives_identical_files_whatever_the_worker_count(day_and_night, tmp_path):
    again = generate_scenes(tmp_path / "again", DAY_AND_NIGHT, workers=2, progress=False)
    assert file_hashes(again) == file_hashes(day_and_night)
    assert (again.root / "scenes.json").read_bytes() == (day_and_night.root / "scenes.json").read_bytes()


@pytest.mark.slow  # renders a second 3-camera scene set
def test_another_seed_gives_other_scenes(day_and_night, tmp_path):
    other = generate_scenes(tmp_path / "other", dataclasses.replace(DAY_AND_NIGHT, seed=1),
                            workers=1, progress=False)
    assert set(file_hashes(other).values()).isdisjoint(file_hashes(day_and_night).values())


def test_a_camera_does_not_depend_on_how_many_cameras_there_are(day_and_night, tmp_path):
    options = dataclasses.replace(DAY_AND_NIGHT, cameras=1)
    single = generate_scenes(tmp_path / "one", options, workers=1, progress=False)
    assert file_hashes(single)["cam000.mp4"] == file_hashes(day_and_night)["cam000.mp4"]


# --- the detectors really ran ----------------------------------------------------------


@pytest.mark.slow  # renders 6 cameras x 10 s with the real face detector (the daytime fixture)
def test_faces_detected_on_decoded_frames_match_the_truth(daytime):
    found = total = empty_with_detections = empty = 0
    code = daytime.actor_kinds.index("face")
    for camera in daytime.cameras:
        detections = camera.boxes("faces")
        for k, truth in enumerate(camera.truth()):
            visible = (truth["kinds"] == code) & (truth["visible"] >= 0.99)
            if visible.any() and not camera.night[k]:
                matches = iou(truth["boxes"][visible], detections[k]) if len(detections[k]) else \
                    np.zeros((int(visible.sum()), 0))
                found += int((matches.max(axis=1, initial=0) >= 0.3).sum())
                total += int(visible.sum())
            if len(truth["kinds"]) == 0:
                empty += 1
                empty_with_detections += len(detections[k]) > 0
    assert total >= 20, "the daytime set should show enough faces to measure recall"
    assert found / total >= FACE_RECALL_BOUND, f"face recall {found}/{total}"
    assert empty >= 20 and empty_with_detections / empty <= 0.1


@pytest.mark.slow  # the daytime fixture
def test_recorded_detections_are_what_the_detector_gives_on_the_decoded_frames(daytime):
    from coinfer.edge.models.detectors import create_detector, single_threaded

    camera = daytime.cameras[0]
    detector = create_detector("faces")
    with single_threaded():
        again = [detector(frame) for frame in decoded(camera)]
    for recorded, redone in zip(camera.boxes("faces"), again, strict=True):
        np.testing.assert_array_equal(recorded, redone)


# --- day, night and activity -------------------------------------------------------------


def test_night_frames_are_infrared_grey_and_darker(day_and_night):
    colour_gap, brightness = {True: [], False: []}, {True: [], False: []}
    for camera in day_and_night.cameras:
        frames = decoded(camera).astype(np.float32)
        assert camera.night.any() and (~camera.night).any()
        for k in range(camera.frame_count):
            night = bool(camera.night[k])
            colour_gap[night].append(np.abs(frames[k, ..., 0] - frames[k, ..., 2]).mean())
            brightness[night].append(frames[k].mean())
    assert max(colour_gap[True]) < 2.0 < np.mean(colour_gap[False])
    assert np.mean(brightness[True]) < 0.85 * np.mean(brightness[False])
    hours = day_and_night.cameras[0].clock_hours
    night = day_and_night.cameras[0].night
    assert night[(hours < 4) | (hours > 21)].all() and not night[(hours > 9) & (hours < 17)].any()


def test_sensor_noise_is_stronger_at_night():
    # Noise measured exactly: the same camera rendered with its noise bank zeroed (the noise
    # stream is separate, so actors and shake are unchanged) is the noise-free picture.
    plan = scenes.CameraPlan.draw(DAY_AND_NIGHT, 0)
    noisy = scenes.CameraRenderer(plan, DAY_AND_NIGHT)
    clean = scenes.CameraRenderer(plan, DAY_AND_NIGHT)
    clean.noise[:] = 0
    spread = {True: [], False: []}
    for k, ((a, _), (b, _)) in enumerate(zip(noisy.frames(), clean.frames(), strict=True)):
        if bool(noisy.night[k]):
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
        spread[bool(noisy.night[k])].append(np.std(a.astype(np.float32) - b))
    assert np.mean(spread[True]) > 2 * np.mean(spread[False]) > 0


def test_activity_has_morning_and_evening_peaks_above_night():
    options = SceneOptions(cameras=8)
    hours = np.linspace(0, 24, 24 * 60, endpoint=False)
    for index in range(options.cameras):
        shape = scenes.CameraPlan.draw(options, index).arrivals_per_hour_shape(hours)
        night, morning = shape[(hours > 1) & (hours < 5)].max(), shape[(hours > 7) & (hours < 10)].max()
        midday, evening = shape[(hours > 12) & (hours < 14)].min(), shape[(hours > 16) & (hours < 19)].max()
        assert morning > 10 * night and evening > 10 * night
        assert midday < 0.7 * min(morning, evening)


def test_expected_activity_follows_the_clock_and_busyness(day_and_night):
    for camera in day_and_night.cameras:
        hours, activity = camera.clock_hours, camera.activity
        assert activity[(hours > 8) & (hours < 20)].mean() > 3 * activity[hours < 5].mean()
    plans = [scenes.CameraPlan.draw(SceneOptions(cameras=32), i) for i in range(32)]
    busyness = [plan.busyness for plan in plans]
    assert max(busyness) > 3 * min(busyness)  # busy and quiet cameras side by side
    assert len({plan.background for plan in plans}) >= 3


# --- loader ----------------------------------------------------------------------------


@pytest.fixture
def copy_of(day_and_night, tmp_path):
    return shutil.copytree(day_and_night.root, tmp_path / "copy")


def test_loader_rejects_a_tampered_file(copy_of):
    path = copy_of / "cam001.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SceneFormatError, match=r"cam001\.npz.*sha256"):
        SceneSet.load(copy_of)


def test_loader_rejects_a_missing_file(copy_of):
    (copy_of / "cam002.mp4").unlink()
    with pytest.raises(SceneFormatError, match=r"cam002\.mp4 is missing"):
        SceneSet.load(copy_of)


def test_loader_rejects_another_format_version(copy_of):
    index = json.loads((copy_of / "scenes.json").read_text())
    (copy_of / "scenes.json").write_text(json.dumps({**index, "version": 2}))
    with pytest.raises(SceneFormatError, match=r"scenes\.json: version 2 is not supported"):
        SceneSet.load(copy_of)
    (copy_of / "scenes.json").unlink()
    with pytest.raises(SceneFormatError, match=r"scenes\.json is missing"):
        SceneSet.load(copy_of)


@pytest.mark.parametrize(("change", "message"), [
    (lambda arrays: arrays.pop("activity"), "has no array 'activity'"),
    (lambda arrays: arrays.update(night=arrays["night"][:-1]), "array 'night' is bool"),
    (lambda arrays: arrays["faces.offsets"].__setitem__(-1, arrays["faces.offsets"][-1] + 1),
     "faces.offsets are not a valid CSR index"),
])
def test_loader_checks_the_arrays_of_a_results_file(copy_of, rewrite_results, change, message):
    rewrite_results(copy_of, "cam000.npz", change)
    with pytest.raises(SceneFormatError, match=r"cam000\.npz") as caught:
        SceneSet.load(copy_of)
    assert message in str(caught.value)


def test_unknown_task_or_kind_is_a_clear_error(day_and_night):
    camera = day_and_night.cameras[0]
    with pytest.raises(CoinferError, match="no results for task 'text'"):
        camera.boxes("text")
    with pytest.raises(CoinferError, match="unknown actor kind 'dog'"):
        camera.truth_counts("dog")


def test_npz_files_are_byte_reproducible(tmp_path):
    arrays = {"b": np.arange(3, dtype=np.int64), "a": np.zeros((2, 4), np.float32)}
    write_npz(tmp_path / "one.npz", arrays)
    write_npz(tmp_path / "two.npz", dict(reversed(arrays.items())))
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with np.load(tmp_path / "one.npz", allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["b"], arrays["b"])


# --- options and CLI --------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"cameras": 0}, "cameras must be an integer in [1, 10000]"),
    ({"width": 321}, "must be even"),
    ({"codec": "av2"}, "unknown codec 'av2'"),
    ({"codec": "vp9", "bframes": 2}, "vp9 has no B-frames"),
    ({"tasks": ("faces", "dogs")}, "unknown task(s) ['dogs']"),
    ({"gop": 4, "bframes": 4}, "bframes must be smaller than gop"),
    ({"day_start": "25:00"}, "day_start"),
    ({"seconds": 0.1, "fps": 5}, "at least 2 frames"),
    ({"crowd": 0}, "crowd must be in (0, 20]"),
])
def test_options_are_validated(fields, message):
    with pytest.raises(CoinferError, match="invalid scene options") as caught:
        SceneOptions(**fields)
    assert message in str(caught.value)


def test_cli_generates_a_scene_set(tmp_path, capsys):
    out = tmp_path / "cli"
    status = main(["data", "scenes", "--out", str(out), "--cameras", "2", "--seconds", "2", "--fps", "5",
                   "--size", "160x96", "--tasks", "faces", "--codec", "mjpeg", "--seed", "3",
                   "--crowd", "2", "--workers", "1", "--quiet"])
    assert status == 0
    loaded = SceneSet.load(out)
    assert json.loads((out / "scenes.json").read_text())["crowd"] == 2.0
    assert [c.video_path.name for c in loaded.cameras] == ["cam000.avi", "cam001.avi"]
    assert loaded.tasks == ("faces",) and loaded.frames == 10
    assert "coinfer data scenes" in capsys.readouterr().out
    assert main(["data", "scenes", "--out", str(out), "--cameras", "1", "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert not list(tmp_path.glob(".cli.*")), "no staging directory may be left behind"


@pytest.mark.parametrize(("args", "message"), [
    (["--cameras", "0"], "cameras must be an integer"),
    (["--size", "320by180"], "WIDTHxHEIGHT"),
    (["--codec", "av2"], "unknown codec 'av2'"),
    (["--tasks", "faces,dogs"], "unknown task(s) ['dogs']"),
    (["--day-end", "7pm"], "HH:MM"),
])
def test_cli_rejects_bad_options(tmp_path, capsys, args, message):
    assert main(["data", "scenes", "--out", str(tmp_path / "bad"), "--quiet", *args]) == 1
    error = capsys.readouterr().err
    assert error.startswith("coinfer data scenes: error:") and message in error
    assert not (tmp_path / "bad").exists()


def test_modules_import_without_video_or_vision_libraries():
    probe = ("import sys\n"
             "import coinfer.bench.data.scenes, coinfer.bench.data.actors, coinfer.bench.cli.data_scenes\n"
             "import coinfer.edge.models.detectors\n"
             "heavy = ('av', 'cv2', 'skimage', 'onnxruntime', 'tqdm')\n"
             "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- detectors ---------------------------------------------------------------------------


def paste(kind: str, height: int, frame_size: tuple[int, int] = (320, 180)) -> tuple[np.ndarray, tuple]:
    """The first sprite of a kind alpha-blended onto the lawn background; returns the frame
    and the sprite's object box."""
    from coinfer.bench.data import actors

    width, frame_h = frame_size
    sprite = actors.sprite_library()[kind][0]
    lawn = cv2.resize(actors.background("lawn"), frame_size, interpolation=cv2.INTER_AREA)
    canvas = lawn.astype(np.float32)
    pose = sprite.poses[0]
    size = (round(height * sprite.aspect), height)
    pose = cv2.resize(pose, size, interpolation=cv2.INTER_AREA)
    x, y = (width - size[0]) // 2, (frame_h - size[1]) // 2
    region = canvas[y:y + size[1], x:x + size[0]]
    region += pose[..., 3:] * (pose[..., :3] - region)
    bx, by, bw, bh = sprite.box
    return canvas.astype(np.uint8), (x + bx * size[0], y + by * size[1], bw * size[0], bh * size[1])


def test_detector_registry_and_input_checks():
    from coinfer.edge.models import detectors

    assert set(detectors.DETECTORS) == {"faces", "cats", "people", "text"}
    with pytest.raises(CoinferError, match="unknown detection task 'dogs'"):
        detectors.create_detector("dogs")
    face = detectors.create_detector("faces")
    with pytest.raises(CoinferError, match="RGB uint8 frame"):
        face(np.zeros((90, 160), np.uint8))
    empty = face(np.full((90, 160, 3), 128, np.uint8))
    assert empty.dtype == np.float32 and empty.shape == (0, 4)


@pytest.mark.parametrize(("task", "kind", "height"), [("faces", "face", 64), ("cats", "cat", 60),
                                                       ("people", "person", 112)])
def test_opencv_detectors_find_their_actor(task, kind, height):
    from coinfer.edge.models.detectors import create_detector

    frame, box = paste(kind, height)
    found = create_detector(task)(frame)
    assert len(found) >= 1 and iou(np.array([box], np.float32), found).max() >= 0.3


def test_text_detector_finds_a_sign():
    from coinfer.edge.models.detectors import create_detector
    from coinfer.sdk.errors import ModelNotAvailableError

    pytest.importorskip("onnxruntime")
    try:
        detector = create_detector("text")
    except ModelNotAvailableError as error:
        pytest.skip(str(error))
    frame, box = paste("sign", 40)
    found = detector(frame)
    assert len(found) >= 1 and iou(np.array([box], np.float32), found).max() >= 0.3
