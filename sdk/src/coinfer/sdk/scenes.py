"""Scene sets on disk: camera videos with per-frame results, verified on load.

A scene set is what a decode-all video-analytics system records: per camera, a video and
what the real detectors found on each of its decoded frames. It comes from one of two
sources, read by the same loader:

- generated: ``coinfer data scenes`` (coinfer-bench) draws the videos into the set and also
  stores what only a generator knows: the generative truth (the actors' boxes, kinds,
  identities and visible fractions), the clock and light, and optionally an audio track;
- recorded from real video: ``coinfer gate train --videos DIR`` (:mod:`coinfer.edge.recorder`)
  decodes the user's own files, which stay where they are, and stores the detections plus
  the decode-all packet log, so a later run trains again without decoding. Nothing
  generative exists for such a set: its accessors (:attr:`SceneCamera.clock_hours`,
  :meth:`SceneCamera.truth`, ...) raise :class:`NoTruthError` naming what is missing.

The edge trains and replays on both. Only numpy and the standard library are needed to
read one. Format (version 1), a directory holding::

    scenes.json   {"format": "coinfer-scenes", "version": 1, "tasks": [task, ...],
                   "cameras": [{"id", "video", "results", ...}, ...],
                   "files": {file name in the set: sha256}}
        generated: also "frames" (every camera's), "fps", "width", "height", "codec", "gop",
                   "actor_kinds" (what truth.kinds index), the options it was drawn with
                   and, with audio, "audio" (see coinfer.bench.data.scenes); "video" and
                   "results" are files of the set
        recorded:  also "videos": {"directory": absolute path, "files": {video name: sha256}},
                   checked on load (a video changed since it was recorded is refused); each
                   camera's "video" is a name in it and the camera entry adds "frames",
                   "fps", "width", "height", "codec", "time_base", "frame_rate",
                   "parse_errors" and "decode_errors"
    RESULTS.npz   one per camera (:func:`write_npz`), N = the camera's display frames:
        pts              int64 [N]        the decoder's timestamp of display frame d (a raw
                                          stream without timestamps: its packet's decode index)
        TASK.offsets     int64 [N + 1]    frame d's detections are boxes[offsets[d]:offsets[d + 1]]
        TASK.boxes       float32 [K, 4]   x, y, w, h in frame pixels
      generated only:
        clock_hours float32 [N], night bool [N], activity float32 [N]
        truth.offsets int64 [N + 1], truth.boxes float32 [T, 4], truth.kinds int16 [T],
        truth.ids int32 [T], truth.visible float32 [T]
        audio int16 [N * S], audio.speech bool [N]            (a set generated with audio)
      recorded only, the decode-all packet log (P packets in decode order):
        packets.pts, packets.dts      int64 [P]   NO_TIMESTAMP (FFmpeg's AV_NOPTS_VALUE) if none
        packets.size int64 [P], packets.keyframe bool [P]
        packets.picture int8 [P]      the parsed coinfer.sdk.gate.packet.PictureType
        packets.reference, packets.random_access, packets.show   bool [P]  (parsed header)
        packets.frame int64 [P]       display index of the packet's picture
        packets.decoded_picture int8 [P]         the picture type the decoder reported
        packets.decode_seconds float64 [P]       the time decoding the packet took

Example::

    scenes = SceneSet.load("data/campus")          # or the logs of `coinfer gate train --videos`
    for camera in scenes.cameras:
        print(camera.id, camera.video_path, camera.counts("faces").mean())
    if scenes.has_truth:
        print(scenes.cameras[0].truth_counts("face").mean())
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.datadir import read_index, sha256_file
from coinfer.sdk.errors import CoinferError

FORMAT = "coinfer-scenes"
VERSION = 1
INDEX_FILE = "scenes.json"
#: Actors that talk in a generated set's audio, and how visible they must be.
PRESENCE_KINDS = ("face", "person")
PRESENCE_VISIBLE = 0.3
NO_AUDIO_HINT = ("the set was generated without audio; regenerate it with `coinfer data scenes --audio` "
                 "(SceneOptions(audio=True))")
#: Why a set recorded from real video has no clock, light or actors.
NO_TRUTH = "recorded from real video: no generative truth"
#: A packet without a timestamp (raw Annex-B streams), as FFmpeg's AV_NOPTS_VALUE.
NO_TIMESTAMP = np.iinfo(np.int64).min
#: The decode-all packet log of a recorded set: array name -> dtype (one row per packet).
PACKET_ARRAYS: dict[str, Any] = {
    "packets.pts": np.int64, "packets.dts": np.int64, "packets.size": np.int64,
    "packets.keyframe": np.bool_, "packets.picture": np.int8, "packets.reference": np.bool_,
    "packets.random_access": np.bool_, "packets.show": np.bool_, "packets.frame": np.int64,
    "packets.decoded_picture": np.int8, "packets.decode_seconds": np.float64,
}


class SceneFormatError(CoinferError):
    """A scene set on disk is missing, tampered with, or of another format or version."""


class NoTruthError(CoinferError):
    """What only a generator knows was asked of a set recorded from real video."""


def ragged(rows: Sequence[np.ndarray | Sequence[Any]], width: int,
           dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame rows as a results file stores them: (offsets [N+1] int64, values [K, width],
    or [K] when ``width`` is 0); frame d's rows are values[offsets[d]:offsets[d + 1]].

    >>> offsets, boxes = ragged([np.zeros((2, 4)), np.zeros((0, 4))], 4, np.float32)
    >>> offsets.tolist(), boxes.shape, boxes.dtype.name
    ([0, 2, 2], (2, 4), 'float32')
    """
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    shape = (0, width) if width else (0,)
    values = np.concatenate([np.asarray(r, dtype).reshape(-1, *shape[1:]) for r in rows]) if rows \
        else np.zeros(shape, dtype)
    return offsets, values.astype(dtype, copy=False)


