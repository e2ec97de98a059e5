"""Camera-side gating under an uplink budget, and the edge gateway that ingests its uploads."""

from __future__ import annotations

import argparse
import http.client
import json
import math
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from coinfer.converters.filters import export_predictor
from coinfer.device.gate import (
    CameraGate,
    CameraGateOptions,
    GatewayUploader,
    PacketSource,
    SourcePacket,
    UplinkError,
    UplinkPrice,
    UplinkRefused,
)
from coinfer.edge.gate.decoding import decode_all, frame_array
from coinfer.edge.gate.inference import DetectorPlugin, InferencePlugin
from coinfer.edge.gateway import EdgeGateway, GatewayError, GatewayOptions, GatewayServer
from coinfer.sdk import wire
from coinfer.sdk.gate.features import CHANNELS
from coinfer.sdk.gate.predictor import ContextualPredictor, PredictorOptions
from coinfer.sdk.gate.protocol import (
    GateProtocolError,
    PacketsMessage,
    ParametersMessage,
    encode_end,
    encode_packets,
    encode_parameters,
    frames_path,
    parse_body,
)

TOKEN = "camera-test-token"
FPS = 25
FRAMES = 150
WIDTH, HEIGHT = 192, 108
SPRITE = (24, 32)


def encode_clip(path: Path, bframes: int) -> None:
    """A textured sprite bouncing over a blocky background, still during frames 40-69 and 100-119."""
    rng = np.random.default_rng(3)
    background = rng.integers(0, 80, (HEIGHT // 4, WIDTH // 4, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    sprite = rng.integers(120, 255, (*SPRITE, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 20
        stream.codec_context.max_b_frames = bframes
        stream.codec_context.options = {"preset": "veryfast", "crf": "24", "scenecut": "0", "threads": "1"}
        x, y, vx, vy = 20, 30, 4, 2
        for index in range(FRAMES):
            if not (40 <= index < 70 or 100 <= index < 120):
                x, y = x + vx, y + vy
                if not 0 <= x <= WIDTH - SPRITE[1]:
                    vx = -vx
                    x += 2 * vx
                if not 0 <= y <= HEIGHT - SPRITE[0]:
                    vy = -vy
                    y += 2 * vy
            image = background.copy()
            image[y:y + SPRITE[0], x:x + SPRITE[1]] = sprite
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module", params=[0, 2], ids=["no-bframes", "bframes"])
def clip(request, tmp_path_factory) -> SimpleNamespace:
    path = tmp_path_factory.mktemp("clips") / f"clip_b{request.param}.mp4"
    encode_clip(path, request.param)
    reference = decode_all(str(path), format=None)
    assert reference.errors == 0 and len(reference.frames) == FRAMES
    with PacketSource.open(str(path)) as source:
        packets = list(source)
        parameters = source.parameters
    assert packets[0].info.random_access and sum(p.info.random_access for p in packets) == -(-FRAMES // 20)
    assert source.parse_errors == 0
    total = sum(p.info.size for p in packets)
    return SimpleNamespace(path=path, packets=packets, parameters=parameters, reference=reference,
                           bytes_per_s=total / (len(packets) / FPS))


class SpriteBox(InferencePlugin):
    """Finds the bright sprite: one (x, y, w, h) box, so necessity = the sprite moved (IoU)."""

    tasks = ("sprite",)

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        rows, cols = np.nonzero(frame.min(axis=2) > 110)
        if rows.size == 0:
            return {"sprite": np.zeros((0, 4), np.float32)}
        box = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        return {"sprite": np.array([box], np.float32)}


def random_predictor(tasks: tuple[str, ...] = ("necessary",), seed: int = 1) -> ContextualPredictor:
    """A contextual predictor with random weights: decisions vary, and no training is needed."""
    return ContextualPredictor.untrained(PredictorOptions(tasks=tasks), seed=seed)


def recorder() -> tuple[dict[int, np.ndarray], dict[int, bool], object]:
    frames: dict[int, np.ndarray] = {}
    inferred: dict[int, bool] = {}

    def hook(stream: str, info, frame: av.VideoFrame, chosen: bool) -> None:
        frames[frame.pts] = frame_array(frame, None)
        inferred[frame.pts] = chosen

    return frames, inferred, hook


def assert_bit_identical(frames: dict[int, np.ndarray], reference) -> None:
    assert frames, "the gateway decoded nothing"
    for pts, array in frames.items():
        assert np.array_equal(array, reference.frames[pts]), f"frame at pts {pts} differs from decode-all"


def post(url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Content-Type": "application/octet-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_over_loopback_http(clip) -> None:
    frames, inferred, hook = recorder()
    budget = 0.4 * clip.bytes_per_s
    options = GatewayOptions(plugin=SpriteBox(), redundancy={"sprite": "iou"}, frame_hook=hook)
    with GatewayServer(options, TOKEN) as server:
        # A request that timed out would be sent again and counted twice: give it minutes.
        uploader = GatewayUploader(server.url, "cam0", TOKEN, timeout=300)
        gate = CameraGate(clip.parameters, uploader, CameraGateOptions(uplink_bytes_per_s=budget),
                          stream="cam0")
        with PacketSource.open(str(clip.path)) as source:
            stats = gate.run(source)
        status = server.gateway.status("cam0")
        remote = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/v1/gate/streams/cam0", headers={"Authorization": f"Bearer {TOKEN}"}),
            timeout=30).read())

    assert_bit_identical(frames, clip.reference)
    assert status["decode_errors"] == 0 and status["corrupt_frames"] == 0 and status["packets_dropped"] == 0
    assert status["frames_decoded"] == len(frames) == stats.packets_uploaded == status["packets_decoded"]
    assert sum(inferred.values()) == stats.packets_inferred == status["frames_inferred"]
    assert remote["frames_decoded"] == status["frames_decoded"]
    # The budget holds: what went up the link never exceeds the bucket plus the rate over the clip.
    assert stats.bytes_sent == uploader.bytes_sent == status["bytes_received"]
    assert stats.bytes_sent <= gate.price.capacity + budget * stats.media_seconds
    assert stats.bytes_sent > 0.6 * budget * stats.media_seconds
    assert stats.packets_uploaded < 0.6 * len(clip.packets)
    # Feedback came back for every inferred picture and reached the camera.
    assert len(stats.necessary_results) == stats.packets_inferred
    assert status["last_results"][-1]["results"]["sprite"]


def test_gateway_refuses_bad_requests_and_stays_usable(clip) -> None:
    packets = clip.packets
    with GatewayServer(GatewayOptions(max_request_bytes=256 << 10), TOKEN) as server:
        url = server.url + frames_path("cam1")
        start = encode_parameters("cam1", "s1", clip.parameters) + encode_packets(
            "cam1", "s1", 0, [(packets[0].info, packets[0].data, True)])
        assert post(url, start, token=None) == (401, {"detail": "missing or wrong bearer token"})
        assert post(url, start, token="wrong")[0] == 401
        assert urllib.request.urlopen(server.url + "/healthz", timeout=30).status == 200

        status, reply = post(url, start)
        assert status == 200 and reply["accepted"] == 1 and reply["decode_errors"] == 0

        second = encode_packets("cam1", "s1", 1, [(packets[1].info, packets[1].data, True)])
        bad_sizes = wire.encode(wire.Message(wire.MessageType.STREAM_CHUNK, {
            **wire.decode(second).header}, {"data": np.frombuffer(packets[1].data + b"\0", np.uint8)}))
        wrong_stream = encode_packets("cam9", "s1", 1, [(packets[1].info, packets[1].data, True)])
        for body, message in [
            (b"garbage that is not a frame at all", "bad magic"),
            (second[:-3], "truncated"),
            (second + b"\x00", "truncated"),
            (bad_sizes, "packet sizes sum to"),
            (wrong_stream, "does not match the URL"),
            (b"", "empty body"),
        ]:
            status, reply = post(url, body)
            assert status == 400 and message in reply["detail"], (message, reply)

        # Oversized: refused from the declared length, and while streaming a chunked body.
        status, reply = post(url, b"\0" * (300 << 10))
        assert status == 413 and "byte limit" in reply["detail"]
        connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
        connection.request("POST", frames_path("cam1"), body=iter([b"\0" * (64 << 10)] * 5),
                           headers={"Authorization": f"Bearer {TOKEN}"}, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and b"byte limit" in response.read()
        connection.close()
        assert post(server.url + frames_path("cam1").replace("cam1", "bad%20id"), second)[0] == 400

        # Nothing above touched the stream: the next chunk decodes cleanly.
        status, reply = post(url, second)
        assert status == 200 and reply["accepted"] == 1 and reply["decode_errors"] == 0
        status, reply = post(url, encode_end("cam1", "s1"))
        assert status == 200 and reply["decode_errors"] == 0
        state = server.gateway.status("cam1")
        assert state["packets_decoded"] == state["frames_decoded"] == 2 and state["decode_errors"] == 0


def test_camera_gate_runs_with_heavy_frameworks_blocked(run_blocked, clip, tmp_path) -> None:
    bodies = tmp_path / "bodies"
    random_predictor().save(tmp_path / "predictor")
    out = run_blocked(f"""
import json
from pathlib import Path
from coinfer.device.gate import CameraGate, CameraGateOptions, PacketSource
from coinfer.sdk.gate.predictor import ContextualPredictor
predictor = ContextualPredictor.load({str(tmp_path / "predictor")!r})
out = Path({str(bodies)!r})
out.mkdir()
sent = []
def sink(body):
    (out / f"{{len(sent):05d}}").write_bytes(body)
    sent.append(len(body))
with PacketSource.open({str(clip.path)!r}) as source:
    options = CameraGateOptions(uplink_bytes_per_s={0.4 * clip.bytes_per_s})
    stats = CameraGate(source.parameters, sink, options, stream="cam0", predictor=predictor).run(source)
blocked = {{"tensorflow", "torch", "transformers", "keras"}}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
print(json.dumps({{"heavy": heavy, "uploaded": stats.packets_uploaded, "bytes": stats.bytes_sent,
                  "bodies": len(sent)}}))
""")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["heavy"] == [] and 0 < report["uploaded"] < len(clip.packets)
    # The collected bodies, replayed into an in-process gateway, decode bit for bit.
    frames, _, hook = recorder()
    gateway = EdgeGateway(GatewayOptions(frame_hook=hook))
    replies = [gateway.ingest("cam0", path.read_bytes()) for path in sorted(bodies.iterdir())]
    assert len(replies) == report["bodies"] and not any(reply["resync"] for reply in replies)
    assert_bit_identical(frames, clip.reference)
    state = gateway.status("cam0")
    assert state["decode_errors"] == 0 and state["bytes_received"] == report["bytes"]
    assert len(frames) == report["uploaded"]


# ----------------------------------------------------------------------------- the uplink price


def looped(clip, times: int) -> list[SourcePacket]:
    """The clip played ``times`` times back to back (timestamps and indices continued)."""
    first, second, last = (clip.packets[i].info for i in (0, 1, -1))
    span = last.dts - first.dts + (second.dts - first.dts)
    count = len(clip.packets)
    return [SourcePacket(replace(p.info, index=p.info.index + r * count, pts=p.info.pts + r * span,
                                 dts=p.info.dts + r * span), p.data)
            for r in range(times) for p in clip.packets]


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6])
def test_price_keeps_long_run_spend_near_the_budget(clip, fraction) -> None:
    budget = fraction * clip.bytes_per_s
    gate = CameraGate(clip.parameters, lambda body: None, CameraGateOptions(uplink_bytes_per_s=budget))
    decisions = [gate.push(packet) for packet in looped(clip, 10)]
    allowed = budget * gate.stats.media_seconds
    assert 0.9 * allowed <= gate.stats.bytes_sent <= gate.price.capacity + allowed
    assert sum(d.bytes for d in decisions) == gate.stats.bytes_sent


def test_uplink_price_rules() -> None:
    price = UplinkPrice(bytes_per_s=1000, burst_bytes=2000, round_bytes=40, step=0.05, full_step=0.25)
    start = price.price
    assert price.tokens == 2000 and start == pytest.approx(1 / 40)
    price.refill(0.2)
    assert price.tokens == 2000  # the bucket never holds more than one burst
    assert price.admits(1.0, 40) and not price.admits(1.0, 41)
    price.settle(spent=0, blocked=False)  # full bucket, budget wasted: the fast step
    assert price.price == pytest.approx(start * math.exp(-0.25 * 200 / 40))
    price.spend(1500)
    price.refill(0.04)
    assert price.tokens == pytest.approx(540) and price.affordable(540) and not price.affordable(541)
    low = price.price
    price.settle(spent=1500, blocked=False)
    assert price.price == pytest.approx(low * math.exp(0.05 * (1500 - 40) / 40))
    high = price.price
    price.refill(0.04)
    price.settle(spent=0, blocked=True)  # short of tokens, not of demand: the price holds
    assert price.price == high
    # A picture larger than the whole bucket may go only when the bucket is full.
    assert not price.affordable(5000)
    price.refill(10)
    assert price.affordable(5000)
    price.spend(1e9)
    price.refill(0.04)
    price.settle(spent=1e9, blocked=False)  # the price is bounded and never overflows
    assert price.price == pytest.approx(start * UplinkPrice.RANGE)
    with pytest.raises(ValueError, match="must be > 0"):
        UplinkPrice(bytes_per_s=0, burst_bytes=1, round_bytes=1)


def test_the_first_decodable_packet_goes_first_whatever_the_budget(clip) -> None:
    bodies: list[bytes] = []
    gate = CameraGate(clip.parameters, bodies.append, CameraGateOptions(uplink_bytes_per_s=1.0))
    # Join mid-GOP: nothing can be decoded before the next random-access packet.
    decisions = [gate.push(packet) for packet in clip.packets[5:]]
    first_key = next(n for n, p in enumerate(clip.packets[5:]) if p.info.random_access)
    assert not any(d.sent for d in decisions[:first_key]) and math.isinf(decisions[0].cost)
    assert decisions[first_key].sent and sum(d.sent for d in decisions) == 1
    messages = parse_body(bodies[0], "camera")
    assert isinstance(messages[0], ParametersMessage) and messages[0].parameters == clip.parameters
    assert isinstance(messages[1], PacketsMessage)
    (info, data, inferred), = messages[1].packets
    assert info == replace(clip.packets[5 + first_key].info, stream=0) and inferred
    assert data == clip.packets[5 + first_key].data


def test_resync_on_request_and_on_transport_failure(clip) -> None:
    bodies: list[bytes] = []
    replies = iter([{"resync": True}])

    def sink(body: bytes) -> dict:
        bodies.append(body)
        return next(replies, {"results": [{"index": 0, "necessary": False}]})

    gate = CameraGate(clip.parameters, sink, CameraGateOptions(uplink_bytes_per_s=clip.bytes_per_s))
    for packet in clip.packets[:45]:
        gate.push(packet)
    assert gate.stats.resyncs == 1 and gate.stats.necessary_results and not gate.stats.necessary_results[0]
    again = parse_body(bodies[1], "camera")
    assert isinstance(again[0], ParametersMessage) and again[1].packets[0][0].random_access
    assert again[1].packets[0][0].index == 20  # waited for the next key frame

    failing = True

    def flaky(body: bytes) -> None:
        if failing:
            raise UplinkError("link down")

    gate = CameraGate(clip.parameters, flaky, CameraGateOptions(uplink_bytes_per_s=clip.bytes_per_s))
    gate.push(clip.packets[0])
    assert gate.stats.send_failures == 1 and gate.stats.bytes_sent == 0
    failing = False
    sent = [gate.push(packet) for packet in clip.packets[1:21]]
    assert not any(d.sent for d in sent[:-1]) and sent[-1].sent  # restarts at the next key frame

    def refusing(body: bytes) -> None:
        raise UplinkRefused("HTTP 401")

    with pytest.raises(UplinkRefused):
        CameraGate(clip.parameters, refusing, CameraGateOptions(uplink_bytes_per_s=1e6)).push(clip.packets[0])


def test_a_lost_reply_leaves_the_edge_decoding_exactly(clip) -> None:
    frames, _, hook = recorder()
    gateway = EdgeGateway(GatewayOptions(frame_hook=hook))
    calls = 0

    def lossy(body: bytes) -> dict:
        nonlocal calls
        calls += 1
        reply = gateway.ingest("camera", body)
        if calls in (3, 6):  # the edge applied the request; the camera never heard back
            raise UplinkError("connection reset")
        return reply

    gate = CameraGate(clip.parameters, lossy, CameraGateOptions(uplink_bytes_per_s=0.6 * clip.bytes_per_s))
    stats = gate.run(clip.packets)
    assert stats.send_failures == 2 and stats.resyncs == 2
    assert_bit_identical(frames, clip.reference)
    status = gateway.status("camera")
    assert status["decode_errors"] == 0 and status["duplicate_chunks"] == 0 and status["sessions"] == 1


def test_numpy_and_runner_predictors_decide_alike(clip) -> None:
    predictor = random_predictor(("a", "b"))

    class RunnerLike:  # the interface of coinfer.device.runtime runners of the TFLite export
        input_specs = (SimpleNamespace(name="i_view", shape=(None, 5, CHANNELS)),)

        def run(self, feeds: dict) -> dict:
            assert feeds["temporal"].shape == (1, 1) and feeds["temporal"].dtype == np.float32
            return {"output_0": predictor.predict(feeds["i_view"], feeds["p_view"], feeds["temporal"])}

    options = CameraGateOptions(uplink_bytes_per_s=0.4 * clip.bytes_per_s)
    runs = [[gate.push(p) for p in clip.packets]
            for gate in (CameraGate(clip.parameters, lambda b: None, options, predictor=predictor),
                         CameraGate(clip.parameters, lambda b: None, options, predictor=RunnerLike()))]
    assert [d.sent for d in runs[0]] == [d.sent for d in runs[1]]
    assert all(0 < d.value < 1 for d in runs[0]) and any(d.sent for d in runs[0])


@pytest.fixture(scope="module")
def tflite_predictor(tmp_path_factory) -> tuple[ContextualPredictor, Path]:
    predictor = random_predictor()
    rng = np.random.default_rng(2)
    samples = [rng.normal(size=(64, 5, CHANNELS)).astype(np.float32),
               rng.normal(size=(64, 5, CHANNELS)).astype(np.float32),
               rng.uniform(0, 2, (64, 1)).astype(np.float32)]
    out = tmp_path_factory.mktemp("predictor") / "tflite"
    export_predictor(predictor, out, samples)
    return predictor, out


@pytest.mark.slow
def test_tflite_predictor_gates_on_the_device_tier(run_blocked, clip, tflite_predictor) -> None:
    predictor, artifact = tflite_predictor
    out = run_blocked(f"""
import json
from coinfer.device.gate import CameraGate, CameraGateOptions, PacketSource
from coinfer.device.runtime import create_runner
runner = create_runner({str(artifact)!r})
with PacketSource.open({str(clip.path)!r}) as source:
    gate = CameraGate(source.parameters, lambda body: None,
                      CameraGateOptions(uplink_bytes_per_s={0.4 * clip.bytes_per_s}), predictor=runner)
    sent = [gate.push(packet).sent for packet in source]
print(json.dumps({{"backend": runner.backend, "sent": sent}}))
""")
    report = json.loads(out.strip().splitlines()[-1])
    gate = CameraGate(clip.parameters, lambda body: None,
                      CameraGateOptions(uplink_bytes_per_s=0.4 * clip.bytes_per_s), predictor=predictor)
    assert report["backend"] == "ai_edge_litert.interpreter"
    assert report["sent"] == [gate.push(packet).sent for packet in clip.packets]


# ----------------------------------------------------------------------------- protocol and gateway


def test_messages_round_trip_and_malformed_ones_are_named(clip) -> None:
    packets = [(p.info, p.data, n == 2) for n, p in enumerate(clip.packets[:3])]
    body = encode_parameters("cam0", "s", clip.parameters) + encode_packets("cam0", "s", 7, packets)
    parameters, chunk = parse_body(body, "cam0")
    assert parameters.parameters == clip.parameters and chunk.seq == 7
    assert [(replace(i, stream=p.info.stream), d, f) for (i, d, f), p in zip(chunk.packets, clip.packets,
                                                                             strict=False)] == packets

    def chunk_with(rows: list, data: bytes = b"ab") -> bytes:
        header = {"kind": "packets", "stream": "cam0", "session": "s", "seq": 0, "packets": rows}
        return wire.encode(wire.Message(wire.MessageType.STREAM_CHUNK, header,
                                        {"data": np.frombuffer(data, np.uint8)}))

    row = [0, 0, 0, True, 1, True, True, 2, True]
    assert parse_body(chunk_with([row]), "cam0")[0].packets[0][1] == b"ab"
    for body, message in [
        (chunk_with([[*row[:3], 1, *row[4:]]]), "'keyframe' must be bool"),
        (chunk_with([[True, *row[1:]]]), "'index' must be int"),
        (chunk_with([[*row[:4], 9, *row[5:]]]), "unknown picture type 9"),
        (chunk_with([row[:5]]), "expected a list of the 9 fields"),
        (chunk_with([row, [0, *row[1:7], 1, True]], b"abc"), "index 0 does not follow 0"),
        (chunk_with([[*row[:7], 3, True]]), "sum past the 2-byte data array"),
        (chunk_with([]), "1..4096 entries"),
        (chunk_with([row] * 3), "1..2 entries"),
        (wire.encode(wire.Message(wire.MessageType.TENSORS, {"kind": "packets"})), "not a gate message"),
    ]:
        with pytest.raises(GateProtocolError, match=message):
            parse_body(body, "cam0", max_packets=2 if "1..2" in message else 4096)
    with pytest.raises(GateProtocolError, match="codec 'h264' is not accepted"):
        parse_body(encode_parameters("cam0", "s", clip.parameters), "cam0", codecs=("vp9",))
    with pytest.raises(GateProtocolError, match="more than 2 frames"):
        parse_body(encode_end("cam0", "s") * 3, "cam0", max_frames=2)


def test_gateway_orders_chunks_and_asks_for_resync(clip) -> None:
    frames, _, hook = recorder()
    gateway = EdgeGateway(GatewayOptions(frame_hook=hook, max_streams=1))
    pk = clip.packets

    def chunk(seq: int, *indices: int, session: str = "s1") -> bytes:
        return encode_packets("cam0", session, seq, [(pk[i].info, pk[i].data, True) for i in indices])

    assert gateway.ingest("cam0", chunk(0, 0))["resync"]  # no parameters yet
    assert gateway.ingest("cam0", encode_parameters("cam0", "s1", clip.parameters) + chunk(0, 0, 1))[
        "accepted"] == 2
    assert gateway.ingest("cam0", chunk(0, 0, 1))["duplicates"] == 1  # a retried request
    reply = gateway.ingest("cam0", chunk(2, 3))  # chunk 1 was lost: packet 2 may be a reference
    assert reply["resync"] and reply["dropped"] == 1 and reply["accepted"] == 0
    assert gateway.ingest("cam0", chunk(3, 20, 21))["accepted"] == 2  # a key frame restarts decoding
    assert gateway.ingest("cam0", chunk(4, 22, session="other"))["resync"]
    gateway.ingest("cam0", encode_end("cam0", "s1"))
    assert_bit_identical(frames, clip.reference)
    status = gateway.status("cam0")
    assert status["decode_errors"] == 0 and status["frames_decoded"] == 4
    assert status["duplicate_chunks"] == 1 and status["resyncs_requested"] == 3
    with pytest.raises(GatewayError, match="stream slots") as refused:
        gateway.ingest("cam1", encode_end("cam1", "s"))
    assert refused.value.status == 429
    with pytest.raises(GatewayError, match="no stream"):
        gateway.status("cam2")


def test_a_wild_seq_is_refused_and_a_resync_restarts_the_numbering(clip) -> None:
    frames, _, hook = recorder()
    gateway = EdgeGateway(GatewayOptions(frame_hook=hook))
    pk = clip.packets
    parameters = encode_parameters("cam0", "s1", clip.parameters)

    def chunk(seq: int, *indices: int) -> bytes:
        return encode_packets("cam0", "s1", seq, [(pk[i].info, pk[i].data, True) for i in indices])

    assert gateway.ingest("cam0", parameters + chunk(0, 0, 1))["accepted"] == 2
    # Anyone with the token sees the session id: one chunk numbered 2**62 must not make every
    # later chunk of the stream look like a retry. It is refused, and nothing of it applied.
    with pytest.raises(GatewayError, match=f"seq {2**62} is more than 1024 past the stream's last seq 0") \
            as refused:
        gateway.ingest("cam0", chunk(0, 0) + chunk(2**62, 2))
    assert refused.value.status == 400 and gateway.status("cam0")["last_seq"] == 0
    # Jumps within the bound pass (requests were lost), but a chunk far behind is no retry:
    # the gateway asks for a resync, and the camera's resync restarts the numbering.
    for seq in (1024, 2048):
        assert gateway.ingest("cam0", chunk(seq, 2))["resync"]
    reply = gateway.ingest("cam0", chunk(1, 2))
    assert reply["resync"] and reply["duplicates"] == 0
    reply = gateway.ingest("cam0", parameters + chunk(2, 20, 21))
    assert reply["accepted"] == 2 and gateway.status("cam0")["last_seq"] == 2
    assert gateway.ingest("cam0", chunk(2, 20, 21))["duplicates"] == 1  # a retry is still a retry
    assert_bit_identical(frames, clip.reference)


def test_decoding_per_request_is_bounded_before_any_of_it(clip) -> None:
    gateway = EdgeGateway(GatewayOptions())
    everything = [(p.info, p.data, True) for p in clip.packets]
    body = encode_parameters("cam0", "s1", clip.parameters) + b"".join(
        encode_packets("cam0", "s1", seq, everything) for seq in range(7))
    with pytest.raises(GatewayError, match=f"{7 * FRAMES} packets, over the limit of 1024") as refused:
        gateway.ingest("cam0", body)
    assert refused.value.status == 413 and gateway.streams() == []
    one_chunk = encode_parameters("cam0", "s1", clip.parameters) + encode_packets("cam0", "s1", 0, everything)
    assert EdgeGateway(GatewayOptions(max_packets_per_request=FRAMES)).ingest("cam0", one_chunk)[
        "accepted"] == FRAMES


def test_uploader_retries_then_gives_up() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    uploader = GatewayUploader(f"http://127.0.0.1:{closed}", "cam0", TOKEN, retries=2, backoff_s=0.0)
    with pytest.raises(UplinkError, match="failed 3 times"):
        uploader(encode_end("cam0", "s"))
    assert uploader.requests == uploader.failed_attempts == 3 and uploader.bytes_sent == 0
    with GatewayServer(GatewayOptions(), TOKEN) as server:
        with pytest.raises(UplinkRefused, match="HTTP 401"):
            GatewayUploader(server.url, "cam0", "wrong", timeout=300)(encode_end("cam0", "s"))
        reply = GatewayUploader(server.url, "cam0", TOKEN, timeout=300)(encode_end("cam0", "s"))
        assert reply["accepted"] == 0


def test_edge_gateway_command_line(tmp_path, monkeypatch) -> None:
    from coinfer.edge.cli import gate_serve as cli
    from coinfer.sdk.service import resolve_token

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--max-request-mib", "8"])
    assert (args.host, args.port, args.max_request_mib) == ("127.0.0.1", 0, 8)
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("COINFER_TOKEN", "from-env")
    assert resolve_token(tmp_path / "token") == "from-file"
    assert resolve_token(None) == "from-env"
    assert args.tasks == ""

    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: served.append(app))
    args.token_file = None
    assert cli.run(args) == 0 and served[0].state.gateway.options.plugin is None
    assert cli.run(parser.parse_args(["--tasks", "faces, cats"])) == 0
    plugin = served[1].state.gateway.options.plugin
    assert isinstance(plugin, DetectorPlugin) and plugin.tasks == ("faces", "cats")


