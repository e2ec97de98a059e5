"""The prior systems InFi is compared against, re-implemented from their published descriptions.

The InFi benchmark (dissertation Tables 3.2 and 3.3) needs each baseline's filter rate at
90% accuracy on the same data as the learned filters, so every baseline here produces the
same curves as InFi's own filters:

skip, through :class:`SkipBaseline` (``scores``: higher = more likely redundant, so
``FilterCurve.from_scores(scores, redundant)`` gives the filter-rate/accuracy curve)

- :class:`ReductoSkip`: Reducto (Li et al., SIGCOMM'20), a threshold on one low-level
  frame-difference feature (pixel, edge, corner, area) between consecutive video frames;
- :class:`LowLevelKNN`: the paper's "low-level" baseline, a KNN vote over hand-made
  features (image thumbnails + colour histograms, MFCC statistics, hashed bag of tokens,
  raw or randomly projected vectors);
- :class:`FilterForwardSkip`: FilterForward (Canel et al., MLSys'19), a frozen pretrained
  feature extractor + a small trained micro-classifier;

reuse

- :class:`FoggyCacheReuse` and :func:`foggycache_curve`: FoggyCache (Guo et al.,
  MobiCom'18), SIFT / MFCC keys, p-stable LSH candidates, L2 KNN with a homogeneity check,
  replayed over a stream like :func:`~coinfer.sdk.infi.reuse.reuse_curve`.

Inputs are batches: images (n, h, w, c) float in [0, 1] with c = 1 or 3; video clips
(n, frames, h, w, c); audio waveforms (n, samples) at 16 kHz; text token ids (n, length)
integers, 0 = padding; vectors (n, ...) float. OpenCV and scikit-learn are imported only
inside the functions that use them.

Example::

    reducto = ReductoSkip().fit(train_frames, train_redundant)
    curve = FilterCurve.from_scores(reducto.scores(test_frames), test_redundant)
    curve.rate_at(0.9)
    foggycache_curve(test_images, counts, same=int.__eq__, key=int, modality="image",
                     train_inputs=train_images, train_outputs=train_counts).rate_at(0.9)
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from coinfer.sdk.frame_change import pixel_change
from coinfer.sdk.infi.curves import FilterCurve, optimal_rate
from coinfer.sdk.infi.modalities import MODALITIES, InputError, log_mel_spectrogram
from coinfer.sdk.infi.reuse import REPLACEMENTS, ReuseCurve, repeated_fraction

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "FRAME_FEATURES",
    "SKIP_BASELINES",
    "FilterForwardSkip",
    "FoggyCacheReuse",
    "FoggyOptions",
    "LowLevelKNN",
    "ReductoSkip",
    "SkipBaseline",
    "foggycache_curve",
    "frame_differences",
    "image_features",
    "mfcc_features",
    "sift_features",
    "sift_vocabulary",
    "token_histogram",
]

FRAME_FEATURES = ("pixel", "edge", "corner", "area")
_SHAPES = {"image": "(batch, height, width, channels)", "video": "(batch, frames, height, width, channels)",
           "audio": "(batch, samples)", "text": "(batch, length)", "vector": "(batch, ...)"}
_RANKS = {"image": 4, "video": 5, "audio": 2, "text": 2}
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHUNK = 256
_MAX_DESCRIPTORS = 20000


# ----------------------------------------------------------------------------- input checks

def _check_batch(inputs: Any, modality: str) -> np.ndarray:
    """A batch as float32 (int64 token ids for text), or an :class:`InputError` naming the problem."""
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    array = np.asarray(inputs)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise InputError(f"{modality} inputs must be a numeric array, got dtype {array.dtype}")
    rank = _RANKS.get(modality)
    if (rank is not None and array.ndim != rank) or array.ndim < 2:
        raise InputError(f"{modality} inputs must have shape {_SHAPES[modality]}, got {array.shape}")
    if array.shape[0] == 0:
        raise InputError(f"the batch of {modality} inputs is empty")
    if modality == "text":
        if array.dtype.kind == "f":
            raise InputError("text inputs are token ids: integers, not floats")
        if array.size and array.min() < 0:
            raise InputError(f"token ids must be >= 0 (0 = padding), got {array.min()}")
        return array.astype(np.int64)
    if modality in ("image", "video") and array.shape[-1] not in (1, 3):
        raise InputError(f"{modality} inputs need 1 or 3 channels on the last axis, got shape {array.shape}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{modality} inputs contain NaN or infinite values")
    if modality in ("image", "video") and (array.min() < 0.0 or array.max() > 1.0):
        raise InputError(f"{modality} pixels must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return array


def _check_redundant(redundant: Any, count: int) -> np.ndarray:
    labels = np.asarray(redundant)
    if labels.ndim != 1 or labels.size != count:
        raise InputError(f"need one redundancy label per input: {count} inputs, labels of shape "
                         f"{labels.shape}")
    if labels.dtype.kind not in "biu" or not np.isin(labels, (0, 1)).all():
        raise InputError("redundancy labels must be booleans (True = the model's output was useless)")
    return labels.astype(bool)


def _check_features(features: Any, what: str) -> np.ndarray:
    array = np.asarray(features)
    if array.dtype == object or array.dtype.kind not in "biuf" or array.ndim < 2 or array.shape[0] == 0:
        raise InputError(f"{what} must be a non-empty numeric array (batch, ...), got "
                         f"{array.dtype} of shape {array.shape}")
    array = array.reshape(array.shape[0], -1).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{what} contain NaN or infinite values")
    return array


# ----------------------------------------------------------------------------- feature functions

def _grey(images: np.ndarray) -> np.ndarray:
    return images @ _GREY if images.shape[-1] == 3 else images[..., 0]


def _pooling(length: int, size: int) -> np.ndarray:
    """(size, length) matrix averaging ``length`` pixels into ``size`` equal bins."""
    bins = np.arange(length) * size // length
    matrix = (bins[None, :] == np.arange(size)[:, None]).astype(np.float32)
    return matrix / matrix.sum(axis=1, keepdims=True)


def image_features(images: np.ndarray, *, size: int = 8, bins: int = 8) -> np.ndarray:
    """Grey ``size`` x ``size`` thumbnail (area average) + a ``bins``-bin histogram per channel.

    The low-level image description of the InFi paper's KNN baseline: where things are
    (thumbnail) and what colours are present (histograms), (n, size² + bins·channels).
    """
    images = _check_batch(images, "image")
    n, height, width, channels = images.shape
    if height < size or width < size:
        raise InputError(f"images of {height}x{width} are smaller than the {size}x{size} thumbnail")
    thumbs = _pooling(height, size) @ _grey(images) @ _pooling(width, size).T
    index = np.minimum((images * bins).astype(np.int64), bins - 1)
    index += bins * (np.arange(n)[:, None] * channels + np.arange(channels)[None, :])[:, None, None, :]
    histograms = np.bincount(index.ravel(), minlength=n * channels * bins).reshape(n, channels * bins)
    return np.concatenate([thumbs.reshape(n, -1), histograms / (height * width)], axis=1).astype(np.float32)


def _dct_matrix(inputs: int, outputs: int) -> np.ndarray:
    """Orthonormal DCT-II, (inputs, outputs): log-mel energies -> cepstral coefficients."""
    grid = np.pi / inputs * (np.arange(inputs)[:, None] + 0.5) * np.arange(outputs)[None, :]
    matrix = np.sqrt(2.0 / inputs) * np.cos(grid)
    matrix[:, 0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


def mfcc_features(waveforms: np.ndarray, sample_rate: int = 16000, *, coefficients: int = 13) -> np.ndarray:
    """Mean and standard deviation over time of the MFCCs, (n, 2·coefficients).

    MFCCs are the DCT of :func:`~coinfer.sdk.infi.modalities.log_mel_spectrogram` (40 mels,
    25 ms windows), the audio key FoggyCache and the low-level baseline use; in numpy.
    """
    waves = _check_batch(waveforms, "audio")
    rows = []
    for start in range(0, len(waves), _CHUNK):
        mel = log_mel_spectrogram(waves[start:start + _CHUNK], sample_rate)
        cepstra = mel @ _dct_matrix(mel.shape[-1], coefficients)
        rows.append(np.concatenate([cepstra.mean(axis=1), cepstra.std(axis=1)], axis=1))
    return np.concatenate(rows).astype(np.float32)


def token_histogram(tokens: np.ndarray, *, bins: int = 256) -> np.ndarray:
    """Bag of token ids hashed into ``bins`` bins (Fibonacci hashing), as frequencies; 0 = padding.

    The paper's bag-of-words text baseline without a vocabulary: any tokenizer's ids fit.
    """
    ids = _check_batch(tokens, "text")
    n = ids.shape[0]
    hashed = (ids.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    bucket = (hashed * np.uint64(bins)) >> np.uint64(32)
    slots = (bucket.astype(np.int64) + bins * np.arange(n)[:, None])[ids > 0]
    counts = np.bincount(slots, minlength=n * bins).reshape(n, bins).astype(np.float32)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def frame_differences(frames: np.ndarray, features: Sequence[str] = FRAME_FEATURES, *,
                      area_threshold: float = 0.1) -> dict[str, np.ndarray]:
    """Reducto's low-level change of each frame against the previous one, per feature, (n,) each.

    - ``pixel``: mean absolute grey-level difference (:func:`~coinfer.sdk.frame_change.pixel_change`,
      the measure MLink's reuse gate uses);
    - ``edge``: fraction of pixels whose Canny edge map (thresholds 100/200) changed;
    - ``corner``: fraction of pixels whose Harris corner map (response above 1% of the
      frame's strongest corner and above 1e-4, so flat frames have none) changed;
    - ``area``: fraction of pixels whose grey level changed by more than ``area_threshold``.

    The first frame has no previous one: its value is +inf (always "changed").
    """
    unknown = sorted(set(features) - set(FRAME_FEATURES))
    if unknown or not features:
        raise InputError(f"frame features must be a non-empty subset of {FRAME_FEATURES}, "
                         f"got {tuple(features)}")
    grey = _grey(_check_batch(frames, "image"))
    maps: dict[str, Callable[[], np.ndarray]] = {
        "pixel": lambda: pixel_change(grey[1:], grey[:-1]),
        "area": lambda: (np.abs(np.diff(grey, axis=0)) > area_threshold).mean(axis=(1, 2)),
        "edge": lambda: _map_changes(_edge_maps(grey)),
        "corner": lambda: _map_changes(_corner_maps(grey)),
    }
    return {name: np.r_[np.inf, maps[name]()].astype(np.float64) for name in features}


def _map_changes(maps: np.ndarray) -> np.ndarray:
    return (maps[1:] != maps[:-1]).mean(axis=(1, 2))


def _edge_maps(grey: np.ndarray) -> np.ndarray:
    import cv2

    pixels = np.round(grey * 255.0).astype(np.uint8)
    return np.stack([cv2.Canny(frame, 100, 200) > 0 for frame in pixels])


def _corner_maps(grey: np.ndarray) -> np.ndarray:
    import cv2

    maps = []
    for frame in grey:
        response = cv2.cornerHarris(np.ascontiguousarray(frame, dtype=np.float32), 2, 3, 0.04)
        maps.append(response > max(0.01 * float(response.max()), 1e-4))
    return np.stack(maps)


def _sift_descriptors(images: np.ndarray) -> list[np.ndarray]:
    """L2-normalised SIFT descriptors per image, (keypoints, 128) each (possibly 0 rows)."""
    import cv2

    sift = cv2.SIFT.create()
    out = []
    for frame in np.round(_grey(images) * 255.0).astype(np.uint8):
        _, descriptors = sift.detectAndCompute(frame, None)
        descriptors = np.zeros((0, 128), np.float32) if descriptors is None else descriptors
        out.append(descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-6))
    return out


def sift_vocabulary(images: np.ndarray, words: int = 32, *, seed: int = 0,
                    max_descriptors: int = _MAX_DESCRIPTORS) -> np.ndarray | None:
    """Visual words (words, 128): k-means centres of the training images' SIFT descriptors.

    None when the images have fewer descriptors than ``words`` (then :func:`sift_features`
    pools descriptors instead of counting words).
    """
    return _vocabulary(_sift_descriptors(_check_batch(images, "image")), words, seed, max_descriptors)


def _vocabulary(per_image: list[np.ndarray], words: int, seed: int,
                max_descriptors: int) -> np.ndarray | None:
    descriptors = np.concatenate(per_image)
    if len(descriptors) < words:
        return None
    rng = np.random.default_rng(seed)
    if len(descriptors) > max_descriptors:
        descriptors = descriptors[np.sort(rng.choice(len(descriptors), max_descriptors, replace=False))]
    return _kmeans(descriptors.astype(np.float64), words, rng).astype(np.float32)


def _kmeans(points: np.ndarray, count: int, rng: np.random.Generator, iterations: int = 30) -> np.ndarray:
    """Lloyd's k-means from a k-means++ start; an emptied cluster keeps its centre."""
    centres = [points[rng.integers(len(points))]]
    nearest = _squared_distances(points, centres[0][None, :])[:, 0]
    for _ in range(1, count):
        weights = nearest / nearest.sum() if nearest.sum() > 0 else None
        centres.append(points[rng.choice(len(points), p=weights)])
        nearest = np.minimum(nearest, _squared_distances(points, centres[-1][None, :])[:, 0])
    means = np.array(centres)
    for _ in range(iterations):
        assignment = _squared_distances(points, means).argmin(axis=1)
        members = assignment[None, :] == np.arange(count)[:, None]
        sizes, sums = members.sum(axis=1), members.astype(np.float64) @ points
        updated = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], means)
        if np.allclose(updated, means):
            break
        means = updated
    return means


