"""InFi's deployments measured for real: the skip filter on the device, the heavy model here or on the edge.

- **Offload** (:func:`offload_report`): the device runs the exported TFLite skip filter
  (:func:`coinfer.device.infi.load_skip_filter`) on each downscaled frame and posts only
  the frames it keeps, JPEG-encoded by OpenCV at a fixed quality, to the edge detection
  service (:mod:`coinfer.edge.infi.service`) over loopback HTTP on one keep-alive
  connection. The same frames are also all posted without the filter, in the same run.
- **On-device** (:func:`on_device_report`): filter and model on the same CPU in one
  process; the model runs only on the frames the filter keeps.

What counts as bytes on the wire (offload): every byte the device *sends*, i.e. each
request's line, headers and JPEG body exactly as ``http.client`` hands them to the socket,
plus each response *body* it reads back (the JSON detections). Response status lines and
headers (about 120 bytes a request) and TCP/IP framing are not counted. The counts split
into ``*_request_body_bytes`` (the JPEGs: equal to the encoded frames' lengths),
``*_request_header_bytes`` and ``*_response_bytes``.

Accuracy is InFi's: agreement with the model run on every frame (not ground truth). A
skipped frame is correct when the model found nothing on it; a frame the filter kept gets
the model's own answer, so it is correct when that answer equals the reference one (it
does: the same frame, or the same JPEG, through the same deterministic detector).

Times come from :func:`time.perf_counter`, frame by frame: each frame goes through both
ways (model or service on every frame; filter, then model or service if kept) one right
after the other, alternating which goes first, so a load that comes and goes on the
machine weighs on both alike. Per frame is a way's total over the frame count, after one
warm-up call of the filter and of the model or service; with ``repeats`` the whole run is
repeated and the totals' medians reported. Offloading posts each way on its own
keep-alive connection, so each way's bytes are counted apart.

Example::

    from coinfer.bench.infi.deployments import offload_report, on_device_report
    from coinfer.edge.models.detectors import face_detector

    print(offload_report("filters/face-skip-int8", frames.small, frames.full))
    print(on_device_report("filters/face-skip-int8", frames.small, frames.full, face_detector()))
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from coinfer.edge.infi.service import DETECT_PATH, JPEG_TYPE, DetectionOptions, DetectionServer
from coinfer.sdk.errors import CoinferError, InvalidArgumentError

#: OpenCV's JPEG quality (0-100) for offloaded frames; 80 is a common camera default.
JPEG_QUALITY = 80

__all__ = ["JPEG_QUALITY", "DetectionClient", "encode_jpeg", "offload_report", "on_device_report"]


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB uint8 frame as JPEG bytes (OpenCV, 4:2:0, baseline)."""
    import cv2

    if not 0 <= quality <= 100:
        raise InvalidArgumentError(f"JPEG quality must be in [0, 100], got {quality}")
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CoinferError(f"OpenCV could not JPEG-encode a frame of shape {frame.shape}")
    return data.tobytes()


class _CountingConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection that counts every byte it hands to the socket."""

    sent = 0

    def send(self, data: Any) -> None:
        self.sent += len(data)
        super().send(data)


class DetectionClient:
    """Posts JPEG frames to the detection service on one keep-alive connection, counting bytes.

    ``counts`` holds ``requests``, ``request_body_bytes``, ``request_header_bytes`` (request
    line and headers) and ``response_bytes`` (response bodies) since the last :meth:`reset`.
    """

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise CoinferError(f"the detection service URL must be http://host:port, got {url!r}")
        self._connection = _CountingConnection(parts.hostname, parts.port or 80, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": JPEG_TYPE}
        self.counts: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self._connection.sent = 0
        self.counts = dict.fromkeys(("requests", "request_body_bytes", "request_header_bytes",
                                     "response_bytes"), 0)

    def detect(self, jpeg: bytes) -> dict[str, Any]:
        """The service's answer for one JPEG frame."""
        before = self._connection.sent
        self._connection.request("POST", DETECT_PATH, body=jpeg, headers=self._headers)
        response = self._connection.getresponse()
        body = response.read()
        self.counts["requests"] += 1
        self.counts["request_body_bytes"] += len(jpeg)
        self.counts["request_header_bytes"] += self._connection.sent - before - len(jpeg)
        self.counts["response_bytes"] += len(body)
        if response.status != 200:
            raise CoinferError(f"the detection service answered {response.status}: "
                               f"{body[:300].decode(errors='replace')}")
        return json.loads(body)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> DetectionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Paired:
    """Both ways over the same frames: seconds (median over repeats), what the filter
    skipped, and each way's result count per frame (-1 where skipped)."""

    seconds_all: float
    seconds_filtered: float
    skipped: np.ndarray
    found_all: np.ndarray
    found_filtered: np.ndarray


