"""The daemon's inference plug-in: the detectors, behind a stream's InFi skip filter if it has one.

PacketGame saves decoding; InFi saves inference on what was decoded. A frame the gate chose
is first shown to the stream's skip filter (a TFLite artifact of ``coinfer infi export``,
run with LiteRT as on a device), scaled as the filter's training frames were (PyAV's
``to_ndarray(width=, height=, format="rgb24") / 255`` of a decoded 4:2:0 picture); the
detectors of the tasks it covers run only when it does not skip the frame. A skipped task
reports what the filter predicted, an empty result (no boxes), so the gate's necessity
feedback stays meaningful.

Under ``[mlink]`` the detectors give way to MLink's plan
(:class:`~coinfer.edge.daemon.mlink_serving.MlinkServing`): the models of the links are the
tasks, the plan's run and the links predict the others. The filter still comes first: a
task it skipped serves "nothing", which the links then read as that model's output.

The plug-in runs inside the gate's decoder worker processes: it pickles as its paths and
tasks, and loads the filter and the detectors in :meth:`StreamPlugin.prepare`. Each result
of a filtered stream also carries :data:`FILTER_KEY` (whether the filter skipped the frame),
which the daemon counts into its filter rates; the gate compares only the tasks. The
workers ignore SIGHUP: it asks the daemon to reload, and a hang-up sent to the whole
process group must not kill the decoders under it.

Example::

    plugin = StreamPlugin(("faces",), "filters/faces-float32")
    plugin.prepare()                           # in the worker: LiteRT filter + Haar cascade
    plugin.infer(rgb)                          # {"faces": boxes, "infi_skipped": False}
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.edge.daemon.mlink_serving import MlinkServing, MlinkSettings, nothing
from coinfer.edge.gate.inference import DetectorPlugin, InferencePlugin
from coinfer.sdk.errors import CoinferError

__all__ = ["FILTER_KEY", "SkipFilterInfo", "StreamPlugin", "inspect_skip_filter", "scale_frame"]

#: The key of every result that says whether the skip filter skipped the frame.
FILTER_KEY = "infi_skipped"


@dataclass(frozen=True)
class SkipFilterInfo:
    """What the daemon needs to know of a skip filter: its tasks, the frame size it reads and
    ``digest``, the sha256 of its manifest (which holds the sha256 of every file)."""

    path: str
    tasks: tuple[str, ...]
    input: str
    height: int
    width: int
    digest: str


def inspect_skip_filter(path: str | os.PathLike) -> SkipFilterInfo:
    """Load the skip filter at ``path`` (hashes and versions checked) and describe it; refuse
    one whose input is not a single RGB image."""
    from coinfer.device.infi import load_skip_filter

    loaded = load_skip_filter(path)
    if len(loaded.inputs) != 1:
        raise CoinferError(f"{path}: a stream's filter reads one image, this one reads "
                           f"{sorted(loaded.inputs)}")
    name, spec = next(iter(loaded.inputs.items()))
    if spec.kind != "image" or spec.shape[2] != 3:
        raise CoinferError(f"{path}: a stream's filter reads an RGB image, this one a {spec.kind} of shape "
                           f"{spec.shape}")
    digest = hashlib.sha256((Path(path) / "manifest.json").read_bytes()).hexdigest()
    return SkipFilterInfo(str(path), tuple(loaded.tasks), name, spec.shape[0], spec.shape[1], digest)


def scale_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """An RGB uint8 frame as the filter's float32 input in [0, 1]: back to YUV 4:2:0, then
    scaled and converted by PyAV (swscale) as a decoded picture is, which halves the
    difference to the training frames compared with scaling the RGB frame itself.

    >>> scale_frame(np.full((36, 64, 3), 128, np.uint8), 9, 16).shape
    (9, 16, 3)
    """
    import av

    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    picture = rgb.reformat(format="yuv420p")
    return picture.to_ndarray(width=width, height=height, format="rgb24").astype(np.float32) / 255


class StreamPlugin(InferencePlugin):
    """The detectors of ``tasks``, behind the skip filter at ``filter_path`` when one is given;
    with ``mlink``, MLink's plan over the links' models (then ``tasks``) instead of the detectors.

    The filter's own tasks must be among ``tasks``; the other tasks always run (or, with
    ``mlink``, run or are predicted as the plan says).
    """

    def __init__(self, tasks: Sequence[str], filter_path: str | os.PathLike | None = None,
                 mlink: MlinkSettings | None = None) -> None:
        self.tasks = tuple(tasks) if mlink is None else mlink.models
        self.info = None if filter_path is None else inspect_skip_filter(filter_path)
        filtered = () if self.info is None else self.info.tasks
        missing = [task for task in filtered if task not in self.tasks]
        if missing:
            raise CoinferError(f"{filter_path}: filters task(s) {missing} that are not run "
                               f"({list(self.tasks)})")
        covered = [task for task in self.tasks if task in filtered]
        rest = [task for task in self.tasks if task not in filtered]
        self._mlink = None if mlink is None else MlinkServing(mlink)
        self._covered = DetectorPlugin(covered) if covered and mlink is None else None
        self._rest = DetectorPlugin(rest) if rest and mlink is None else None
        self._filter: Any = None

    def prepare(self) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for plugin in (self._covered, self._rest, self._mlink):
            if plugin is not None:
                plugin.prepare()
        if self.info is not None:
            self._loaded(self.info)

    def infer(self, frame: np.ndarray) -> dict[str, Any]:
        if self._mlink is not None:
            return self._serve(self._mlink, frame)
        results: dict[str, Any] = {}
        if self._covered is not None and self.info is not None:
            info = self.info
            small = scale_frame(frame, info.height, info.width)
            skipped = bool(self._loaded(info).skip({info.input: small[None]})[0])
            if skipped:
                results = {task: np.zeros((0, 4), np.float32) for task in self._covered.tasks}
            else:
                results = self._covered.infer(frame)
            results[FILTER_KEY] = skipped
        if self._rest is not None:
            results.update(self._rest.infer(frame))
        return results

    def _serve(self, mlink: MlinkServing, frame: np.ndarray) -> dict[str, Any]:
        """MLink's plan on the frame, the filter's tasks decided first when it has a filter."""
        if self.info is None:
            return mlink.infer(frame)
        info = self.info
        small = scale_frame(frame, info.height, info.width)
        skipped = bool(self._loaded(info).skip({info.input: small[None]})[0])
        specs = mlink.specs()
        known = {task: nothing(specs[task]) for task in info.tasks} if skipped else {}
        return {**mlink.infer(frame, known), FILTER_KEY: skipped}

    def _loaded(self, info: SkipFilterInfo) -> Any:
        if self._filter is None:
            from coinfer.device.infi import load_skip_filter

            self._filter = load_skip_filter(info.path)
        return self._filter

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_filter": None}

    def __repr__(self) -> str:
        source = None if self.info is None else self.info.path
        return f"StreamPlugin(tasks={self.tasks!r}, filter={source!r}, mlink={self._mlink is not None})"
