"""Deterministic speech / no-speech audio clips over realistic ambient noise, with the real VAD's answer.

Half of the clips hold a spoken utterance, half hold ambient noise only: the "is anyone
speaking?" workload of an input filter that skips audio a speech model would find
nothing in. Speech is real synthesised speech: eSpeak NG (the library and voice data
shipped by the ``espeakng-loader`` wheel, driven through ctypes) reads sentences composed
from word lists, in one of several English accents and voice variants, at a drawn rate,
pitch and intonation range, then goes through a small simulated room (reverberation).
The noise is one of :data:`NOISE_KINDS`: pink and brown noise, mains hum, traffic rumble,
rain, distant music, door knocks, a fan. Speech is mixed at a drawn signal-to-noise
ratio, every clip is brought to a drawn loudness (the same distribution with and without
speech, so loudness gives nothing away), and the real Silero VAD
(:mod:`coinfer.edge.models.vad`) scores every clip as stored.

Everything derives from the seed: which clips hold speech is a seeded permutation, and
clip ``i`` draws from its own PCG64 stream, so a clip does not depend on how many follow.

eSpeak NG keeps synthesis state (pitch flutter phase, wave generator counters) in static
variables that survive ``espeak_Terminate``/``espeak_Initialize``, so the same text spoken
twice in one process differs. Each utterance is therefore spoken by a freshly loaded copy
of the library (dlopen, synthesise, dlclose: about 5 ms), which makes it depend on its text
and voice only. This needs the library not to be held open by other code in the process.

Output format (version 1) of :func:`generate_speech` / ``coinfer data speech``::

    DIR/speech.json  {"format": "coinfer-speech", "version": 1, "seed", "clips", "seconds",
                      "sample_rate", "samples" (per clip), "dtype" ("int16" | "float32"),
                      "snr_db": [low, high], "level_dbfs": [low, high],
                      "noise_kinds": [...] (what truth.noise_kind indexes),
                      "speech": {"synthesizer": "espeak-ng", "package", "version"},
                      "vad": {"model", "package", "version", "sha256", "threshold",
                              "min_speech_seconds", "window"},
                      "files": {"speech.npz": sha256 hex}}
    DIR/speech.npz   zip of .npy arrays (np.load(..., allow_pickle=False)), one row per clip:
       "waveforms"        int16 [N, S] (full scale 32768) or float32 [N, S] in [-1, 1]
       "truth.speech"     bool [N]      the clip holds speech
       "truth.start"      float32 [N]   seconds from the clip start to the first audible speech
       "truth.end"        float32 [N]   seconds to the end of the last audible speech
                                        (start and end are NaN for clips without speech)
       "truth.snr_db"     float32 [N]   speech power over [start, end] to the noise's mean power
                                        over the clip, in dB (NaN: no speech)
       "truth.level_dbfs" float32 [N]   RMS level of the whole clip (dB re full scale)
       "truth.noise_kind" int16 [N]     index into noise_kinds
       "truth.voice"      str [N]       eSpeak NG voice, e.g. "en-gb-scotland+f3" ("" if none)
       "truth.text"       str [N]       the sentences spoken, the last possibly cut off by the
                                        clip end ("" if none)
       "vad.probability"  float32 [N, W] Silero's speech probability per window of the stored
                                        waveform (W = ceil(S / window))
       "vad.fraction"     float32 [N]   share of windows over the threshold
       "vad.speech"       bool [N]      speech present: a run of windows over the threshold
                                        of at least min_speech_seconds

The npz is written with fixed zip timestamps, so the same options give the same bytes.
:meth:`SpeechSet.load` checks the format, version, sha256 and every array's dtype and shape,
and raises :class:`SpeechFormatError` naming the file on a mismatch.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.datadir import read_index, sha256_file
from coinfer.sdk.errors import CoinferError, ModelNotAvailableError
from coinfer.sdk.scenes import as_float

FORMAT = "coinfer-speech"
VERSION = 1
INDEX_FILE = "speech.json"
ARRAYS_FILE = "speech.npz"
NOISE_KINDS = ("pink", "brown", "hum", "traffic", "rain", "music", "knocks", "fan")
DTYPES = ("int16", "float32")

ESPEAK_PACKAGE = "espeakng_loader"
ESPEAK_HINT = "pip install espeakng-loader (or 'coinfer[models]')"
ESPEAK_RATE = 22050  # eSpeak NG's native output rate
# English accents of eSpeak NG and voice variants (male, female, Klatt-synthesis and
# character voices of espeak-ng-data/voices/!v); whispering is left out, since whether a
# whisper is "speech" is a question of the task.
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
            "klatt2", "klatt3", "croak", "Andy", "Annie", "belinda", "david", "edward", "iven", "john",
            "linda", "max", "michel", "steph")
# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)
_ESPEAK_LOCK = threading.Lock()


class SpeechFormatError(CoinferError):
    """A speech set on disk is missing, tampered with, or of another format or version."""


# ---------------------------------------------------------------------------------------
# Sentences.

WORDS: dict[str, tuple[str, ...]] = {
    "name": ("Anna", "Ben", "Clara", "David", "Elena", "Frank", "Grace", "Hugo", "Irene", "James",
             "Kate", "Liam", "Maria", "Noah", "Olivia", "Peter", "Rosa", "Sam", "Tara", "Victor"),
    "adjective": ("old", "small", "bright", "quiet", "heavy", "yellow", "broken", "empty", "warm",
                  "narrow", "strange", "clean", "tired", "busy", "early", "famous", "gentle", "wooden"),
    "noun": ("train", "window", "letter", "garden", "kettle", "bicycle", "teacher", "river", "market",
             "camera", "doctor", "ticket", "bridge", "computer", "parcel", "meeting", "kitchen",
             "report", "engine", "umbrella", "station", "neighbour", "library", "sandwich"),
    "place": ("the office", "the station", "the harbour", "the school", "the corner shop",
              "the hospital", "the airport", "the museum", "the village hall", "the car park"),
    "verb": ("opened", "carried", "painted", "repaired", "found", "lost", "moved", "checked",
             "cleaned", "ordered", "delivered", "borrowed", "counted", "followed", "watched"),
    "imperative": ("bring", "close", "check", "call", "send", "move", "clean", "open", "pack", "find"),
    "time": ("this morning", "last night", "on Monday", "after lunch", "before dinner", "at noon",
             "tomorrow evening", "next week", "in ten minutes", "on Friday afternoon"),
    "adverb": ("slowly", "carefully", "quickly", "quietly", "again", "finally", "suddenly", "twice"),
    "number": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
               "twelve", "fifteen", "twenty", "thirty"),
}
TEMPLATES = (
    "The {adjective} {noun} was {verb} {time}.",
    "{name} {verb} the {adjective} {noun} near {place}.",
    "Please {imperative} the {noun} before you leave {place}.",
    "Did you see the {adjective} {noun} at {place} {time}?",
    "We will meet at {number} o'clock outside {place}.",
    "{name} said that the {noun} was {adjective}.",
    "I think the {noun} {verb} {adverb}, but nobody noticed.",
    "There are {number} {nouns} waiting at {place}.",
    "Could you {imperative} the {adjective} {noun} {adverb}?",
    "{name} and {name} {verb} the {noun} {time}.",
    "If the {noun} is {adjective}, {imperative} it {adverb}.",
    "The {noun} from {place} arrived {number} minutes late.",
)


def _plural(noun: str) -> str:
    if noun.endswith(("ch", "sh", "s", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


WORDS["nouns"] = tuple(_plural(noun) for noun in WORDS["noun"])


def compose_sentence(rng: np.random.Generator) -> str:
    """A grammatical English sentence from :data:`TEMPLATES` and :data:`WORDS`."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    parts = template.split("{")
    words = [parts[0]]
    for part in parts[1:]:
        slot, rest = part.split("}", 1)
        choices = WORDS[slot]
        words.append(choices[int(rng.integers(len(choices)))] + rest)
    return "".join(words)


# ---------------------------------------------------------------------------------------
# eSpeak NG through ctypes.


@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice and its prosody: ``rate`` in words per minute, ``pitch`` and
    ``pitch_range`` on eSpeak's 0-100 scales, ``seed`` for its breath noise."""

    name: str = "en"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    seed: int = 1

    @staticmethod
    def draw(rng: np.random.Generator) -> Voice:
        accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
        variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
        return Voice(name=f"{accent}+{variant}" if variant else accent, rate=int(rng.integers(130, 211)),
                     pitch=int(rng.integers(25, 76)), pitch_range=int(rng.integers(30, 91)),
                     seed=int(rng.integers(1, 2**31 - 1)))


def espeak_paths() -> tuple[Path, Path]:
    """The eSpeak NG shared library and its data directory inside ``espeakng-loader``.

    Located with ``find_spec``, like the other packaged models, without importing anything.
    """
    spec = importlib.util.find_spec(ESPEAK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"speech synthesis needs the {ESPEAK_PACKAGE} package (eSpeak NG), which is not "
            f"installed; install it with: {ESPEAK_HINT}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    system = platform.system()
    name = "espeak-ng.dll" if system == "Windows" else \
        "libespeak-ng.dylib" if system == "Darwin" else "libespeak-ng.so"
    library, data = root / name, root / "espeak-ng-data"
    for path in (library, data / "phontab"):
        if not path.exists():
            raise ModelNotAvailableError(f"{path} is missing from the installed {ESPEAK_PACKAGE} "
                                         f"package; reinstall it with: {ESPEAK_HINT}")
    return library, data


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]


def _unload(lib: ctypes.CDLL) -> None:
    import _ctypes

    if sys.platform == "win32":
        _ctypes.FreeLibrary(lib._handle)
    else:
        _ctypes.dlclose(lib._handle)


def speak(text: str, voice: Voice = Voice()) -> np.ndarray:
    """``text`` spoken by eSpeak NG: int16 samples at :data:`ESPEAK_RATE`, silence included.

    The same text and voice give the same samples in any process (see the module docstring).
    """
    if not isinstance(text, str) or not text.strip():
        raise CoinferError(f"speak needs a non-blank string, got {text!r}")
    library, data = espeak_paths()
    chunks: list[np.ndarray] = []

    def collect(samples: Any, count: int, events: Any) -> int:
        if samples and count > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    callback = _SYNTH_CALLBACK(collect)
    encoded = text.encode("utf-8") + b"\0"
    with _ESPEAK_LOCK:
        lib = ctypes.CDLL(str(library))
        try:
            _declare(lib)
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(),
                                         _INITIALIZE_DONT_EXIT)
            if rate != ESPEAK_RATE:
                raise CoinferError(f"eSpeak NG failed to initialise from {data} (returned {rate})")
            lib.espeak_SetSynthCallback(callback)
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise CoinferError(f"eSpeak NG has no voice {voice.name!r}")
            for parameter, value in ((_RATE, voice.rate), (_PITCH, voice.pitch),
                                     (_RANGE, voice.pitch_range), (_VOLUME, 100)):
                lib.espeak_SetParameter(parameter, value, 0)
            lib.espeak_ng_SetRandSeed(voice.seed)
            status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Terminate()
        finally:
            _unload(lib)
    if status != 0:
        raise CoinferError(f"eSpeak NG failed to speak {text!r} with voice {voice.name!r} (status {status})")
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling of a clip that starts and ends in silence (FFT; the top 10% of
    the kept band is rolled off with a raised cosine to avoid ringing)."""
    x = np.asarray(waveform, np.float64)
    if source_rate == target_rate or len(x) == 0:
        return x.astype(np.float32)
    count = max(1, round(len(x) * target_rate / source_rate))
    spectrum = np.fft.rfft(x)
    out = np.zeros(count // 2 + 1, complex)
    keep = min(len(spectrum), len(out))
    out[:keep] = spectrum[:keep]
    freqs = np.fft.rfftfreq(count, 1.0 / target_rate)
    edge = min(source_rate, target_rate) / 2
    roll = np.clip((freqs - 0.9 * edge) / (0.1 * edge), 0.0, 1.0)
    out *= 0.5 * (1 + np.cos(np.pi * roll))
    return (np.fft.irfft(out, count) * (count / len(x))).astype(np.float32)


def active_extent(waveform: np.ndarray, sample_rate: int, floor_db: float = -40.0) -> tuple[int, int]:
    """[start, end) samples of the audible part: 10 ms frames within ``floor_db`` of the
    loudest frame; (0, 0) for silence."""
    hop = max(1, sample_rate // 100)
    x = np.asarray(waveform, np.float64)
    frames = -(-len(x) // hop)
    padded = np.zeros(frames * hop)
    padded[:len(x)] = x
    rms = np.sqrt(np.mean(padded.reshape(frames, hop) ** 2, axis=1))
    if frames == 0 or rms.max() <= 0:
        return 0, 0
    loud = np.flatnonzero(rms > rms.max() * 10 ** (floor_db / 20))
    return int(loud[0] * hop), int(min(len(x), (loud[-1] + 1) * hop))


# ---------------------------------------------------------------------------------------
# Speech.


@dataclass(frozen=True)
class Utterance:
    """Synthesised speech: ``waveform`` float32 at the requested rate, audible from its first
    sample, and what was said by whom."""

    waveform: np.ndarray
    text: str
    voice: Voice


def synthesize_utterance(rng: np.random.Generator, seconds: float, sample_rate: int = 16000) -> Utterance:
    """``seconds`` of speech: one voice reads composed sentences (pauses of 0.15-0.4 s between
    them) until the time is filled; the last is cut off with a 10 ms fade."""
    target = round(seconds * sample_rate)
    if target < 1:
        raise CoinferError(f"seconds must give at least one sample, got {seconds}")
    voice = Voice.draw(rng)
    parts: list[np.ndarray] = []
    sentences: list[str] = []
    total = 0
    while total < target:
        sentence = compose_sentence(rng)
        audio = resample(speak(sentence, voice) / 32768.0, ESPEAK_RATE, sample_rate)
        start, end = active_extent(audio, sample_rate)
        if end <= start:
            raise CoinferError(f"eSpeak NG produced no audible speech for {sentence!r} ({voice.name})")
        if parts:
            pause = np.zeros(round(rng.uniform(0.15, 0.4) * sample_rate), np.float32)
            parts.append(pause)
            total += len(pause)
        parts.append(audio[start:end])
        sentences.append(sentence)
        total += end - start
    waveform = np.concatenate(parts)[:target]
    fade = min(len(waveform), sample_rate // 100)
    waveform[len(waveform) - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return Utterance(waveform.astype(np.float32), " ".join(sentences), voice)


def synthesize_speech(rng: np.random.Generator, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """``seconds`` of real synthesised speech (float32), deterministic from ``rng``."""
    return synthesize_utterance(rng, seconds, sample_rate).waveform


# ---------------------------------------------------------------------------------------
# Ambient noise.


def _lowpass(freqs: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (freqs / cutoff) ** (2 * order))


def _highpass(freqs: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    ratio = cutoff / np.maximum(freqs, 1e-9)
    return np.where(freqs > 0, 1.0 / np.sqrt(1.0 + np.minimum(ratio, 1e6) ** (2 * order)), 0.0)


def _filtered(x: np.ndarray, sample_rate: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Zero-phase filtering by a magnitude response over frequency (circular, via the FFT)."""
    freqs = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    return np.fft.irfft(np.fft.rfft(x) * gain(freqs), len(x))


