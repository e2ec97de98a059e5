"""What a filter's input looks like, and the checks that keep bad inputs out.

InFi is modality-agnostic: the same skip/reuse machinery sits on top of a feature network
chosen by the input's modality (paper sec. 3.3):

- ``text``: token ids, (length,) int32, through Embedding -> pooled -> Dense;
- ``image``: (height, width, channels) float32 in [0, 1], two residual blocks;
- ``video``: (frames, height, width, channels), one residual stack per frame;
- ``audio``: a log-mel spectrogram (frames, mels) from :func:`log_mel_spectrogram`,
  through the image network (the waveform is converted in numpy, so a device needs no
  signal-processing library);
- ``vector``: any fixed-size float array (sensor windows, a CNN's feature map), through
  two dense layers.

Example::

    spec = ModalitySpec.image(90, 160)
    batch = spec.check(frames)         # float32 (n, 90, 160, 3), or a clear error
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError

MODALITIES = ("text", "image", "video", "audio", "vector")


class InputError(CoinferError, ValueError):
    """An input does not match the filter's modality, shape or dtype, or is not finite."""


@dataclass(frozen=True)
class ModalitySpec:
    """The modality and per-sample shape of a filter's input (the batch axis excluded)."""

    kind: str
    shape: tuple[int, ...]
    vocabulary: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODALITIES:
            raise InputError(f"unknown modality {self.kind!r}; choose one of {', '.join(MODALITIES)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < 1 for d in self.shape):
            raise InputError(f"{self.kind} shape must be positive, got {self.shape}")
        rank = {"text": 1, "image": 3, "video": 4, "audio": 2}.get(self.kind)
        if rank is not None and len(self.shape) != rank:
            raise InputError(f"a {self.kind} input has {rank} axes, got shape {self.shape}")
        if self.kind == "vector" and not self.shape:
            raise InputError("a vector input needs at least one axis")
        if self.kind == "text" and self.vocabulary < 2:
            raise InputError(f"a text input needs a vocabulary of >= 2 tokens, got {self.vocabulary}")

    @classmethod
    def text(cls, length: int, vocabulary: int) -> ModalitySpec:
        return cls("text", (length,), vocabulary)

    @classmethod
    def image(cls, height: int, width: int, channels: int = 3) -> ModalitySpec:
        return cls("image", (height, width, channels))

    @classmethod
    def video(cls, frames: int, height: int, width: int, channels: int = 3) -> ModalitySpec:
        return cls("video", (frames, height, width, channels))

    @classmethod
    def audio(cls, frames: int, mels: int) -> ModalitySpec:
        return cls("audio", (frames, mels))

    @classmethod
    def vector(cls, *shape: int) -> ModalitySpec:
        return cls("vector", tuple(shape))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int32) if self.kind == "text" else np.dtype(np.float32)

    def check(self, inputs: Any) -> np.ndarray:
        """A batch of inputs as a contiguous array of :attr:`dtype`, or an :class:`InputError`."""
        array = np.asarray(inputs)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise InputError(f"{self.kind} inputs must be numeric arrays, got dtype {array.dtype}")
        if array.shape[1:] != self.shape:
            want = ", ".join(str(d) for d in self.shape)
            raise InputError(f"{self.kind} inputs must have shape (batch, {want}), got {array.shape}")
        if self.kind == "text":
            if array.dtype.kind == "f":
                raise InputError("text inputs are token ids: integers, not floats")
            if array.size and (array.min() < 0 or array.max() >= self.vocabulary):
                raise InputError(f"token ids must lie in [0, {self.vocabulary}), got "
                                 f"[{array.min()}, {array.max()}]")
        elif not np.all(np.isfinite(array)):
            raise InputError(f"{self.kind} inputs contain NaN or infinite values")
        return np.ascontiguousarray(array, dtype=self.dtype)

    def zeros(self, batch: int = 1) -> np.ndarray:
        """The all-zero input that skipping compares against (paper: skip = reuse of h(0))."""
        return np.zeros((batch, *self.shape), dtype=self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape), "vocabulary": self.vocabulary}

    @classmethod
    def from_dict(cls, data: Any) -> ModalitySpec:
        try:
            return cls(str(data["kind"]), tuple(data["shape"]), int(data.get("vocabulary", 0)))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"bad modality description {data!r}: {error}") from error


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int = 16000, *, frame: int = 400,
                        hop: int = 160, mels: int = 40) -> np.ndarray:
    """Log-mel features of one waveform or a batch, shape (..., frames, mels), in numpy.

    25 ms windows every 10 ms at 16 kHz (the usual speech front end). Values are scaled
    to roughly [0, 1] so the image network sees the same range as pixels.
    """
    wave = np.asarray(waveform, dtype=np.float32)
    if wave.ndim not in (1, 2):
        raise InputError(f"waveform must be (samples,) or (batch, samples), got shape {wave.shape}")
    if wave.shape[-1] < frame:
        raise InputError(f"waveform has {wave.shape[-1]} samples, fewer than one {frame}-sample window")
    if not np.all(np.isfinite(wave)):
        raise InputError("waveform contains NaN or infinite values")
    count = 1 + (wave.shape[-1] - frame) // hop
    index = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
    frames = wave[..., index] * np.hanning(frame).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    features = np.log(power @ _mel_filters(sample_rate, frame, mels) + 1e-6)
    return np.clip((features + 14.0) / 20.0, 0.0, 1.0).astype(np.float32)


def _mel_filters(sample_rate: int, frame: int, mels: int) -> np.ndarray:
    """Triangular mel filter bank, (frame // 2 + 1, mels)."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(0.0, to_mel(np.array(sample_rate / 2.0)), mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(frame, 1.0 / sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).T.astype(np.float32)
