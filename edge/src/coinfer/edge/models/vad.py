"""Silero VAD, the real voice-activity DNN shipped by the ``silero-vad`` package, on onnxruntime.

The model scores one window of audio at a time (512 samples at 16 kHz, 256 at 8 kHz) and
carries a recurrent state from window to window, so a clip's probabilities depend on
everything before them. Each call to the ONNX graph takes ``input`` [N, context + window]
float32 (the last ``context`` samples of the previous window, zeros before the first, then
the new window), ``state`` [2, N, 128] float32 and ``sr`` int64, and returns the speech
probability [N, 1] and the new state: N clips of equal length run as one batch, window
after window. Checked by inspecting ``silero_vad.onnx`` (silero-vad 6.2.3) with
onnxruntime.

``import silero_vad`` would import torch, so the file is located with ``find_spec`` and
only onnxruntime runs it; audio files are decoded with PyAV (:func:`read_audio`) rather
than the package's torchaudio reader. Only numpy is imported at module import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError, InputNotFoundError
from coinfer.sdk.packaged import packaged_file

PACKAGE = "silero_vad"
MODEL_FILE = "silero_vad.onnx"
VERSION = "6.2.3"
INSTALL_HINT = f"pip install --no-deps silero-vad=={VERSION}"
#: sample rate -> (window, context) in samples, as the model was trained
WINDOWS: dict[int, tuple[int, int]] = {16000: (512, 64), 8000: (256, 32)}
STATE_SIZE = 128
# Float audio lives in [-1, 1]; a peak far beyond it means unscaled integer samples, on
# which the model answers nonsense without complaint. Mild overshoot (clipped mixes) is fine.
MAX_PEAK = 1.5


class AudioInputError(CoinferError, ValueError):
    """A waveform or sample rate the VAD cannot take; the message says what was wrong."""


def model_path() -> Path:
    """Path of ``silero_vad.onnx`` inside the installed ``silero-vad`` package.

    ``find_spec`` locates the package without importing it: its ``__init__`` imports torch.
    """
    return packaged_file(PACKAGE, f"data/{MODEL_FILE}", needed_by="the speech detector",
                         install_hint=INSTALL_HINT)


@dataclass(frozen=True)
class SpeechDetectorOptions:
    """``threshold`` on a window's probability (0.5, Silero's default); ``min_speech_seconds``
    is the shortest run of speech windows that counts as speech being present (0.25 s, the
    minimum speech duration of Silero's own segmenter), so a lone window fired by a door
    knock does not; ``threads`` for onnxruntime (1: the model is tiny and a batch of clips
    is already parallel work)."""

    threshold: float = 0.5
    sample_rate: int = 16000
    min_speech_seconds: float = 0.25
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise AudioInputError(f"threshold must be in (0, 1), got {self.threshold!r}")
        check_sample_rate(self.sample_rate)
        if not 0.0 <= self.min_speech_seconds <= 60.0:
            raise AudioInputError(f"min_speech_seconds must be in [0, 60], got {self.min_speech_seconds!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise AudioInputError(f"threads must be a positive integer, got {self.threads!r}")


def check_sample_rate(sample_rate: Any) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or int(sample_rate) not in WINDOWS:
        raise AudioInputError(f"sample rate must be one of {sorted(WINDOWS)} Hz (what Silero VAD was "
                              f"trained on; resample first, e.g. with read_audio), got {sample_rate!r}")
    return int(sample_rate)


def check_waveform(waveform: Any) -> np.ndarray:
    """The waveform as float32 [clips, samples]; raises AudioInputError naming the problem."""
    array = np.asarray(waveform)
    if array.dtype.kind != "f":
        hint = " (scale int16 samples by 1/32768)" if array.dtype.kind in "iu" else ""
        raise AudioInputError(f"waveform must be a float array with samples in [-1, 1], got dtype "
                              f"{array.dtype}{hint}")
    if array.ndim not in (1, 2):
        raise AudioInputError(f"waveform must be 1-D [samples] or 2-D [clips, samples], got shape "
                              f"{array.shape}")
    if array.size == 0:
        raise AudioInputError(f"waveform is empty: shape {array.shape}")
    finite = np.isfinite(array)
    if not finite.all():
        first = np.unravel_index(int(np.argmin(finite)), array.shape)
        raise AudioInputError(f"waveform has {int(array.size - finite.sum())} non-finite samples "
                              f"(NaN or inf), the first at index {tuple(int(i) for i in first)}")
    peak = float(np.abs(array).max())
    if peak > MAX_PEAK:
        raise AudioInputError(f"waveform peaks at {peak:.6g}, but float audio must lie in [-1, 1]; "
                              "scale integer samples first (int16: divide by 32768)")
    return np.atleast_2d(array).astype(np.float32, copy=False)


class SpeechDetector:
    """Speech probability per window, the speech fraction of a clip, and a presence decision.

    A detector holds one onnxruntime session; each call starts from a fresh recurrent
    state, so calls are independent of each other. Not thread-safe: use one per thread.
    """

    def __init__(self, options: SpeechDetectorOptions | None = None, path: str | os.PathLike | None = None):
        self.options = options or SpeechDetectorOptions()
        self.path = Path(path) if path is not None else model_path()
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = self.options.threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3  # the graph's unused initialisers are noise
        self.session = ort.InferenceSession(str(self.path), session_options,
                                            providers=["CPUExecutionProvider"])

    def window(self, sample_rate: int | None = None) -> int:
        """Samples per scored window at ``sample_rate`` (default: the options' rate)."""
        return WINDOWS[check_sample_rate(sample_rate or self.options.sample_rate)][0]

    def probabilities(self, waveform: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Speech probability per window: float32 [W] for a clip, [N, W] for N clips.

        W = ceil(samples / window); the last window is padded with zeros.
        """
        rate = check_sample_rate(sample_rate if sample_rate is not None else self.options.sample_rate)
        clips = check_waveform(waveform)
        window, context = WINDOWS[rate]
        count, samples = clips.shape
        windows = -(-samples // window)
        padded = np.zeros((count, context + windows * window), np.float32)
        padded[:, context:context + samples] = clips
        state = np.zeros((2, count, STATE_SIZE), np.float32)
        rate_input = np.array(rate, np.int64)
        out = np.empty((count, windows), np.float32)
        for w in range(windows):
            chunk = padded[:, w * window:(w + 1) * window + context]
            probability, state = self.session.run(None, {"input": chunk, "state": state, "sr": rate_input})
            out[:, w] = probability[:, 0]
        return out[0] if np.ndim(waveform) == 1 else out

    def fraction(self, probabilities: np.ndarray) -> np.ndarray:
        """Share of windows over the threshold (over the last axis)."""
        return np.mean(np.asarray(probabilities) > self.options.threshold, axis=-1).astype(np.float32)

    def present(self, probabilities: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Whether some run of consecutive windows over the threshold lasts at least
        ``min_speech_seconds`` (over the last axis)."""
        rate = check_sample_rate(sample_rate if sample_rate is not None else self.options.sample_rate)
        needed = max(1, int(np.ceil(self.options.min_speech_seconds * rate / WINDOWS[rate][0] - 1e-9)))
        return longest_run(np.asarray(probabilities) > self.options.threshold) >= needed

    def __call__(self, waveform: np.ndarray, sample_rate: int | None = None) -> float | np.ndarray:
        """The speech fraction: share of the clip's windows whose probability exceeds the
        threshold (a float for one clip, float32 [N] for N clips).

        A fraction rather than the maximum probability: it says how much of the clip is
        speech, and one spurious window moves it by only 1/W.
        """
        fraction = self.fraction(self.probabilities(waveform, sample_rate))
        return float(fraction) if fraction.ndim == 0 else fraction

    def speech_present(self, waveform: np.ndarray, sample_rate: int | None = None) -> bool | np.ndarray:
        """Whether the clip holds speech (see :meth:`present`): a bool, or bool [N] for N clips."""
        present = self.present(self.probabilities(waveform, sample_rate), sample_rate)
        return bool(present) if present.ndim == 0 else present


def longest_run(flags: np.ndarray) -> np.ndarray:
    """Length of the longest run of True along the last axis (int64, one per row)."""
    flags = np.asarray(flags, bool)
    rows = flags.reshape(-1, flags.shape[-1])
    edges = np.zeros((rows.shape[0], rows.shape[1] + 2), np.int8)
    edges[:, 1:-1] = rows
    steps = np.diff(edges, axis=1)
    longest = np.zeros(rows.shape[0], np.int64)
    for r in range(rows.shape[0]):
        starts, ends = np.flatnonzero(steps[r] == 1), np.flatnonzero(steps[r] == -1)
        if len(starts):
            longest[r] = int((ends - starts).max())
    return longest.reshape(flags.shape[:-1])


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode an audio file's first audio stream with PyAV as mono float32 at ``sample_rate``
    (the mean of the channels).

    PyAV's bundled FFmpeg reads every common container and codec and resamples (swresample),
    so neither torchaudio nor soundfile is needed.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist or is not a file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{path} has no audio stream")
            stream = container.streams.audio[0]
            # Planar float in the source layout, averaged here: FFmpeg's own downmix adds the
            # channels at -3 dB each, which lifts a stereo recording of one source by 3 dB.
            resampler = av.AudioResampler(format="fltp", rate=int(sample_rate))
            parts: list[np.ndarray] = []
            for frame in container.decode(stream):
                parts.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(frame))
            parts.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
    except av.FFmpegError as error:
        raise AudioInputError(f"{path}: not a readable audio file: {error}") from error
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