def _shaped(rng: np.random.Generator, n: int, sample_rate: int,
            gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Gaussian noise with the given magnitude response, unit RMS."""
    return _unit(_filtered(rng.standard_normal(n), sample_rate, gain))


def _unit(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0
    return x / rms if rms > 0 else x


def _pink(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    return _shaped(rng, n, sr, lambda f: _highpass(f, 20.0) / np.sqrt(np.maximum(f, 1.0)))


def _brown(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    return _shaped(rng, n, sr, lambda f: _highpass(f, 15.0) / np.maximum(f, 1.0))


def convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution, truncated to len(x)."""
    size = len(x) + len(kernel) - 1
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(kernel, size), size)[:len(x)]


def room_response(rng: np.random.Generator, sr: int, rt60: tuple[float, float] = (0.15, 0.6),
                  drr_db: tuple[float, float] = (0.0, 12.0)) -> np.ndarray:
    """A room impulse response: the direct path plus an exponentially decaying diffuse tail
    (reverberation time ``rt60``, direct-to-reverberant ratio ``drr_db``)."""
    decay = rng.uniform(*rt60)
    t = np.arange(round(decay * sr)) / sr
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / decay)
    tail *= 10 ** (-rng.uniform(*drr_db) / 20) / max(np.sqrt(np.sum(tail ** 2)), 1e-12)
    tail[0] = 1.0
    return tail


