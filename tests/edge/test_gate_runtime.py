"""The edge runtime of PacketGame on real encoded clips: gated decoding is exact, streams stay
pinned to their workers, results drive the gate, live sources and bad input are survived."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from coinfer.device.gate.source import PacketSource  # noqa: E402
from coinfer.edge.gate.decoding import StreamDecoder, decode_all, frame_key  # noqa: E402
from coinfer.edge.gate.inference import DetectorPlugin, InferencePlugin  # noqa: E402
from coinfer.edge.gate.runtime import GateRuntime, RuntimeOptions  # noqa: E402
from coinfer.edge.gate.workers import DecoderPool, DecoderPoolError, StreamWork  # noqa: E402
from coinfer.sdk.gate.costs import DecodeCostModel  # noqa: E402
from coinfer.sdk.gate.packet import PictureType  # noqa: E402

WIDTH, HEIGHT = 192, 108
#: Fixed prices, so which packets the gate picks does not depend on this machine's speed.
COSTS = DecodeCostModel(i_seconds=4e-4, p_seconds=1e-4, b_seconds=1e-4, codec="h264", width=WIDTH,
                        height=HEIGHT)


class BrightnessTestPlugin(InferencePlugin):
    """Test plug-in: the frame's mean brightness in eight buckets (cheap, deterministic)."""

    tasks = ("brightness",)

    def infer(self, frame: np.ndarray) -> dict[str, int]:
        return {"brightness": int(frame.mean() // 32)}


class ImportsTestPlugin(InferencePlugin):
    """Test plug-in reporting which heavy frameworks the worker process has imported."""

    tasks = ("heavy",)

    def infer(self, frame: np.ndarray) -> dict[str, list[str]]:
        return {"heavy": [name for name in ("tensorflow", "torch", "transformers") if name in sys.modules]}


class CrashTestPlugin(InferencePlugin):
    """Test plug-in that kills its worker process on the first frame."""

    tasks = ("crash",)

    def infer(self, frame: np.ndarray) -> dict[str, int]:
        os._exit(3)


class FailTestPlugin(InferencePlugin):
    """Test plug-in whose model raises."""

    tasks = ("fail",)

    def infer(self, frame: np.ndarray) -> dict[str, int]:
        raise RuntimeError("the test model broke")


class HangTestPlugin(InferencePlugin):
    """Test plug-in that never answers: it blocks until its worker is terminated."""

    tasks = ("hang",)

    def infer(self, frame: np.ndarray) -> dict[str, int]:
        threading.Event().wait()
        return {"hang": 0}


def _encode(path: Path, images: list[np.ndarray], *, gop: int, bframes: int = 0,
            format: str | None = None) -> Path:
    with av.open(str(path), "w", format=format) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"preset": "veryfast", "bf": str(bframes), "sc_threshold": "0",
                                        "keyint_min": str(gop), "threads": "1"}
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _moving(frames: int, seed: int) -> list[np.ndarray]:
    """Noise with a bright square sliding across it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    images = []
    for t in range(frames):
        image = np.roll(base, t, axis=1)
        x = (5 * t) % (WIDTH - 24)
        image[30:54, x:x + 24] = 250
        images.append(image)
    return images


def _flashing(frames: int, seed: int) -> list[np.ndarray]:
    """Light switched on and off every four frames: the brightness result keeps changing."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 30, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return [noise + (200 if (t // 4) % 2 else 30) for t in range(frames)]


def _still(frames: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 140, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return [image] * frames


def _face_arrives(frames: int) -> list[np.ndarray]:
    """An empty grey scene; halfway through, the astronaut's face (skimage) appears."""
    import cv2
    import skimage.data

    face = cv2.resize(skimage.data.astronaut()[40:186, 151:297], (72, 72), interpolation=cv2.INTER_AREA)
    empty = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    with_face = empty.copy()
    with_face[12:84, 60:132] = face
    return [with_face if t >= frames // 2 else empty for t in range(frames)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-clips")
    return {
        "moving": _encode(root / "moving.mp4", _moving(80, 1), gop=10),
        "bframes": _encode(root / "bframes.mp4", _moving(90, 2), gop=16, bframes=2),
        "flashing": _encode(root / "flashing.mp4", _flashing(80, 3), gop=12),
        "still": _encode(root / "still.mp4", _still(50, 4), gop=10),
        "still_long": _encode(root / "still_long.mp4", _still(80, 4), gop=12),
        "face": _encode(root / "face.mp4", _face_arrives(60), gop=12),
        "bframes_ts": _encode(root / "bframes.ts", _moving(60, 5), gop=12, bframes=2, format="mpegts"),
    }


def _assert_exact(runtime: GateRuntime, stream: int, path: Path) -> None:
    """Every packet the gated run decoded (chosen or a dependency) gave one picture, equal to
    decode-all's picture of the same pts."""
    reference = decode_all(str(path), format=None)
    assert reference.errors == 0 and reference.corrupt == 0
    decoded = runtime.decoded[stream]
    assert decoded and len(decoded) == runtime.streams[stream].decoded
    for key, planes in decoded.items():
        assert np.array_equal(planes, reference.frames[key]), f"stream {stream} pts {key} differs"


@pytest.fixture(scope="module")
def gated_run(clips):
    """Four streams of different lengths (one with B-frames) gated at 30% of decode-all, 2 workers."""
    sources = [clips["moving"], clips["bframes"], clips["flashing"], clips["still"]]
    options = RuntimeOptions(budget_fraction=0.3, policy="temporal", tasks=("brightness",), workers=2,
                             costs=COSTS)
    with GateRuntime([str(path) for path in sources], options, plugin=BrightnessTestPlugin(),
                     audit=True) as runtime:
        reports = list(runtime.rounds())
    return runtime, reports, sources


def test_gated_decoding_is_bit_exact_with_b_frames(gated_run):
    runtime, _, sources = gated_run
    with PacketSource.open(str(sources[1])) as source:
        pictures = {packet.info.picture for packet in source}
    assert PictureType.B in pictures
    for stream, path in enumerate(sources):
        _assert_exact(runtime, stream, path)
    m = runtime.metrics
    assert m.decoder_errors == 0 and m.corrupt_frames == 0 and m.lost_frames == 0
    assert m.packets == 80 + 90 + 80 + 50
    assert m.skipped >= 0.4 * m.packets, f"only {m.skipped} of {m.packets} packets skipped"
    assert m.spent_cost_s <= m.budget_cost_s + 1e-9
    bframes = runtime.streams[1]
    assert 0 < bframes.decoded < bframes.packets
    for report in runtime.streams:
        assert report.results == report.inferred  # every chosen frame left its decoder and was inferred
        frames = report.frames
        assert len(frames) == report.packets
        assert all(frame.results is not None for frame in frames if frame.inferred)


@pytest.mark.slow  # starts decoder worker processes for a whole run (the gated_run test keeps one quick)
@pytest.mark.parametrize("policy", ["random", "round-robin"])
def test_gated_decoding_is_exact_under_other_policies(clips, policy):
    options = RuntimeOptions(budget_fraction=0.3, policy=policy, tasks=("brightness",), workers=1,
                             costs=COSTS, seed=5)
    sources = [clips["bframes"], clips["moving"]]
    with GateRuntime([str(path) for path in sources], options, plugin=BrightnessTestPlugin(),
                     audit=True) as runtime:
        runtime.run()
    for stream, path in enumerate(sources):
        _assert_exact(runtime, stream, path)
    assert runtime.metrics.decoder_errors == 0 and runtime.metrics.corrupt_frames == 0
    assert runtime.metrics.skipped > 0.3 * runtime.metrics.packets
    assert 0 < runtime.streams[0].decoded < runtime.streams[0].packets  # the B-frame stream was gated


def _random_predictor(path: Path) -> Path:
    """A small contextual predictor with random weights (wiring, not accuracy)."""
    from coinfer.sdk.gate.predictor import ContextualPredictor, PredictorOptions

    options = PredictorOptions(tasks=("brightness",), filters=4, hidden=8)
    return ContextualPredictor.untrained(options).save(path)


@pytest.mark.slow  # starts decoder worker processes for a whole run (the gated_run test keeps one quick)
def test_packetgame_policy_runs_a_saved_predictor(clips, tmp_path):
    from coinfer.sdk.errors import CoinferError

    with pytest.raises(CoinferError, match="needs a trained predictor"):
        RuntimeOptions(policy="packetgame")
    predictor = _random_predictor(tmp_path / "predictor")
    options = RuntimeOptions(budget_fraction=0.4, predictor=str(predictor), tasks=("brightness",), workers=1,
                             costs=COSTS)
    assert options.policy_name == "packetgame"
    sources = [clips["bframes"], clips["flashing"]]
    with GateRuntime([str(path) for path in sources], options, plugin=BrightnessTestPlugin(),
                     audit=True) as runtime:
        runtime.run()
    assert runtime.gate.policy.name == "packetgame"
    assert 0 < runtime.metrics.inferred < runtime.metrics.packets
    for stream, path in enumerate(sources):
        _assert_exact(runtime, stream, path)


def test_streams_are_pinned_to_one_worker(gated_run):
    runtime, _, _ = gated_run
    for report in runtime.streams:
        assert report.workers == {report.stream % 2}


@pytest.mark.slow  # starts decoder worker processes for a whole run (the gated_run test keeps one quick)
def test_results_drive_the_gate(clips):
    """Two streams alike in coding: the one whose results keep changing gets inferred more."""
    options = RuntimeOptions(budget_fraction=0.5, policy="temporal", tasks=("brightness",), workers=1,
                             costs=COSTS)
    with GateRuntime([str(clips["flashing"]), str(clips["still_long"])], options,
                     plugin=BrightnessTestPlugin()) as runtime:
        reports = list(runtime.rounds())
    flashing, still = runtime.streams
    necessary = np.array([report.necessary for report in reports]).sum(axis=0)
    assert necessary[0] >= 5 and necessary[1] <= 1  # only the first result of the still stream is news
    assert flashing.inferred > 1.3 * still.inferred > 0
    counts = still.counts("brightness")
    assert len(set(counts) - {None}) == 1  # carried over when skipped, identical when inferred


def test_decoder_reorder_delay_and_flush(clips):
    """With B-frames a picture leaves the decoder after later packets; flush() drains the rest."""
    with PacketSource.open(str(clips["bframes"])) as source:
        packets = list(source)
        decoder = StreamDecoder(source.parameters)
    seen = {}
    held_back = 0
    for packet in packets:
        out = decoder.decode([(packet.info, packet.data)])
        held_back += frame_key(packet.info) not in out
        seen.update(out)
    tail = decoder.flush()
    assert held_back > 0 and tail
    seen.update(tail)
    assert sorted(seen) == sorted(frame_key(packet.info) for packet in packets)
    assert decoder.errors == 0 and decoder.corrupt == 0 and decoder.packets == len(packets)


def test_detector_plugin_finds_the_astronauts_face(clips):
    reference = decode_all(str(clips["face"]))
    keys = sorted(reference.frames)
    plugin = DetectorPlugin(("faces", "cats"))
    plugin.prepare()
    before = plugin.infer(reference.frames[keys[5]])
    after = plugin.infer(reference.frames[keys[-5]])
    assert len(before["faces"]) == 0 and len(after["faces"]) == 1
    assert after["faces"].dtype == np.float32 and after["faces"].shape == (1, 4)
    import pickle

    assert pickle.loads(pickle.dumps(plugin)).tasks == ("faces", "cats")


@pytest.mark.slow  # starts decoder worker processes for a whole run (the gated_run test keeps one quick)
def test_gate_run_command_writes_the_summary(clips, tmp_path, capsys):
    from coinfer.sdk.cli.main import main

    out = tmp_path / "run.json"
    argv = ["run", str(clips["face"]), str(clips["moving"]), str(clips["flashing"]), "--policy", "temporal",
            "--budget-fraction", "0.5", "--tasks", "faces", "--workers", "2", "--json", str(out)]
    assert main(["gate", *argv]) == 0
    summary = json.loads(out.read_text())
    assert summary["options"]["policy"] == "temporal" and summary["tasks"] == ["faces"]
    metrics = summary["metrics"]
    assert metrics["packets"] == 60 + 80 + 80 and metrics["decoder_errors"] == 0
    assert 0 < metrics["inferred"] < metrics["packets"]
    face = summary["streams"][0]
    counts = face["frames"]["counts"]["faces"]
    assert len(counts) == 60 == len(face["frames"]["pts"])
    assert 1 in counts and counts[0] == 0  # the face appears halfway and is reported
    assert "coinfer gate run: temporal" in capsys.readouterr().out
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temp file left


def test_command_module_imports_nothing_heavy():
    import subprocess

    code = ("import sys, argparse; import coinfer.edge.cli.gate_run as m; "
            "m.add_arguments(argparse.ArgumentParser()); "
            "print(sorted(n for n in ('av', 'numpy', 'cv2', 'tensorflow', 'torch') if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    from coinfer.edge.cli import gate_run as run_command
    from coinfer.edge.gate import runtime

    assert run_command.POLICIES == runtime.POLICIES


class _TcpServer:
    """Serves a file's bytes to one client on 127.0.0.1: three quarters at once (more than
    probing needs), the rest once :attr:`resume` is set, so the camera stalls in between."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.resume = threading.Event()
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(120)  # only guards a runtime that never connects; accept returns at once
        self.port = self._socket.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self._socket, self._socket.accept()[0] as client:
            split = 3 * len(self.data) // 4
            client.sendall(self.data[:split])
            self.resume.wait(120)  # set by the test once the runtime saw the stall
            client.sendall(self.data[split:])


@pytest.mark.slow  # starts decoder worker processes for a whole run (the gated_run test keeps one quick)
def test_live_tcp_source_with_a_stall_and_a_missing_file(clips, tmp_path):
    server = _TcpServer(clips["bframes_ts"].read_bytes())
    missing = tmp_path / "no-such-camera.mp4"
    # Short rounds make the stall quick to see; the camera may stay silent much longer than it
    # takes a loaded machine to get through the rounds before the stall.
    options = RuntimeOptions(budget_fraction=0.4, policy="temporal", tasks=("brightness",), workers=2,
                             costs=COSTS, round_timeout_s=0.05, source_timeout_s=300)
    sources = [str(clips["moving"]), f"tcp://127.0.0.1:{server.port}", str(missing)]
    with GateRuntime(sources, options, plugin=BrightnessTestPlugin(), audit=True) as runtime:
        for _ in runtime.rounds():
            if runtime.streams[1].stalls >= 3:
                server.resume.set()  # the camera comes back; the file stream went on meanwhile
    server.thread.join()  # it has sent everything: the runtime read the live stream to its end
    live = runtime.streams[1]
    assert live.error is None and live.packets == 60 and live.stalls >= 3
    assert runtime.streams[0].packets == 80
    assert live.results == live.inferred > 0
    _assert_exact(runtime, 0, clips["moving"])
    _assert_exact(runtime, 1, clips["bframes_ts"])
    failed = runtime.streams[2]
    assert failed.packets == 0 and str(missing) in failed.error
    assert runtime.metrics.failed_sources == 1 and runtime.metrics.decoder_errors == 0


def test_no_source_opens_is_a_clear_error(tmp_path):
    from coinfer.sdk.errors import CoinferError

    with pytest.raises(CoinferError, match="no video source could be opened"):
        GateRuntime([str(tmp_path / "a.mp4")], RuntimeOptions(costs=COSTS),
                    plugin=BrightnessTestPlugin()).start()


def test_corrupt_packet_is_counted_and_decoding_goes_on(clips):
    with PacketSource.open(str(clips["moving"])) as source:
        packets = list(source)
        parameters = source.parameters
    broken = 25
    with DecoderPool(1, ImportsTestPlugin(), timeout_s=300) as pool:
        pool.open_streams({0: parameters})
        outcomes = []
        for k, packet in enumerate(packets):
            data = packet.data
            if k == broken:
                flipped = bytearray(data)
                for j in range(8, len(flipped), 3):
                    flipped[j] ^= 0xFF
                data = bytes(flipped)
            last = k == len(packets) - 1
            work = StreamWork(0, [(packet.info, data)], (frame_key(packet.info),), flush=last)
            outcomes.extend(pool.run([work]))
    errors = [outcome.errors for outcome in outcomes]
    assert sum(errors[:broken]) == 0 and errors[broken] > 0
    assert any(f"packet {broken}" in message for message in outcomes[broken].messages)
    results = [result for outcome in outcomes for result in outcome.results]
    assert len(results) >= len(packets) - 1  # decoding went on after the damaged packet
    assert all(result.results["heavy"] == [] for result in results)  # no TensorFlow / PyTorch in workers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Start-up and opening streams get minutes (a loaded machine may spawn slowly); a round gets
# minutes too, except for the worker that never answers, whose short limit cannot be missed.
@pytest.mark.parametrize("plugin, round_timeout_s, match", [
    (CrashTestPlugin(), 300, "died while decoding a round; exit code 3"),
    (FailTestPlugin(), 300, "the test model broke"),
    (HangTestPlugin(), 2, "did not answer within 2 s while decoding a round"),
])
def test_worker_failures_raise_clear_errors(clips, plugin, round_timeout_s, match):
    with PacketSource.open(str(clips["moving"])) as source:
        packet = next(source)
        parameters = source.parameters
    with DecoderPool(2, plugin, timeout_s=round_timeout_s, start_timeout_s=300) as pool:
        pool.open_streams({0: parameters, 1: parameters})
        with pytest.raises(DecoderPoolError, match=match):
            pool.run([StreamWork(1, [(packet.info, packet.data)], (frame_key(packet.info),))])
        pids = pool.pids
    assert not any(_alive(pid) for pid in pids)  # the hanging worker too: terminated, not waited for


def test_killed_worker_is_reported_not_waited_for(clips):
    with PacketSource.open(str(clips["moving"])) as source:
        packet = next(source)
        parameters = source.parameters
    # The death is seen at once (the worker's sentinel), not after the minutes of the timeout.
    with DecoderPool(2, BrightnessTestPlugin(), timeout_s=300) as pool:
        pool.open_streams({0: parameters, 1: parameters})
        os.kill(pool.pids[1], signal.SIGKILL)
        with pytest.raises(DecoderPoolError, match=r"decoder worker 1 \(pid \d+\) owning streams \[1\] "
                                                   r"(died|could not be reached).*killed by signal 9"):
            pool.run([StreamWork(stream, [(packet.info, packet.data)], (frame_key(packet.info),))
                      for stream in (0, 1)])


@pytest.mark.slow  # starts decoder worker processes for a whole run (the gated_run test keeps one quick)
def test_interrupt_stops_workers_and_readers(clips):
    options = RuntimeOptions(budget_fraction=0.5, tasks=("brightness",), workers=2, costs=COSTS)
    runtime = GateRuntime([str(clips["moving"]), str(clips["still"])], options, plugin=BrightnessTestPlugin())
    with pytest.raises(KeyboardInterrupt), runtime:
        pids = runtime.pool.pids
        for report in runtime.rounds():
            if report.round == 3:
                raise KeyboardInterrupt
    assert runtime.pool is None
    assert not any(_alive(pid) for pid in pids)
