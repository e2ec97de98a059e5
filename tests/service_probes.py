"""Helpers shared by the tests that drive coinfer's HTTP services as a client would:
``test_service_properties.py`` (fuzzing) and ``test_soak.py`` (sustained load).

A plain module, not a test module and without fixtures (each file keeps its own). Each file
keeps its own token and memory bounds too; what is here takes them as arguments.

How the two files reach it depends on how pytest imported them (``tests/`` has no
``__init__.py`` and ``consider_namespace_packages`` is on): ``python -m pytest`` run in the
root (as ``dev.py test`` does) has the root on ``sys.path``, so they are ``tests.test_soak``
and so on and import this module relatively; the ``pytest`` script (or ``python -m pytest``
run elsewhere) puts ``tests/`` itself on ``sys.path``, so ``import service_probes`` works.
Both files therefore import it, as ``probes``, under ``if __package__:``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

MiB = 1 << 20
#: Guards a socket read against a hang; never a time a request is expected to take.
HANG_GUARD = 300.0
OCTETS = "application/octet-stream"

# ----------------------------------------------------------------------------- requests


def call(url: str, method: str, path: str, body: bytes | None = None, token: str | None = None,
         content_type: str = OCTETS) -> tuple[int, bytes]:
    """(status, body) of one ordinary request; HTTP errors are answers, not exceptions.

    ``token`` None sends no ``Authorization``: each test file binds its own service token as
    the default (``functools.partial(call, token=TOKEN)``), so the services' tokens stay apart."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HANG_GUARD) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# ----------------------------------------------------------------------------- what a run leaves behind


def rss() -> int:
    """The process's resident memory now (Linux), else its peak (which a leak raises too).
    The services run in the test process, so this is how both files see a leak."""
    gc.collect()
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class LogRecords(logging.Handler):
    """Takes WARNING+ records and keeps, formatted, only the bad ones in :attr:`bad` (ERROR and
    above, or carrying a traceback). Keeping no record object keeps a long run's harmless
    warnings (and what their arguments hold) from looking like a leak to :func:`rss`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.bad: list[str] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        text = self._formatter.format(record)
        if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in text:
            self.bad.append(text)


@contextlib.contextmanager
def service_log(threads: bool = True) -> Iterator[LogRecords]:
    """Every WARNING+ record of the process while the block runs: the root logger's and those of
    every logger that does not propagate to it (uvicorn's among them, which a handler on the
    root alone would miss). ``threads``: also exceptions that ended a thread, as ERROR records."""
    handler = LogRecords()
    loggers = [logging.getLogger()] + [logger for logger in logging.root.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger) and not logger.propagate]
    for logger in loggers:
        logger.addHandler(handler)
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        handler.emit(logging.LogRecord("thread", logging.ERROR, __file__, 0, "thread %s died: %r", (
            args.thread, args.exc_value), (args.exc_type, args.exc_value, args.exc_traceback)))

    if threads:
        threading.excepthook = hook
    try:
        yield handler
    finally:
        if threads:
            threading.excepthook = previous
        for logger in loggers:
            logger.removeHandler(handler)


# ----------------------------------------------------------------------------- the edge gateway's clip

#: The clip both files upload: its frames, key-frame interval, size, and packets per upload.
CLIP_FRAMES, GOP, WIDTH, HEIGHT, CHUNK = 48, 12, 160, 96, 6


def encode_clip(path: Path, frames: int = CLIP_FRAMES) -> None:
    """A bright sprite crossing a dark blocky background, still now and then: H.264, no B-frames.
    Made here rather than shipped, so a test needs no data file; deterministic (seeded)."""
    import av

    rng = np.random.default_rng(3)
    background = rng.integers(0, 80, (HEIGHT // 4, WIDTH // 4, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    sprite = rng.integers(140, 255, (20, 24, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.codec_context.max_b_frames = 0
        stream.codec_context.options = {"preset": "veryfast", "crf": "24", "scenecut": "0", "threads": "1"}
        for index in range(frames):
            x = 4 + 3 * (index if index % 16 < 10 else index - index % 16 + 9)
            image = background.copy()
            image[30:50, x % (WIDTH - 24):x % (WIDTH - 24) + 24] = sprite
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def load_clip(tmp: Path) -> SimpleNamespace:
    """The clip encoded in ``tmp`` and parsed back into ``packets`` and ``parameters``, as a
    camera holds it (what each file's module-scoped ``clip`` fixture returns)."""
    from coinfer.device.gate import PacketSource

    encode_clip(tmp / "clip.mp4")
    with PacketSource.open(str(tmp / "clip.mp4")) as source:
        packets = list(source)
        parameters = source.parameters
    assert len(packets) == CLIP_FRAMES and packets[0].info.random_access
    return SimpleNamespace(packets=packets, parameters=parameters)


def clip_bodies(clip: SimpleNamespace, stream: str, session: str, chunk: int = CHUNK) -> list[bytes]:
    """The clip as a camera uploads it: parameters with the first chunk, the chunks, the end.
    Shared so that a fuzzed gateway and a soaked one are fed the same session."""
    from coinfer.sdk.gate.protocol import encode_end, encode_packets, encode_parameters

    bodies = [encode_packets(stream, session, seq, [(p.info, p.data, True)
                                                   for p in clip.packets[start:start + chunk]])
              for seq, start in enumerate(range(0, len(clip.packets), chunk))]
    bodies[0] = encode_parameters(stream, session, clip.parameters) + bodies[0]
    return [*bodies, encode_end(stream, session)]


def summarize(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """The sums of a session's gate replies and every result, ``(index, necessary)`` in order:
    what two uploads of the clip are compared by."""
    total = {key: sum(reply[key] for reply in replies)
             for key in ("accepted", "dropped", "duplicates", "frames", "decode_errors")}
    total["resync"] = any(reply["resync"] for reply in replies)
    total["results"] = [(r["index"], r["necessary"]) for reply in replies for r in reply["results"]]
    return total


def bright_plugin() -> Any:
    """An inference plugin that needs no model: the clip's sprite is the only bright thing, so
    its box is exact and the gateway's decisions are known."""
    from coinfer.edge.gate.inference import InferencePlugin

    class Bright(InferencePlugin):
        """The bright sprite's box (x, y, w, h), or none; necessity is the box moving (IoU)."""

        tasks = ("bright",)

        def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
            rows, cols = np.nonzero(frame.min(axis=2) > 130)
            if rows.size == 0:
                return {"bright": np.zeros((0, 4), np.float32)}
            box = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            return {"bright": np.array([box], np.float32)}

    return Bright()
