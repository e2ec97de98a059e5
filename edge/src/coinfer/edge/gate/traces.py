"""Decode-all passes over recorded streams: the traces the gate is replayed and trained on.

One pass per camera gives everything the offline evaluation needs at once: the parsed
packets (what the gate sees), the decoder's own picture type of every frame (to score the
parser), the measured decode time of every packet (to calibrate the cost model) and the
detector results the scene generator recorded on the decoded frames. A set recorded from
real video (:mod:`coinfer.edge.recorder`) made that pass while detecting and keeps it as a
packet log (:func:`packet_log`), so :func:`load_cameras` rebuilds its traces without decoding.

Example::

    scenes = SceneSet.load("data/campus")
    cameras = [load_camera(camera, tasks=("faces",)) for camera in scenes.cameras]
    costs = cost_model_of(cameras)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from coinfer.device.gate.source import PacketSource, StreamParameters
from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.packet import PacketInfo, PictureInfo, PictureType
from coinfer.sdk.gate.replay import StreamTrace
from coinfer.sdk.scenes import NO_TIMESTAMP, PACKET_ARRAYS


@dataclass
class CameraTrace:
    """A camera's packets and decode-all results, plus what decoding them cost."""

    name: str
    trace: StreamTrace
    parameters: StreamParameters
    decode_seconds: np.ndarray
    decoded_pictures: np.ndarray
    parse_errors: int
    data: list[bytes] = field(default_factory=list, repr=False)

    @property
    def parsed_pictures(self) -> np.ndarray:
        return np.array([int(packet.picture) for packet in self.trace.packets])


def load_camera(camera: Any, tasks: Sequence[str], *, keep_data: bool = False,
                results: dict[str, Sequence[Any]] | None = None) -> CameraTrace:
    """Demux and decode one generated camera; ``results`` overrides its recorded detections."""
    from coinfer.edge.gate.decoding import StreamDecoder

    packets, data = [], []
    with PacketSource.open(str(camera.video_path)) as source:
        parameters = source.parameters
        for item in source:
            packets.append(item.info)
            data.append(item.data)
        parse_errors = source.parse_errors
    decoder = StreamDecoder(parameters)
    seconds = np.zeros(len(packets))
    decoded_by_pts: dict[int, int] = {}
    for k, pair in enumerate(zip(packets, data, strict=True)):
        before = decoder.seconds
        frames = decoder.decode([pair])
        seconds[k] = decoder.seconds - before
        decoded_by_pts.update({pts: PictureType.from_ffmpeg(f.pict_type) for pts, f in frames.items()})
    decoded_by_pts.update({pts: PictureType.from_ffmpeg(f.pict_type) for pts, f in decoder.flush().items()})
    pts = np.array([info.pts for info in packets], dtype=np.int64)
    decoded = np.array([decoded_by_pts.get(int(value), PictureType.UNKNOWN) for value in pts])
    frames_of = np.searchsorted(np.sort(pts), pts)  # display index, whatever the container's offset
    if results is None:
        results = {task: camera.boxes(task) for task in tasks}
    trace = StreamTrace(packets, frames_of, results)
    return CameraTrace(camera.id, trace, parameters, seconds, decoded, parse_errors,
                       data if keep_data else [])


def load_cameras(cameras: Sequence[Any], tasks: Sequence[str], *, progress: bool = True) -> list[CameraTrace]:
    """:func:`load_camera` over many cameras, with a progress bar; a camera recorded from real
    video brings its decode-all pass along (:func:`logged_camera`) and is not decoded again."""
    from tqdm import tqdm

    logged = all(camera.has_packet_log for camera in cameras)  # nothing to decode: no bar
    return [logged_camera(camera, tasks) if camera.has_packet_log else load_camera(camera, tasks)
            for camera in tqdm(cameras, desc="decode-all", unit="camera", disable=not progress or logged)]


def packet_log(camera: CameraTrace) -> dict[str, np.ndarray]:
    """A decode-all pass as the packet-log arrays of a recorded scene set (the format is in
    :mod:`coinfer.sdk.scenes`), so that training again needs no decoding."""
    packets = camera.trace.packets

    def stamps(values: list[int | None]) -> np.ndarray:
        return np.array([NO_TIMESTAMP if value is None else value for value in values], np.int64)

    arrays = {
        "packets.pts": stamps([info.pts for info in packets]),
        "packets.dts": stamps([info.dts for info in packets]),
        "packets.size": [info.size for info in packets],
        "packets.keyframe": [info.keyframe for info in packets],
        "packets.picture": [int(info.picture) for info in packets],
        "packets.reference": [info.reference for info in packets],
        "packets.random_access": [info.random_access for info in packets],
        "packets.show": [info.header.show for info in packets],
        "packets.frame": camera.trace.frames,
        "packets.decoded_picture": camera.decoded_pictures,
        "packets.decode_seconds": camera.decode_seconds,
    }
    return {name: np.asarray(arrays[name], dtype).reshape(len(packets))
            for name, dtype in PACKET_ARRAYS.items()}


def logged_camera(camera: Any, tasks: Sequence[str]) -> CameraTrace:
    """The :class:`CameraTrace` of a recorded camera (a :class:`~coinfer.sdk.scenes.SceneCamera`
    with a packet log), rebuilt from the log and its detections without decoding. Its
    parameters carry no extradata: the trace replays and trains, it does not decode."""
    arrays, entry = camera.arrays, camera.entry

    def stamp(value: int) -> int | None:
        return None if value == NO_TIMESTAMP else int(value)

    packets = [
        PacketInfo(0, index, int(size), stamp(pts), stamp(dts), bool(keyframe),
                   PictureInfo(PictureType(int(picture)), bool(reference), bool(random_access), bool(show)))
        for index, (size, pts, dts, keyframe, picture, reference, random_access, show) in enumerate(zip(
            arrays["packets.size"], arrays["packets.pts"], arrays["packets.dts"], arrays["packets.keyframe"],
            arrays["packets.picture"], arrays["packets.reference"], arrays["packets.random_access"],
            arrays["packets.show"], strict=True))
    ]
    rate = entry.get("frame_rate")
    parameters = StreamParameters(codec=entry["codec"], extradata=None, width=int(entry["width"]),
                                  height=int(entry["height"]), time_base=Fraction(*entry["time_base"]),
                                  frame_rate=Fraction(*rate) if rate else None)
    trace = StreamTrace(packets, arrays["packets.frame"], {task: camera.boxes(task) for task in tasks})
    return CameraTrace(camera.id, trace, parameters, arrays["packets.decode_seconds"],
                       arrays["packets.decoded_picture"].astype(int), int(entry.get("parse_errors", 0)))


def cost_model_of(cameras: Sequence[CameraTrace]) -> DecodeCostModel:
    """Price picture types by the decode times measured in these passes."""
    pictures = np.concatenate([camera.parsed_pictures for camera in cameras])
    seconds = np.concatenate([camera.decode_seconds for camera in cameras])
    first = cameras[0].parameters
    return DecodeCostModel.from_timings(pictures, seconds, codec=first.codec, width=first.width,
                                        height=first.height)


def parser_accuracy(cameras: Sequence[CameraTrace]) -> float:
    """Fraction of packets whose parsed picture type equals the decoder's."""
    parsed = np.concatenate([camera.parsed_pictures for camera in cameras])
    decoded = np.concatenate([camera.decoded_pictures for camera in cameras])
    return float(np.mean(parsed == decoded)) if parsed.size else 0.0