def sift_features(images: np.ndarray, vocabulary: np.ndarray | None = None) -> np.ndarray:
    """FoggyCache's image key: SIFT descriptors pooled into one vector, plus a low-level fallback.

    With a ``vocabulary`` (:func:`sift_vocabulary`) the SIFT part is the bag of visual
    words (word frequencies); without, the mean and max of the descriptors (256 values).
    An image without keypoints (flat, tiny) gets a zero SIFT part and its
    :func:`image_features` in the fallback part, which is zero for images with keypoints;
    so the key is always one fixed-size vector, (n, SIFT part + fallback part).
    """
    images = _check_batch(images, "image")
    if vocabulary is not None:
        vocabulary = np.asarray(vocabulary, dtype=np.float32)
        if vocabulary.ndim != 2 or vocabulary.shape[1] != 128:
            raise InputError(f"a SIFT vocabulary is (words, 128), got shape {vocabulary.shape}")
    return _pool_sift(images, _sift_descriptors(images), vocabulary)


def _pool_sift(images: np.ndarray, per_image: list[np.ndarray], vocabulary: np.ndarray | None) -> np.ndarray:
    width = 256 if vocabulary is None else len(vocabulary)
    pooled = np.zeros((len(images), width), dtype=np.float32)
    for row, descriptors in enumerate(per_image):
        if not len(descriptors):
            continue
        if vocabulary is None:
            pooled[row] = np.r_[descriptors.mean(axis=0), descriptors.max(axis=0)]
        else:
            nearest = _squared_distances(descriptors, vocabulary).argmin(axis=1)
            pooled[row] = np.bincount(nearest, minlength=width) / len(descriptors)
    fallback = image_features(images) * (~np.any(pooled, axis=1))[:, None]
    return np.concatenate([pooled, fallback], axis=1)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(squared, 0.0)