def presence(offsets: np.ndarray, kinds: np.ndarray, visible: np.ndarray,
             actor_kinds: Sequence[str]) -> np.ndarray:
    """Per frame, from the truth.* CSR arrays (``kinds`` index ``actor_kinds``): is an actor of
    :data:`PRESENCE_KINDS` more than :data:`PRESENCE_VISIBLE` visible? The generated audio
    track's speech follows this."""
    frames = len(offsets) - 1
    codes = [actor_kinds.index(kind) for kind in PRESENCE_KINDS if kind in actor_kinds]
    talking = np.isin(kinds, codes) & (visible > PRESENCE_VISIBLE)
    frame_of = np.repeat(np.arange(frames), np.diff(offsets))
    return np.bincount(frame_of[talking], minlength=frames) > 0


def as_float(waveforms: np.ndarray) -> np.ndarray:
    """Stored waveforms as float32 in [-1, 1] (int16 at full scale 32768, or float32 as is)."""
    if waveforms.dtype == np.int16:
        return waveforms.astype(np.float32) / 32768.0
    return waveforms.astype(np.float32, copy=False)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-reproducible: numpy stamps each zip entry with
    the current time, this writes a fixed timestamp and sorted entry order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


class SceneCamera:
    """One camera of a loaded scene set: its video file, per-frame arrays and, in a set made
    with ``audio=True``, its audio track (``audio_info``: the set's ``"audio"`` facts).

    ``video_dir`` is where the video lives when it is not in the set (a set recorded from
    real video keeps the user's files where they are)."""

    def __init__(self, root: Path, entry: dict[str, Any], arrays: dict[str, np.ndarray],
                 tasks: Sequence[str], kinds: Sequence[str],
                 audio_info: dict[str, Any] | None = None, *, video_dir: Path | None = None) -> None:
        self.entry = entry
        self.id: str = entry["id"]
        self.video_path = (root if video_dir is None else video_dir) / entry["video"]
        self.results_path = root / entry["results"]
        self.tasks = tuple(tasks)
        self.kinds = tuple(kinds)
        self.arrays = arrays
        self.audio_info = audio_info

    @property
    def frame_count(self) -> int:
        return len(self.arrays["pts"])

    @property
    def pts(self) -> np.ndarray:
        return self.arrays["pts"]

    @property
    def has_truth(self) -> bool:
        """Whether the generator's truth, clock and light are here (False for real video)."""
        return "truth.offsets" in self.arrays

    @property
    def has_packet_log(self) -> bool:
        """Whether the decode-all packet log was recorded (sets recorded from real video)."""
        return "packets.size" in self.arrays

    def _generative(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise NoTruthError(f"camera {self.id} of {self.results_path.parent} has no {name}: {NO_TRUTH}")
        return self.arrays[name]

    @property
    def clock_hours(self) -> np.ndarray:
        return self._generative("clock_hours")

    @property
    def night(self) -> np.ndarray:
        return self._generative("night")

    @property
    def activity(self) -> np.ndarray:
        return self._generative("activity")

    @property
    def has_audio(self) -> bool:
        return self.audio_info is not None

    def _check_audio(self) -> dict[str, Any]:
        """The audio track's facts; a :class:`CoinferError` when the camera has none."""
        if self.audio_info is None:
            raise CoinferError(f"camera {self.id} of {self.results_path.parent} has no audio track: "
                               f"{NO_AUDIO_HINT}")
        return self.audio_info

    @property
    def samples_per_frame(self) -> int:
        """Audio samples each frame owns."""
        return int(self._check_audio()["samples_per_frame"])

    @property
    def audio(self) -> np.ndarray:
        """The whole track: float32 [frames * samples_per_frame] in [-1, 1]."""
        self._check_audio()
        return as_float(self.arrays["audio"])

    def audio_window(self, k: int) -> np.ndarray:
        """Frame ``k``'s samples (float32 [samples_per_frame]), the sound during that frame."""
        spf = self.samples_per_frame
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.frame_count:
            raise CoinferError(f"frame index must be an integer in [0, {self.frame_count}), got {k!r}")
        return as_float(self.arrays["audio"][int(k) * spf:(int(k) + 1) * spf])

    @property
    def speech(self) -> np.ndarray:
        """bool per frame: synthesised speech audible in the frame's audio window."""
        self._check_audio()
        return self.arrays["audio.speech"]

    @property
    def people_present(self) -> np.ndarray:
        """bool per frame: someone who could be talking is in view (see :func:`presence`)."""
        arrays = self.arrays
        return presence(self._generative("truth.offsets"), arrays["truth.kinds"], arrays["truth.visible"],
                        self.kinds)

    def _rows(self, prefix: str, name: str) -> list[np.ndarray]:
        offsets, values = self.arrays[f"{prefix}.offsets"], self.arrays[f"{prefix}.{name}"]
        return [values[offsets[k]:offsets[k + 1]] for k in range(self.frame_count)]

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise CoinferError(f"{self.results_path.name} has no results for task {task!r}; "
                               f"it has {', '.join(self.tasks) or 'none'}")

    def boxes(self, task: str) -> list[np.ndarray]:
        """Detections of ``task`` per display frame: float32 [K, 4] as x, y, w, h."""
        self._check_task(task)
        return self._rows(task, "boxes")

    def counts(self, task: str) -> np.ndarray:
        """Number of ``task`` detections per display frame."""
        self._check_task(task)
        return np.diff(self.arrays[f"{task}.offsets"])

    def truth(self, kind: str | None = None) -> list[dict[str, np.ndarray]]:
        """Truth rows per frame (boxes, kinds, ids, visible), optionally of one kind."""
        self._generative("truth.offsets")
        rows = {name: self._rows("truth", name) for name in ("boxes", "kinds", "ids", "visible")}
        code = self._kind_code(kind) if kind is not None else None
        out = []
        for k in range(self.frame_count):
            keep = slice(None) if code is None else rows["kinds"][k] == code
            out.append({name: rows[name][k][keep] for name in rows})
        return out

    def _kind_code(self, kind: str) -> int:
        self._generative("truth.offsets")
        if kind not in self.kinds:
            raise CoinferError(f"unknown actor kind {kind!r}; choose from {', '.join(self.kinds)}")
        return self.kinds.index(kind)

    def truth_counts(self, kind: str, min_visible: float = 0.0) -> np.ndarray:
        """Actors of ``kind`` in view per frame (those more than ``min_visible`` visible)."""
        code = self._kind_code(kind)
        selected = (self.arrays["truth.kinds"] == code) & (self.arrays["truth.visible"] > min_visible)
        frame_of = np.repeat(np.arange(self.frame_count), np.diff(self.arrays["truth.offsets"]))
        return np.bincount(frame_of[selected], minlength=self.frame_count)


class SceneSet:
    """A generated or recorded scene set, verified on load (format, version, sha256 of every
    file, and of a recorded set's source videos)."""

    def __init__(self, root: Path, index: dict[str, Any], cameras: list[SceneCamera]) -> None:
        self.root = root
        self.index = index
        self.cameras = cameras

    @property
    def recorded(self) -> bool:
        """Whether the set was recorded from real video (see the module doc), not generated."""
        return "videos" in self.index

    @property
    def has_truth(self) -> bool:
        """Whether the generator's truth, clock and light are here."""
        return not self.recorded

    def _set_wide(self, key: str) -> Any:
        """A fact every camera of a generated set shares; a recorded set's videos each have their own."""
        if key not in self.index:
            raise CoinferError(f"{self.root} was recorded from real video, whose files differ: it has no "
                               f"set-wide {key!r} (each camera's entry has its own)")
        return self.index[key]

    @property
    def fps(self) -> int:
        return int(self._set_wide("fps"))

    @property
    def frames(self) -> int:
        return int(self._set_wide("frames"))

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.index["tasks"])

    @property
    def actor_kinds(self) -> tuple[str, ...]:
        if "actor_kinds" not in self.index:
            raise NoTruthError(f"{self.root} has no actor kinds: {NO_TRUTH}")
        return tuple(self.index["actor_kinds"])

    @property
    def gop(self) -> int:
        return int(self._set_wide("gop"))

    @property
    def has_audio(self) -> bool:
        return "audio" in self.index

    @property
    def sample_rate(self) -> int:
        """Audio samples per second (a set generated with ``audio=True`` only)."""
        if not self.has_audio:
            raise CoinferError(f"scene set {self.root} has no audio track: {NO_AUDIO_HINT}")
        return int(self.index["audio"]["sample_rate"])

    @property
    def samples_per_frame(self) -> int:
        """Audio samples each frame owns."""
        return self.sample_rate // self.fps

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SceneSet:
        root = Path(directory)
        index_path = root / INDEX_FILE
        index = read_index(index_path, FORMAT, VERSION, SceneFormatError, "a scene set",
                           "generate one with `coinfer data scenes`, or record your videos with "
                           "`coinfer gate train --videos`")
        recorded = "videos" in index
        for key in ("tasks", "cameras", "files", *(() if recorded else ("frames", "actor_kinds"))):
            if key not in index:
                raise SceneFormatError(f"{index_path} has no {key!r} entry")
        files = index["files"]
        video_dir = _check_videos(root, index) if recorded else None
        for name, expected in files.items():
            path = root / name
            if Path(name).name != name:
                raise SceneFormatError(f"{index_path} lists {name!r}, which is not a plain file name")
            if not path.is_file():
                raise SceneFormatError(f"{path} is missing (listed in {INDEX_FILE})")
            if sha256_file(path) != expected:
                raise SceneFormatError(f"{path} does not match its sha256 in {INDEX_FILE}: "
                                       "the file was modified or truncated")
        audio = index.get("audio")
        if "audio" in index:
            _check_audio_index(index_path, index)
        cameras = []
        for entry in index["cameras"]:
            videos = index["videos"]["files"] if recorded else files
            for key, listed in (("video", videos), ("results", files)):
                if entry.get(key) not in listed:
                    raise SceneFormatError(f"{index_path}: camera {entry.get('id')!r} {key} file "
                                           f"{entry.get(key)!r} is not listed with a sha256")
            frames = entry.get("frames") if recorded else index["frames"]
            if not isinstance(frames, int) or frames < 0:
                raise SceneFormatError(f"{index_path}: camera {entry.get('id')!r} has no valid frame count "
                                       f"({frames!r})")
            arrays = _load_results(root / entry["results"], index, frames, recorded)
            cameras.append(SceneCamera(root, entry, arrays, index["tasks"], index.get("actor_kinds", ()),
                                       audio, video_dir=video_dir))
        return cls(root, index, cameras)


