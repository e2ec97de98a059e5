"""`coinfer data scenes --audio`: an audio track aligned with the frames, speech while people
are in view and ambient noise throughout, without changing the video."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from coinfer.bench.data import scenes, speech
from coinfer.bench.data.scenes import SceneOptions, generate_scenes
from coinfer.sdk.cli.main import main
from coinfer.sdk.errors import CoinferError, ModelNotAvailableError
from coinfer.sdk.scenes import SceneFormatError, SceneSet

pytest.importorskip("av")
pytest.importorskip("cv2")
pytest.importorskip("skimage")

# Daytime, no detectors (the audio does not need them). With seed 4 both cameras have people
# in view part of the time and nobody the rest (measured: 25% and 50% of the frames).
TINY = SceneOptions(cameras=2, seconds=4, fps=10, width=160, height=90, tasks=(), seed=4,
                    day_start="07:00", day_end="19:00", crowd=2, audio=True)
SAMPLES_PER_FRAME = 1600


@pytest.fixture(scope="module")
def espeak() -> None:
    try:
        speech.espeak_paths()
    except ModelNotAvailableError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def with_audio(tmp_path_factory, espeak) -> SceneSet:
    return generate_scenes(tmp_path_factory.mktemp("audio") / "set", TINY, workers=1, progress=False)


@pytest.fixture(scope="module")
def without_audio(tmp_path_factory) -> SceneSet:
    return generate_scenes(tmp_path_factory.mktemp("silent") / "set", dataclasses.replace(TINY, audio=False),
                           workers=1, progress=False)


def index_of(scene_set: SceneSet) -> dict:
    return json.loads((scene_set.root / "scenes.json").read_text())


def frame_power(camera) -> np.ndarray:
    return np.mean(camera.audio.astype(np.float64).reshape(camera.frame_count, -1) ** 2, axis=1)


# --- format ---------------------------------------------------------------------------


def test_each_frame_owns_its_samples(with_audio):
    assert with_audio.has_audio and with_audio.sample_rate == 16000
    assert with_audio.samples_per_frame == SAMPLES_PER_FRAME == TINY.samples_per_frame
    for camera in with_audio.cameras:
        frames = camera.frame_count
        assert frames == 40 and camera.arrays["audio"].dtype == np.int16
        audio = camera.audio
        assert audio.dtype == np.float32 and audio.shape == (frames * 16000 // TINY.fps,)
        assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0
        assert camera.speech.dtype == np.bool_ and camera.speech.shape == (frames,)
        spf = SAMPLES_PER_FRAME
        np.testing.assert_array_equal(camera.audio_window(3), audio[3 * spf:4 * spf])
        np.testing.assert_array_equal(camera.audio_window(frames - 1), audio[-spf:])
        with pytest.raises(CoinferError, match=r"frame index must be an integer in \[0, 40\)"):
            camera.audio_window(frames)


def test_index_records_the_audio_facts(with_audio):
    index = index_of(with_audio)
    audio = index["audio"]
    assert audio["sample_rate"] == 16000 and audio["samples_per_frame"] == SAMPLES_PER_FRAME
    assert audio["dtype"] == "int16" and audio["noise_kinds"] == list(speech.NOISE_KINDS)
    assert audio["snr_db"] == [0.0, 20.0]
    assert audio["presence"] == {"kinds": ["face", "person"], "min_visible": 0.3}
    assert audio["synthesizer"]["name"] == "espeak-ng"
    for camera in with_audio.cameras:
        entry = camera.entry["audio"]
        assert entry["noise_kind"] in speech.NOISE_KINDS
        assert 0.0 <= entry["snr_db"] <= 20.0
        assert entry["noise_dbfs"] == pytest.approx(entry["speech_dbfs"] - entry["snr_db"], abs=1e-3)
        assert entry["speech_frames"] == int(camera.speech.sum())


# --- speech follows the people in view ---------------------------------------------------


def test_speech_only_while_people_are_present_and_on_most_of_those_frames(with_audio):
    present_frames = speaking = 0
    for camera in with_audio.cameras:
        present = camera.people_present
        expected = (camera.truth_counts("face", 0.3) + camera.truth_counts("person", 0.3)) > 0
        np.testing.assert_array_equal(present, expected)
        assert present.any() and (~present).any(), f"{camera.id} should have people in view some of the time"
        assert not (camera.speech & ~present).any(), f"{camera.id}: speech while nobody is in view"
        present_frames += int(present.sum())
        speaking += int((camera.speech & present).sum())
        assert camera.entry["audio"]["turns"] >= 1
    assert speaking >= 0.7 * present_frames


def test_speech_frames_are_louder_than_frames_with_nobody(with_audio):
    for camera in with_audio.cameras:
        power = frame_power(camera)
        talking, nobody = power[camera.speech], power[~camera.people_present]
        # medians: bursty noise kinds (knocks, a passing car) make means jumpy
        assert np.median(talking) > 4 * np.median(nobody), camera.id
        # nobody in view: the ambient noise, near its recorded level (daytime)
        level = 10 * np.log10(np.mean(nobody))
        assert level == pytest.approx(camera.entry["audio"]["noise_dbfs"], abs=6.0), camera.id


def test_noise_is_quieter_at_night():
    options = SceneOptions(cameras=1, seconds=4, fps=10, audio=True)
    light = np.r_[np.ones(20), np.zeros(20)]
    track = scenes.render_audio(np.random.default_rng(30), options, np.zeros(40, bool), light)
    assert track.noise_kind == "pink" and track.turns == 0 and not track.speech.any()
    power = np.mean((track.samples.astype(np.float64) / 32768).reshape(40, -1) ** 2, axis=1)
    drop = 10 * np.log10(power[:15].mean() / power[25:].mean())
    assert drop == pytest.approx(track.night_quieter_db, abs=1.0)


def test_long_ambient_noise_is_made_in_blocks_joined_without_a_dip():
    samples = 40 * 16000  # blocks of 15, 15 and 10 s
    noise = scenes._ambient(np.random.default_rng(0), samples, "pink")
    assert noise.shape == (samples,) and np.isfinite(noise).all()
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=0.05)
    for seam in (15 * 16000, 30 * 16000):
        assert 0.8 < np.sqrt(np.mean(noise[seam:seam + 8000] ** 2)) < 1.25


# --- determinism and independence from the video -----------------------------------------


@pytest.mark.slow  # renders the scene set again in two worker processes
def test_same_options_give_identical_audio_whatever_the_worker_count(with_audio, tmp_path):
    again = generate_scenes(tmp_path / "again", TINY, workers=2, progress=False)
    assert index_of(again) == index_of(with_audio)
    for camera, other in zip(with_audio.cameras, again.cameras, strict=True):
        assert camera.arrays["audio"].tobytes() == other.arrays["audio"].tobytes()


def test_audio_leaves_video_truth_and_detections_unchanged(with_audio, without_audio):
    loud, silent = index_of(with_audio), index_of(without_audio)
    assert "audio" not in silent and all("audio" not in c for c in silent["cameras"])
    assert {k: v for k, v in loud.items() if k not in ("audio", "cameras", "files")} == \
        {k: v for k, v in silent.items() if k not in ("cameras", "files")}
    for camera, plain in zip(with_audio.cameras, without_audio.cameras, strict=True):
        assert loud["files"][camera.video_path.name] == silent["files"][plain.video_path.name]
        assert {k: v for k, v in camera.entry.items() if k != "audio"} == plain.entry
        assert set(camera.arrays) == set(plain.arrays) | {"audio", "audio.speech"}
        for name, array in plain.arrays.items():
            np.testing.assert_array_equal(camera.arrays[name], array, err_msg=name)


def test_silent_from_keeps_the_people_quiet_from_that_clock_time(with_audio, tmp_path):
    quiet = generate_scenes(tmp_path / "quiet", dataclasses.replace(TINY, silent_from="13:00"), workers=1,
                            progress=False)
    assert index_of(quiet)["audio"]["silent_from"] == "13:00"
    assert index_of(with_audio)["audio"]["silent_from"] is None
    people_after = 0
    for camera, loud in zip(quiet.cameras, with_audio.cameras, strict=True):
        assert camera.video_path.read_bytes() == loud.video_path.read_bytes()
        after = camera.clock_hours >= 13.0
        assert after.any() and (~after).any()
        assert not camera.speech[after].any(), camera.id
        people_after += int((camera.people_present & after).sum())
        # before 13:00 the same people talk, at the same frames
        np.testing.assert_array_equal(camera.speech[~after], loud.speech[~after])
    assert people_after > 0 and sum(int(loud.speech[loud.clock_hours >= 13.0].sum())
                                    for loud in with_audio.cameras) > 0


def test_silent_frames_count_from_the_day_start_past_midnight():
    options = SceneOptions(cameras=1, seconds=4, fps=10, day_start="22:00", day_end="02:00", audio=True,
                           silent_from="01:00")
    silent = options.silent()
    assert silent.sum() == 10 and silent[-10:].all()
    assert not SceneOptions(cameras=1, seconds=4, fps=10, audio=True).silent().any()


def test_silent_from_needs_audio_and_a_clock_time():
    with pytest.raises(CoinferError, match="silent_from silences"):
        SceneOptions(silent_from="10:00")
    with pytest.raises(CoinferError, match="silent_from: a clock time"):
        SceneOptions(audio=True, silent_from="25:00")


# --- errors -------------------------------------------------------------------------------


def test_fps_must_divide_the_sample_rate():
    with pytest.raises(CoinferError, match="invalid scene options") as caught:
        SceneOptions(fps=7, audio=True)
    assert "16000" in str(caught.value) and "fps=7" in str(caught.value)
    assert SceneOptions(fps=7).fps == 7  # without audio any fps goes


def test_a_set_without_audio_says_to_regenerate_it(without_audio):
    camera = without_audio.cameras[0]
    assert not without_audio.has_audio and not camera.has_audio
    for read in (lambda: camera.audio, lambda: camera.speech, lambda: camera.audio_window(0),
                 lambda: without_audio.sample_rate):
        with pytest.raises(CoinferError, match="--audio"):
            read()


@pytest.mark.parametrize(("change", "message"), [
    (lambda arrays: arrays.update(audio=arrays["audio"][:-1]), "array 'audio' is int16 (63999,)"),
    (lambda arrays: arrays.update(audio=arrays["audio"].astype(np.float32)), "array 'audio' is float32"),
    (lambda arrays: arrays.update({"audio.speech": arrays["audio.speech"][:-1]}), "array 'audio.speech'"),
    (lambda arrays: arrays.pop("audio"), "has no array 'audio'"),
])
def test_loader_rejects_a_wrong_audio_array(with_audio, tmp_path, rewrite_results, change, message):
    root = shutil.copytree(with_audio.root, tmp_path / "copy")
    rewrite_results(root, "cam001.npz", change)
    with pytest.raises(SceneFormatError, match=r"cam001\.npz") as caught:
        SceneSet.load(root)
    assert message in str(caught.value)


def test_loader_rejects_audio_facts_that_do_not_fit_the_frame_rate(with_audio, tmp_path):
    root = shutil.copytree(with_audio.root, tmp_path / "copy")
    index = json.loads((root / "scenes.json").read_text())
    index["audio"]["samples_per_frame"] = 1000
    (root / "scenes.json").write_text(json.dumps(index))
    with pytest.raises(SceneFormatError, match="samples_per_frame 1000 do not fit fps 10"):
        SceneSet.load(root)


def test_cli_audio_flag_and_summary(tmp_path, capsys, espeak):
    out = tmp_path / "cli"
    status = main(["data", "scenes", "--out", str(out), "--cameras", "1", "--seconds", "2", "--fps", "5",
                   "--silent-from", "00:12",
                   "--size", "160x90", "--tasks", "", "--audio", "--workers", "1", "--quiet"])
    assert status == 0
    loaded = SceneSet.load(out)
    assert loaded.samples_per_frame == 3200 and len(loaded.cameras[0].audio) == 10 * 3200
    assert loaded.index["audio"]["silent_from"] == "00:12" and not loaded.cameras[0].speech[1:].any()
    assert "audio: frames with speech" in capsys.readouterr().out
    assert main(["data", "scenes", "--out", str(tmp_path / "bad"), "--fps", "7", "--audio", "--quiet"]) == 1
    assert "fps=7" in capsys.readouterr().err
    assert main(["data", "scenes", "--out", str(tmp_path / "bad"), "--silent-from", "10:00", "--quiet"]) == 1
    assert "it needs audio=True" in capsys.readouterr().err
