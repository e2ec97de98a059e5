"""``coinfer evolve device``: a camera that serves its evolve model and keeps it current.

    coinfer evolve device --edge http://edge:8500 --device cam1 --model cam1-v1 --video street.mp4
                          [--upload-every 10] [--interval 30] [--max-seconds 600] [--cache DIR]

Why: a deployed model degrades as the scene drifts, and the device cannot retrain it. So it
does what NestEvo's devices do: it serves every frame with the TFLite model it holds
(:class:`~coinfer.device.evolve.slot.ModelSlot`), sends every N-th frame to the edge's
evolution service (``coinfer evolve serve``), which labels and keeps them for the next
evolution, and polls the edge for a newer model, which it downloads, verifies and swaps in
without a request failing (:class:`~coinfer.device.evolve.updater.ModelUpdater`). Serving never
waits on the network: uploads go out from a thread of their own (a full upload queue skips the
frame), updates from another.

Frames come from a video (``--video``, decoded with PyAV and scaled to the model's input) or
from an ``.npz`` holding ``frames``, uint8 ``(N, S, S, 3)`` at the model's input size
(``--frames``; never unpickled). Every ``--interval`` seconds the command prints what it did
(frames served, the model version serving, frames uploaded) and looks for a newer model; it
looks once before the first frame too. It ends with the input, or after ``--max-seconds``,
and prints (``--json``: also writes) the totals; it measures no accuracy, which would need
labels a camera does not have. Installed models live in ``--cache`` (a temporary folder
removed at the end when not given). numpy, LiteRT and PyAV only: no torch, no TensorFlow.

>>> upload_url("http://edge:8500/", "cam1")
'http://edge:8500/v1/evolve/devices/cam1/frames'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import queue
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.cli.flags import add_json, count, positive, work_directory

#: The evolution service's upload route (:mod:`coinfer.edge.evolve.service`), relative to its URL.
UPLOAD_PATH = "/v1/evolve/devices/{device}/frames"
#: Bytes of an ``.npz`` of frames read at most.
MAX_FRAMES_BYTES = 2 << 30
#: Bytes of the edge's answer (or error detail) read at most.
_MAX_ANSWER_BYTES = 1 << 16

log = logging.getLogger(__name__)


def upload_url(base_url: str, device: str) -> str:
    """The URL ``device`` posts its frames to on the evolution service at ``base_url``."""
    return base_url.rstrip("/") + UPLOAD_PATH.format(device=urllib.parse.quote(device, safe=""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edge", required=True, metavar="URL", help="the edge's evolution service (http://...)")
    parser.add_argument("--device", required=True, metavar="ID",
                        help="this device's id, as the edge knows it")
    parser.add_argument("--model", type=Path, required=True, metavar="DIR",
                        help="the device model artifact to start with")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, metavar="FILE", help="serve the frames of this video")
    source.add_argument("--frames", type=Path, metavar="NPZ",
                        help="serve these frames: an .npz with 'frames', uint8 (N, S, S, 3)")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="file holding the edge's bearer token (default: $COINFER_TOKEN)")
    parser.add_argument("--interval", type=positive(float), default=30.0, metavar="S",
                        help="seconds between progress lines and checks for a newer model (default 30)")
    parser.add_argument("--upload-every", type=count(1_000_000), default=10, metavar="N",
                        help="send every N-th frame to the edge (default 10)")
    parser.add_argument("--upload-batch", type=count(1024), default=8, metavar="N",
                        help="frames sent in one request at most (default 8)")
    parser.add_argument("--max-seconds", type=positive(float), metavar="S", help="stop after S seconds")
    parser.add_argument("--fps", type=positive(float), metavar="F",
                        help="serve F frames a second, as a camera would (default: as fast as they come)")
    parser.add_argument("--cache", type=work_directory, metavar="DIR",
                        help="where downloaded models are installed (default: a temporary folder)")
    parser.add_argument("--threads", type=count(64), default=1, help="interpreter threads (default 1)")
    add_json(parser, "the totals")


class FrameUploader:
    """Posts frames to the evolution service as CNFR ``REQUEST`` frames (one array ``frames``)
    from a thread of its own; :meth:`offer` never blocks, :meth:`close` sends what is queued."""

    def __init__(self, base_url: str, token: str, device: str, *, batch: int = 8, capacity: int = 64,
                 timeout: float = 60.0) -> None:
        self.url = upload_url(base_url, device)
        self.batch, self.timeout = batch, timeout
        self._token = token
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self.counters = {"uploaded_frames": 0, "upload_requests": 0, "upload_failures": 0,
                         "skipped_frames": 0}
        self.buffered: int | None = None
        self._thread = threading.Thread(target=self._loop, name="coinfer-evolve-uploader", daemon=True)
        self._thread.start()

    def offer(self, frame: np.ndarray) -> bool:
        """Queue ``frame`` for upload; False (and counted as skipped) when the queue is full."""
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self._count("skipped_frames", 1)
            return False
        return True

    def close(self) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def _count(self, key: str, amount: int) -> None:
        with self._lock:
            self.counters[key] += amount

    def _loop(self) -> None:
        ending = False
        while not ending:
            item = self._queue.get()
            if item is None:
                return
            frames = [item]
            while len(frames) < self.batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    ending = True
                    break
                frames.append(more)
            self._post(np.stack(frames))

    def _post(self, frames: np.ndarray) -> None:
        from coinfer.sdk import wire

        body = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, {"frames": frames}))
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read(_MAX_ANSWER_BYTES))
        except urllib.error.HTTPError as error:
            detail = " ".join(error.read(_MAX_ANSWER_BYTES).decode("utf-8", "replace").split())
            error.close()
            self._failed(len(frames), f"HTTP {error.code}: {detail}")
            return
        except (urllib.error.URLError, OSError, ValueError) as error:
            self._failed(len(frames), str(getattr(error, "reason", error)))
            return
        with self._lock:
            self.counters["uploaded_frames"] += len(frames)
            self.counters["upload_requests"] += 1
            buffered = answer.get("buffered") if isinstance(answer, dict) else None
            self.buffered = buffered if isinstance(buffered, int) else self.buffered

    def _failed(self, frames: int, reason: str) -> None:
        self._count("upload_failures", 1)
        log.warning("uploading %d frame(s) to %s failed: %s", frames, self.url, reason)


def frames_from_npz(path: Path, side: int) -> Iterator[np.ndarray]:
    """The frames file's ``frames`` (uint8 (N, side, side, 3)), checked before any is used."""
    from coinfer.sdk.errors import InvalidArgumentError
    from coinfer.sdk.npz import read_arrays

    frames = read_arrays(path, required=("frames",), max_bytes=MAX_FRAMES_BYTES, what="frames file")["frames"]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (side, side, 3) or not len(frames):
        raise InvalidArgumentError(f"{path}: frames must be uint8 (N >= 1, {side}, {side}, 3) for this "
                                   f"model, got {frames.dtype} {frames.shape}")
    return iter(frames)