def _hum(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and harmonics (the second, magnetostriction, often loudest),
    a slowly wandering frequency, over a faint pink floor."""
    t = np.arange(n) / sr
    mains = float(rng.choice([50.0, 60.0])) * (1 + rng.normal(0, 0.002))
    freq = mains + 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    out = np.zeros(n)
    for k in range(1, 11):
        amplitude = rng.uniform(0.2, 1.0) / k ** rng.uniform(0.5, 1.5) * (2.0 if k == 2 else 1.0)
        out += amplitude * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return _unit(out) + 10 ** (-rng.uniform(15, 30) / 20) * _pink(rng, n, sr)


def _traffic(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Road traffic: a low rumble, plus passing vehicles (engine harmonics with a Doppler
    drop, tyre noise) rising and falling."""
    t = np.arange(n) / sr
    seconds = n / sr
    out = 0.6 * _shaped(rng, n, sr, lambda f: _highpass(f, 15.0) / np.maximum(f, 1.0)
                        * _lowpass(f, rng.uniform(150, 500)))
    vehicles = max(1, int(rng.poisson(rng.uniform(0.3, 1.5) * (seconds + 2))))
    for _ in range(vehicles):
        centre, width = rng.uniform(-1.0, seconds + 1.0), rng.uniform(0.4, 1.5)
        envelope = np.exp(-0.5 * ((t - centre) / width) ** 2) * rng.uniform(0.5, 2.0)
        engine = rng.uniform(25, 70) * (1 + 0.05 * np.tanh(-(t - centre) / width))
        phase = 2 * np.pi * np.cumsum(engine) / sr
        tone = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7))
        tyres = _shaped(rng, n, sr, lambda f: _highpass(f, 300.0) * _lowpass(f, rng.uniform(1000, 2500)))
        out += envelope * (0.5 * tone + rng.uniform(0.5, 1.2) * tyres)
    return out