def _standardiser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.maximum(features.std(axis=0), 1e-6)


# ----------------------------------------------------------------------------- skip baselines

class SkipBaseline(abc.ABC):
    """A skip baseline: ``fit`` on labelled inputs, then ``scores`` (higher = more likely redundant)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def fit(self, inputs: np.ndarray, redundant: np.ndarray) -> Self:
        """Learn from inputs and their labels (True = the model's output was useless)."""

    @abc.abstractmethod
    def scores(self, inputs: np.ndarray) -> np.ndarray:
        """One float per input, higher = more likely redundant."""

    def curve(self, inputs: np.ndarray, redundant: np.ndarray) -> FilterCurve:
        """The filter-rate/accuracy curve of :meth:`scores` on labelled inputs."""
        return FilterCurve.from_scores(self.scores(inputs), redundant)


def _not_fitted(baseline: object) -> InputError:
    return InputError(f"{type(baseline).__name__} is not fitted: call fit first")


class ReductoSkip(SkipBaseline):
    """Reducto (Li et al., SIGCOMM'20): skip a frame that barely changed since the previous one.

    ``fit`` picks, on a training stream in temporal order, the one feature of
    :func:`frame_differences` whose threshold filters most at ``target`` accuracy
    (Reducto's offline feature choice); ``scores`` is minus that feature's change, so
    frames that changed least rank as most redundant. Simplified: one global threshold
    instead of Reducto's per-segment thresholds predicted by a hash table; and where
    Reducto reports the last sent frame's result for a skipped frame, here (to compare
    with the other skip filters) a skipped frame is correct when its own output was
    redundant. A batch is one stream: its first frame scores lowest (always sent). Video
    clips are compared by their last frame.
    """

    name = "reducto"

    def __init__(self, features: Sequence[str] = FRAME_FEATURES, *, modality: str = "image",
                 target: float = 0.9, area_threshold: float = 0.1) -> None:
        if modality not in ("image", "video"):
            raise InputError(f"Reducto compares consecutive video frames: it needs image or video "
                             f"inputs, not {modality!r}")
        unknown = sorted(set(features) - set(FRAME_FEATURES))
        if unknown or not features:
            raise InputError(f"Reducto features must be a non-empty subset of {FRAME_FEATURES}, "
                             f"got {tuple(features)}")
        if not 0.0 < target <= 1.0:
            raise InputError(f"target accuracy must be in (0, 1], got {target}")
        self.features, self.modality = tuple(features), modality
        self.target, self.area_threshold = target, area_threshold
        #: the chosen feature, its change threshold at ``target`` accuracy on the training
        #: stream (skip when change <= threshold), and every feature's training filter rate
        self.feature: str | None = None
        self.threshold = math.nan
        self.training_rates: dict[str, float] = {}

    def fit(self, inputs: np.ndarray, redundant: np.ndarray) -> Self:
        frames = self._frames(inputs)
        redundant = _check_redundant(redundant, len(frames))
        if len(frames) < 2:
            raise InputError("Reducto needs a stream of at least two frames to fit")
        changes = frame_differences(frames, self.features, area_threshold=self.area_threshold)
        curves = {name: FilterCurve.from_scores(-change[1:], redundant[1:])
                  for name, change in changes.items()}
        self.training_rates = {name: curve.rate_at(self.target) for name, curve in curves.items()}
        self.feature = max(self.features, key=self.training_rates.__getitem__)
        self.threshold = -curves[self.feature].threshold_for(self.target)
        return self

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        if self.feature is None:
            raise _not_fitted(self)
        frames = self._frames(inputs)
        change = frame_differences(frames, (self.feature,), area_threshold=self.area_threshold)[self.feature]
        scores = -change
        scores[0] = (scores[1:].min() if len(scores) > 1 else 0.0) - 1.0
        return scores

    def _frames(self, inputs: np.ndarray) -> np.ndarray:
        batch = _check_batch(inputs, self.modality)
        return batch[:, -1] if self.modality == "video" else batch


class LowLevelKNN(SkipBaseline):
    """The InFi paper's low-level baseline: hand-made features + a K-nearest-neighbour vote.

    Features by modality: images :func:`image_features`; video clips the image features of
    every frame, concatenated; audio :func:`mfcc_features`; text :func:`token_histogram`;
    vectors flattened and, when longer than ``project_to``, randomly projected (Gaussian,
    ``seed``). Standardised with the training statistics; the score is the
    inverse-distance-weighted fraction of the ``k`` nearest training inputs (L2) that were
    redundant, so closer neighbours count more and scores are not all multiples of 1/k.
    The paper uses K = 10; K = 5 here suits the small training sets of the quick benchmark.
    """

    name = "low-level-knn"

    def __init__(self, modality: str, *, k: int = 5, project_to: int | None = 256, seed: int = 0) -> None:
        if modality not in MODALITIES:
            raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
        if k < 1 or (project_to is not None and project_to < 1):
            raise InputError(f"k and project_to must be >= 1, got {k} and {project_to}")
        self.modality, self.k, self.project_to, self.seed = modality, k, project_to, seed
        self._projection: np.ndarray | None = None
        self._train: np.ndarray | None = None
        self._redundant = np.zeros(0, dtype=bool)
        self._mean = self._scale = np.zeros(0)

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """The modality's low-level features, before standardisation, (n, features)."""
        if self.modality == "image":
            return image_features(inputs).astype(np.float64)
        if self.modality == "video":
            clips = _check_batch(inputs, "video")
            per_frame = image_features(clips.reshape(-1, *clips.shape[2:]))
            return per_frame.reshape(len(clips), -1).astype(np.float64)
        if self.modality == "audio":
            return mfcc_features(inputs).astype(np.float64)
        if self.modality == "text":
            return token_histogram(inputs).astype(np.float64)
        flat = _check_batch(inputs, "vector").reshape(len(inputs), -1).astype(np.float64)
        if self._projection is None:
            return flat
        if flat.shape[1] != self._projection.shape[0]:
            raise InputError(f"vectors have {flat.shape[1]} values, the baseline was fitted on "
                             f"{self._projection.shape[0]}")
        return flat @ self._projection

    def fit(self, inputs: np.ndarray, redundant: np.ndarray) -> Self:
        self._projection = None
        if self.modality == "vector":
            width = int(np.prod(np.shape(inputs)[1:]))
            if self.project_to is not None and width > self.project_to:
                rng = np.random.default_rng(self.seed)
                self._projection = rng.standard_normal((width, self.project_to)) / math.sqrt(self.project_to)
        features = self.features(inputs)
        self._redundant = _check_redundant(redundant, len(features))
        self._mean, self._scale = _standardiser(features)
        self._train = (features - self._mean) / self._scale
        return self

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        if self._train is None:
            raise _not_fitted(self)
        features = self.features(inputs)
        if features.shape[1] != self._train.shape[1]:
            raise InputError(f"inputs give {features.shape[1]} features, the baseline was fitted on "
                             f"{self._train.shape[1]}")
        queries = (features - self._mean) / self._scale
        k = min(self.k, len(self._train))
        scores = np.empty(len(queries))
        for start in range(0, len(queries), _CHUNK):
            squared = _squared_distances(queries[start:start + _CHUNK], self._train)
            nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
            weights = 1.0 / (np.sqrt(np.take_along_axis(squared, nearest, axis=1)) + 1e-9)
            votes = (weights * self._redundant[nearest]).sum(axis=1)
            scores[start:start + _CHUNK] = votes / weights.sum(axis=1)
        return scores


class FilterForwardSkip(SkipBaseline):
    """FilterForward (Canel et al., MLSys'19): frozen pretrained features + a micro-classifier.

    ``features`` is the caller's frozen extractor (e.g. the RapidOCR detector backbone's
    feature map, MiniLM sentence embeddings); its output is flattened. The micro-classifier
    is a logistic regression or a one-hidden-layer MLP (scikit-learn, ``seed``) on
    standardised features; the score is its P(redundant). Simplified: FilterForward's
    micro-classifiers are small convolutional networks over a MobileNet feature map.

    The benchmark computes expensive features once: pass them to :meth:`fit_features` and
    :meth:`scores_from_features` instead (then ``features`` may be None).
    """

    name = "filterforward"
    CLASSIFIERS = ("logistic", "mlp")

    def __init__(self, features: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 classifier: str = "logistic", hidden: int = 64, seed: int = 0) -> None:
        if classifier not in self.CLASSIFIERS:
            raise InputError(f"classifier must be one of {self.CLASSIFIERS}, got {classifier!r}")
        if hidden < 1:
            raise InputError(f"hidden must be >= 1, got {hidden}")
        self.extractor, self.classifier, self.hidden, self.seed = features, classifier, hidden, seed
        self._model: Any = None
        self._constant: float | None = None
        self._mean = self._scale = np.zeros(0)

    def fit(self, inputs: np.ndarray, redundant: np.ndarray) -> Self:
        return self.fit_features(self._extract(inputs), redundant)

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        return self.scores_from_features(self._extract(inputs))

    def fit_features(self, features: np.ndarray, redundant: np.ndarray) -> Self:
        """Train the micro-classifier on precomputed features (n, ...) of the training inputs."""
        features = _check_features(features, "features")
        redundant = _check_redundant(redundant, len(features))
        self._mean, self._scale = _standardiser(features)
        self._model, self._constant = None, None
        if redundant.all() or not redundant.any():
            self._constant = float(redundant[0])
            return self
        if self.classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(max_iter=1000)
        else:
            from sklearn.neural_network import MLPClassifier

            model = MLPClassifier((self.hidden,), max_iter=500, random_state=self.seed)
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._model = model.fit((features - self._mean) / self._scale, redundant)
        return self

    def scores_from_features(self, features: np.ndarray) -> np.ndarray:
        """P(redundant) from precomputed features (n, ...) of the inputs to score."""
        if self._model is None and self._constant is None:
            raise _not_fitted(self)
        features = _check_features(features, "features")
        if features.shape[1] != self._mean.size:
            raise InputError(f"features have {features.shape[1]} values, the micro-classifier was "
                             f"trained on {self._mean.size}")
        if self._constant is not None:
            return np.full(len(features), self._constant)
        probabilities = self._model.predict_proba((features - self._mean) / self._scale)
        return probabilities[:, list(self._model.classes_).index(True)].astype(np.float64)

    def _extract(self, inputs: np.ndarray) -> np.ndarray:
        if self.extractor is None:
            raise InputError("FilterForwardSkip has no feature extractor: pass features= to the "
                             "constructor, or use fit_features / scores_from_features")
        return self.extractor(inputs)


SKIP_BASELINES: dict[str, type[SkipBaseline]] = {
    cls.name: cls for cls in (FilterForwardSkip, LowLevelKNN, ReductoSkip)
}


# ----------------------------------------------------------------------------- FoggyCache reuse

@dataclass(frozen=True)
class FoggyOptions:
    """FoggyCache's cache and index settings.

    ``capacity``/``replacement`` bound the cache as
    :class:`~coinfer.sdk.infi.reuse.CacheOptions` does; ``k`` neighbours vote; a hit needs
    ``homogeneity`` <= (neighbours within the radius agreeing with the majority) / k, and
    at least one such neighbour. ``tables`` LSH tables of ``projections`` p-stable
    projections each, with bucket width ``width`` radii. The radius is the largest L2
    distance at which at least ``radius_precision`` of the training pairs that close share
    their result. ``words`` visual words for image keys.
    """

    capacity: int = 1000
    k: int = 5
    homogeneity: float = 0.6
    tables: int = 8
    projections: int = 4
    width: float = 4.0
    radius_precision: float = 0.9
    words: int = 32
    replacement: str = "lru"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.capacity, self.k, self.tables, self.projections, self.words) < 1:
            raise InputError("capacity, k, tables, projections and words must all be >= 1")
        if self.k > self.capacity:
            raise InputError(f"k ({self.k}) cannot exceed the capacity ({self.capacity})")
        if not 0.0 <= self.homogeneity <= 1.0 or not 0.0 < self.radius_precision <= 1.0:
            raise InputError("homogeneity must be in [0, 1] and radius_precision in (0, 1]")
        if self.width <= 0.0:
            raise InputError(f"width must be positive, got {self.width}")
        if self.replacement not in REPLACEMENTS:
            raise InputError(f"replacement must be one of {REPLACEMENTS}, got {self.replacement!r}")