def frames_from_video(path: Path, side: int) -> Iterator[np.ndarray]:
    """The video's frames as RGB ``side`` x ``side``; opening (and its errors) happens now."""
    import av

    from coinfer.sdk.errors import InvalidArgumentError, one_line

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise InvalidArgumentError(f"{path}: not a readable video: {one_line(error)}") from None
    if not container.streams.video:
        container.close()
        raise InvalidArgumentError(f"{path}: holds no video stream")

    def frames() -> Iterator[np.ndarray]:
        with container:
            try:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24", width=side, height=side)
            except av.error.FFmpegError as error:
                log.warning("%s: decoding stopped: %s", path, one_line(error))

    return frames()


def run(args: argparse.Namespace) -> int:
    from coinfer.device.evolve.slot import ModelSlot
    from coinfer.device.evolve.updater import ModelUpdater
    from coinfer.device.runtime.base import RunnerOptions
    from coinfer.sdk.artifact import load_artifact
    from coinfer.sdk.errors import CoinferError, InputNotFoundError, InvalidArgumentError
    from coinfer.sdk.evolve.models import check_device_name
    from coinfer.sdk.service import client_token

    if not args.edge.startswith(("http://", "https://")):
        raise InvalidArgumentError(f"--edge must start with http:// or https://, got {args.edge!r}")
    device = check_device_name(args.device)
    source = args.video or args.frames
    if not source.is_file():
        raise InputNotFoundError(f"{source}: no such {'video' if args.video else 'frames'} file")
    token = client_token(args.token_file)
    architecture = load_artifact(args.model).manifest.metadata.get("architecture", "")
    slot = ModelSlot(device, str(architecture), args.model, RunnerOptions(num_threads=args.threads))
    side = slot.input_spec.shape[1]
    if not isinstance(side, int) or slot.input_spec.shape[1:] != (side, side, 3):
        raise InvalidArgumentError(f"{args.model}: the model takes {slot.input_spec.describe()}, not "
                                   "square RGB frames")
    frames = frames_from_video(args.video, side) if args.video else frames_from_npz(args.frames, side)
    with contextlib.ExitStack() as stack:
        cache = args.cache or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coinfer-evolve-")))
        updater = ModelUpdater(args.edge, token, slot, cache)
        try:
            updater.check_once()
        except (CoinferError, OSError) as error:
            print(f"could not fetch a newer model ({error}); serving version {slot.version}", file=sys.stderr)
        uploader = FrameUploader(args.edge, token, device, batch=args.upload_batch)
        stop = threading.Event()
        stack.callback(stop.set)
        polling = threading.Thread(target=_poll, args=(updater, args.interval, stop), daemon=True)
        polling.start()
        totals = _serve(slot, frames, uploader, args)
        uploader.close()
        stop.set()
        polling.join()
    totals.update(uploader.snapshot(), edge_buffered=uploader.buffered, model_version=slot.version,
                  versions_served=",".join(str(model.version) for model in slot.history))
    from coinfer.sdk.cli.report import report

    report(f"evolve device {device}", totals, args.json)
    return 0


