"""Image codecs as the offload baseline of split inference: what a device sends when it runs
nothing and lets the edge classify a compressed frame.

Why these two: JPEG is what every camera and phone can produce in hardware, WebP is the
better still-image codec a device can reasonably run in software; a split's bottleneck earns
its place only if it beats the better of them at the same accuracy. Images are encoded at the
network's input size (224 x 224), so bytes compare with a latent of the same image.

:func:`codec_curve` measures bytes per image and top-1 agreement with the unsplit network
(classifying the original pixels) at several qualities; :func:`bytes_at_agreement` reads a
curve at a target agreement, interpolating between the two measured points around it.

>>> curve = [RatePoint("jpeg", 10, 2000.0, 0.80), RatePoint("jpeg", 50, 5000.0, 0.90),
...          RatePoint("jpeg", 90, 11000.0, 1.0)]
>>> bytes_at_agreement(curve, 0.95)
8000.0
>>> bytes_at_agreement(curve[:2], 0.95) is None
True
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError

#: Pillow's names of the codecs compared, and the qualities swept (at least five each).
CODECS = {"jpeg": "JPEG", "webp": "WEBP"}
QUALITIES = (10, 30, 50, 70, 85, 95)


@dataclass(frozen=True)
class RatePoint:
    """One point of a rate-accuracy curve: ``setting`` is a codec's quality or a bottleneck's
    ``beta``; ``bytes_per_image`` the mean payload; ``agreement`` the share of images whose
    top-1 class equals the unsplit network's on the original image."""

    method: str
    setting: float
    bytes_per_image: float
    agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compress(image: np.ndarray, codec: str, quality: int) -> bytes:
    """One RGB uint8 (H, W, 3) image as ``codec`` (``jpeg`` or ``webp``) bytes."""
    from PIL import Image

    if codec not in CODECS:
        raise InvalidArgumentError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, CODECS[codec], quality=int(quality))
    return buffer.getvalue()


def decompress(data: bytes) -> np.ndarray:
    """Codec bytes back to RGB uint8 (H, W, 3)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def codec_curve(images: np.ndarray, reference: np.ndarray, classify: Callable[[np.ndarray], np.ndarray],
                codec: str, qualities: Sequence[int] = QUALITIES) -> list[RatePoint]:
    """Bytes per image and top-1 agreement with ``reference`` (the unsplit network's classes
    of ``images``) when ``images`` (N, 224, 224, 3 uint8) are sent as ``codec`` at each
    quality; ``classify`` maps RGB uint8 images to top-1 classes."""
    if len(images) != len(reference) or len(images) == 0:
        raise InvalidArgumentError(f"need as many reference classes as images (> 0), got {len(reference)} "
                                   f"for {len(images)}")
    curve = []
    for quality in qualities:
        payloads = [compress(image, codec, quality) for image in images]
        classes = classify(np.stack([decompress(payload) for payload in payloads]))
        curve.append(RatePoint(codec, float(quality), float(np.mean([len(p) for p in payloads])),
                               float(np.mean(classes == reference))))
    return curve


def bytes_at_agreement(curve: Sequence[RatePoint], target: float) -> float | None:
    """The bytes per image at which ``curve`` first reaches ``target`` agreement, interpolated
    linearly between the measured points around it (by bytes); ``None`` when it never does.
    A curve already at the target at its smallest rate gives that rate (no extrapolation)."""
    points = sorted(curve, key=lambda point: point.bytes_per_image)
    for index, point in enumerate(points):
        if point.agreement >= target:
            if index == 0:
                return point.bytes_per_image
            before = points[index - 1]
            share = (target - before.agreement) / (point.agreement - before.agreement)
            return before.bytes_per_image + share * (point.bytes_per_image - before.bytes_per_image)
    return None