class FoggyCacheReuse:
    """FoggyCache (Guo et al., MobiCom'18): low-level keys, LSH, KNN with L2, homogeneity check.

    Keys: images :func:`sift_features` (bag of visual words learned on the training
    images), audio :func:`mfcc_features`, vectors (precomputed keys, sensor windows) as
    given. Keys are standardised with training statistics. A lookup collects the cached
    entries sharing a p-stable LSH bucket with the key in any table, takes the ``k``
    nearest by L2, and reuses the majority result when enough of them are within the
    radius and agree (H-KNN). Simplified: A-LSH's adaptive bucket width is fixed at
    ``width`` times the radius learned in :meth:`fit`; no cross-device cache sharing.
    """

    MODALITIES = ("image", "audio", "vector")

    def __init__(self, modality: str = "vector", options: FoggyOptions | None = None) -> None:
        if modality not in self.MODALITIES:
            raise InputError(f"FoggyCache keys images (SIFT), audio (MFCC) or vectors, not {modality!r}")
        self.modality, self.options = modality, options or FoggyOptions()
        self.vocabulary: np.ndarray | None = None
        self.radius = math.nan
        self._mean = self._scale = np.zeros(0)
        self._planes = np.zeros((0, 0, 0))
        self._offsets = np.zeros((0, 0))

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """The modality's raw keys, (n, features)."""
        if self.modality == "image":
            return sift_features(inputs, self.vocabulary).astype(np.float64)
        if self.modality == "audio":
            return mfcc_features(inputs).astype(np.float64)
        return _check_features(inputs, "vector keys")

    def fit(self, inputs: np.ndarray, labels: Sequence[Hashable]) -> Self:
        """Learn the visual words (images), standardisation, radius and LSH from training inputs
        and the keys of their results (e.g. ``measurement.key(output)``)."""
        if self.modality != "image":
            return self.fit_features(self.features(inputs), labels)
        images = _check_batch(inputs, "image")
        per_image = _sift_descriptors(images)
        self.vocabulary = _vocabulary(per_image, self.options.words, self.options.seed, _MAX_DESCRIPTORS)
        return self.fit_features(_pool_sift(images, per_image, self.vocabulary), labels)

    def fit_features(self, features: np.ndarray, labels: Sequence[Hashable]) -> Self:
        """:meth:`fit` on precomputed keys (:meth:`features`, or the benchmark's own)."""
        features = _check_features(features, "keys")
        if len(labels) != len(features) or len(features) < 2:
            raise InputError(f"need at least two keys and one label per key: {len(features)} keys, "
                             f"{len(labels)} labels")
        self._mean, self._scale = _standardiser(features)
        self.radius = _learn_radius((features - self._mean) / self._scale, labels, self.options)
        rng = np.random.default_rng(self.options.seed)
        width = self.options.width * max(self.radius, 1e-6)
        self._planes = rng.standard_normal((self.options.tables, self.options.projections, features.shape[1]))
        self._offsets = rng.uniform(0.0, width, (self.options.tables, self.options.projections))
        self._planes /= width
        self._offsets /= width
        return self

    def vectors(self, inputs: np.ndarray) -> np.ndarray:
        """Standardised keys of inputs."""
        return self.vectors_from_features(self.features(inputs))

    def vectors_from_features(self, features: np.ndarray) -> np.ndarray:
        """Standardised keys from precomputed raw keys."""
        if not self._mean.size:
            raise _not_fitted(self)
        features = _check_features(features, "keys")
        if features.shape[1] != self._mean.size:
            raise InputError(f"keys have {features.shape[1]} values, the cache was fitted on "
                             f"{self._mean.size}")
        return (features - self._mean) / self._scale

    def replay(self, vectors: np.ndarray, outputs: Sequence[Any], key: Callable[[Any], Hashable],
               homogeneity: float | None = None) -> tuple[list[Any], np.ndarray]:
        """Run a stream through a fresh cache: the answers (reused or the true output) and the hit mask."""
        vectors = np.asarray(vectors, dtype=np.float64)
        if len(vectors) != len(outputs):
            raise InputError(f"{len(vectors)} keys but {len(outputs)} outputs")
        need = self._votes_needed(self.options.homogeneity if homogeneity is None else homogeneity)
        return self._replay(vectors, self._buckets(vectors), outputs, [key(o) for o in outputs], need)

    def curve(self, vectors: np.ndarray, outputs: Sequence[Any], same: Callable[[Any, Any], bool],
              key: Callable[[Any], Hashable],
              thresholds: Sequence[float] = tuple(np.linspace(0.0, 1.0, 41))) -> ReuseCurve:
        """Filter rate and accuracy per homogeneity threshold, counted as ``reuse_curve`` does."""
        vectors = np.asarray(vectors, dtype=np.float64)
        if len(vectors) != len(outputs) or not len(outputs):
            raise InputError(f"need one output per key: {len(vectors)} keys, {len(outputs)} outputs")
        labels = [key(output) for output in outputs]
        buckets = self._buckets(vectors)
        points: dict[int, tuple[float, float]] = {}
        rates, accuracies = [], []
        for threshold in thresholds:
            need = self._votes_needed(float(threshold))
            if need not in points:
                answers, hits = self._replay(vectors, buckets, outputs, labels, need)
                correct = sum(not hit or bool(same(answer, output))
                              for answer, output, hit in zip(answers, outputs, hits, strict=True))
                points[need] = (float(hits.mean()), correct / len(outputs))
            rates.append(points[need][0])
            accuracies.append(points[need][1])
        return ReuseCurve(np.asarray(thresholds, dtype=np.float64), np.array(rates), np.array(accuracies),
                          optimal_rate(repeated_fraction(labels), 0.9))

    def _votes_needed(self, homogeneity: float) -> int:
        """Agreeing neighbours within the radius that a hit needs (at least one)."""
        return max(1, math.ceil(homogeneity * self.options.k - 1e-9))

    def _buckets(self, vectors: np.ndarray) -> list[list[bytes]]:
        if not self._mean.size:
            raise _not_fitted(self)
        if vectors.ndim != 2 or vectors.shape[1] != self._mean.size:
            raise InputError(f"keys must be (n, {self._mean.size}) standardised vectors, got {vectors.shape}")
        codes = np.floor(np.einsum("tpd,nd->ntp", self._planes, vectors) + self._offsets).astype(np.int64)
        return [[table.tobytes() for table in row] for row in codes]

    def _replay(self, vectors: np.ndarray, buckets: list[list[bytes]], outputs: Sequence[Any],
                labels: Sequence[Hashable], need: int) -> tuple[list[Any], np.ndarray]:
        cache = _LSHCache(self.options, self.radius, vectors.shape[1])
        answers, hits = [], np.zeros(len(outputs), dtype=bool)
        rows = zip(vectors, buckets, outputs, labels, strict=True)
        for row, (vector, bucket, output, label) in enumerate(rows):
            hits[row], found = cache.lookup(vector, bucket, need)
            answers.append(found if hits[row] else output)
            if not hits[row]:
                cache.insert(vector, bucket, output, label)
        return answers, hits