def _poll(updater: Any, interval: float, stop: threading.Event) -> None:
    """The updater's loop, from one interval on (the command checked once before serving)."""
    if not stop.wait(interval):
        updater.run(interval, stop)


def _serve(slot: Any, frames: Iterator[np.ndarray], uploader: FrameUploader,
           args: argparse.Namespace) -> dict[str, Any]:
    """Serve every frame, offer every ``--upload-every``-th to the uploader, print a line each
    ``--interval``; returns the counts."""
    from coinfer.sdk.errors import CoinferError

    started = time.monotonic()
    report_at = started + args.interval
    served = failures = 0
    for index, frame in enumerate(frames):
        if args.max_seconds is not None and time.monotonic() - started >= args.max_seconds:
            break
        try:
            slot.predict(frame[None])
        except CoinferError as error:  # a frame the runtime fails on is counted; serving goes on
            failures += 1
            if failures == 1:
                print(f"frame {index}: prediction failed: {error}", file=sys.stderr)
        else:
            served += 1
        if index % args.upload_every == 0:
            uploader.offer(frame)
        if args.fps is not None:
            time.sleep(max(0.0, started + (index + 1) / args.fps - time.monotonic()))
        if time.monotonic() >= report_at:
            sent = uploader.snapshot()
            print(f"[{time.monotonic() - started:7.1f} s] served {served} frames, model version "
                  f"{slot.version}, uploaded {sent['uploaded_frames']} frames ({sent['upload_failures']} "
                  "failed requests)", flush=True)
            report_at = time.monotonic() + args.interval
    seconds = time.monotonic() - started
    return {"frames_served": served, "prediction_failures": failures, "seconds": round(seconds, 3),
            "frames_per_second": round(served / seconds, 2) if seconds > 0 else None}


__all__ = ["UPLOAD_PATH", "FrameUploader", "upload_url"]
