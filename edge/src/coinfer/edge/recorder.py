"""Record the user's own videos as a scene set: what a decode-all system sees on them.

Training the gate's contextual predictor needs inference logs: for every packet its parsed
header and what decoding it cost, for every decoded frame what the downstream detector
found. :func:`record_videos` makes them from a folder of plain video files that no
generator made (``.mp4``, ``.mkv``, ``.avi``, ``.webm``, raw ``.h264`` / ``.hevc``): it
demuxes each file with :class:`~coinfer.device.gate.source.PacketSource`, decodes every
packet (timing the decoder), converts each picture to RGB (PyAV's ``rgb24``, what the edge
runtime feeds its detectors) and runs the real detectors of
:mod:`coinfer.edge.models.detectors` on it, the same ones ``coinfer data scenes`` uses.

The logs are a scene set recorded from real video (format in :mod:`coinfer.sdk.scenes`):
one results ``.npz`` per video with the detections and the decode-all packet log, and
``scenes.json`` with the sha256 of every file and of every source video. The videos stay
where they are. Loading the logs checks that they are unchanged, and the gate trains on
them again without decoding (:func:`coinfer.edge.gate.traces.load_cameras`). Nothing a
generator knows (truth, clock, light) is invented: the set has none.

``coinfer gate train --videos DIR --detector faces --out PREDICTOR`` is the command line.

Example::

    from coinfer.edge.recorder import record_videos, reuse_logs

    logs = record_videos("videos/", ("faces",), "videos-logs")      # decodes and detects once
    print([camera.counts("faces").sum() for camera in logs.cameras])
    logs = reuse_logs("videos-logs", "videos/", ("faces",))          # later: no decoding
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from coinfer.device.gate.source import PacketSource
from coinfer.edge.gate.decoding import StreamDecoder, frame_array, frame_key
from coinfer.edge.gate.traces import CameraTrace, packet_log
from coinfer.edge.models.detectors import DETECTORS, Detector, create_detector, single_threaded
from coinfer.sdk.datadir import sha256_file
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.fsutil import atomic_directory, atomic_write_json
from coinfer.sdk.gate.packet import PacketInfo, PictureType
from coinfer.sdk.gate.replay import StreamTrace
from coinfer.sdk.scenes import FORMAT, INDEX_FILE, VERSION, SceneSet, ragged, write_npz

#: File name endings read as videos (case-insensitive).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".h264", ".hevc")
#: Audio is resampled to this rate (mono) for the audio models.
AUDIO_RATE = 16000
#: Frame rate assumed for a stream that states none (FFmpeg's own guess for raw streams).
DEFAULT_FPS = 25.0


class RecordingError(CoinferError):
    """A video folder that cannot be recorded, or logs that do not belong to it."""


@dataclass(frozen=True)
class VideoInfo:
    """What opening a video (without decoding it) tells: its first video stream's size, frame
    rate (FFmpeg's guess for a raw stream) and frame count as the container states it (0 when
    unknown), and whether it has audio."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    has_audio: bool


def find_videos(directory: str | os.PathLike) -> list[Path]:
    """The video files of ``directory`` (by :data:`VIDEO_SUFFIXES`), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecordingError(f"{directory} is not a directory of videos")
    videos = sorted(path for path in directory.iterdir()
                    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise RecordingError(f"{directory} holds no video files ({', '.join(VIDEO_SUFFIXES)})")
    return videos


def probe_video(path: Path) -> VideoInfo:
    """Open ``path`` and read its stream headers: fails fast, before hours of decoding, on a
    file that is not a video."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise RecordingError(f"{path} has no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate
            return VideoInfo(path, context.width, context.height, float(rate) if rate else DEFAULT_FPS,
                             int(stream.frames or 0), bool(container.streams.audio))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise RecordingError(f"{path} is not a readable video: {error}") from None


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """``tasks`` as detector names (each at most once), refusing unknown ones before any work."""
    tasks = tuple(dict.fromkeys(task.strip() for task in tasks if task.strip()))
    if not tasks:
        raise RecordingError(f"name at least one detector ({', '.join(DETECTORS)})")
    unknown = [task for task in tasks if task not in DETECTORS]
    if unknown:
        raise RecordingError(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(DETECTORS)}")
    return tasks