def _learn_radius(vectors: np.ndarray, labels: Sequence[Hashable], options: FoggyOptions) -> float:
    """Largest pair distance at which >= ``radius_precision`` of the closer training pairs share
    results (pairs among at most 1000 training keys, sampled with ``seed``)."""
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(label, len(index)) for label in labels])
    if len(vectors) > 1000:
        rows = np.sort(np.random.default_rng(options.seed).choice(len(vectors), 1000, replace=False))
        vectors, codes = vectors[rows], codes[rows]
    first, second = np.triu_indices(len(vectors), 1)
    distances = np.sqrt(_squared_distances(vectors, vectors)[first, second])
    order = np.argsort(distances, kind="stable")
    precision = np.cumsum((codes[first] == codes[second])[order]) / np.arange(1, order.size + 1)
    good = np.flatnonzero(precision >= options.radius_precision - 1e-12)
    return float(distances[order[good[-1]]]) if good.size else 0.0


class _LSHCache:
    """The bounded FoggyCache store: entries, their LSH buckets, use counts for replacement."""

    def __init__(self, options: FoggyOptions, radius: float, dim: int) -> None:
        self.options, self.radius = options, radius
        self.vectors = np.zeros((options.capacity, dim))
        self.results: list[Any] = [None] * options.capacity
        self.labels: list[Hashable] = [None] * options.capacity
        self.buckets: list[list[bytes]] = [[] for _ in range(options.capacity)]
        self.tables: list[dict[bytes, set[int]]] = [{} for _ in range(options.tables)]
        self.uses = np.zeros(options.capacity, dtype=np.int64)
        self.last = np.zeros(options.capacity, dtype=np.int64)
        self.size = self.clock = 0

    def lookup(self, vector: np.ndarray, bucket: list[bytes], need: int) -> tuple[bool, Any]:
        """(True, the reused result) on a hit, (False, None) on a miss."""
        candidates: set[int] = set()
        for table, code in zip(self.tables, bucket, strict=True):
            candidates |= table.get(code, set())
        if not candidates:
            return False, None
        slots = np.array(sorted(candidates))
        distances = np.linalg.norm(self.vectors[slots] - vector, axis=1)
        order = np.argsort(distances, kind="stable")[:self.options.k]
        close = [int(slots[i]) for i in order if distances[i] <= self.radius]
        votes: dict[Hashable, list[int]] = {}
        for slot in close:
            votes.setdefault(self.labels[slot], []).append(slot)
        members = max(votes.values(), key=len, default=[])
        if len(members) < need:
            return False, None
        self.clock += 1
        self.uses[members] += 1
        self.last[members] = self.clock
        return True, self.results[members[0]]

    def insert(self, vector: np.ndarray, bucket: list[bytes], result: Any, label: Hashable) -> None:
        self.clock += 1
        if self.size < self.options.capacity:
            slot = self.size
            self.size += 1
        else:
            if self.options.replacement == "lfu":
                slot = int(np.lexsort((self.last, self.uses))[0])
            else:
                slot = int(np.argmin(self.last))
            for table, code in zip(self.tables, self.buckets[slot], strict=True):
                table[code].discard(slot)
        for table, code in zip(self.tables, bucket, strict=True):
            table.setdefault(code, set()).add(slot)
        self.vectors[slot], self.results[slot], self.labels[slot] = vector, result, label
        self.buckets[slot] = bucket
        self.uses[slot], self.last[slot] = 0, self.clock