def _check_videos(root: Path, index: dict[str, Any]) -> Path:
    """A recorded set's source videos must be where they were and unchanged: the detections
    and packet log describe those bytes. Returns their directory."""
    videos = index["videos"]
    if not isinstance(videos, dict) or not isinstance(videos.get("directory"), str) \
            or not isinstance(videos.get("files"), dict):
        raise SceneFormatError(f"{root / INDEX_FILE}: 'videos' must hold a 'directory' and its 'files'")
    directory = Path(videos["directory"])
    for name, expected in videos["files"].items():
        path = directory / name
        if Path(name).name != name:
            raise SceneFormatError(f"{root / INDEX_FILE} lists video {name!r}, not a plain file name")
        if not path.is_file():
            raise SceneFormatError(f"{path}, the video {root} was recorded from, is missing; record the "
                                   "videos again where they are now")
        if sha256_file(path) != expected:
            raise SceneFormatError(f"{path} changed since {root} was recorded from it (its sha256 differs); "
                                   "record the videos again")
    return directory


def _check_audio_index(index_path: Path, index: dict[str, Any]) -> None:
    """The ``"audio"`` facts must give every frame a whole number of samples."""
    audio = index["audio"]
    rate = audio.get("sample_rate") if isinstance(audio, dict) else None
    spf = audio.get("samples_per_frame") if isinstance(audio, dict) else None
    if not isinstance(rate, int) or not isinstance(spf, int) or spf < 1 or spf * index.get("fps", 0) != rate:
        raise SceneFormatError(f"{index_path}: audio sample_rate {rate!r} and samples_per_frame {spf!r} "
                               f"do not fit fps {index.get('fps')!r}")


