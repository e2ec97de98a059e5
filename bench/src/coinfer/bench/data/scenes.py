"""Deterministic multi-camera video workloads: encoded streams plus real detector results.

Each camera watches a real photograph (cropped differently per camera) through which
actors cut from real photographs walk: faces, a cat, signs, a walker. The clip covers a
stretch of a 24-hour clock, so activity follows a campus-like diurnal pattern (quiet
night, morning and evening peaks, busy and quiet cameras) and the light follows the sun
(dim dawn and dusk, an infrared grey mode at night, more sensor noise in the dark). The
frames are encoded with a fixed, closed GOP as a surveillance camera would, then the
written file is decoded and the real detectors run on every decoded frame: what a
decode-all video-analytics system would record. Generative truth (boxes, identities and
visible fractions of the actors) is stored alongside.

With ``audio=True`` every camera also gets an audio track aligned with its frames (frame
``k`` owns samples ``[k * S, (k + 1) * S)``, ``S = AUDIO_RATE // fps``): ambient noise of
one of :data:`coinfer.bench.data.speech.NOISE_KINDS` throughout, a few dB quieter in the
dark, and, while a face or a walker is more than 30% visible, people talking: turns of
real eSpeak NG speech in drawn voices with drawn pauses, through a drawn room, at a drawn
SNR over the daytime noise, faded out over 50 ms when nobody is left in view. With
``silent_from="HH:MM"`` the people in view keep quiet from that clock time on (a library
opening, an exam starting): a drift in how speech follows presence, for adaptation
experiments; the video and truth stay the same.

Everything derives from the seed: camera ``i`` draws from its own PCG64 streams (one for
the plan, the arrivals, the sensor noise, the traffic model and the audio each), so the
outputs are byte-identical for the same options whatever the number of worker processes,
and the video, truth and detections are the same with and without audio.
Heavy modules (PyAV, OpenCV, skimage, onnxruntime) are imported inside the functions.

The output format is documented in README.md ("Output format"); audio adds::

    scenes.json  "audio": {"sample_rate": 16000, "samples_per_frame": S, "dtype": "int16",
                           "noise_kinds": [...], "snr_db": [low, high],
                           "speech_dbfs": [low, high], "night_quieter_db": [low, high],
                           "presence": {"kinds": ["face", "person"], "min_visible": 0.3},
                           "silent_from": "HH:MM" or null, "speech_floor_db": -40.0,
                           "synthesizer": {"name": "espeak-ng", "package", "version"}}
                 and per camera "audio": {"noise_kind", "snr_db" (audible speech over the
                           daytime noise), "speech_dbfs" (RMS of the audible speech; the draw if none),
                           "noise_dbfs" (daytime noise RMS), "night_quieter_db", "turns",
                           "speech_frames"}
    camNNN.npz   "audio"         int16 [N * S]  the track, full scale 32768
                 "audio.speech"  bool [N]       speech audible in frame k's window: a 10 ms hop
                                                of the speech within speech_floor_db of the
                                                camera's loudest hop overlaps it
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np

from coinfer.bench.data.actors import (
    BACKGROUNDS,
    DEFAULT_BACKGROUNDS,
    KINDS,
    Sprite,
    background,
    sprite_library,
)
from coinfer.sdk.datadir import sha256_file
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.fsutil import atomic_directory, atomic_write_json
from coinfer.sdk.scenes import (
    FORMAT,
    INDEX_FILE,
    PRESENCE_KINDS,
    PRESENCE_VISIBLE,
    VERSION,
    SceneSet,
    presence,
    ragged,
    write_npz,
)

#: codec option -> (FFmpeg encoder, container extension)
CODECS: dict[str, tuple[str, str]] = {
    "h264": ("libx264", "mp4"),
    "hevc": ("libx265", "mp4"),
    "vp9": ("libvpx-vp9", "webm"),
    "mjpeg": ("mjpeg", "avi"),
}
#: Quality-based rate control used when no bitrate is given (CRF, or MJPEG's qscale).
DEFAULT_QUALITY = {"h264": "23", "hevc": "28", "vp9": "34", "mjpeg": "4"}
#: detection task -> the actor kind it is meant to find
TASK_KINDS: dict[str, str] = {"faces": "face", "cats": "cat", "people": "person", "text": "sign"}

# Object sizes as fractions of the frame height (signs: text-board height), with a floor in
# pixels below which the detectors' fixed windows cannot see them (measured: Haar faces
# drop below ~0.6 recall under 40 px, the cat cascade is best at 50-70 px, HOG needs ~100).
SIZES: dict[str, tuple[float, float, int]] = {
    "face": (0.28, 0.42, 44),
    "cat": (0.31, 0.40, 56),
    "sign": (0.16, 0.24, 26),
    "person": (0.55, 0.68, 100),
}
# Mean share of each kind among arrivals (per camera, a Dirichlet draw around these).
KIND_MIX = {"face": 3.0, "cat": 1.2, "sign": 1.2, "person": 1.0}
PEAK_ACTORS = 2.0  # expected actors in view at the daily peak of a camera of busyness 1
SHAKE_MARGIN = 2  # background pixels kept around the view for camera shake
NOISE_MARGIN = 16  # the noise bank is this much larger, so each frame takes a random window
NOISE_BANK = 2
POSE_SECONDS = 0.2  # a walker changes pose five times a second (a brisk step cadence)
IR_THRESHOLD = 0.3  # daylight level under which the camera switches to infrared
SENSORS = ("colour", "mono")  # the day sensors SceneOptions.sensor names
MONO_CONTRAST, MONO_LIFT = 0.6, 50.0  # a mono day sensor: grey * contrast + lift
LUMA = np.array([0.299, 0.587, 0.114], np.float32)

# Audio (``audio=True``): one track per camera at AUDIO_RATE, every frame owning
# AUDIO_RATE // fps samples.
AUDIO_RATE = 16000
AUDIO_MAX_SECONDS = 3600.0  # the track is built in memory (float64 while mixing)
AUDIO_STREAM = 4  # camera_rng stream of the audio draws (0-3 drive the picture)
SNR_DB = (0.0, 20.0)  # speech over the daytime ambient noise, drawn per camera
SPEECH_DBFS = (-38.0, -22.0)  # RMS of the audible speech, drawn per camera
NIGHT_QUIETER_DB = (3.0, 9.0)  # ambient noise this much quieter in the dark, drawn per camera
SPEECH_FLOOR_DB = -40.0  # a 10 ms hop of speech is audible within this of the loudest one
TURN_SECONDS = (1.0, 4.0)  # one speaker's turn (a new drawn voice each)
TURN_PAUSE = (0.15, 0.6)  # silence between turns
FIRST_TURN_DELAY = (0.0, 0.3)  # from someone coming into view to the first word
MIN_TURN_SECONDS = 0.25  # shorter remainders of a presence stay silent
SPEECH_FADE_SECONDS = 0.05  # speech fades out over this when presence ends
AMBIENT_BLOCK_SECONDS = 15.0  # some noise kinds cost more than linear time in their length
AMBIENT_CROSSFADE_SECONDS = 0.5


def parse_size(text: str) -> tuple[int, int]:
    """``"320x180"`` -> ``(320, 180)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise CoinferError(f"size must look like WIDTHxHEIGHT (e.g. 320x180), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_clock(text: str) -> float:
    """``"08:30"`` -> 8.5 hours; ``"24:00"`` is the end of the day."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", str(text))
    if not match or int(match.group(2)) >= 60 or int(match.group(1)) * 60 + int(match.group(2)) > 24 * 60:
        raise CoinferError(f"a clock time must be HH:MM between 00:00 and 24:00, got {text!r}")
    return int(match.group(1)) + int(match.group(2)) / 60


def parse_tasks(text: str) -> tuple[str, ...]:
    """``"faces,cats"`` -> ``("faces", "cats")``; an empty string means no detectors."""
    return tuple(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))


@dataclass(frozen=True)
class SceneOptions:
    """What to generate; every field is recorded in scenes.json.

    ``gop`` defaults to two seconds of frames; ``bitrate`` (kbit/s) switches from
    quality-based rate control to a target bitrate. The clip maps linearly onto the clock
    from ``day_start`` to ``day_end`` (wrapping past midnight when end <= start). ``crowd``
    scales how many actors come by (1: about PEAK_ACTORS in view at a typical camera's peak).
    ``audio`` adds an aligned audio track per camera (speech while people are in view, ambient
    noise throughout); it needs fps to divide :data:`AUDIO_RATE`. ``silent_from`` (with audio):
    from this clock time to the end of the clip the people in view are silent.
    ``backgrounds`` (names of :data:`~coinfer.bench.data.actors.BACKGROUNDS`, or ``"a,b"``)
    restricts the photographs cameras watch; None draws from the campus ones
    (:data:`~coinfer.bench.data.actors.DEFAULT_BACKGROUNDS`), as sets always did. Only the
    background's draw reads the list, so every other draw of a camera stays the same.
    ``sensor``: ``colour`` by day (the default), or ``mono``, a cheap monochrome day sensor
    (grey, flat contrast, lifted blacks) as trail and farm cameras often have; by night every
    camera is in infrared either way. The sensor changes no draw, only how frames are exposed.
    """

    cameras: int = 4
    seconds: float = 12.0
    fps: int = 10
    width: int = 320
    height: int = 180
    codec: str = "h264"
    gop: int | None = None
    bframes: int = 0
    bitrate: int | None = None
    tasks: tuple[str, ...] = ("faces", "cats")
    seed: int = 0
    day_start: str = "00:00"
    day_end: str = "24:00"
    crowd: float = 1.0
    audio: bool = False
    silent_from: str | None = None
    backgrounds: tuple[str, ...] | None = None
    sensor: str = "colour"

    def __post_init__(self) -> None:
        tasks = parse_tasks(self.tasks) if isinstance(self.tasks, str) else tuple(dict.fromkeys(self.tasks))
        object.__setattr__(self, "tasks", tasks)
        if self.backgrounds is not None:
            names = parse_tasks(self.backgrounds) if isinstance(self.backgrounds, str) else self.backgrounds
            object.__setattr__(self, "backgrounds", tuple(sorted(dict.fromkeys(names), key=str)))
        if self.gop is None and isinstance(self.fps, int):
            object.__setattr__(self, "gop", 2 * self.fps)
        errors = []
        for name, low, high in (("cameras", 1, 10_000), ("fps", 1, 120), ("width", 64, 4096),
                                ("height", 64, 4096), ("gop", 1, 10_000), ("bframes", 0, 16),
                                ("seed", 0, 2**63 - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                errors.append(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not errors and (self.width % 2 or self.height % 2):
            errors.append(f"width and height must be even (4:2:0 video), got {self.width}x{self.height}")
        if not isinstance(self.seconds, (int, float)) or not 0 < self.seconds <= 86_400:
            errors.append(f"seconds must be in (0, 86400], got {self.seconds!r}")
        elif not errors and self.frames < 2:
            errors.append(f"seconds * fps must give at least 2 frames, got {self.seconds} s "
                          f"at {self.fps} fps")
        if self.codec not in CODECS:
            errors.append(f"unknown codec {self.codec!r}; choose from {', '.join(CODECS)}")
        elif self.codec in ("vp9", "mjpeg") and self.bframes:
            errors.append(f"{self.codec} has no B-frames; use bframes=0, got {self.bframes}")
        if not errors and self.bframes >= cast(int, self.gop):  # no errors: gop is a checked int
            errors.append(f"bframes must be smaller than gop, got bframes={self.bframes}, gop={self.gop}")
        if not isinstance(self.crowd, (int, float)) or not 0 < self.crowd <= 20:
            errors.append(f"crowd must be in (0, 20], got {self.crowd!r}")
        if self.sensor not in SENSORS:
            errors.append(f"unknown sensor {self.sensor!r}; choose from {', '.join(SENSORS)}")
        if self.bitrate is not None and (not isinstance(self.bitrate, int) or self.bitrate <= 0):
            errors.append(f"bitrate must be a positive number of kbit/s or None, got {self.bitrate!r}")
        if not isinstance(self.audio, bool):
            errors.append(f"audio must be True or False, got {self.audio!r}")
        elif self.audio and isinstance(self.fps, int) and AUDIO_RATE % self.fps:
            errors.append(f"audio at {AUDIO_RATE} Hz needs fps to divide {AUDIO_RATE} so that every "
                          f"frame owns a whole number of samples, got fps={self.fps}")
        elif self.audio and isinstance(self.seconds, (int, float)) and self.seconds > AUDIO_MAX_SECONDS:
            errors.append(f"audio tracks are built in memory: seconds must be at most "
                          f"{AUDIO_MAX_SECONDS:g} with audio, got {self.seconds}")
        if self.silent_from is not None:
            try:
                parse_clock(self.silent_from)
            except CoinferError as error:
                errors.append(f"silent_from: {error}")
            if self.audio is not True:
                errors.append("silent_from silences the audio track's speech: it needs audio=True")
        unknown = [task for task in self.tasks if task not in TASK_KINDS]
        if unknown:
            errors.append(f"unknown task(s) {unknown}; choose from {', '.join(TASK_KINDS)}")
        if self.backgrounds is not None:
            strange = [name for name in self.backgrounds if name not in BACKGROUNDS]
            if strange:
                errors.append(f"unknown background(s) {strange}; choose from {', '.join(BACKGROUNDS)}")
            elif not self.backgrounds:
                errors.append(f"backgrounds must name at least one of {', '.join(BACKGROUNDS)} (or be None)")
        for name in ("day_start", "day_end"):
            try:
                parse_clock(getattr(self, name))
            except CoinferError as error:
                errors.append(f"{name}: {error}")
        if errors:
            raise CoinferError("invalid scene options: " + "; ".join(errors))

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples each frame owns (``AUDIO_RATE // fps``)."""
        return AUDIO_RATE // self.fps

    @property
    def container(self) -> str:
        return CODECS[self.codec][1]

    @property
    def time_base(self) -> Fraction:
        """The container's time base: 1/fps, except Matroska/WebM which always counts ms."""
        return Fraction(1, 1000) if self.container == "webm" else Fraction(1, self.fps)

    def clock_hours(self) -> np.ndarray:
        """Clock time (hours in [0, 24)) at the start of every frame."""
        start, end = parse_clock(self.day_start), parse_clock(self.day_end)
        span = end - start if end > start else end - start + 24.0
        return ((start + span * np.arange(self.frames) / self.frames) % 24.0).astype(np.float32)

    def silent(self) -> np.ndarray:
        """bool per frame: the clock has reached ``silent_from`` (counted from ``day_start``, so
        a clip past midnight works); all False without ``silent_from``."""
        if self.silent_from is None:
            return np.zeros(self.frames, bool)
        start, end = parse_clock(self.day_start), parse_clock(self.day_end)
        span = end - start if end > start else end - start + 24.0
        return span * np.arange(self.frames) / self.frames >= (parse_clock(self.silent_from) - start) % 24.0


# ---------------------------------------------------------------------------------------
# One camera: plan, actors, frames.


def camera_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Camera ``index``'s ``stream``-th random stream, independent of every other camera."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index, stream))))


@dataclass(frozen=True)
class CameraPlan:
    """The per-camera draws that make cameras differ: view, traffic, light, sensor."""

    index: int
    background: str
    crop: tuple[int, int, int, int]  # x, y, w, h in the photograph
    mirrored: bool
    busyness: float
    kind_weights: tuple[float, ...]  # over KINDS
    morning_peak: float
    evening_peak: float
    sunrise: float
    sunset: float
    noise_day: float
    noise_night: float
    shake_rate: float

    @property
    def id(self) -> str:
        return f"cam{self.index:03d}"

    @staticmethod
    def draw(options: SceneOptions, index: int) -> CameraPlan:
        rng = camera_rng(options.seed, index, 0)
        names = sorted(options.backgrounds if options.backgrounds is not None else DEFAULT_BACKGROUNDS)
        name = names[int(rng.integers(len(names)))]
        photo_h, photo_w = background(name).shape[:2]
        aspect = (options.width + 2 * SHAKE_MARGIN) / (options.height + 2 * SHAKE_MARGIN)
        if photo_w / photo_h > aspect:
            crop_w, crop_h = photo_h * aspect, photo_h
        else:
            crop_w, crop_h = photo_w, photo_w / aspect
        zoom = rng.uniform(0.6, 1.0)
        crop_w, crop_h = int(crop_w * zoom), int(crop_h * zoom)
        x = int(rng.integers(0, photo_w - crop_w + 1))
        y = int(rng.integers(0, photo_h - crop_h + 1))
        weights = rng.dirichlet([KIND_MIX[kind] for kind in KINDS])
        return CameraPlan(
            index=index, background=name, crop=(x, y, crop_w, crop_h), mirrored=bool(rng.random() < 0.5),
            busyness=float(np.clip(np.exp(rng.normal(0.0, 0.7)), 0.15, 3.0)),
            kind_weights=tuple(float(w) for w in weights),
            morning_peak=float(rng.normal(8.5, 0.3)), evening_peak=float(rng.normal(17.5, 0.4)),
            sunrise=float(rng.normal(6.5, 0.25)), sunset=float(rng.normal(19.0, 0.25)),
            noise_day=float(rng.uniform(0.5, 1.2)), noise_night=float(rng.uniform(3.0, 5.0)),
            shake_rate=float(rng.uniform(0.0, 0.01)),
        )

    def arrivals_per_hour_shape(self, hours: np.ndarray) -> np.ndarray:
        """Relative arrival rate over the day: near zero at night, a morning and an evening
        rush, a lower plateau in between and a tail into the evening (peak ~1)."""
        hours = np.asarray(hours, np.float64)

        def bump(centre: float, width: float) -> np.ndarray:
            distance = (hours - centre + 12.0) % 24.0 - 12.0
            return np.exp(-0.5 * (distance / width) ** 2)

        def between(start: float, end: float, ramp: float) -> np.ndarray:
            return _smoothstep((hours - start) / ramp) * (1 - _smoothstep((hours - end) / ramp))

        rushes = bump(self.morning_peak, 0.8) + 0.85 * bump(self.evening_peak, 1.0)
        daytime = 0.3 * between(self.morning_peak, self.evening_peak - 1.0, 1.5)
        evening = 0.12 * between(self.evening_peak, 21.0, 1.0)
        return 0.03 + rushes + daytime + evening

    def daylight(self, hours: np.ndarray) -> np.ndarray:
        """0 at night, 1 in full day, with 1.5-hour smooth ramps at dawn and dusk."""
        hours = np.asarray(hours, np.float64)
        rise = _smoothstep((hours - self.sunrise + 0.75) / 1.5)
        fall = 1.0 - _smoothstep((hours - self.sunset + 0.75) / 1.5)
        return rise * fall


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class Actor:
    """One actor's whole life, precomputed: scaled poses and its top-left per frame."""

    id: int
    kind: int  # index into KINDS
    start: int
    poses: list[np.ndarray]  # RGBA float32 at display size
    box: tuple[int, int, int, int]  # object box inside the pose, pixels
    box_pixels: int  # opaque pixels inside the object box (for the visible fraction)
    xs: np.ndarray  # int top-left per frame of life
    ys: np.ndarray
    moving: np.ndarray  # bool per frame of life: walking (animate) or dwelling

    @property
    def end(self) -> int:
        return self.start + len(self.xs)


@dataclass(frozen=True)
class Motion:
    """How an actor crosses the view: size, lane, speed, an optional dwell."""

    height: int
    width: int
    xs: np.ndarray
    ys: np.ndarray
    moving: np.ndarray


def _draw_motion(rng: np.random.Generator, sprite: Sprite, options: SceneOptions) -> Motion:
    """Enter at the left or right edge, cross the view in 1-2.5 s, and in 35% of cases stop
    for 0.5-2 s somewhere fully inside it; the lane drifts slightly."""
    frame_w, frame_h = options.width, options.height
    low, high, floor = SIZES[sprite.kind]
    height = int(min(0.92 * frame_h, max(floor, rng.uniform(low, high) * frame_h)))
    width = max(2, round(height * sprite.aspect))
    if width > 0.9 * frame_w:  # long signs on narrow frames
        width = int(0.9 * frame_w)
        height = max(2, round(width / sprite.aspect))
    speed = (frame_w + width) / (rng.uniform(1.0, 2.5) * options.fps)  # pixels per frame
    dwell = round(rng.uniform(0.5, 2.0) * options.fps) if rng.random() < 0.35 else 0
    stop_x = rng.uniform(0, frame_w - width)
    leftwards = bool(rng.random() < 0.5)
    distance_to_stop = (frame_w - stop_x) if leftwards else (stop_x + width)
    frames = math.ceil((frame_w + width) / speed) + dwell + 1
    travelled = speed * np.arange(frames)
    if dwell:
        after = travelled - speed * dwell
        travelled = np.where(travelled <= distance_to_stop, travelled,
                             np.where(after <= distance_to_stop, distance_to_stop, after))
    moving = np.r_[True, np.diff(travelled) > 0]
    xs = (frame_w - travelled) if leftwards else (travelled - width)
    lane = rng.uniform(0, frame_h - height)
    drift = rng.uniform(-0.08, 0.08) * speed
    ys = np.clip(lane + drift * np.arange(frames), 0, frame_h - height)
    return Motion(height, width, np.round(xs).astype(np.int64), np.round(ys).astype(np.int64), moving)


def _scale_pose(pose: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    shrinking = height < pose.shape[0]
    return cv2.resize(pose, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _draw_sprite(rng: np.random.Generator, plan: CameraPlan) -> Sprite:
    choices = sprite_library()[KINDS[int(rng.choice(len(KINDS), p=plan.kind_weights))]]
    return choices[int(rng.integers(len(choices)))]


def _make_actor(rng: np.random.Generator, identity: int, start: int, plan: CameraPlan,
                options: SceneOptions) -> Actor:
    sprite = _draw_sprite(rng, plan)
    motion = _draw_motion(rng, sprite, options)
    poses = [_scale_pose(pose, motion.width, motion.height) for pose in sprite.poses]
    bx, by, bw, bh = sprite.box
    box = (round(bx * motion.width), round(by * motion.height),
           max(1, round(bw * motion.width)), max(1, round(bh * motion.height)))
    alpha = poses[0][box[1]:box[1] + box[3], box[0]:box[0] + box[2], 3]
    return Actor(identity, KINDS.index(sprite.kind), start, poses, box,
                 max(1, int(np.count_nonzero(alpha >= 0.5))), motion.xs, motion.ys, motion.moving)


def _traffic(plan: CameraPlan, options: SceneOptions, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrival rate per frame and the expected number of actors in view.

    Lifetimes are sampled from the actors' own motion model; the rate is scaled so that a
    camera of busyness 1 has PEAK_ACTORS in view at its peak (Little's law), and the
    expected count in view is the rate convolved with the lifetimes' survival function.
    """
    rng = camera_rng(options.seed, plan.index, 3)
    lifetimes = np.array([len(_draw_motion(rng, _draw_sprite(rng, plan), options).xs) for _ in range(256)])
    peak = options.crowd * plan.busyness * PEAK_ACTORS
    rate = peak * plan.arrivals_per_hour_shape(hours) / lifetimes.mean()
    survival = (lifetimes[None, :] > np.arange(lifetimes.max() + 1)[:, None]).mean(axis=1)
    return rate, np.convolve(rate, survival)[: len(rate)].astype(np.float32)


@dataclass
class Truth:
    """Generative truth of one frame, as rows of the truth.* arrays."""

    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    visible: list[float] = field(default_factory=list)


class CameraRenderer:
    """Renders one camera's frames in display order, with their truth."""

    def __init__(self, plan: CameraPlan, options: SceneOptions) -> None:
        import cv2

        self.plan, self.options = plan, options
        width, height = options.width, options.height
        x, y, crop_w, crop_h = plan.crop
        photo = background(plan.background)[y:y + crop_h, x:x + crop_w]
        if plan.mirrored:
            photo = photo[:, ::-1]
        size = (width + 2 * SHAKE_MARGIN, height + 2 * SHAKE_MARGIN)
        self.background = cv2.resize(np.ascontiguousarray(photo), size,
                                     interpolation=cv2.INTER_AREA).astype(np.float32)
        noise_rng = camera_rng(options.seed, plan.index, 2)
        self.noise = noise_rng.standard_normal(
            (NOISE_BANK, height + NOISE_MARGIN, width + NOISE_MARGIN, 3), dtype=np.float32)
        self.noise_rng = noise_rng
        self.hours = options.clock_hours()
        self.light = plan.daylight(self.hours)
        self.night = self.light < IR_THRESHOLD
        rate, self.activity = _traffic(plan, options, self.hours)
        self.actors = self._arrivals(rate)

    def _arrivals(self, rate: np.ndarray) -> list[Actor]:
        rng = camera_rng(self.options.seed, self.plan.index, 1)
        counts = rng.poisson(rate)
        actors: list[Actor] = []
        for frame, count in enumerate(counts):
            for _ in range(int(count)):
                actors.append(_make_actor(rng, len(actors), frame, self.plan, self.options))
        return actors

    def frames(self) -> Iterator[tuple[np.ndarray, Truth]]:
        """Yield (RGB uint8 frame, truth) for every frame."""
        width, height = self.options.width, self.options.height
        shake, shake_left = (0, 0), 0
        rng = self.noise_rng
        for k in range(self.options.frames):
            if shake_left == 0 and rng.random() < self.plan.shake_rate:
                shake = (int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))
                shake_left = int(rng.integers(1, 4))
            dx, dy = shake if shake_left else (0, 0)
            shake_left = max(0, shake_left - 1)
            top, left = SHAKE_MARGIN + dy, SHAKE_MARGIN + dx
            canvas = self.background[top:top + height, left:left + width].copy()
            truth = self._draw_actors(canvas, k)
            bank = int(rng.integers(NOISE_BANK))
            oy, ox = (int(v) for v in rng.integers(0, NOISE_MARGIN + 1, size=2))
            noise = self.noise[bank, oy:oy + height, ox:ox + width]
            yield self._expose(canvas, noise, k), truth

    def _draw_actors(self, canvas: np.ndarray, k: int) -> Truth:
        """Alpha-blend the actors alive at frame k, nearer (lower) ones on top; the visible
        fraction counts each object's opaque pixels not covered by others or the frame edge."""
        height, width = canvas.shape[:2]
        alive = [a for a in self.actors if a.start <= k < a.end]
        alive.sort(key=lambda a: (a.ys[k - a.start] + a.poses[0].shape[0], a.id))
        owner = np.zeros((height, width), np.int32)
        placed = []
        for slot, actor in enumerate(alive, start=1):
            t = k - actor.start
            step = max(1, round(POSE_SECONDS * self.options.fps))
            pose = actor.poses[(t // step) % len(actor.poses) if actor.moving[t] else 0]
            x, y = int(actor.xs[t]), int(actor.ys[t])
            ph, pw = pose.shape[:2]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + pw, width), min(y + ph, height)
            if x0 >= x1 or y0 >= y1:
                continue
            patch = pose[y0 - y:y1 - y, x0 - x:x1 - x]
            region = canvas[y0:y1, x0:x1]
            alpha = patch[..., 3:]
            region += alpha * (patch[..., :3] - region)
            owner[y0:y1, x0:x1][patch[..., 3] >= 0.5] = slot
            placed.append((slot, actor, x, y))
        truth = Truth()
        for slot, actor, x, y in placed:
            bx, by, bw, bh = actor.box
            x0, y0 = max(x + bx, 0), max(y + by, 0)
            x1, y1 = min(x + bx + bw, width), min(y + by + bh, height)
            if x0 >= x1 or y0 >= y1:
                continue
            visible = np.count_nonzero(owner[y0:y1, x0:x1] == slot) / actor.box_pixels
            if visible <= 0:
                continue
            truth.boxes.append((float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
            truth.kinds.append(actor.kind)
            truth.ids.append(actor.id)
            truth.visible.append(min(1.0, float(visible)))
        return truth

    def _expose(self, canvas: np.ndarray, noise: np.ndarray, k: int) -> np.ndarray:
        """Light and sensor: by day a gain that dims and warms towards dusk (a mono sensor
        sees it in flat grey); at night the infrared mode (R = G = B, flatter contrast,
        stronger noise)."""
        light = float(self.light[k])
        if self.night[k]:
            grey = canvas @ LUMA
            out = 0.55 * grey + 12.0 + self.plan.noise_night * noise[..., 0]
            pixels = np.repeat(out[..., None], 3, axis=2)
        else:
            gain = 0.3 + 0.7 * light
            warm = 0.12 * (1.0 - light)
            tint = np.array([gain * (1 + warm), gain, gain * (1 - warm)], np.float32)
            if self.options.sensor == "mono":
                grey = (canvas * tint) @ LUMA
                out = MONO_CONTRAST * grey + MONO_LIFT + self.plan.noise_day * noise[..., 0]
                pixels = np.repeat(out[..., None], 3, axis=2)
            else:
                pixels = canvas * tint + self.plan.noise_day * noise
        pixels += 0.5
        np.clip(pixels, 0, 255, out=pixels)
        return pixels.astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Audio: speech while people are in view, ambient noise throughout.


@dataclass(frozen=True)
class AudioTrack:
    """A camera's rendered audio: ``samples`` int16 (full scale 32768), ``speech`` bool per
    frame (speech audible in the frame's window), and the draws recorded in scenes.json."""

    samples: np.ndarray
    speech: np.ndarray
    noise_kind: str
    snr_db: float
    speech_dbfs: float
    noise_dbfs: float
    night_quieter_db: float
    turns: int

    def entry(self) -> dict[str, Any]:
        """The camera's ``"audio"`` entry in scenes.json."""
        return {"noise_kind": self.noise_kind, "snr_db": round(self.snr_db, 4),
                "speech_dbfs": round(self.speech_dbfs, 4), "noise_dbfs": round(self.noise_dbfs, 4),
                "night_quieter_db": round(self.night_quieter_db, 4), "turns": self.turns,
                "speech_frames": int(self.speech.sum())}


def _ambient(rng: np.random.Generator, samples: int, kind: str) -> np.ndarray:
    """Unit-RMS ambient noise of ``kind``, made in blocks of AMBIENT_BLOCK_SECONDS (the last
    one up to twice the crossfade longer or shorter) joined by equal-power crossfades,
    because some kinds (traffic, rain) cost more than linear time in their length."""
    from coinfer.bench.data.speech import ambient_noise

    step, overlap = round(AMBIENT_BLOCK_SECONDS * AUDIO_RATE), round(AMBIENT_CROSSFADE_SECONDS * AUDIO_RATE)
    starts = list(range(0, samples, step))
    if len(starts) > 1 and samples - starts[-1] < 2 * overlap:
        starts.pop()
    ends = [*starts[1:], samples]
    rise = np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, overlap))
    out = np.zeros(samples)
    for block, (start, end) in enumerate(zip(starts, ends, strict=True)):
        last = end == samples
        length = end - start + (0 if last else overlap)
        noise = ambient_noise(rng, length / AUDIO_RATE, AUDIO_RATE, kind)[:length]
        if block:
            noise[:overlap] *= rise
        if not last:
            noise[-overlap:] *= rise[::-1]
        out[start:start + len(noise)] += noise
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every run of True in a bool array."""
    edges = np.flatnonzero(np.diff(np.r_[0, np.asarray(mask, np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _talk(rng: np.random.Generator, samples: int) -> tuple[np.ndarray, int]:
    """Dry speech filling one presence of ``samples``: back-to-back turns of drawn length,
    each a new drawn voice, with drawn pauses; returns the waveform and the number of turns."""
    from coinfer.bench.data.speech import synthesize_utterance

    dry = np.zeros(samples)
    at, turns = round(rng.uniform(*FIRST_TURN_DELAY) * AUDIO_RATE), 0
    while samples - at >= MIN_TURN_SECONDS * AUDIO_RATE:
        length = min(round(rng.uniform(*TURN_SECONDS) * AUDIO_RATE), samples - at)
        waveform = synthesize_utterance(rng, length / AUDIO_RATE, AUDIO_RATE).waveform[:samples - at]
        dry[at:at + len(waveform)] = waveform
        at += len(waveform) + round(rng.uniform(*TURN_PAUSE) * AUDIO_RATE)
        turns += 1
    return dry, turns


def _audible(speech: np.ndarray) -> np.ndarray:
    """Per sample: inside a 10 ms hop within SPEECH_FLOOR_DB of the loudest hop, and not
    silent itself (so a hop straddling the end of a presence marks only its speech)."""
    hop = AUDIO_RATE // 100
    hops = -(-len(speech) // hop)
    padded = np.zeros(hops * hop)
    padded[:len(speech)] = speech
    rms = np.sqrt(np.mean(padded.reshape(hops, hop) ** 2, axis=1))
    if hops == 0 or rms.max() <= 0:
        return np.zeros(len(speech), bool)
    loud = rms > rms.max() * 10 ** (SPEECH_FLOOR_DB / 20)
    return np.repeat(loud, hop)[:len(speech)] & (speech != 0)


def render_audio(rng: np.random.Generator, options: SceneOptions, present: np.ndarray,
                 light: np.ndarray) -> AudioTrack:
    """A camera's audio track, ``options.frames * options.samples_per_frame`` samples.

    Ambient noise of one drawn kind runs throughout, up to a drawn number of dB quieter in
    the dark (following ``light``, the daylight per frame). While ``present`` (per frame),
    people talk: turns of real synthesised speech through one drawn room per camera, faded
    out when the presence ends and silent outside it. The audible speech gets a drawn RMS
    level, the daytime noise sits a drawn SNR under it, and the mix is scaled down as a
    whole if a peak would pass 0.99. Deterministic from ``rng``.
    """
    from coinfer.bench.data.speech import NOISE_KINDS, convolve, quantise, room_response

    frames, spf = options.frames, options.samples_per_frame
    samples = frames * spf
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    snr_db, speech_dbfs = rng.uniform(*SNR_DB), rng.uniform(*SPEECH_DBFS)
    night_db = rng.uniform(*NIGHT_QUIETER_DB)
    room = room_response(rng, AUDIO_RATE)
    darkness = np.interp(np.arange(samples), (np.arange(frames) + 0.5) * spf,
                         1.0 - np.asarray(light, np.float64))
    noise = _ambient(rng, samples, kind) * 10 ** ((speech_dbfs - snr_db - night_db * darkness) / 20)
    speech = np.zeros(samples)
    fade = round(SPEECH_FADE_SECONDS * AUDIO_RATE)
    turns = 0
    for first, last in _runs(present):
        dry, count = _talk(rng, (last - first) * spf)
        if count:
            wet = convolve(dry, room)
            tail = min(fade, len(wet))
            wet[len(wet) - tail:] *= np.linspace(1.0, 0.0, tail)
            speech[first * spf:last * spf] = wet
            turns += count
    audible = _audible(speech)
    if audible.any():
        speech *= 10 ** (speech_dbfs / 20) / np.sqrt(np.mean(speech[audible] ** 2))
    mix = speech + noise
    peak = float(np.abs(mix).max())
    gain_db = 20 * math.log10(0.99 / peak) if peak > 0.99 else 0.0
    mix *= 10 ** (gain_db / 20)
    return AudioTrack(quantise(mix, "int16"), np.any(audible.reshape(frames, spf), axis=1), kind,
                      float(snr_db), float(speech_dbfs + gain_db), float(speech_dbfs - snr_db + gain_db),
                      float(night_db), turns)


def _audio_index(options: SceneOptions) -> dict[str, Any]:
    """The set-wide audio facts recorded in scenes.json (absent without audio)."""
    from coinfer.bench.data.speech import NOISE_KINDS, package_version

    return {
        "sample_rate": AUDIO_RATE, "samples_per_frame": options.samples_per_frame, "dtype": "int16",
        "noise_kinds": list(NOISE_KINDS), "snr_db": list(SNR_DB), "speech_dbfs": list(SPEECH_DBFS),
        "night_quieter_db": list(NIGHT_QUIETER_DB),
        "presence": {"kinds": list(PRESENCE_KINDS), "min_visible": PRESENCE_VISIBLE},
        "silent_from": options.silent_from,
        "speech_floor_db": SPEECH_FLOOR_DB,
        "synthesizer": {"name": "espeak-ng", "package": "espeakng-loader",
                        "version": package_version("espeakng-loader")},
    }


# ---------------------------------------------------------------------------------------
# Encoding, decoding, detection, files.


def _encoder_options(options: SceneOptions) -> dict[str, str]:
    gop, bframes = options.gop, options.bframes
    quality = DEFAULT_QUALITY[options.codec]
    if options.bitrate:
        rate = {}
    elif options.codec == "mjpeg":  # a fixed quantiser, pinned through its allowed range
        rate = {"flags": "+qscale", "qmin": quality, "qmax": quality}
    else:
        rate = {"crf": quality}
    if options.codec == "h264":
        # mbtree=0: x264's macroblock-tree pass reads uninitialised rows when the height is
        # not a multiple of 16 (180, 108), which made B-frame streams differ run to run.
        return {"preset": "veryfast", **rate,
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:open-gop=0:"
                               "mbtree=0"}
    if options.codec == "hevc":
        return {"preset": "ultrafast", **rate,
                "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:bframes={bframes}:"
                               "log-level=error:pools=none:frame-threads=1"}
    if options.codec == "vp9":
        return {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "row-mt": "0",
                "keyint_min": str(gop), **({"b": "0"} if not options.bitrate else {}), **rate}
    return rate


def encode(frames: Iterator[np.ndarray], path: Path, options: SceneOptions) -> None:
    """Encode RGB frames with a fixed closed GOP, pts = frame index (time base 1/fps)."""
    import av
    import cv2

    codec = CODECS[options.codec][0]
    # bitexact: no random Matroska segment UID, no muxer version strings.
    container_options = {"fflags": "+bitexact"}
    if options.container == "mp4":
        container_options["video_track_timescale"] = str(options.fps)
    with av.open(str(path), "w", options=container_options) as container:
        # Every encoder in CODECS is a video encoder.
        stream = cast(av.VideoStream, container.add_stream(codec, rate=options.fps,
                                                           options=_encoder_options(options)))
        stream.width, stream.height = options.width, options.height
        stream.pix_fmt = "yuvj420p" if options.codec == "mjpeg" else "yuv420p"
        stream.time_base = Fraction(1, options.fps)
        context = stream.codec_context
        context.time_base = Fraction(1, options.fps)
        context.gop_size = cast(int, options.gop)  # __post_init__ filled in the default
        context.max_b_frames = options.bframes
        context.thread_count = 1  # a single thread keeps the bitstream reproducible
        if options.bitrate:
            context.bit_rate = options.bitrate * 1000
        convert = options.codec != "mjpeg"  # OpenCV's BT.601 limited-range I420, faster than swscale
        for k, rgb in enumerate(frames):
            if convert:
                yuv: np.ndarray = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            else:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def decode_frames(path: str | os.PathLike) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (pts, RGB uint8 frame) of a scene video in display order.

    This is the conversion the recorded detections saw; use it to reproduce them. 4:2:0
    limited-range video goes through OpenCV (about 4x faster than swscale's rgb24 at these
    sizes, within 1 level of it); anything else (MJPEG's full range) through swscale.
    """
    import av
    import cv2

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.format.name == "yuv420p":
                rgb = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
            else:
                rgb = frame.to_ndarray(format="rgb24")
            assert frame.pts is not None  # encode() stamps every frame with its index
            yield int(frame.pts), rgb


_DETECTORS: dict[str, Any] = {}


def _detector(task: str) -> Any:
    """One detector object per task per process (loading a cascade or ONNX model once)."""
    from coinfer.edge.models.detectors import create_detector

    if task not in _DETECTORS:
        _DETECTORS[task] = create_detector(task)
    return _DETECTORS[task]


def generate_camera(options: SceneOptions, index: int, directory: str | os.PathLike) -> dict[str, Any]:
    """Render, encode, decode and detect one camera into ``directory``; returns its
    scenes.json entry plus the sha256 of its files (under ``"files"``)."""
    from coinfer.edge.models.detectors import single_threaded

    directory = Path(directory)
    plan = CameraPlan.draw(options, index)
    renderer = CameraRenderer(plan, options)
    video = directory / f"{plan.id}.{options.container}"
    truths: list[Truth] = []

    def rendered() -> Iterator[np.ndarray]:
        for frame, truth in renderer.frames():
            truths.append(truth)
            yield frame

    encode(rendered(), video, options)
    detected: dict[str, list[np.ndarray]] = {task: [] for task in options.tasks}
    pts = []
    with single_threaded():
        detectors = {task: _detector(task) for task in options.tasks}
        for stamp, frame in decode_frames(video):
            pts.append(stamp)
            for task, detector in detectors.items():
                detected[task].append(detector(frame))
    if len(pts) != options.frames:
        raise CoinferError(f"{video.name}: decoded {len(pts)} frames, encoded {options.frames}")
    arrays: dict[str, np.ndarray] = {
        "pts": np.asarray(pts, np.int64),
        "clock_hours": renderer.hours,
        "night": renderer.night,
        "activity": renderer.activity,
    }
    for task in options.tasks:
        arrays[f"{task}.offsets"], arrays[f"{task}.boxes"] = ragged(detected[task], 4, np.float32)
    arrays["truth.offsets"], arrays["truth.boxes"] = ragged([t.boxes for t in truths], 4, np.float32)
    for name, dtype in (("kinds", np.int16), ("ids", np.int32), ("visible", np.float32)):
        arrays[f"truth.{name}"] = ragged([getattr(t, name) for t in truths], 0, dtype)[1]
    track = None
    if options.audio:
        present = presence(arrays["truth.offsets"], arrays["truth.kinds"], arrays["truth.visible"], KINDS)
        present &= ~options.silent()
        track = render_audio(camera_rng(options.seed, index, AUDIO_STREAM), options, present, renderer.light)
        arrays["audio"], arrays["audio.speech"] = track.samples, track.speech
    results = directory / f"{plan.id}.npz"
    write_npz(results, arrays)
    return {
        "id": plan.id, "video": video.name, "results": results.name, "background": plan.background,
        "busyness": round(plan.busyness, 6),
        "kind_weights": {kind: round(w, 6) for kind, w in zip(KINDS, plan.kind_weights, strict=True)},
        "morning_peak": round(plan.morning_peak, 4), "evening_peak": round(plan.evening_peak, 4),
        "sunrise": round(plan.sunrise, 4), "sunset": round(plan.sunset, 4),
        "actors": len(renderer.actors), "bytes": video.stat().st_size,
        **({"audio": track.entry()} if track else {}),
        "files": {video.name: sha256_file(video), results.name: sha256_file(results)},
    }


def _start_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def generate_scenes(out_dir: str | os.PathLike, options: SceneOptions, *, workers: int | None = None,
                    progress: bool = True, overwrite: bool = False) -> SceneSet:
    """Generate the scene set into ``out_dir`` (atomically: all of it or nothing).

    Cameras are spread over ``workers`` processes (default: the CPU count); the outputs
    do not depend on it.
    """
    from tqdm import tqdm

    workers = max(1, min(options.cameras, workers or os.cpu_count() or 1))
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CoinferError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    if options.audio:
        from coinfer.bench.data.speech import espeak_paths

        espeak_paths()  # fail before any work if the speech synthesiser is missing
    bar = tqdm(total=options.cameras * options.frames, unit="frame", disable=not progress,
               desc=f"scenes ({options.cameras} cameras)")
    with bar, atomic_directory(out_dir, overwrite=overwrite) as staging:
        entries: dict[int, dict[str, Any]] = {}
        if workers == 1:
            for index in range(options.cameras):
                entries[index] = generate_camera(options, index, staging)
                bar.update(options.frames)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker)
            try:
                futures = {pool.submit(generate_camera, options, i, str(staging)): i
                           for i in range(options.cameras)}
                for future in as_completed(futures):
                    entries[futures[future]] = future.result()
                    bar.update(options.frames)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        files: dict[str, str] = {}
        cameras = []
        for index in range(options.cameras):
            entry = entries[index]
            files.update(entry.pop("files"))
            cameras.append(entry)
        atomic_write_json(staging / INDEX_FILE, _index(options, cameras, files))
    return SceneSet.load(out_dir)


def _index(options: SceneOptions, cameras: list[dict[str, Any]], files: dict[str, str]) -> dict[str, Any]:
    time_base = options.time_base
    return {
        "format": FORMAT, "version": VERSION, "seed": options.seed, "fps": options.fps,
        "width": options.width, "height": options.height, "codec": options.codec,
        "container": options.container, "time_base": [time_base.numerator, time_base.denominator],
        "gop": options.gop, "bframes": options.bframes, "bitrate": options.bitrate,
        "seconds": options.seconds, "frames": options.frames, "tasks": list(options.tasks),
        "actor_kinds": list(KINDS), "clock": {"start": options.day_start, "end": options.day_end},
        "crowd": options.crowd, **({"audio": _audio_index(options)} if options.audio else {}),
        **({"backgrounds": list(options.backgrounds)} if options.backgrounds is not None else {}),
        **({"sensor": options.sensor} if options.sensor != "colour" else {}),
        "cameras": cameras, "files": dict(sorted(files.items())),
    }