def _rain(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Rain: a broadband hiss with slow swells and thousands of drop impacts (short damped
    resonances of a few kHz, random strengths)."""
    t = np.arange(n) / sr
    swell = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    hiss = swell * _shaped(rng, n, sr, lambda f: _highpass(f, 800.0) * _lowpass(f, rng.uniform(4000, 7000)))
    drops = np.zeros(n)
    kernel_t = np.arange(round(0.02 * sr)) / sr
    for _ in range(4):  # four kinds of surface the drops hit
        count = int(rng.poisson(rng.uniform(20, 150) * n / sr))
        train = np.zeros(n)
        np.add.at(train, rng.integers(0, n, count), rng.lognormal(0.0, 0.8, count))
        freq, decay = min(rng.uniform(1500, 6000), 0.45 * sr), rng.uniform(0.001, 0.004)
        kernel = np.exp(-kernel_t / decay) * (np.sin(2 * np.pi * freq * kernel_t)
                                              + 0.5 * rng.standard_normal(len(kernel_t)))
        drops += convolve(train, kernel)
    return rng.uniform(0.3, 0.8) * hiss + _unit(drops)


def _music(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Distant music through a wall: plucked notes of a pentatonic melody and a bass line at a
    steady tempo, low-passed and reverberant."""
    seconds = n / sr
    beat = 60.0 / rng.uniform(70, 140)
    scale = np.array([0, 2, 4, 7, 9] if rng.random() < 0.5 else [0, 3, 5, 7, 10])
    root = int(rng.integers(55, 68))  # MIDI note
    brightness = rng.uniform(1.0, 2.5)
    out = np.zeros(n)

    def pluck(start: float, midi: float, length: float, loudness: float) -> None:
        first = round(start * sr)
        begin, stop = max(0, first), min(n, first + round(length * sr))
        if begin >= stop:
            return
        t = (np.arange(begin, stop) - first) / sr
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t / rng.uniform(0.2, 0.6))
        tone = sum(np.sin(2 * np.pi * k * freq * t) / k ** brightness
                   for k in range(1, 9) if k * freq < 0.45 * sr)
        out[begin:stop] += loudness * envelope * tone

    degree, now = 5, -rng.uniform(0, beat)
    while now < seconds:
        length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        degree = int(np.clip(degree + rng.integers(-2, 3), 0, 9))
        pluck(now, root + 12 * (degree // 5) + scale[degree % 5], length + 0.3, rng.uniform(0.6, 1.0))
        now += length
    for bar in np.arange(-beat, seconds, 2 * beat):
        pluck(bar, root - 12 + scale[int(rng.integers(0, 3))], 2 * beat, 0.8)
    muffled = _filtered(out, sr, lambda f: _lowpass(f, rng.uniform(1200, 3500)))
    return convolve(muffled, room_response(rng, sr, (0.4, 0.9), (0.0, 6.0))) \
        + 10 ** (-rng.uniform(25, 40) / 20) * _unit(_pink(rng, n, sr)) * np.std(muffled)


def _knocks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Someone knocking at a door: one or two groups of 2-4 knocks (damped low resonances of
    the door panel and a click) in a quiet room."""
    seconds = n / sr
    out = np.zeros(n)
    kernel_t = np.arange(round(0.15 * sr)) / sr
    panel = [(rng.uniform(70, 300), rng.uniform(0.015, 0.05)) for _ in range(3)]
    for _ in range(int(rng.integers(1, 3))):
        now = rng.uniform(0, max(0.0, seconds - 0.5))
        for _ in range(int(rng.integers(2, 5))):
            first = int(now * sr)
            if first >= n:
                break
            knock = sum(np.exp(-kernel_t / decay) * np.sin(2 * np.pi * freq * kernel_t + rng.uniform(0, 6.3))
                        for freq, decay in panel)
            click = rng.standard_normal(len(kernel_t)) * np.exp(-kernel_t / 0.002)
            count = min(len(kernel_t), n - first)
            out[first:first + count] += rng.uniform(0.6, 1.0) * (knock + 0.5 * click)[:count]
            now += rng.uniform(0.12, 0.28)
    room = _shaped(rng, n, sr, lambda f: _highpass(f, 20.0) / np.sqrt(np.maximum(f, 1.0))
                   * _lowpass(f, 2000.0))
    return out + 10 ** (-rng.uniform(30, 45) / 20) * max(float(np.abs(out).max()), 1e-3) * room


def _fan(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A ventilation fan: low-passed broadband airflow, blade-pass harmonics and a faint
    motor whine."""
    t = np.arange(n) / sr
    air = _shaped(rng, n, sr, lambda f: _highpass(f, 30.0) / np.sqrt(np.maximum(f, 1.0))
                  * _lowpass(f, rng.uniform(800, 3000)))
    blade = rng.uniform(40, 160)
    tones = sum(rng.uniform(0.05, 0.3) / k * np.sin(2 * np.pi * k * blade * t + rng.uniform(0, 6.3))
                for k in range(1, 6))
    whine = rng.uniform(0.01, 0.05) * np.sin(2 * np.pi * rng.uniform(300, 1200) * t)
    return air * (1 + 0.1 * np.sin(2 * np.pi * blade * t)) + tones + whine


_NOISES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "pink": _pink, "brown": _brown, "hum": _hum, "traffic": _traffic, "rain": _rain,
    "music": _music, "knocks": _knocks, "fan": _fan,
}


def ambient_noise(rng: np.random.Generator, seconds: float, sample_rate: int, kind: str) -> np.ndarray:
    """``seconds`` of ambient noise of ``kind`` (one of :data:`NOISE_KINDS`), float64 at unit RMS."""
    if kind not in _NOISES:
        raise CoinferError(f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_KINDS)}")
    n = round(seconds * sample_rate)
    if n < 1:
        raise CoinferError(f"seconds must give at least one sample, got {seconds}")
    return _unit(_NOISES[kind](rng, n, sample_rate))


