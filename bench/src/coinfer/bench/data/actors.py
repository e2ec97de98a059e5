"""Sprites and backgrounds for generated scenes, cut from photographs bundled with scikit-image.

Real photographs, not drawn shapes, so that real detectors (Haar cascades, HOG, the OCR
CNN) respond to them as they would to camera footage: faces from ``astronaut`` and the
LFW subset, the ``chelsea`` cat, signs rendered with the OCR test renderer, and a walking
figure textured with photo patches for HOG. Only ``skimage.data`` images that ship inside
the wheel are used, so nothing is downloaded. skimage and OpenCV are imported lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Actor kinds, in the order of ``actor_kinds`` in scenes.json (the truth.kinds index).
KINDS: tuple[str, ...] = ("face", "cat", "sign", "person")

SIGN_WORDS = ("EXIT", "OPEN", "CAFE", "LAB 3", "PARKING", "BUS STOP", "NO ENTRY", "LIBRARY",
              "GATE B", "WAY OUT", "DELIVERY", "RECEPTION")
# Warm-to-dark skin tones (RGB), applied to the grey LFW faces.
SKIN_TONES = ((236, 188, 160), (222, 170, 130), (198, 140, 104), (160, 110, 80), (120, 82, 60))


@dataclass(frozen=True)
class Sprite:
    """An actor's appearance: RGBA poses (float32, alpha in [0, 1]) and its object box.

    ``box`` is the part a detector should find (the face of a head crop, the text of a
    sign), as fractions ``x, y, w, h`` of the pose size. Several poses animate a walker.
    """

    kind: str
    name: str
    poses: tuple[np.ndarray, ...]
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    @property
    def aspect(self) -> float:
        """Width over height."""
        height, width = self.poses[0].shape[:2]
        return width / height


def _rgba(rgb: np.ndarray, alpha: np.ndarray | None = None, feather: float = 0.0) -> np.ndarray:
    """Stack RGB and alpha; ``feather`` fades the outer fraction of a rectangular sprite so
    it blends into the background instead of showing a hard pasted edge."""
    rgb = rgb.astype(np.float32)
    height, width = rgb.shape[:2]
    if alpha is None:
        alpha = np.ones((height, width), np.float32)
    if feather > 0:
        ramp_y = np.clip(np.minimum(np.arange(height) + 0.5, height - np.arange(height) - 0.5)
                         / (feather * height), 0, 1)
        ramp_x = np.clip(np.minimum(np.arange(width) + 0.5, width - np.arange(width) - 0.5)
                         / (feather * width), 0, 1)
        alpha = alpha * np.outer(ramp_y, ramp_x)
    return np.concatenate([rgb, alpha.astype(np.float32)[..., None]], axis=2)


def _faces() -> list[Sprite]:
    from skimage import data

    astronaut = data.astronaut()[45:170, 165:285]
    sprites = [Sprite("face", "astronaut", (_rgba(astronaut, feather=0.06),))]
    lfw = data.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    for index, grey in enumerate(lfw):
        tone = np.asarray(SKIN_TONES[index % len(SKIN_TONES)], np.float32)
        rgb = np.clip(grey[..., None] * 255.0 * (tone / tone.mean()), 0, 255)
        sprites.append(Sprite("face", f"lfw{index:03d}", (_rgba(rgb, feather=0.06),)))
    return sprites


def _cats() -> list[Sprite]:
    import cv2
    from skimage import data

    # Chelsea's head is turned a little; rotating it 9 degrees upright and cropping ears to
    # chin is what makes OpenCV's frontal cat-face cascade fire on it at small sizes.
    image = data.chelsea()
    turn = cv2.getRotationMatrix2D((230.0, 150.0), 9.0, 1.0)
    upright = cv2.warpAffine(image, turn, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)
    face = upright[10:290, 65:355]
    return [Sprite("cat", "chelsea", (_rgba(face, feather=0.06),))]


def _signs() -> list[Sprite]:
    from coinfer.edge.models import ocr

    sprites = []
    for word in SIGN_WORDS:
        width = 64 + 40 * len(word)
        bgr, (ink,) = ocr.render_text_image([word], width=width, line_height=64, margin=16)
        rgb = bgr[..., ::-1].astype(np.float32)
        rgb[:4], rgb[-4:], rgb[:, :4], rgb[:, -4:] = 40.0, 40.0, 40.0, 40.0  # the board's frame
        height, width = rgb.shape[:2]
        box = (ink.x0 / width, ink.y0 / height, (ink.x1 - ink.x0) / width, (ink.y1 - ink.y0) / height)
        sprites.append(Sprite("sign", word.lower().replace(" ", "-"), (_rgba(rgb),), box))
    return sprites


def _figure(stride: float, height: int = 256) -> np.ndarray:
    """A standing walker, legs apart by ``stride`` head units: astronaut's face for the head,
    her suit for torso and arms, the cameraman's coat for the trousers.

    HOG looks at the silhouette's gradients, so the body proportions (eight heads tall,
    shoulders two heads wide) matter more than the textures.
    """
    import cv2
    from skimage import data

    width = height // 2
    astronaut, coat = data.astronaut(), data.camera()[300:500, 0:120]
    rgba = np.zeros((height, width, 4), np.float32)

    def fill(polygon: list[tuple[float, float]], texture: np.ndarray) -> None:
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(np.array(polygon)).astype(np.int32)], 1)
        resized = cv2.resize(texture, (width, height)).astype(np.float32)
        if resized.ndim == 2:
            resized = np.repeat(resized[..., None], 3, axis=2)
        inside = mask > 0
        rgba[inside, :3] = resized[inside]
        rgba[inside, 3] = 1.0

    unit, centre = height / 8, width / 2
    suit, face = astronaut[300:420, 30:130], astronaut[40:190, 160:290]
    for side in (-1, 1):
        fill([(centre + side * 0.1 * unit, 4 * unit), (centre + side * 0.75 * unit, 4 * unit),
              (centre + side * (0.7 + stride) * unit, 7.9 * unit),
              (centre + side * (0.25 + stride) * unit, 7.9 * unit)], coat)
    fill([(centre - unit, 1.3 * unit), (centre + unit, 1.3 * unit),
          (centre + 0.8 * unit, 4.3 * unit), (centre - 0.8 * unit, 4.3 * unit)], suit)
    for side in (-1, 1):
        fill([(centre + side * 0.95 * unit, 1.35 * unit), (centre + side * 1.35 * unit, 1.5 * unit),
              (centre + side * 1.3 * unit, 4.2 * unit), (centre + side * 0.95 * unit, 4.2 * unit)], suit)
    head = np.zeros((height, width), np.uint8)
    cv2.ellipse(head, (round(centre), round(0.75 * unit)), (round(0.42 * unit), round(0.6 * unit)),
                0, 0, 360, 1, -1)
    rows, cols = np.nonzero(head)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    texture = cv2.resize(face, (right - left, bottom - top)).astype(np.float32)
    inside = head[top:bottom, left:right] > 0
    rgba[top:bottom, left:right][inside] = np.concatenate(
        [texture, np.ones((*texture.shape[:2], 1), np.float32)], axis=2)[inside]
    return rgba


def _people() -> list[Sprite]:
    # A four-pose walking cycle: legs together, apart, wide apart, apart.
    poses = tuple(_figure(stride) for stride in (0.0, 0.15, 0.3, 0.15))
    return [Sprite("person", "walker", poses)]


@functools.lru_cache(maxsize=1)
def sprite_library() -> dict[str, tuple[Sprite, ...]]:
    """Every sprite, by kind; built once per process (a few tens of milliseconds)."""
    return {"face": tuple(_faces()), "cat": tuple(_cats()), "sign": tuple(_signs()),
            "person": tuple(_people())}


def _grey(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2)


def _lawn() -> np.ndarray:
    from skimage import data

    return _grey(data.camera()[:, 260:])  # campus lawn and buildings behind the cameraman


def _garage() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _tinted(name: str, colour: tuple[int, int, int]) -> Callable[[], np.ndarray]:
    """A grey ``skimage.data`` texture photograph coloured by ``colour`` (its mean level kept),
    as a country camera would see grass or a gravel track in daylight."""
    def load() -> np.ndarray:
        from skimage import data

        gain = np.asarray(colour, np.float32) / np.mean(colour)
        return np.clip(getattr(data, name)()[..., None] * gain + 0.5, 0, 255).astype(np.uint8)

    return load


#: Background name -> loader of an RGB uint8 photograph. Scenes a fixed camera might
#: watch; photographs with faces, cats or text in them are left out so that the detectors'
#: only true positives are the actors. The campus photographs come first; the country
#: ones (grass and gravel photographed from above, coloured) are only drawn when asked for.
BACKGROUNDS: dict[str, Callable[[], np.ndarray]] = {
    "launch-pad": _loader("rocket"),
    "garage": _garage,
    "cafe": _loader("coffee"),
    "lawn": _lawn,
    "meadow": _tinted("grass", (150, 185, 90)),
    "gravel-track": _tinted("gravel", (190, 170, 140)),
}
#: What a camera draws its background from when the options do not say: the campus
#: photographs, the whole list before the country ones were added, so that scene sets
#: generated with the same options stay byte-identical.
DEFAULT_BACKGROUNDS: tuple[str, ...] = ("launch-pad", "garage", "cafe", "lawn")
#: The country photographs (the drift workload's rural domain).
RURAL_BACKGROUNDS: tuple[str, ...] = ("meadow", "gravel-track")


@functools.lru_cache(maxsize=len(BACKGROUNDS))
def background(name: str) -> np.ndarray:
    """The RGB uint8 photograph of background ``name`` (read-only, cached)."""
    image = np.ascontiguousarray(BACKGROUNDS[name]())
    image.setflags(write=False)
    return image