def decode_video(path: str | os.PathLike) -> Iterator[tuple[float, np.ndarray]]:
    """Every picture of a video's first video stream in display order: its time in seconds
    (the frame count over the frame rate when the stream has no timestamps) and its RGB uint8
    pixels, converted as :func:`record_videos` converts them."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
            for count, frame in enumerate(container.decode(stream)):
                seconds = frame.time if frame.time is not None else count / rate
                yield float(seconds), frame_array(frame)
    except (av.FFmpegError, OSError) as error:
        raise RecordingError(f"decoding {path} failed: {error}") from None


def decode_audio(path: str | os.PathLike, rate: int = AUDIO_RATE) -> tuple[np.ndarray, float] | None:
    """A video's first audio track resampled to ``rate`` Hz mono float32 in [-1, 1], and the
    time in seconds of its first sample; None for a video without audio."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks: list[np.ndarray] = []
            start: float | None = None
            for frame in container.decode(stream):
                if start is None and frame.time is not None:
                    start = float(frame.time)
                chunks.extend(resampled.to_ndarray().reshape(-1) for resampled in resampler.resample(frame))
            chunks.extend(resampled.to_ndarray().reshape(-1) for resampled in resampler.resample(None))
    except (av.FFmpegError, OSError) as error:
        raise RecordingError(f"decoding the audio of {path} failed: {error}") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return np.clip(samples, -1.0, 1.0), start or 0.0


@dataclass
class RecordedVideo:
    """One video's decode-all pass: its trace (results per display frame), the decoder's
    timestamp of every display frame, and the errors FFmpeg reported while decoding."""

    camera: CameraTrace
    pts: np.ndarray
    decode_errors: int


def _record_video(path: Path, detectors: dict[str, Detector], bar: Any) -> RecordedVideo:
    """Decode every packet of ``path`` in order, timing the decoder, and run the detectors on
    every picture as it comes out (display order)."""
    with PacketSource.open(str(path)) as source:
        decoder = StreamDecoder(source.parameters)
        packets: list[PacketInfo] = []
        seconds: list[float] = []
        display: dict[int, int] = {}  # frame key -> display index
        pictures: dict[int, PictureType] = {}
        detections: dict[str, list[np.ndarray]] = {task: [] for task in detectors}

        def detect(frames: dict[int, av.VideoFrame]) -> None:
            for key, frame in frames.items():
                if key in display:
                    raise RecordingError(f"{path}: two pictures share the timestamp {key}; remux the file "
                                         "so that every frame has its own")
                display[key] = len(display)
                pictures[key] = PictureType.from_ffmpeg(frame.pict_type)
                rgb = frame_array(frame)
                for task, detector in detectors.items():
                    detections[task].append(detector(rgb))
                bar.update()

        for packet in source:
            packets.append(packet.info)
            before = decoder.seconds
            frames = decoder.decode([(packet.info, packet.data)])
            seconds.append(decoder.seconds - before)
            detect(frames)
        detect(decoder.flush())
    if not packets:
        raise RecordingError(f"{path} holds no video packets")
    keys = [frame_key(info) for info in packets]
    lost = sum(key not in display for key in keys)
    if lost:
        why = f": {decoder.messages[0]}" if decoder.messages else ""
        raise RecordingError(f"{path}: {lost} of its {len(packets)} packets gave no picture (is the file "
                             f"damaged?){why}")
    trace = StreamTrace(packets, np.array([display[key] for key in keys], np.int64), detections)
    camera = CameraTrace(path.name, trace, source.parameters, np.asarray(seconds, np.float64),
                         np.array([int(pictures[key]) for key in keys]), source.parse_errors)
    return RecordedVideo(camera, np.array(list(display), np.int64), decoder.errors)


def _camera_entry(recorded: RecordedVideo, video: Path) -> dict[str, Any]:
    parameters = recorded.camera.parameters
    rate = parameters.frame_rate
    return {
        "id": video.name, "video": video.name, "results": f"{video.name}.npz", "frames": len(recorded.pts),
        "packets": len(recorded.camera.trace.packets), "codec": parameters.codec, "width": parameters.width,
        "height": parameters.height, "fps": float(rate) if rate else None,
        "frame_rate": [rate.numerator, rate.denominator] if rate else None,
        "time_base": [parameters.time_base.numerator, parameters.time_base.denominator],
        "bytes": video.stat().st_size, "parse_errors": recorded.camera.parse_errors,
        "decode_errors": recorded.decode_errors,
    }