# ---------------------------------------------------------------------------------------
# Clips.


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"rain,music"`` -> ``("rain", "music")``."""
    return tuple(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))


@dataclass(frozen=True)
class SpeechOptions:
    """What to generate; every field is recorded in speech.json.

    ``snr_db`` and ``level_dbfs`` are ranges drawn uniformly per clip: the speech-to-noise
    ratio of speech clips, and the RMS level of every clip. ``speech_share`` bounds the
    share of a speech clip taken by the utterance (at least 0.3 s of it).
    """

    clips: int = 64
    seconds: float = 2.0
    seed: int = 0
    sample_rate: int = 16000
    snr_db: tuple[float, float] = (-5.0, 20.0)
    level_dbfs: tuple[float, float] = (-45.0, -15.0)
    speech_share: tuple[float, float] = (0.35, 0.85)
    kinds: tuple[str, ...] = NOISE_KINDS
    dtype: str = "int16"

    def __post_init__(self) -> None:
        from coinfer.edge.models.vad import WINDOWS

        object.__setattr__(self, "kinds", parse_kinds(self.kinds) if isinstance(self.kinds, str)
                           else tuple(dict.fromkeys(self.kinds)))
        for name in ("snr_db", "level_dbfs", "speech_share"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        errors = []
        for name, low, high in (("clips", 1, 1_000_000), ("seed", 0, 2**63 - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                errors.append(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.seconds, (int, float)) or not 0.3 <= self.seconds <= 60:
            errors.append(f"seconds must be in [0.3, 60] (room for 0.3 s of speech), got {self.seconds!r}")
        if self.sample_rate not in WINDOWS:
            errors.append(f"sample_rate must be one of {sorted(WINDOWS)} (what the VAD takes), "
                          f"got {self.sample_rate!r}")
        for name, least, most in (("snr_db", -30.0, 60.0), ("level_dbfs", -80.0, -3.0),
                                  ("speech_share", 0.0, 1.0)):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not least <= bounds[0] <= bounds[1] <= most:
                errors.append(f"{name} must be (low, high) with {least} <= low <= high <= {most}, "
                              f"got {bounds}")
        unknown = [kind for kind in self.kinds if kind not in NOISE_KINDS]
        if unknown or not self.kinds:
            errors.append(f"kinds must be a non-empty subset of {', '.join(NOISE_KINDS)}, got {self.kinds}")
        if self.dtype not in DTYPES:
            errors.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if errors:
            raise CoinferError("invalid speech options: " + "; ".join(errors))

    @property
    def samples(self) -> int:
        return round(self.seconds * self.sample_rate)


@dataclass(frozen=True)
class Clip:
    """One rendered clip (float64 waveform in [-1, 1]) and its generative truth."""

    waveform: np.ndarray
    speech: bool
    start: float  # seconds; NaN without speech
    end: float
    snr_db: float
    level_dbfs: float
    kind: str
    voice: str = ""
    text: str = ""


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """Clip ``index``'s random stream, independent of every other clip's."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1, index))))


