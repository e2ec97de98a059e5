"""Proof that gated decoding is exact: decode what the gate picks, compare with decode-all.

Skipping a packet another picture references corrupts every frame after it until the
next key frame ("reference picture missing"). The gate hands decoders each selected
packet together with its pending references, so every frame it decodes must equal the
same frame of a decode-all pass bit for bit; this module checks that with real decoders.

Example::

    cameras = [load_camera(camera, tasks, keep_data=True) for camera in scenes.cameras[:4]]
    report = verify_gated_decoding(cameras, TemporalPolicy(4), costs, budget, measures)
    assert report["corrupt_frames"] == 0
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from coinfer.edge.gate.decoding import StreamDecoder
from coinfer.edge.gate.traces import CameraTrace
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.costs import DecodeCostModel
from coinfer.sdk.gate.policies import Policy
from coinfer.sdk.gate.redundancy import RedundancyMeasure
from coinfer.sdk.gate.replay import replay
from coinfer.sdk.gate.scheduler import GateDecision


def frame_digest(frame: Any) -> str:
    """Hash of a decoded frame's planes (exact pixel equality, any pixel format)."""
    digest = hashlib.sha1(usedforsecurity=False)
    for plane in frame.planes:
        digest.update(bytes(plane))
    return digest.hexdigest()


class _DigestDecoder:
    """One stream's :class:`StreamDecoder` keeping only the digest of every frame, by pts."""

    def __init__(self, camera: CameraTrace) -> None:
        self.camera = camera
        self.decoder = StreamDecoder(camera.parameters)
        self.digests: dict[int, str] = {}

    def feed(self, index: int) -> None:
        self._record(self.decoder.decode([(self.camera.trace.packets[index], self.camera.data[index])]))

    def flush(self) -> None:
        self._record(self.decoder.flush())

    @property
    def errors(self) -> int:
        return self.decoder.errors + self.decoder.corrupt

    def _record(self, frames: dict[int, Any]) -> None:
        self.digests.update({pts: frame_digest(frame) for pts, frame in frames.items()})


def reference_digests(camera: CameraTrace) -> dict[int, str]:
    """Decode-all digests of every frame of ``camera`` (which must keep its packet data)."""
    decoder = _DigestDecoder(camera)
    for index in range(len(camera.trace.packets)):
        decoder.feed(index)
    decoder.flush()
    return decoder.digests


def verify_gated_decoding(cameras: Sequence[CameraTrace], policy: Policy, costs: DecodeCostModel,
                          budget: float, measures: Mapping[str, RedundancyMeasure]) -> dict[str, int]:
    """Replay the gate over ``cameras`` while really decoding its plans; count mismatches."""
    missing = [camera.name for camera in cameras if len(camera.data) != len(camera.trace.packets)]
    if missing:
        raise InvalidArgumentError(f"cameras {missing} were loaded without their packet data "
                                   f"(load them with keep_data=True)")
    references = [reference_digests(camera) for camera in cameras]
    decoders = [_DigestDecoder(camera) for camera in cameras]

    def on_round(_: int, decision: GateDecision) -> None:
        for stream, plan in enumerate(decision.plans):
            for packet in plan:
                decoders[stream].feed(packet.index)

    replay([camera.trace for camera in cameras], policy, costs, budget, measures, on_round=on_round)
    mismatched = frames = errors = decoded = 0
    for decoder, reference in zip(decoders, references, strict=True):
        decoder.flush()
        errors += decoder.errors
        decoded += decoder.decoder.packets
        frames += len(decoder.digests)
        mismatched += sum(reference.get(pts) != digest for pts, digest in decoder.digests.items())
    total = sum(len(camera.trace.packets) for camera in cameras)
    return {"frames_checked": frames, "mismatched_frames": mismatched, "decoder_errors": errors,
            "corrupt_frames": mismatched + errors, "packets": total, "packets_decoded": decoded}