def record_videos(videos_dir: str | os.PathLike, tasks: Sequence[str], out_dir: str | os.PathLike, *,
                  overwrite: bool = False, progress: bool = True) -> SceneSet:
    """Decode every video of ``videos_dir`` once, run the ``tasks``' detectors on every picture
    and write the logs to ``out_dir`` (atomically: all of it or nothing); returns them loaded."""
    import cv2
    from tqdm import tqdm

    tasks = check_tasks(tasks)
    videos = find_videos(videos_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise RecordingError(f"{out_dir} already exists; choose another folder for the logs")
    infos = [probe_video(path) for path in videos]  # a bad file fails now, not after the others
    hashes = {path.name: sha256_file(path) for path in videos}
    total = sum(info.frames for info in infos) if all(info.frames for info in infos) else None
    detectors = {task: create_detector(task) for task in tasks}
    bar = tqdm(total=total, unit="frame", desc=f"decode+detect ({len(videos)} videos)", disable=not progress)
    with bar, single_threaded(), atomic_directory(out_dir, overwrite=overwrite) as staging:
        cameras, files = [], {}
        for video in videos:
            recorded = _record_video(video, detectors, bar)
            arrays: dict[str, np.ndarray] = {"pts": recorded.pts, **packet_log(recorded.camera)}
            for task, rows in recorded.camera.trace.results.items():
                arrays[f"{task}.offsets"], arrays[f"{task}.boxes"] = ragged(rows, 4, np.float32)
            entry = _camera_entry(recorded, video)
            write_npz(staging / entry["results"], arrays)
            files[entry["results"]] = sha256_file(staging / entry["results"])
            cameras.append(entry)
        if any(sha256_file(video) != hashes[video.name] for video in videos):
            raise RecordingError(f"a video in {videos_dir} changed while it was being recorded; record again")
        atomic_write_json(staging / INDEX_FILE, {
            "format": FORMAT, "version": VERSION, "tasks": list(tasks),
            "recorder": {"av": av.__version__, "opencv": cv2.__version__, "frames": "rgb24"},
            "videos": {"directory": str(Path(videos_dir).resolve()), "files": hashes},
            "cameras": cameras, "files": dict(sorted(files.items())),
        })
    return SceneSet.load(out_dir)


def reuse_logs(logs_dir: str | os.PathLike, videos_dir: str | os.PathLike, tasks: Sequence[str]) -> SceneSet:
    """The logs :func:`record_videos` wrote of ``videos_dir``, if they still describe it: the
    same video files, unchanged (sha256, checked by the loader), with detections of every one
    of ``tasks``. Otherwise a :class:`RecordingError` says what differs."""
    tasks = check_tasks(tasks)
    logs_dir, videos_dir = Path(logs_dir), Path(videos_dir).resolve()
    names = sorted(path.name for path in find_videos(videos_dir))
    if not (logs_dir / INDEX_FILE).is_file():
        raise RecordingError(f"{logs_dir} exists but holds no logs; give another --logs folder")
    try:
        logs = SceneSet.load(logs_dir)
    except CoinferError as error:
        raise RecordingError(f"cannot reuse the logs in {logs_dir}: {error}") from None
    if not logs.recorded:
        raise RecordingError(f"{logs_dir} is a generated scene set, not logs of {videos_dir}; train on it "
                             "with --scenes, or give another --logs folder")
    recorded_from = Path(logs.index["videos"]["directory"])
    if recorded_from != videos_dir:
        raise RecordingError(f"{logs_dir} was recorded from {recorded_from}, not {videos_dir}; give another "
                             "--logs folder")
    differ = sorted(set(logs.index["videos"]["files"]) ^ set(names))
    if differ:
        raise RecordingError(f"{logs_dir} was recorded from other files than {videos_dir} holds now (they "
                             f"differ in {', '.join(differ)}); give another --logs folder to record them")
    missing = [task for task in tasks if task not in logs.tasks]
    if missing:
        raise RecordingError(f"{logs_dir} has no detections of {', '.join(missing)} (it has "
                             f"{', '.join(logs.tasks)}); give another --logs folder to record them")
    return logs