def speech_labels(options: SpeechOptions) -> np.ndarray:
    """Which clips hold speech: a seeded permutation, ceil(N/2) of them."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(options.seed, spawn_key=(0,))))
    return rng.permutation(options.clips) < (options.clips + 1) // 2


def render_clip(rng: np.random.Generator, options: SpeechOptions, speech: bool) -> Clip:
    """One clip: ambient noise, with (``speech``) a reverberant utterance at a drawn SNR,
    brought to a drawn RMS level; peaks are kept under full scale.

    The SNR compares the speech's power while it lasts with the noise's mean power over the
    whole clip, so bursty noise (knocks, a passing car) keeps its own rhythm around the speech.
    """
    rate, n = options.sample_rate, options.samples
    kind = options.kinds[int(rng.integers(len(options.kinds)))]
    noise = ambient_noise(rng, options.seconds, rate, kind)
    level = rng.uniform(*options.level_dbfs)
    start = end = snr = float("nan")
    voice = text = ""
    mix = noise
    if speech:
        share = rng.uniform(*options.speech_share)
        length = min(n, max(round(0.3 * rate), round(share * n)))
        utterance = synthesize_utterance(rng, length / rate, rate)
        wet = convolve(np.r_[utterance.waveform, np.zeros(n)], room_response(rng, rate))
        offset = int(rng.integers(0, n - length + 1))
        placed = np.zeros(n)
        placed[offset:] = wet[:n - offset]
        first, last = active_extent(utterance.waveform, rate)
        first, last = offset + first, offset + last
        snr = rng.uniform(*options.snr_db)
        speech_power = float(np.mean(placed[first:last] ** 2))
        mix = placed + noise * np.sqrt(speech_power / 10 ** (snr / 10))  # the noise has unit power
        start, end = first / rate, last / rate
        voice, text = utterance.voice.name, utterance.text
    mix = _unit(mix) * 10 ** (level / 20)
    peak = float(np.abs(mix).max())
    if peak > 0.99:
        mix *= 0.99 / peak
    level = 20 * np.log10(max(float(np.sqrt(np.mean(mix ** 2))), 1e-12))
    return Clip(mix, speech, start, end, float(snr), float(level), kind, voice, text)


def quantise(waveform: np.ndarray, dtype: str) -> np.ndarray:
    """Float audio as stored: int16 at full scale 32768 (rounded, clipped) or float32."""
    if dtype == "int16":
        return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)
    return np.asarray(waveform, np.float32)


@dataclass
class SpeechSet:
    """Generated clips in memory (``arrays`` as in the npz) with their options and metadata;
    ``root`` is the directory it was loaded from or saved to, if any."""

    options: SpeechOptions
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.arrays["truth.speech"])

    @property
    def waveforms(self) -> np.ndarray:
        """float32 [N, S] in [-1, 1], as the VAD saw them."""
        return as_float(self.arrays["waveforms"])

    @property
    def speech(self) -> np.ndarray:
        return self.arrays["truth.speech"]

    @property
    def vad_speech(self) -> np.ndarray:
        return self.arrays["vad.speech"]

    @property
    def noise_kinds(self) -> list[str]:
        """Noise kind name per clip."""
        return [self.options.kinds[i] for i in self.arrays["truth.noise_kind"]]

    def rates(self, min_snr_db: float | None = None) -> dict[str, float]:
        """VAD detection rates against the truth: ``speech_detected`` (share of speech clips
        the VAD finds speech in, optionally only those at SNR >= ``min_snr_db``) and
        ``noise_flagged`` (share of noise-only clips it finds speech in)."""
        speech, found = self.speech, self.vad_speech
        chosen = speech if min_snr_db is None else speech & (self.arrays["truth.snr_db"] >= min_snr_db)
        return {
            "speech_detected": float(found[chosen].mean()) if chosen.any() else float("nan"),
            "noise_flagged": float(found[~speech].mean()) if (~speech).any() else float("nan"),
        }

    def index(self) -> dict[str, Any]:
        o = self.options
        return {
            "format": FORMAT, "version": VERSION, "seed": o.seed, "clips": o.clips, "seconds": o.seconds,
            "sample_rate": o.sample_rate, "samples": o.samples, "dtype": o.dtype,
            "snr_db": list(o.snr_db), "level_dbfs": list(o.level_dbfs), "speech_share": list(o.speech_share),
            "noise_kinds": list(o.kinds), **self.meta,
        }

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> SpeechSet:
        """Write speech.json and speech.npz atomically (all of it or nothing)."""
        from coinfer.sdk.fsutil import atomic_directory, atomic_write_json
        from coinfer.sdk.scenes import write_npz

        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise CoinferError(f"{directory} already exists; choose another --out or pass --overwrite")
        with atomic_directory(directory, overwrite=overwrite) as staging:
            write_npz(staging / ARRAYS_FILE, self.arrays)
            atomic_write_json(staging / INDEX_FILE,
                              {**self.index(), "files": {ARRAYS_FILE: sha256_file(staging / ARRAYS_FILE)}})
        self.root = directory
        return self

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SpeechSet:
        """Read a saved set, checking format, version, sha256 and every array."""
        root = Path(directory)
        index_path = root / INDEX_FILE
        index = read_index(index_path, FORMAT, VERSION, SpeechFormatError, "a speech set",
                           "generate one with `coinfer data speech`")
        path = root / ARRAYS_FILE
        expected = index.get("files", {}).get(ARRAYS_FILE)
        if not path.is_file():
            raise SpeechFormatError(f"{path} is missing")
        if sha256_file(path) != expected:
            raise SpeechFormatError(f"{path} does not match its sha256 in {INDEX_FILE}: the file was "
                                    "modified or truncated")
        try:
            options = SpeechOptions(
                clips=index["clips"], seconds=index["seconds"], seed=index["seed"],
                sample_rate=index["sample_rate"], snr_db=tuple(index["snr_db"]),
                level_dbfs=tuple(index["level_dbfs"]), speech_share=tuple(index["speech_share"]),
                kinds=tuple(index["noise_kinds"]), dtype=index["dtype"])
        except (KeyError, TypeError, CoinferError) as error:
            raise SpeechFormatError(f"{index_path} has invalid options: {error}") from error
        arrays = _load_arrays(path, options, index.get("vad", {}))
        meta: dict[str, Any] = {key: index[key] for key in ("speech", "vad") if key in index}
        return cls(options, arrays, meta, root)


def _load_arrays(path: Path, options: SpeechOptions, vad: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SpeechFormatError(f"{path} is not a readable npz file: {error}") from error
    count = options.clips
    windows = -(-options.samples // int(vad.get("window", 512)))
    expected: dict[str, tuple[str, tuple[int, ...]]] = {
        "waveforms": (options.dtype, (count, options.samples)),
        "truth.speech": ("bool", (count,)), "truth.start": ("float32", (count,)),
        "truth.end": ("float32", (count,)), "truth.snr_db": ("float32", (count,)),
        "truth.level_dbfs": ("float32", (count,)), "truth.noise_kind": ("int16", (count,)),
        "truth.voice": ("U", (count,)), "truth.text": ("U", (count,)),
        "vad.probability": ("float32", (count, windows)), "vad.fraction": ("float32", (count,)),
        "vad.speech": ("bool", (count,)),
    }
    for name, (dtype, shape) in expected.items():
        if name not in arrays:
            raise SpeechFormatError(f"{path} has no array {name!r}")
        array = arrays[name]
        kind_ok = array.dtype.kind == "U" if dtype == "U" else array.dtype == np.dtype(dtype)
        if not kind_ok or array.shape != shape:
            raise SpeechFormatError(f"{path}: array {name!r} is {array.dtype} {array.shape}, expected "
                                    f"{dtype} {shape}")
    kinds = arrays["truth.noise_kind"]
    if len(kinds) and (kinds.min() < 0 or kinds.max() >= len(options.kinds)):
        raise SpeechFormatError(f"{path}: truth.noise_kind indexes outside noise_kinds")
    return arrays


def package_version(name: str) -> str | None:
    """The installed version of a distribution (None if absent), recorded with generated sets."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)
    return None


