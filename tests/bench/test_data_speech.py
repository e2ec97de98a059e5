"""`coinfer data speech` and the Silero speech detector: real synthesised speech over ambient
noise, generative truth, and the real VAD's answers."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from coinfer.bench.data import speech
from coinfer.bench.data.speech import SpeechFormatError, SpeechOptions, SpeechSet
from coinfer.edge.models import vad
from coinfer.sdk.cli.main import main
from coinfer.sdk.errors import CoinferError, ModelNotAvailableError

FIXTURE = Path(__file__).parent / "data" / "speech"
# The command tests/bench/data/README.md documents for the fixture.
FIXTURE_OPTIONS = SpeechOptions(clips=12, seconds=1.0, seed=0)
TINY = SpeechOptions(clips=4, seconds=0.5, seed=3)


def _or_skip(locate) -> None:
    try:
        locate()
    except ModelNotAvailableError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def detector() -> vad.SpeechDetector:
    pytest.importorskip("onnxruntime")
    _or_skip(vad.model_path)
    return vad.SpeechDetector()


@pytest.fixture(scope="module")
def espeak() -> None:
    _or_skip(speech.espeak_paths)


@pytest.fixture(scope="module")
def fixture_set() -> SpeechSet:
    return SpeechSet.load(FIXTURE)


@pytest.fixture(scope="module")
def tiny(detector, espeak) -> SpeechSet:
    return speech.speech_clips(TINY, detector=detector)


# --- generation: determinism and truth ------------------------------------------------


def test_same_seed_same_arrays_other_seed_other_arrays(tiny, detector):
    again = speech.speech_clips(TINY, detector=detector)
    assert again.arrays.keys() == tiny.arrays.keys()
    for name, array in tiny.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], array, err_msg=name)
    other = speech.speech_clips(dataclasses.replace(TINY, seed=4), detector=detector)
    assert not np.array_equal(other.arrays["waveforms"], tiny.arrays["waveforms"])


def test_espeak_speaks_the_same_samples_every_time(espeak):
    voice = speech.Voice("en-gb-scotland+f3", rate=160, pitch=40, pitch_range=70, seed=5)
    first = speech.speak("The old kettle was repaired on Monday.", voice)
    speech.speak("Something else in between, to leave state behind.", speech.Voice("en-us+klatt"))
    assert len(first) > 0.5 * speech.ESPEAK_RATE and np.abs(first).max() > 1000
    np.testing.assert_array_equal(speech.speak("The old kettle was repaired on Monday.", voice), first)


def test_synthesize_speech_fills_the_time_and_follows_the_seed(espeak):
    a = speech.synthesize_speech(np.random.default_rng(1), 0.8, 16000)
    b = speech.synthesize_speech(np.random.default_rng(1), 0.8, 16000)
    c = speech.synthesize_speech(np.random.default_rng(2), 0.8, 16000)
    assert a.dtype == np.float32 and a.shape == (12800,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.sqrt(np.mean(a[:1600] ** 2)) > 0.01  # audible from the start


@pytest.mark.parametrize("kind", speech.NOISE_KINDS)
def test_every_noise_kind_is_finite_unit_rms_and_seeded(kind):
    a = speech.ambient_noise(np.random.default_rng(0), 0.5, 16000, kind)
    assert a.shape == (8000,) and np.isfinite(a).all()
    assert np.sqrt(np.mean(a**2)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(a, speech.ambient_noise(np.random.default_rng(0), 0.5, 16000, kind))
    assert not np.array_equal(a, speech.ambient_noise(np.random.default_rng(1), 0.5, 16000, kind))


def test_unknown_noise_kind_and_bad_options_are_refused():
    with pytest.raises(CoinferError, match="unknown noise kind 'babble'"):
        speech.ambient_noise(np.random.default_rng(0), 1.0, 16000, "babble")
    with pytest.raises(CoinferError, match="sample_rate must be one of"):
        SpeechOptions(sample_rate=44100)
    with pytest.raises(CoinferError, match="kinds must be a non-empty subset"):
        SpeechOptions(kinds=("rain", "sirens"))
    with pytest.raises(CoinferError, match="snr_db must be"):
        SpeechOptions(snr_db=(10.0, 0.0))


def test_truth_has_the_documented_shapes_and_meaning(tiny):
    n, samples = TINY.clips, TINY.samples
    a = tiny.arrays
    assert a["waveforms"].dtype == np.int16 and a["waveforms"].shape == (n, samples)
    assert a["vad.probability"].shape == (n, -(-samples // 512))
    for name in ("truth.start", "truth.end", "truth.snr_db", "truth.level_dbfs", "vad.fraction"):
        assert a[name].dtype == np.float32 and a[name].shape == (n,), name
    speech_clips = a["truth.speech"]
    assert speech_clips.sum() == n // 2
    assert np.isnan(a["truth.start"][~speech_clips]).all()
    assert np.isnan(a["truth.snr_db"][~speech_clips]).all()
    start, end = a["truth.start"][speech_clips], a["truth.end"][speech_clips]
    assert (start >= 0).all() and (start < end).all() and (end <= TINY.seconds).all()
    assert (end - start >= 0.2).all()
    snr = a["truth.snr_db"][speech_clips]
    assert ((TINY.snr_db[0] <= snr) & (snr <= TINY.snr_db[1])).all()
    assert all(a["truth.text"][speech_clips]) and not any(a["truth.text"][~speech_clips])
    assert all(a["truth.voice"][speech_clips])
    # the level is measured on the mix, so it matches the stored waveform
    measured = 20 * np.log10(np.sqrt(np.mean(tiny.waveforms.astype(np.float64) ** 2, axis=1)))
    np.testing.assert_allclose(measured, a["truth.level_dbfs"], atol=0.05)


def test_speech_sits_where_the_truth_says(tiny):
    """Inside [start, end] a speech clip is louder than its own noise outside it."""
    for i in np.flatnonzero(tiny.speech & (tiny.arrays["truth.snr_db"] > 5)):
        wave = tiny.waveforms[i].astype(np.float64)
        first = int(tiny.arrays["truth.start"][i] * TINY.sample_rate)
        last = int(tiny.arrays["truth.end"][i] * TINY.sample_rate)
        inside = np.mean(wave[first:last] ** 2)
        outside = np.concatenate([wave[:first], wave[last:]])
        if len(outside) > 800:
            assert inside > 2 * np.mean(outside**2)


# --- the fixture and the real VAD -------------------------------------------------------


def test_fixture_is_what_the_documented_command_makes(fixture_set, detector, espeak):
    """Regenerating with the command of tests/bench/data/README.md gives the same clips (waveforms
    within one int16 step, probabilities within 1e-4, in case another CPU rounds differently)."""
    assert fixture_set.options == FIXTURE_OPTIONS
    fresh = speech.speech_clips(FIXTURE_OPTIONS, detector=detector)
    for name, array in fixture_set.arrays.items():
        if name == "waveforms":
            assert np.abs(fresh.arrays[name].astype(np.int32) - array).max() <= 1
        elif array.dtype.kind == "f":
            np.testing.assert_allclose(fresh.arrays[name], array, atol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(fresh.arrays[name], array, err_msg=name)


def test_vad_finds_the_speech_clips_and_not_the_noise_clips(fixture_set, detector):
    waves, truth = fixture_set.waveforms, fixture_set.speech
    present = detector.speech_present(waves)
    assert present.dtype == bool and present.shape == truth.shape
    # measured: 6 of 6 speech clips found, 0 of 6 noise clips flagged
    assert present[truth].mean() >= 5 / 6
    assert present[~truth].mean() <= 1 / 6
    fraction = detector(waves)
    assert fraction[truth].mean() > 0.4 and fraction[~truth].mean() < 0.05
    stored = fixture_set.arrays["vad.probability"]
    np.testing.assert_allclose(detector.probabilities(waves), stored, atol=1e-4)
    np.testing.assert_array_equal(present, fixture_set.vad_speech)


def test_vad_single_clip_batch_and_8khz_agree(fixture_set, detector):
    waves = fixture_set.waveforms
    i = int(np.flatnonzero(fixture_set.speech)[0])
    single = detector.probabilities(waves[i])
    assert single.shape == (32,) and single.dtype == np.float32
    np.testing.assert_allclose(single, detector.probabilities(waves)[i], atol=1e-5)
    assert isinstance(detector(waves[i]), float) and detector.speech_present(waves[i]) is True
    narrow = vad.SpeechDetector(vad.SpeechDetectorOptions(sample_rate=8000))
    assert narrow.window() == 256
    # the same speech at 8 kHz: plain decimation after an FFT low-pass
    low = speech.resample(waves[i], 16000, 8000)
    assert narrow.probabilities(low).shape == (32,) and narrow.speech_present(low) is True


def test_longest_run_and_presence_need_a_quarter_second(detector):
    assert vad.longest_run(np.array([[0, 1, 1, 0, 1, 1, 1], [0] * 7], bool)).tolist() == [3, 0]
    probabilities = np.zeros((2, 20), np.float32)
    probabilities[0, 3:10] = 0.9  # 7 windows: 224 ms, too short
    probabilities[1, 3:11] = 0.9  # 8 windows: 256 ms
    assert detector.present(probabilities).tolist() == [False, True]
    np.testing.assert_allclose(detector.fraction(probabilities), [0.35, 0.4])


@pytest.mark.parametrize(("waveform", "sample_rate", "message"), [
    (np.zeros((2, 3, 512), np.float32), None,
     r"1-D \[samples\] or 2-D \[clips, samples\], got shape \(2, 3, 512\)"),
    (np.array([0.0, np.nan, 0.1, np.inf], np.float32), None,
     r"2 non-finite samples .* first at index \(1,\)"),
    (np.zeros(512, np.int16), None, "float array .* got dtype int16 .*1/32768"),
    (np.full(512, 300.0), None, "peaks at 300"),
    (np.zeros(0, np.float32), None, "empty"),
    (np.zeros(512, np.float32), 44100, r"sample rate must be one of \[8000, 16000\] Hz.*got 44100"),
])
def test_vad_rejects_bad_input_with_a_clear_value_error(detector, waveform, sample_rate, message):
    with pytest.raises(ValueError, match=message):
        detector.probabilities(waveform, sample_rate)


def test_vad_options_are_checked():
    with pytest.raises(ValueError, match="threshold must be in"):
        vad.SpeechDetectorOptions(threshold=1.5)
    with pytest.raises(ValueError, match="sample rate must be one of"):
        vad.SpeechDetectorOptions(sample_rate=22050)


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps silero-vad==6\.2\.3"):
        vad.model_path()
    with pytest.raises(ModelNotAvailableError, match="pip install espeakng-loader"):
        speech.espeak_paths()
    with pytest.raises(ModelNotAvailableError, match="silero-vad"):
        vad.SpeechDetector()


def test_missing_model_file_is_reported(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("silero_vad", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ModelNotAvailableError, match=r"silero_vad\.onnx is missing"):
        vad.model_path()


def test_read_audio_decodes_and_resamples_with_pyav(fixture_set, tmp_path):
    av = pytest.importorskip("av")
    clip = fixture_set.arrays["waveforms"][0]
    path = tmp_path / "clip.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="stereo")
        interleaved = np.stack([clip, np.zeros_like(clip)], axis=1).reshape(1, -1)  # L = clip, R silent
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    decoded = vad.read_audio(path)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, clip / 65536.0, atol=1e-6)  # the mean of the channels
    assert abs(len(vad.read_audio(path, 8000)) - 8000) <= 32
    with pytest.raises(FileNotFoundError):
        vad.read_audio(tmp_path / "missing.wav")


# --- CLI and the on-disk format -----------------------------------------------------------


def test_cli_round_trip_refuses_to_overwrite_and_detects_tampering(tmp_path, capsys, detector, espeak):
    out = tmp_path / "set"
    argv = ["data", "speech", "--out", str(out), "--clips", "4", "--seconds", "0.5", "--seed", "3", "--quiet"]
    assert main(argv) == 0
    assert "speech clips detected" in capsys.readouterr().out
    index = json.loads((out / "speech.json").read_text())
    assert index["format"] == "coinfer-speech" and index["version"] == 1
    assert index["noise_kinds"] == list(speech.NOISE_KINDS) and index["vad"]["window"] == 512
    with np.load(out / "speech.npz", allow_pickle=False) as archive:
        assert set(archive.files) == {"waveforms", "truth.speech", "truth.start", "truth.end", "truth.snr_db",
                                      "truth.level_dbfs", "truth.noise_kind", "truth.voice", "truth.text",
                                      "vad.probability", "vad.fraction", "vad.speech"}
    loaded = SpeechSet.load(out)
    assert loaded.options == TINY
    in_memory = speech.speech_clips(TINY, detector=detector)
    for name, array in in_memory.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], array, err_msg=name)

    before = (out / "speech.npz").read_bytes()
    assert main([*argv[:-1], "--clips", "2"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "speech.npz").read_bytes() == before
    assert main([*argv, "--clips", "2", "--overwrite"]) == 0
    assert len(SpeechSet.load(out)) == 2

    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    data = bytearray((tampered / "speech.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "speech.npz").write_bytes(bytes(data))
    with pytest.raises(SpeechFormatError, match="does not match its sha256"):
        SpeechSet.load(tampered)
    with pytest.raises(SpeechFormatError, match=r"speech\.json is missing"):
        SpeechSet.load(tmp_path)