def _paired_passes(frames_small: np.ndarray, skip_filter: Any, repeats: int,
                   work: Callable[[int, bool], int], reset: Callable[[], None] = lambda: None) -> _Paired:
    """Time, frame by frame, ``work(i, False)`` (the model on every frame) against the filter on
    the small frame then ``work(i, True)`` where it keeps the frame.

    The two ways alternate which goes first on each frame, so a load that comes and goes on
    the machine, and the frame being hot in the cache, weigh on both alike. The whole pass
    runs ``repeats`` times (``reset`` before each); the seconds are the medians of the totals.
    """
    if repeats < 1:
        raise InvalidArgumentError(f"repeats must be >= 1, got {repeats}")
    count = len(frames_small)
    skipped = np.zeros(count, dtype=bool)
    found_all = np.full(count, -1, dtype=np.int64)
    found = np.full(count, -1, dtype=np.int64)
    totals: list[tuple[float, float]] = []

    def filtered(i: int) -> None:
        skipped[i] = skip_filter.skip(frames_small[i:i + 1])[0]
        found[i] = -1 if skipped[i] else work(i, True)

    for _ in range(repeats):
        reset()
        spent = [0.0, 0.0]
        for i in range(count):
            for way in ((0, 1) if i % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                if way == 0:
                    found_all[i] = work(i, False)
                else:
                    filtered(i)
                spent[way] += time.perf_counter() - start
        totals.append((spent[0], spent[1]))
    medians = np.median(np.array(totals), axis=0)
    return _Paired(float(medians[0]), float(medians[1]), skipped, found_all, found)


def _accuracy(skipped: np.ndarray, found: np.ndarray, reference: np.ndarray) -> float:
    """Agreement with the reference counts: a skipped frame is right where the reference is 0."""
    right = np.where(skipped, reference == 0, found == reference)
    return float(right.mean()) if right.size else 1.0


def _check_frames(frames_small: np.ndarray, frames_full: np.ndarray) -> int:
    if len(frames_small) != len(frames_full) or len(frames_full) == 0:
        raise InvalidArgumentError(f"need as many small frames as full ones, at least one; got "
                                   f"{len(frames_small)} and {len(frames_full)}")
    return len(frames_full)


def offload_report(filter_path: str | os.PathLike, frames_small: np.ndarray, frames_full: np.ndarray, *,
                   url: str | None = None, token: str | None = None, quality: int = JPEG_QUALITY,
                   options: DetectionOptions | None = None, repeats: int = 1) -> dict[str, Any]:
    """InFi's offload deployment: bytes, requests, time per frame and accuracy with and without the filter.

    ``frames_small`` are the filter's inputs (float32 in [0, 1]), ``frames_full`` the RGB
    uint8 frames the service detects on. Without ``url``, a detection service (``options``)
    is started on a free loopback port for the run; with it, ``token`` is its bearer token.
    With ``repeats``, times are medians over that many runs; bytes are the same each time.
    """
    from coinfer.device.infi import load_skip_filter

    count = _check_frames(frames_small, frames_full)
    if url is None:
        token = secrets.token_urlsafe(24)
        with DetectionServer(options, token) as server:
            return offload_report(filter_path, frames_small, frames_full, url=server.url, token=token,
                                  quality=quality, repeats=repeats)
    if not token:
        raise CoinferError("offload_report needs the service's token with its url")
    skip_filter = load_skip_filter(filter_path)
    skip_filter.skip(frames_small[:1])  # warm-up: the interpreter's first run allocates
    with DetectionClient(url, token) as every, DetectionClient(url, token) as kept:
        for client in (every, kept):  # warm-up: the connection, and the detector once
            client.detect(encode_jpeg(frames_full[0], quality))
        warmup_bytes = every.counts["request_body_bytes"] + kept.counts["request_body_bytes"]

        def post(i: int, filtered: bool) -> int:
            return int((kept if filtered else every).detect(encode_jpeg(frames_full[i], quality))["count"])

        def reset() -> None:
            every.reset()
            kept.reset()

        paired = _paired_passes(frames_small, skip_filter, repeats, post, reset)
        all_counts, counts = dict(every.counts), dict(kept.counts)
    seconds_all, seconds, skipped = paired.seconds_all, paired.seconds_filtered, paired.skipped
    found, reference = paired.found_filtered, paired.found_all
    sent_all, sent = (sum(c[key] for key in ("request_body_bytes", "request_header_bytes", "response_bytes"))
                      for c in (all_counts, counts))
    return {
        "frames": count,
        "jpeg_quality": quality,
        "offload_requests": counts["requests"],
        "offload_frames_skipped": int(skipped.sum()),
        "offload_filter_rate": float(skipped.mean()),
        "offload_bytes_with_filter": sent,
        "offload_bytes_without_filter": sent_all,
        "offload_bytes_saved": 1.0 - sent / sent_all,
        **{f"offload_{key}_with_filter": counts[key]
           for key in ("request_body_bytes", "request_header_bytes", "response_bytes")},
        **{f"offload_{key}_without_filter": all_counts[key]
           for key in ("requests", "request_body_bytes", "request_header_bytes", "response_bytes")},
        "offload_raw_frame_bytes": int(frames_full[0].nbytes),
        "offload_warmup_request_body_bytes": warmup_bytes,
        "offload_ms_per_frame_with_filter": seconds / count * 1e3,
        "offload_ms_per_frame_without_filter": seconds_all / count * 1e3,
        "offload_speedup": seconds_all / seconds,
        "offload_accuracy": _accuracy(skipped, found, reference),
        "offload_frames_with_faces": int((reference > 0).sum()),
    }


def on_device_report(filter_path: str | os.PathLike, frames_small: np.ndarray, frames_full: np.ndarray,
                     model: Callable[[np.ndarray], Sized], repeats: int = 1) -> dict[str, Any]:
    """InFi's on-device deployment: time per frame of model-only against filter-then-model, and accuracy.

    ``model`` maps an RGB uint8 frame to its detections (any sized sequence; a frame with
    none is redundant). With ``repeats``, times are medians over that many runs.
    """
    from coinfer.bench.infi.tasks import median_ms
    from coinfer.device.infi import load_skip_filter
    from coinfer.sdk.infi import break_even_rate

    count = _check_frames(frames_small, frames_full)
    skip_filter = load_skip_filter(filter_path)
    filter_ms = median_ms(lambda: skip_filter.skip(frames_small[:1]))
    model(frames_full[0])  # warm-up
    paired = _paired_passes(frames_small, skip_filter, repeats, lambda i, _: len(model(frames_full[i])))
    seconds_all, seconds, skipped = paired.seconds_all, paired.seconds_filtered, paired.skipped
    found, reference = paired.found_filtered, paired.found_all
    model_ms = seconds_all / count * 1e3
    return {
        "frames": count,
        "on_device_filter_rate": float(skipped.mean()),
        "on_device_frames_skipped": int(skipped.sum()),
        "on_device_ms_per_frame_model_only": model_ms,
        "on_device_ms_per_frame_with_filter": seconds / count * 1e3,
        "on_device_speedup": seconds_all / seconds,
        "on_device_accuracy": _accuracy(skipped, found, reference),
        "on_device_filter_ms": filter_ms,
        # the filter rate above which filtering pays, with the model's mean cost per frame
        "on_device_break_even_rate": break_even_rate(filter_ms, model_ms),
        "on_device_frames_with_faces": int((reference > 0).sum()),
    }