def speech_clips(options: SpeechOptions, *, progress: bool = False, detector: Any = None,
                 batch: int = 64) -> SpeechSet:
    """Render ``options.clips`` clips and run the real VAD on each, as stored (quantised).

    ``detector`` is a :class:`coinfer.edge.models.vad.SpeechDetector` at the options' sample
    rate (default: a new one with default settings). Needs eSpeak NG and Silero VAD.
    """
    from tqdm import tqdm

    from coinfer.edge.models.vad import SpeechDetector, SpeechDetectorOptions
    detector = detector or SpeechDetector(SpeechDetectorOptions(sample_rate=options.sample_rate))
    if detector.options.sample_rate != options.sample_rate:
        raise CoinferError(f"the detector runs at {detector.options.sample_rate} Hz but the clips are "
                           f"{options.sample_rate} Hz")
    espeak_paths()  # fail before any work if the synthesiser is missing
    labels = speech_labels(options)
    clips: list[Clip] = []
    stored: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    with tqdm(total=options.clips, unit="clip", disable=not progress, desc="speech clips") as bar:
        for first in range(0, options.clips, batch):
            chunk = [render_clip(clip_rng(options.seed, i), options, bool(labels[i]))
                     for i in range(first, min(options.clips, first + batch))]
            waveforms = np.stack([quantise(clip.waveform, options.dtype) for clip in chunk])
            probabilities.append(detector.probabilities(as_float(waveforms)).reshape(len(chunk), -1))
            clips.extend(chunk)
            stored.append(waveforms)
            bar.update(len(chunk))
    probability = np.concatenate(probabilities)
    arrays = {
        "waveforms": np.concatenate(stored),
        "truth.speech": np.array([c.speech for c in clips], bool),
        "truth.start": np.array([c.start for c in clips], np.float32),
        "truth.end": np.array([c.end for c in clips], np.float32),
        "truth.snr_db": np.array([c.snr_db for c in clips], np.float32),
        "truth.level_dbfs": np.array([c.level_dbfs for c in clips], np.float32),
        "truth.noise_kind": np.array([options.kinds.index(c.kind) for c in clips], np.int16),
        "truth.voice": np.array([c.voice for c in clips], str),
        "truth.text": np.array([c.text for c in clips], str),
        "vad.probability": probability,
        "vad.fraction": detector.fraction(probability),
        "vad.speech": detector.present(probability),
    }
    meta = {
        "speech": {"synthesizer": "espeak-ng", "package": "espeakng-loader",
                   "version": package_version("espeakng-loader")},
        "vad": {"model": detector.path.name, "package": "silero-vad",
                "version": package_version("silero-vad"),
                "sha256": sha256_file(detector.path), "threshold": detector.options.threshold,
                "min_speech_seconds": detector.options.min_speech_seconds,
                "window": detector.window()},
    }
    return SpeechSet(options, arrays, meta)