def _load_results(path: Path, index: dict[str, Any], frames: int, recorded: bool) -> dict[str, np.ndarray]:
    """Read a camera's npz and check every array's presence, dtype and shape: a generated
    camera's truth, clock and light, a recorded one's packet log."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SceneFormatError(f"{path} is not a readable npz file: {error}") from error

    def need(name: str, dtype: Any, shape: tuple[int | None, ...]) -> np.ndarray:
        if name not in arrays:
            raise SceneFormatError(f"{path} has no array {name!r}")
        array = arrays[name]
        if array.dtype != np.dtype(dtype) or array.ndim != len(shape) or any(
                want is not None and got != want for got, want in zip(array.shape, shape, strict=True)):
            raise SceneFormatError(f"{path}: array {name!r} is {array.dtype} {array.shape}, expected "
                                   f"{np.dtype(dtype)} {tuple('K' if s is None else s for s in shape)}")
        return array

    need("pts", np.int64, (frames,))
    if recorded:
        packets = len(need("packets.size", np.int64, (None,)))
        for name, dtype in PACKET_ARRAYS.items():
            need(name, dtype, (packets,))
        shown = arrays["packets.frame"]
        if packets and (shown.min() < 0 or shown.max() >= frames):
            raise SceneFormatError(f"{path}: packets.frame must index the {frames} frames")
    else:
        need("clock_hours", np.float32, (frames,))
        need("night", np.bool_, (frames,))
        need("activity", np.float32, (frames,))
    for prefix, extra in [*((task, ()) for task in index["tasks"]),
                          *(() if recorded else [("truth", ("kinds", "ids", "visible"))])]:
        offsets = need(f"{prefix}.offsets", np.int64, (frames + 1,))
        boxes = need(f"{prefix}.boxes", np.float32, (None, 4))
        if offsets[0] != 0 or offsets[-1] != len(boxes) or np.any(np.diff(offsets) < 0):
            raise SceneFormatError(f"{path}: {prefix}.offsets are not a valid CSR index of "
                                   f"{len(boxes)} boxes")
        for name, dtype in zip(extra, (np.int16, np.int32, np.float32), strict=False):
            need(f"{prefix}.{name}", dtype, (len(boxes),))
    if "audio" in index:
        need("audio", np.int16, (frames * int(index["audio"]["samples_per_frame"]),))
        need("audio.speech", np.bool_, (frames,))
    return arrays