def test_protocol_and_price_live_in_the_sdk_and_the_edge_needs_no_device_code(run_blocked) -> None:
    out = run_blocked("""
import sys
import coinfer.sdk.gate.protocol, coinfer.sdk.gate.uplink, coinfer.sdk.service
sdk = sorted(m for m in sys.modules if m.split(".")[0] in {"av", "uvicorn", "fastapi", "coinfer"}
             and not m.startswith("coinfer.sdk") and m != "coinfer")
import coinfer.edge.gateway
print(sdk, sorted(m for m in sys.modules if m.startswith("coinfer.device")))
""")
    assert out.strip().splitlines()[-1] == "[] []"
    from coinfer.device import gate
    from coinfer.sdk.gate.protocol import StreamParameters
    from coinfer.sdk.gate.uplink import UplinkPrice as SdkPrice

    assert gate.UplinkPrice is SdkPrice and gate.StreamParameters is StreamParameters


@pytest.mark.parametrize("field", ["index", "pts", "dts"])
def test_a_timestamp_beyond_64_bits_is_a_protocol_error_not_a_decoder_crash(clip, field) -> None:
    packet = clip.packets[0]
    info = replace(packet.info, **{field: 2 ** 63})
    body = encode_parameters("cam1", "s1", clip.parameters) + encode_packets(
        "cam1", "s1", 0, [(info, packet.data, True)])
    with pytest.raises(GateProtocolError, match=f"{field} {2 ** 63} does not fit in 64 signed bits"):
        parse_body(body, "cam1")