def generate_speech(out_dir: str | os.PathLike, options: SpeechOptions, *, progress: bool = True,
                    overwrite: bool = False) -> SpeechSet:
    """Generate the set and write it to ``out_dir`` (atomically), refusing to replace an
    existing directory unless ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CoinferError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    return speech_clips(options, progress=progress).save(out_dir, overwrite=overwrite)


# ---------------------------------------------------------------------------------------
# ``coinfer data speech``.


def summary(speech_set: SpeechSet, seconds: float | None = None) -> dict[str, Any]:
    """The metrics ``coinfer data speech`` prints: sizes and VAD rates, overall, at SNR >= 5 dB,
    and per noise kind (share of noise-only clips flagged)."""
    speech = speech_set.speech
    metrics: dict[str, Any] = {"directory": str(speech_set.root) if speech_set.root else None,
                               "clips (speech / noise)": f"{int(speech.sum())} / {int((~speech).sum())}"}
    if seconds is not None:
        metrics["seconds"] = round(seconds, 2)
    if speech_set.root is not None:
        metrics["MB"] = round((speech_set.root / ARRAYS_FILE).stat().st_size / 1e6, 3)
    overall, moderate = speech_set.rates(), speech_set.rates(min_snr_db=5.0)

    def rounded(value: float) -> float | None:
        return None if np.isnan(value) else round(value, 3)

    metrics["speech clips detected"] = rounded(overall["speech_detected"])
    metrics["speech clips detected, SNR >= 5 dB"] = rounded(moderate["speech_detected"])
    metrics["noise clips flagged"] = rounded(overall["noise_flagged"])
    kinds = np.array(speech_set.noise_kinds)
    for kind in speech_set.options.kinds:
        chosen = (kinds == kind) & ~speech
        if chosen.any():
            metrics[f"noise flagged: {kind}"] = round(float(speech_set.vad_speech[chosen].mean()), 3)
    return metrics