def foggycache_curve(features_or_inputs: np.ndarray, outputs: Sequence[Any], same: Callable[[Any, Any], bool],
                     key: Callable[[Any], Hashable], *, modality: str = "vector",
                     options: FoggyOptions | None = None, train_inputs: np.ndarray | None = None,
                     train_outputs: Sequence[Any] | None = None,
                     thresholds: Sequence[float] = tuple(np.linspace(0.0, 1.0, 41))) -> ReuseCurve:
    """FoggyCache's :class:`~coinfer.sdk.infi.reuse.ReuseCurve` on a stream, one fresh cache per threshold.

    ``modality="vector"`` takes precomputed keys (e.g. :func:`sift_features`,
    :func:`mfcc_features` computed once by the benchmark); ``"image"`` / ``"audio"``
    compute them. The cache is fitted on ``train_inputs`` / ``train_outputs`` (same kind
    as the stream), or, when none are given, on the stream itself (in-sample tuning, which
    favours the baseline). Read the benchmark's number with ``rate_at(0.9)``.
    """
    if (train_inputs is None) != (train_outputs is None):
        raise InputError("pass both train_inputs and train_outputs, or neither")
    cache = FoggyCacheReuse(modality, options)
    if train_inputs is None or train_outputs is None:
        train_inputs, train_outputs = features_or_inputs, outputs
    cache.fit(train_inputs, [key(output) for output in train_outputs])
    return cache.curve(cache.vectors(features_or_inputs), outputs, same, key, thresholds)
