"""The edge inference service of InFi's offload deployment: a camera posts a JPEG, the edge detects.

The device runs the skip filter (:func:`coinfer.device.infi.load_skip_filter`) on each
downscaled frame and posts only the frames whose result may matter; this service decodes
each posted frame and runs the heavy model on it (by default OpenCV's Haar face detector,
any task of :data:`coinfer.edge.models.detectors.DETECTORS` by name). JPEG, because it is
what a camera would really send: 10-30x fewer bytes than raw pixels.

Endpoints (all but ``/healthz`` need ``Authorization: Bearer <token>``):

- ``POST /v1/infi/detect``: a body of one baseline or progressive JPEG image
  (``Content-Type: image/jpeg``). Answers ``{"task", "width", "height", "count", "boxes"}``
  with the boxes as ``[x, y, w, h]`` in frame pixels. 401 without the token, 413 over the
  body limit, 415 for another content type, 400 for a body that is not a JPEG, whose
  declared size is over the pixel limit (checked in its header, before decoding) or that
  does not decode.
- ``GET /v1/infi/stats``: requests answered and body bytes received.
- ``GET /healthz``.

Example::

    with DetectionServer(DetectionOptions(task="faces"), token) as server:
        requests.post(server.url + DETECT_PATH, data=jpeg, headers={
            "Authorization": f"Bearer {token}", "Content-Type": JPEG_TYPE}).json()
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.service import ServiceError, ThreadedServer, create_service_app, read_limited_body

DETECT_PATH = "/v1/infi/detect"
STATS_PATH = "/v1/infi/stats"
JPEG_TYPE = "image/jpeg"
#: Start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC): they carry the picture's size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field.
_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}


class DetectionError(ServiceError):
    """A request the detection service refuses; ``status`` is the HTTP status to answer with."""


@dataclass(frozen=True)
class DetectionOptions:
    """What the service accepts: the task whose detector runs, and the limits on a frame."""

    task: str = "faces"
    max_request_bytes: int = 4 << 20
    max_width: int = 4096
    max_height: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_width", "max_height"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's start-of-frame header, without decoding the picture.

    Raises :class:`DetectionError` (400) when ``data`` is not a JPEG or has no frame header.
    """
    if data[:2] != b"\xff\xd8":
        raise DetectionError("the body is not a JPEG image (no start-of-image marker)")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise DetectionError(f"malformed JPEG: expected a marker at byte {at}")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if length < 2:
            raise DetectionError(f"malformed JPEG: segment length {length} at byte {at}")
        if marker in _SOF_MARKERS:
            if at + 9 > len(data) or length < 7:
                break
            height = int.from_bytes(data[at + 5:at + 7], "big")
            width = int.from_bytes(data[at + 7:at + 9], "big")
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        at += 2 + length
    raise DetectionError("malformed JPEG: no frame header with the picture's size")


class DetectionService:
    """Decodes a posted JPEG within the limits and runs the task's detector; without HTTP.

    ``detector`` defaults to :func:`~coinfer.edge.models.detectors.create_detector` of the
    task; it runs under a lock (one detection at a time, as OpenCV cascades are not shared
    safely between threads).
    """

    def __init__(self, options: DetectionOptions | None = None, detector: Any = None) -> None:
        from coinfer.edge.models.detectors import create_detector

        self.options = options or DetectionOptions()
        self.detector = detector if detector is not None else create_detector(self.options.task)
        self._lock = threading.Lock()
        self.counters = {"requests": 0, "bytes_received": 0}

    def decode(self, body: bytes) -> np.ndarray:
        """The RGB frame of a JPEG body, refused (400) past the size limits before decoding."""
        import cv2

        width, height = jpeg_size(body)
        limit = self.options
        if not (1 <= width <= limit.max_width and 1 <= height <= limit.max_height):
            raise DetectionError(f"a {width}x{height} image is outside the limit of "
                                 f"{limit.max_width}x{limit.max_height} pixels")
        picture = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        if picture is None or picture.shape[:2] != (height, width):
            raise DetectionError("the JPEG image does not decode")
        return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)

    def detect(self, body: bytes) -> dict[str, Any]:
        frame = self.decode(body)
        with self._lock:
            boxes = np.asarray(self.detector(frame), dtype=np.float32).reshape(-1, 4)
            self.counters["requests"] += 1
            self.counters["bytes_received"] += len(body)
        return {"task": self.options.task, "width": int(frame.shape[1]), "height": int(frame.shape[0]),
                "count": len(boxes), "boxes": boxes.round(1).tolist()}

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)


def create_detection_app(options: DetectionOptions | None, token: str, detector: Any = None) -> FastAPI:
    """The FastAPI app; its :class:`DetectionService` is ``app.state.service``."""
    if not token:
        raise CoinferError("the detection service needs a non-empty token")
    service = DetectionService(options, detector)
    app, authorize = create_service_app("coinfer InFi detection service", DetectionError, token)
    app.state.service = service

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "task": service.options.task}

    @app.post(DETECT_PATH, dependencies=[Depends(authorize)])
    async def detect(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != JPEG_TYPE:
            raise DetectionError(f"send the frame as {JPEG_TYPE}, not {kind or 'no content type'}",
                                 status=415)
        body = await read_limited_body(request, service.options.max_request_bytes, DetectionError)
        return await run_in_threadpool(service.detect, body)

    @app.get(STATS_PATH, dependencies=[Depends(authorize)])
    def stats() -> dict[str, int]:
        return service.stats()

    return app


class DetectionServer(ThreadedServer):
    """The detection service on a uvicorn thread (port 0 picks a free one); for benches and tests.

    Example::

        with DetectionServer(None, token) as server:
            print(server.url, server.service.stats())
    """

    def __init__(self, options: DetectionOptions | None, token: str, host: str = "127.0.0.1", port: int = 0,
                 detector: Any = None, start_timeout: float = 30.0) -> None:
        app = create_detection_app(options, token, detector)
        self.service: DetectionService = app.state.service
        super().__init__(app, host, port, start_timeout, name="the InFi detection service")


__all__ = ["DETECT_PATH", "JPEG_TYPE", "STATS_PATH", "DetectionError", "DetectionOptions", "DetectionServer",
           "DetectionService", "create_detection_app", "jpeg_size"]
