"""The edge gateway daemon (``coinfer edge gateway --config``): its configuration file, its one
server's refusals, its reloads, the gate runtime's looping files and live budget, and, end to
end, the real process with two looping file streams (one behind an InFi skip filter) and a
camera-gate uploader: metrics, status page, SIGHUP with a new budget and with a broken file,
SIGTERM with no worker process left behind and no file left half-written."""

from __future__ import annotations

import configparser
import dataclasses
import http.client
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

av = pytest.importorskip("av")

from coinfer.device.gate import CameraGate, CameraGateOptions, GatewayUploader, PacketSource  # noqa: E402
from coinfer.edge.daemon.app import create_daemon_app  # noqa: E402
from coinfer.edge.daemon.config import load_config  # noqa: E402
from coinfer.edge.daemon.filtering import FILTER_KEY, StreamPlugin, scale_frame  # noqa: E402
from coinfer.edge.daemon.gateway_daemon import GatewayDaemon  # noqa: E402
from coinfer.edge.gate.decoding import decode_all  # noqa: E402
from coinfer.edge.gate.inference import InferencePlugin  # noqa: E402
from coinfer.edge.gate.runtime import GateRuntime, RuntimeOptions  # noqa: E402
from coinfer.sdk.config_file import ConfigError  # noqa: E402
from coinfer.sdk.errors import CoinferError  # noqa: E402
from coinfer.sdk.service import ThreadedServer  # noqa: E402

TOKEN = "gateway-daemon-token"
OCTETS = "application/octet-stream"
#: Guards every wait on the daemon against a hang; never a time anything is expected to take.
DEADLINE_S = 300.0
HEADER = re.compile(r"^# (?:HELP|TYPE) (\S+)")
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "gateway" / "gateway.toml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write(folder: Path, text: str, name: str = "gateway.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def call(url: str, path: str, token: str | None = TOKEN, body: bytes | None = None,
         content_type: str = OCTETS) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are answers, not exceptions."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=body, method="GET" if body is None else "POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def announce(url: str, path: str, length: int, content_type: str = OCTETS) -> tuple[int, bytes]:
    """(status, body) of a POST that announces ``length`` bytes and sends a few: a service must
    refuse it (413) from the header, before the body arrives."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=DEADLINE_S)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Authorization", f"Bearer {TOKEN}")
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(length))
        connection.endheaders(b"CNFR")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def status_of(url: str, token: str = TOKEN) -> dict[str, Any]:
    code, body = call(url, "/v1/status", token)
    assert code == 200, body
    return json.loads(body)


def metrics_of(url: str) -> dict[str, float]:
    """Every sample of ``/metrics`` by name and labels (``coinfer_gate_packets_total{stream="a"}``)."""
    code, body = call(url, "/metrics")
    assert code == 200, body
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def wait_for(check: Callable[[], Any], what: str, alive: Callable[[], str | None] = lambda: None) -> Any:
    """Poll ``check`` until it returns something true; fail when ``alive`` says the daemon is
    gone, or at the guard deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = check()
        if found:
            return found
        gone = alive()
        if gone is not None:
            pytest.fail(f"the daemon exited while waiting for {what}:\n{gone}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


class DaemonProcess:
    """``coinfer edge gateway --config CONFIG [flags]`` as a real process, its stderr in ``log``."""

    def __init__(self, config: Path, log: Path, *flags: str) -> None:
        env = {key: value for key, value in os.environ.items() if key != "COINFER_TOKEN"}
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coinfer.sdk.cli", "edge", "gateway", "--config", str(config), *flags],
                stdout=subprocess.DEVNULL, stderr=sink, env=env)

    def gone(self) -> str | None:
        return None if self.process.poll() is None else self.log.read_text()

    def wait_ready(self, url: str) -> None:
        def healthy() -> bool:
            try:
                return call(url, "/healthz", None)[0] == 200
            except OSError:
                return False

        wait_for(healthy, "/healthz", self.gone)

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=DEADLINE_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` (from every thread's ``children`` list), by their start time."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            started = _start_time(int(child))
            if started is not None:
                found[int(child)] = started
    return found


def _start_time(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]  # field 22: start time; a zombie has exited


# -- the configuration file ------------------------------------------------------------------------------


def test_a_configuration_is_read_with_defaults_and_paths_relative_to_its_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "door.mp4").write_bytes(b"")
    (tmp_path / "token").write_text("t")
    config = load_config(write(tmp_path, """
[server]
port = 9100
token_file = "token"

[gate]
budget_fraction = 0.3
tasks = ["faces", "people"]

[[streams]]
name = "door"
url = "videos/door.mp4"
loop = true

[[streams]]
url = "rtsp://admin:secret@10.0.0.5/live"

[uploads]
tasks = ["faces"]

[infi]
"""))
    assert config.server.port == 9100 and config.server.host == "127.0.0.1"
    assert config.server.token_file == tmp_path / "token" and config.server.max_request_bytes == 64 << 20
    assert config.gate.budget_fraction == 0.3 and config.gate.tasks == ("faces", "people")
    assert config.gate.workers == 1 and config.gate.realtime and config.gate.policy is None
    door, camera = config.streams
    assert door.url == str(tmp_path / "videos" / "door.mp4") and door.loop and not door.live
    assert camera.name == "stream1" and camera.live and not camera.loop and camera.filter is None
    assert config.uploads is not None and config.uploads.tasks == ("faces",)
    assert config.infi is not None and config.infi.task == "faces"
    assert config.split is None and config.evolve is None
    assert config.services == ("streams", "uploads", "infi")


BAD_CONFIGS = [
    ("[gate\n", ":1: not valid TOML"),
    ("[server]\nport = 70000\n[uploads]\n", ":2: [server] port must be in [0, 65535], got 70000"),
    ("[server]\nport = 8100\nhots = \"0.0.0.0\"\n[uploads]\n", ":3: [server] hots is not a known key"),
    ("[cameras]\nurl = \"a.mp4\"\n", ":1: unknown table or key 'cameras'"),
    ("[uploads]\n[gate]\nbudget_fraction = 0\n", ":3: [gate] budget_fraction must be above 0"),
    ("[uploads]\n[gate]\nbudget_fraction = \"lots\"\n", ":3: [gate] budget_fraction must be a finite number"),
    ("[uploads]\n[gate]\ntasks = [\"dogs\"]\n", ":3: [gate] tasks has unknown value(s) ['dogs']"),
    ("[uploads]\n[gate]\npolicy = \"packetgame\"\n", ":3: [gate] policy packetgame needs a trained"),
    ("[uploads]\n[gate]\npredictor = \"missing\"\n", ":3: [gate] predictor is unusable"),
    ("[uploads]\n[gate]\npolicy = \"temporal\"\npredictor = \"p\"\n", ":4: [gate] predictor is only used by"),
    ("[[streams]]\nname = \"a\"\n", ":1: [[streams]] #1: missing required key 'url'"),
    ("[[streams]]\nurl = \"missing.mp4\"\n", ":2: [[streams]] #1 url"),
    ("[[streams]]\nurl = \"cam.mp4\"\nfps = 5\n", ":3: [[streams]] #1 fps is not a known key"),
    ("[[streams]]\nurl = \"cam.mp4\"\nloop = \"yes\"\n", ":3: [[streams]] #1 loop must be true or false"),
    ("[[streams]]\nname = \"a b\"\nurl = \"cam.mp4\"\n", ":2: [[streams]] #1 name must be 1-64 letters"),
    ("[[streams]]\nname = \"a\"\nurl = \"cam.mp4\"\n\n[[streams]]\nname = \"a\"\nurl = \"cam.mp4\"\n",
     ":6: [[streams]] #2 name 'a' names two streams"),
    ("[[streams]]\nurl = \"cam.mp4\"\nfilter = \"missing\"\n", ":3: [[streams]] #1 filter is unusable"),
    ("[streams]\nurl = \"cam.mp4\"\n", ":1: streams must be an array of tables [[streams]]"),
    ("[uploads]\ntasks = [\"dogs\"]\n", ":2: [uploads] tasks has unknown value(s) ['dogs']"),
    ("[uploads]\nmax_streams = 0\n", ":2: [uploads] max_streams must be in [1, 4096], got 0"),
    ("[infi]\ntask = \"dogs\"\n", ":2: [infi] task must be one of"),
    ("[split]\nbundle = \"missing\"\n", ":2: [split] bundle"),
    ("[evolve]\nconfig = \"missing.json\"\n", ":2: [evolve] config is unusable"),
    ("[[streams]]\nurl = \"cam.mp4\"\n[mlink]\nlinks = \"missing\"\nbudget = 5\n",
     "missing: no such link graph directory"),
    ("# nothing at all\n", "configures nothing to host"),
]


@pytest.mark.parametrize(("text", "says"), BAD_CONFIGS, ids=[says for _, says in BAD_CONFIGS])
def test_a_bad_configuration_is_one_error_naming_the_file_and_line(tmp_path, text, says):
    (tmp_path / "cam.mp4").write_bytes(b"")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and says in message and "\n" not in message


def test_overrides_and_what_a_reload_cannot_apply(tmp_path):
    config = load_config(write(tmp_path, "[server]\nport = 8100\n[uploads]\n"))
    moved = config.with_overrides({"host": "0.0.0.0", "port": 9000, "token_file": None})
    assert (moved.server.host, moved.server.port, moved.server.token_file) == ("0.0.0.0", 9000, None)
    assert config.with_overrides({"host": None}) == config
    other = load_config(write(tmp_path, "[server]\nport = 8200\n[gate]\nbudget_fraction = 0.2\n[infi]\n"))
    assert other.restart_changes(config) == ["[server] port", "[uploads]", "[infi]"]
    assert other.gate.runtime_changes(config.gate) == []


# -- the one server: its routes and refusals -------------------------------------------------------------


def test_the_server_refuses_bad_requests_with_a_clear_error_and_keeps_serving(tmp_path):
    config = load_config(write(tmp_path, "[server]\nmax_request_mib = 1\n[uploads]\n[infi]\n"))
    daemon = GatewayDaemon(config, TOKEN)
    try:
        with ThreadedServer(create_daemon_app(daemon), name="the gateway daemon") as server:
            url = server.url
            assert call(url, "/healthz", None) == (200, b'{"status":"ok"}')
            for path in ("/v1/status", "/status", "/metrics", "/openapi.json", "/v1/gate/streams/cam0"):
                for token in (None, "wrong-token"):
                    code, body = call(url, path, token)
                    assert code == 401 and json.loads(body) == {"detail": "missing or wrong bearer token"}
            frames = "/v1/gate/streams/cam0/frames"
            assert call(url, frames, None, b"x")[0] == 401
            code, body = announce(url, frames, 2 << 20)
            assert code == 413 and "over the 1048576-byte limit" in json.loads(body)["detail"]
            code, body = announce(url, "/v1/infi/detect", 2 << 20, "image/jpeg")
            assert code == 413 and "over the 1048576-byte limit" in json.loads(body)["detail"]
            code, body = call(url, frames, body=b"not a frame at all")
            assert code == 400 and json.loads(body)["detail"]
            code, body = call(url, "/v1/infi/detect", body=b"not a jpeg", content_type="image/jpeg")
            assert code == 400 and "not a JPEG" in json.loads(body)["detail"]
            assert call(url, "/healthz", None)[0] == 200
            status = status_of(url)
            assert status["services"] == ["uploads", "infi"] and status["uploads"] == {"streams": []}
            assert status["infi"]["requests"] == 0
            samples = metrics_of(url)
            assert samples['coinfer_http_responses_total{code="401",service="uploads"}'] >= 3
            assert samples['coinfer_http_responses_total{code="413",service="uploads"}'] == 1
            assert samples['coinfer_http_responses_total{code="400",service="infi"}'] == 1
            assert samples["coinfer_uploads_streams"] == 0 and samples["coinfer_gate_budget_fraction"] == 0.5
            code, page = call(url, "/status")
            assert code == 200 and b"coinfer edge gateway" in page and b"Camera uploads" in page
    finally:
        daemon.close()
@pytest.mark.slow
def test_the_split_tail_is_served_from_the_same_port_behind_its_own_checks(tmp_path):
    from onnx import TensorProto, helper

    from coinfer.device.split import SplitClient
    from coinfer.sdk.split.bundle import export_split
    from coinfer.sdk.split.graph import SplitGraph

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])  # noqa: E731
    graph = SplitGraph(helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")])))
    device, _ = export_split(graph, graph.cut_after("a"), tmp_path / "split", "float32")
    config = load_config(write(tmp_path, '[split]\nbundle = "split/edge"\nmax_batch = 4\n'))
    daemon = GatewayDaemon(config, TOKEN)
    try:
        with ThreadedServer(create_daemon_app(daemon), name="the gateway daemon") as server:
            client = SplitClient.create_from_bundle(device, server.url, TOKEN)
            x = np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)
            assert np.allclose(client.infer(x)["y"], np.maximum(x, 0) + 1 / (1 + np.exp(-x)), atol=1e-6)
            code, body = call(server.url, "/v1/split/infer", body=b"not a frame")
            assert code == 400 and json.loads(body)["detail"].startswith("malformed frame")
            assert call(server.url, "/v1/split/info", "wrong-token")[0] == 401
            assert status_of(server.url)["split"]["requests"] == 1
            assert metrics_of(server.url)["coinfer_split_requests_total"] == 1
    finally:
        daemon.close()


@pytest.mark.slow  # builds a pretrained EfficientNet-Lite0 body with torch
def test_the_evolution_service_is_hosted_and_lets_go_of_its_root_on_close(tmp_path):
    import torch

    from coinfer.edge.cli.edge_gateway import _device_model_exporter
    from coinfer.edge.evolve.service import RootLock
    from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, load_pretrained
    from coinfer.sdk.evolve.training import state_arrays
    from coinfer.sdk.npz import write_arrays

    pretrained = load_pretrained()
    body = ArchitectureSpec("efficientnet-lite0", input_size=64)
    tiny = ArchitectureSpec("tiny", input_size=64)
    torch.manual_seed(0)
    write_arrays(tmp_path / "global.npz", state_arrays(build_network(body, pretrained)))
    write_arrays(tmp_path / "cam1.npz", state_arrays(build_network(tiny, pretrained)))
    (tmp_path / "evolve.json").write_text(json.dumps({
        "root": "evolve-root", "global": {"architecture": body.to_dict(), "state": "global.npz"},
        "devices": [{"id": "cam1", "architecture": tiny.to_dict(), "state": "cam1.npz"}]}))
    config = load_config(write(tmp_path, '[evolve]\nconfig = "evolve.json"\n'))
    with pytest.raises(ConfigError, match=r"gateway.toml:2: \[evolve\] config: the evolution service needs"):
        GatewayDaemon(config, TOKEN)
    daemon = GatewayDaemon(config, TOKEN, exporter=_device_model_exporter)
    try:
        with ThreadedServer(create_daemon_app(daemon), name="the gateway daemon") as server:
            code, body_bytes = call(server.url, "/v1/evolve/status")
            assert code == 200 and list(json.loads(body_bytes)["devices"]) == ["cam1"]
            assert call(server.url, "/v1/evolve/status", None)[0] == 401
            assert call(server.url, "/v1/evolve/devices/cam9/frames", body=b"x")[0] == 404
            assert status_of(server.url)["evolve"]["devices"] == 1
            assert metrics_of(server.url)["coinfer_evolve_devices"] == 1
    finally:
        daemon.close()
    RootLock(tmp_path / "evolve-root").release()  # the daemon let go of the root


def test_the_samples_parse_and_the_unit_reloads_and_stops_the_daemon(tmp_path):
    folder = tmp_path / "deploy"
    (folder / "scenes").mkdir(parents=True)
    for name in ("cam000.mp4", "cam001.mp4"):
        (folder / "scenes" / name).write_bytes(b"")
    config = load_config(write(folder, SAMPLE.read_text()))
    assert [stream.name for stream in config.streams] == ["lobby", "door"]
    assert all(stream.loop and stream.filter is None for stream in config.streams)
    assert config.services == ("streams", "uploads") and config.server.host == "127.0.0.1"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((SAMPLE.parent / "coinfer-gateway.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"].endswith("coinfer edge gateway --config /etc/coinfer/gateway.toml")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID" and service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed" and int(service["TimeoutStopSec"]) > config.server.drain_seconds
    assert service["Type"] in ("exec", "simple") and service["User"] == "coinfer"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"


# -- the gate runtime as the daemon runs it --------------------------------------------------------------
@pytest.mark.slow
def test_a_looping_file_is_decoded_exactly_on_every_pass_and_takes_a_new_budget(small_scenes):
    video = str(small_scenes / "cam000.mp4")
    reference = decode_all(video, format=None)
    packets = len(reference.packets)
    options = RuntimeOptions(budget_fraction=0.9, policy="round-robin", tasks=("faces",), workers=1,
                             loop=True, history=8, max_rounds=3 * packets)
    fractions = []
    with GateRuntime([video], options, audit=True) as runtime:
        before = (0.0, 0.0)
        for report in runtime.rounds():
            metrics = runtime.metrics
            fractions.append((metrics.budget_cost_s - before[0]) / (metrics.decode_all_cost_s - before[1]))
            before = (metrics.budget_cost_s, metrics.decode_all_cost_s)
            if report.round == packets:
                runtime.set_budget(budget_fraction=0.5)
        with pytest.raises(CoinferError, match="the budget fraction must be in"):
            runtime.set_budget(budget_fraction=2.0)
    stream = runtime.streams[0]
    assert stream.packets == 3 * packets and stream.loops == 2 and stream.error is None
    assert runtime.metrics.decoder_errors == 0 and runtime.metrics.corrupt_frames == 0
    assert np.allclose(fractions[:packets + 1], 0.9) and np.allclose(fractions[packets + 1:], 0.5)
    assert len(stream.frames) < 16 and stream.first_frame + len(stream.frames) == 3 * packets
    assert stream.frame(0) is None and stream.frame(3 * packets - 1) is stream.frames[-1]
    keys = sorted(reference.frames)
    shift = keys[-1] + 1 - keys[0]
    decoded = runtime.decoded[0]
    later = [key for key in decoded if key > keys[-1]]
    assert later and len(decoded) > packets
    for key, planes in decoded.items():
        assert np.array_equal(planes, reference.frames[keys[0] + (key - keys[0]) % shift]), key


class ConstantTestPlugin(InferencePlugin):
    """Test plug-in answering one value for every frame (which plug-in ran is in the result)."""

    tasks = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def infer(self, frame: np.ndarray) -> dict[str, int]:
        return {"value": self.value}
@pytest.mark.slow
def test_streams_with_plugins_of_their_own_share_one_gate(small_scenes):
    videos = [str(small_scenes / "cam000.mp4"), str(small_scenes / "cam001.mp4")]
    options = RuntimeOptions(policy="decode-all", tasks=("value",), workers=2)
    results: dict[int, set[int]] = {0: set(), 1: set()}
    own = {1: ConstantTestPlugin(1)}
    with GateRuntime(videos, options, plugin=ConstantTestPlugin(0), plugins=own) as runtime:
        assert len(runtime.pools) == 2 and runtime.pool is runtime.pools[0]
        assert [len(pool.pids) for pool in runtime.pools] == [1, 1]  # at most a worker per stream
        for report in runtime.rounds():
            for result in report.results:
                results[result.stream].add(result.results["value"])
    assert results == {0: {0}, 1: {1}}
    assert runtime.streams[0].inferred == runtime.streams[0].packets and runtime.metrics.decoder_errors == 0
    assert runtime.pools == [] and runtime.pool is None
    with pytest.raises(CoinferError, match=r"plug-ins are given for stream\(s\) \[2\]"):
        GateRuntime(videos, options, plugins={2: ConstantTestPlugin(1)})
    other = ConstantTestPlugin(1)
    other.tasks = ("faces",)
    with pytest.raises(CoinferError, match=r"the plug-ins of stream\(s\) \[1\] run other tasks"):
        GateRuntime(videos, options, plugin=ConstantTestPlugin(0), plugins={1: other}).start()
@pytest.mark.slow
def test_a_reload_changes_the_budget_live_and_restarts_only_what_changed(small_scenes, tmp_path):
    def configure(budget: float, *streams: str) -> Path:
        entries = "".join(f'\n[[streams]]\nname = "{name}"\nurl = "{small_scenes / name}.mp4"\nloop = true\n'
                          for name in streams)
        return write(tmp_path, f"[gate]\nbudget_fraction = {budget}\nworkers = 1\n{entries}")

    daemon = GatewayDaemon(load_config(configure(0.9, "cam000")), TOKEN)
    try:
        daemon.start()
        wait_for(lambda: daemon.status()["streams"][0]["packets"] > 0, "packets of cam000")
        group = daemon.streams._groups[0]
        configure(0.4, "cam000")
        assert daemon.reload()
        assert daemon.streams._groups == [group] and group._runtime is not None
        assert group._runtime.options.budget_fraction == 0.4
        assert daemon.status()["gate"]["budget_fraction"] == 0.4
        assert daemon.reloads["last"] == "budget 0.9 -> 0.4"
        write(tmp_path, "[gate]\nbudget_fraction = 0.4\n[[streams]]\nurl = \"gone.mp4\"\n")
        assert not daemon.reload()
        assert "gone.mp4: no such video file" in daemon.reloads["last"]
        assert daemon.streams._groups == [group] and daemon.status()["reloads"]["refused"] == 1
        packets = daemon.status()["streams"][0]["packets"]
        configure(0.4, "cam000", "cam001")
        assert daemon.reload()
        assert daemon.reloads["last"] == "added stream(s) cam001; restarted stream(s) cam000"
        (gate,) = daemon.streams._groups  # the same filter and loop setting: one gate over both now
        assert gate is not group and gate.names == ["cam000", "cam001"]
        streams = daemon.status()["streams"]
        assert [s["name"] for s in streams] == ["cam000", "cam001"]
        assert streams[0]["packets"] >= packets  # its counters carried over to the new gate
    finally:
        daemon.close()
    assert all(status.state == "stopped" for status in daemon.streams.statuses())
@pytest.mark.slow
def test_a_camera_that_cannot_be_reached_is_retried_while_the_others_run(small_scenes, tmp_path):
    gone = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    config = load_config(write(tmp_path, f'[gate]\nbudget_fraction = 0.9\n[[streams]]\nname = "file"\n'
                                         f'url = "{small_scenes / "cam000.mp4"}"\nloop = true\n'
                                         f'[[streams]]\nname = "camera"\nurl = "{gone}"\n'))
    daemon = GatewayDaemon(config, TOKEN)
    try:
        daemon.start()

        def retried() -> dict[str, Any] | None:
            file, camera = daemon.status()["streams"]
            return camera if camera["restarts"] >= 1 and file["packets"] > 0 else None

        camera = wait_for(retried, "the camera to be retried")
        assert camera["errors"] >= 1 and gone in camera["last_error"] and camera["state"] != "running"
        assert any(gone in event["message"] for event in daemon.status()["errors"])
        packets = daemon.status()["streams"][0]["packets"]
        wait_for(lambda: daemon.status()["streams"][0]["packets"] > packets, "the file to go on")
    finally:
        daemon.close()
@pytest.mark.slow
def test_cli_flags_override_the_configuration_file(tmp_path):
    (tmp_path / "file-token").write_text("from-the-file\n")
    (tmp_path / "flag-token").write_text("from-the-flag\n")
    occupied = free_port()
    config = write(tmp_path, f'[server]\nhost = "0.0.0.0"\nport = {occupied}\ntoken_file = "file-token"\n'
                             f"[uploads]\n")
    port = free_port()
    daemon = DaemonProcess(config, tmp_path / "daemon.log", "--port", str(port), "--host", "127.0.0.1",
                           "--token-file", str(tmp_path / "flag-token"))
    try:
        url = f"http://127.0.0.1:{port}"
        daemon.wait_ready(url)
        assert status_of(url, "from-the-flag")["listen"] == url
        assert call(url, "/v1/status", "from-the-file")[0] == 401
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    log = (tmp_path / "daemon.log").read_text()
    assert f"started on {url}" in log and "stopped" in log


# -- the stream plug-in and the daemon end to end --------------------------------------------------------


@pytest.mark.slow
def test_the_stream_plugin_scales_frames_as_the_filter_was_trained(face_skip_filter, small_scenes):
    from coinfer.device.infi import load_skip_filter

    plugin = StreamPlugin(("faces",), face_skip_filter)
    assert len(pickle.dumps(plugin)) < 4096  # the filter and the detectors load in the worker
    loaded = load_skip_filter(face_skip_filter)
    height, width = plugin.info.height, plugin.info.width
    trained, ours, frames = [], [], []
    with av.open(str(small_scenes / "cam001.mp4")) as container:
        for picture in container.decode(video=0):
            small = picture.to_ndarray(width=width, height=height, format="rgb24")
            trained.append(small.astype(np.float32) / 255)
            frames.append(picture.to_ndarray(format="rgb24"))
            ours.append(scale_frame(frames[-1], height, width))
    scores = loaded.scores({plugin.info.input: np.stack(ours)})
    assert np.abs(scores - loaded.scores({plugin.info.input: np.stack(trained)})).max() < 0.02
    worker = pickle.loads(pickle.dumps(plugin))
    worker.prepare()
    for frame, score in zip(frames[::8], scores[::8], strict=True):
        result = worker.infer(frame)
        assert result[FILTER_KEY] == bool(score[0] >= loaded.thresholds[0])
        if result[FILTER_KEY]:
            assert result["faces"].shape == (0, 4)


def _sample_config(port: int, budget: float) -> str:
    """samples/gateway/gateway.toml on ``port`` and ``budget``, its filter and token file turned on."""
    text = SAMPLE.read_text()
    for old, new in (("\nport = 8100 ", f"\nport = {port} "),
                     ('# token_file = "gateway.token"', 'token_file = "gateway.token"'),
                     ('# filter = "filters/faces-float32"', 'filter = "filters/faces-float32"')):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text, count = re.subn(r"(?m)^budget_fraction = [0-9.]+", f"budget_fraction = {budget}", text)
    assert count == 1
    return text


@pytest.mark.slow
def test_the_daemon_end_to_end(small_scenes, face_skip_filter, tmp_path):
    work = tmp_path / "gateway"  # the sample's folder: the scene set and the filter where it names them
    (work / "filters").mkdir(parents=True)
    (work / "scenes").symlink_to(small_scenes, target_is_directory=True)
    (work / "filters" / "faces-float32").symlink_to(face_skip_filter, target_is_directory=True)
    (work / "gateway.token").write_text(TOKEN)
    port = free_port()
    config = write(work, _sample_config(port, 0.8))
    before = sorted(path.name for path in work.iterdir())
    url = f"http://127.0.0.1:{port}"
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(url)

        def streams_moving() -> bool:
            streams = status_of(url)["streams"]
            return all(s["state"] == "running" and s["inferred"] > 0 for s in streams) and \
                streams[1]["filter_frames"] > 0

        wait_for(streams_moving, "both streams gated and the filter running", daemon.gone)

        # A camera gates its clip and uploads it to the same daemon.
        with PacketSource.open(str(small_scenes / "cam000.mp4")) as source:
            camera = CameraGate(source.parameters, GatewayUploader(url, "porch", TOKEN, timeout=DEADLINE_S),
                                CameraGateOptions(uplink_bytes_per_s=1e7), stream="porch")
            sent = camera.run(source)
        assert sent.packets_uploaded > 0

        first = metrics_of(url)
        status = status_of(url)
        lobby, door = status["streams"]
        assert (lobby["name"], door["name"]) == ("lobby", "door")
        assert door["filter"] == str(work / "filters" / "faces-float32")
        assert lobby["filter"] is None and lobby["filter_skip_rate"] is None
        assert 0 <= door["filter_skipped"] <= door["filter_frames"] <= door["inferred"]
        assert 0 < lobby["decoded"] <= lobby["packets"] and lobby["errors"] == 0 and door["errors"] == 0
        porch = status["uploads"]["streams"]
        assert [camera_status["stream"] for camera_status in porch] == ["porch"]
        assert porch[0]["packets_received"] == sent.packets_uploaded and porch[0]["frames_inferred"] > 0

        code, body = call(url, "/metrics")
        names = {HEADER.match(line).group(1) for line in body.decode().splitlines() if HEADER.match(line)}
        assert names and all(name.startswith("coinfer_") for name in names)
        assert first['coinfer_uploads_packets_received_total{stream="porch"}'] == sent.packets_uploaded
        assert first['coinfer_infi_filter_frames_total{stream="door"}'] > 0
        assert first["coinfer_gate_budget_fraction"] == 0.8
        packets = 'coinfer_gate_packets_total{stream="lobby"}'
        wait_for(lambda: metrics_of(url)[packets] > first[packets], "the packet counter to move", daemon.gone)

        code, page = call(url, "/status")
        text = page.decode()
        assert code == 200
        for words in ("coinfer edge gateway", "Decode budget", "Decode saved", "Filter skip rate", "lobby",
                      "door", "porch", "80%"):
            assert words in text, words

        workers = children(daemon.process.pid)
        assert len(workers) >= 2  # a decoder worker per group, and multiprocessing's resource tracker

        # SIGHUP with a new budget: it takes effect without a restart of the streams.
        config.write_text(_sample_config(port, 0.5))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: status_of(url)["gate"]["budget_fraction"] == 0.5, "the new budget", daemon.gone)
        assert metrics_of(url)["coinfer_gate_budget_fraction"] == 0.5
        assert "50%" in call(url, "/status")[1].decode()
        status = status_of(url)
        assert status["reloads"]["applied"] == 1 and status["reloads"]["last"] == "budget 0.8 -> 0.5"
        assert all(s["restarts"] == 0 for s in status["streams"])

        # SIGHUP with a broken file: refused, the daemon serves on with the previous configuration.
        broken = _sample_config(port, 5)
        budget_line = next(number for number, text in enumerate(broken.splitlines(), start=1)
                           if text.startswith("budget_fraction = "))
        config.write_text(broken)
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: status_of(url)["reloads"]["refused"] == 1, "the refusal", daemon.gone)
        status = status_of(url)
        assert status["gate"]["budget_fraction"] == 0.5
        refusal = f"{config}:{budget_line}: [gate] budget_fraction must be in [0, 1], got 5"
        assert refusal in status["reloads"]["last"]
        assert all(s["state"] == "running" for s in status["streams"])
        assert call(url, "/healthz", None)[0] == 200

        # SIGTERM: drained, exit 0, no worker process left, nothing half-written.
        workers = children(daemon.process.pid)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    wait_for(lambda: all(_start_time(pid) != started for pid, started in workers.items()),
             "the daemon's child processes to exit")
    assert sorted(path.name for path in work.iterdir()) == before
    log = (tmp_path / "daemon.log").read_text()
    lines = [line for line in log.splitlines() if line.startswith("coinfer edge gateway: ")]
    assert lines[0].startswith(f"coinfer edge gateway: started on {url}")
    assert any("reloaded" in line and "budget 0.8 -> 0.5" in line for line in lines)
    assert any("reload refused" in line and refusal in line for line in lines)
    assert lines[-1].startswith("coinfer edge gateway: stopped")
    assert "Traceback" not in log


# -- MLink budgeted serving on the streams ---------------------------------------------------------------

#: Costs (ms) that make ``people`` too dear for a 5 ms budget: the plan runs faces and cats.
MLINK_COSTS = "{ faces = 2.0, cats = 2.0, people = 20.0 }"


@pytest.fixture(scope="module")
def mlink_links(small_scenes, tmp_path_factory) -> Path:
    """Links among the zoo's faces, cats and people, trained on their real outputs on every
    other frame of the small scene set; returns the link graph's directory."""
    pytest.importorskip("torch")
    from coinfer.edge.mlink.zoo import Step, create_model
    from coinfer.sdk.mlink import LinkGraph, LinkOptions

    models = {name: create_model(name) for name in ("faces", "cats", "people")}
    frames = []
    for camera in ("cam000", "cam001"):
        with av.open(str(small_scenes / f"{camera}.mp4")) as container:
            frames += [picture.to_ndarray(format="rgb24") for picture in container.decode(video=0)][::2]
    steps = [Step(frame, np.zeros(0, np.float32), 0, index) for index, frame in enumerate(frames)]
    outputs = {name: np.stack([model(step) for step in steps]) for name, model in models.items()}
    graph = LinkGraph.train(outputs, {name: model.spec for name, model in models.items()},
                            LinkOptions(epochs=20, seed=0))
    out = tmp_path_factory.mktemp("mlink-links") / "links"
    graph.save(out)
    return out


def _mlink_config(folder: Path, links: Path, video: Path, budget: float, extra: str = "") -> Path:
    return write(folder, f"""
[gate]
budget_fraction = 0.9
realtime = false

[[streams]]
name = "lobby"
url = "{video}"
loop = true

[mlink]
links = "{links}"
budget = {budget}
costs = {MLINK_COSTS}
period = 10
profile_fraction = 0.05
{extra}""")


MLINK_REFUSALS = [
    ("budget = 0", "[gate]\n", ":6: [mlink] budget must be above 0 (ms of model time per frame), got 0.0"),
    ("budget = \"lots\"", "[gate]\n", ":6: [mlink] budget must be a finite number"),
    ("budget = 5\ncosts = { faces = 1.0 }", "[gate]\n", ":7: [mlink] costs must give every model"),
    ("budget = 5\ncosts = { faces = 1, cats = 1, people = -2 }", "[gate]\n",
     ":7: [mlink] costs must be positive numbers of ms, got {'people': -2}"),
    ("budget = 5\nperiod = 0", "[gate]\n", ":7: [mlink] period must be in [1, 1000000], got 0"),
    ("budget = 5\nprofile_fraction = 2", "[gate]\n", ":7: [mlink] profile_fraction must be in [0, 1]"),
    ("budget = 5\ncrowd = \"LINKS\"", "[gate]\n", ":7: [mlink] crowd is unusable: "),
    ("budget = 5\nspeech = true", "[gate]\n", ":7: [mlink] speech is not a known key"),
    ("budget = 5", "[gate]\ntasks = [\"faces\"]\n", ":2: [gate] tasks must name the [mlink] links' models"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("table", "gate", "says"), MLINK_REFUSALS, ids=[says for *_, says in MLINK_REFUSALS])
def test_a_bad_mlink_table_is_one_error_naming_its_line(mlink_links, tmp_path, table, gate, says):
    (tmp_path / "cam.mp4").write_bytes(b"")
    table = table.replace("LINKS", str(mlink_links))
    path = write(tmp_path, f'{gate}[[streams]]\nurl = "cam.mp4"\n[mlink]\nlinks = "{mlink_links}"\n{table}\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and says in message and "\n" not in message
@pytest.mark.slow
def test_mlink_links_that_are_not_a_graph_or_serve_no_stream_are_refused(mlink_links, tmp_path):
    (tmp_path / "cam.mp4").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    path = write(tmp_path, '[[streams]]\nurl = "cam.mp4"\n[mlink]\nlinks = "empty"\nbudget = 5\n')
    with pytest.raises(ConfigError, match=r":4: \[mlink\] links is unusable: "):
        load_config(path)
    path = write(tmp_path, f'[uploads]\n[mlink]\nlinks = "{mlink_links}"\nbudget = 5\n')
    with pytest.raises(ConfigError, match=r":2: \[mlink\] serves the streams: add \[\[streams\]\]"):
        load_config(path)
    config = load_config(_mlink_config(tmp_path, mlink_links, tmp_path / "cam.mp4", 5))
    assert sorted(config.gate.tasks) == ["cats", "faces", "people"] and config.gate.mlink is not None
    assert dict(config.gate.mlink.costs) == {"faces": 2.0, "cats": 2.0, "people": 20.0}
    dearer = load_config(_mlink_config(tmp_path, mlink_links, tmp_path / "cam.mp4", 30))
    assert dearer.gate.runtime_changes(config.gate) == ["[mlink]"]
@pytest.mark.slow
def test_the_mlink_plugin_runs_the_plan_and_predicts_the_rest(mlink_links, small_scenes):
    from coinfer.edge.daemon.mlink_serving import MLINK_KEY, MlinkSettings

    settings = MlinkSettings(links=mlink_links, models=("faces", "cats", "people"), budget=5.0,
                             costs=(("faces", 2.0), ("cats", 2.0), ("people", 20.0)), period=4,
                             profile_fraction=0.0)
    plugin = StreamPlugin(("faces",), mlink=settings)
    assert plugin.tasks == ("faces", "cats", "people")
    assert len(pickle.dumps(plugin)) < 4096  # the links and the models load in the worker
    worker = pickle.loads(pickle.dumps(plugin))
    worker.prepare()
    with av.open(str(small_scenes / "cam001.mp4")) as container:
        frames = [picture.to_ndarray(format="rgb24") for picture in container.decode(video=0)][:9]
    results = [worker.infer(frame) for frame in frames]
    first = results[0][MLINK_KEY]  # the first frame is profiled: every model runs, the links are scored
    assert first["ran"] == ["cats", "faces", "people"] and first["predicted"] == []
    for result in results[1:]:
        marks = result[MLINK_KEY]
        assert marks["ran"] == ["cats", "faces"] and marks["predicted"] == ["people"]
        assert sorted(marks["plan"]) == ["cats", "faces"]
        shapes = {name: np.shape(output) for name, output in marks["outputs"].items()}
        assert shapes == {"faces": (4,), "cats": (1,), "people": (4,)}
        assert all(isinstance(result[task], int) for task in plugin.tasks)
        assert result["faces"] == int(np.argmax(marks["outputs"]["faces"]))
    measuring = StreamPlugin(("faces",), mlink=dataclasses.replace(settings, costs=()))
    measuring.prepare()
    assert measuring.infer(frames[0])[MLINK_KEY]["ran"] == ["cats", "faces", "people"]
    planner = measuring._mlink._loaded()  # without costs, each model's time on that first frame
    assert planner.costs is not None and all(planner.costs[name] > 0 for name in plugin.tasks)
    assert planner.plan is None and measuring.infer(frames[1])[MLINK_KEY]["plan"] == list(planner.plan.active)


@pytest.mark.slow
def test_the_daemon_serves_an_mlink_plan_on_its_streams(mlink_links, small_scenes, tmp_path):
    config = load_config(_mlink_config(tmp_path, mlink_links, small_scenes / "cam000.mp4", 5))
    daemon = GatewayDaemon(config, TOKEN)
    try:
        with ThreadedServer(create_daemon_app(daemon), name="the gateway daemon") as server:
            daemon.start()

            def served() -> dict[str, Any] | None:
                mlink = status_of(server.url)["mlink"]
                models = mlink["models"]
                return mlink if models and models["people"]["predictions"] >= 20 else None

            mlink = wait_for(served, "MLink to predict people on 20 frames")
            assert mlink["plan"] == ["faces", "cats"] or mlink["plan"] == ["cats", "faces"]
            assert mlink["predicted"] == ["people"] and mlink["budget_ms"] == 5.0
            models = mlink["models"]
            assert models["faces"]["runs"] >= models["people"]["predictions"]
            assert models["faces"]["predictions"] == models["cats"]["predictions"] == 0
            assert 1 <= models["people"]["runs"] < models["people"]["predictions"]  # on profiled frames only
            last = mlink["last"]
            assert [len(last[name]["output"]) for name in ("faces", "cats", "people")] == [4, 1, 4]
            assert last["people"]["predicted"] and not last["faces"]["predicted"]
            samples = metrics_of(server.url)
            assert samples['coinfer_mlink_model_runs_total{model="faces"}'] >= models["faces"]["runs"]
            assert samples['coinfer_mlink_model_predictions_total{model="people"}'] >= 20
            assert samples['coinfer_mlink_model_predictions_total{model="faces"}'] == 0
            code, page = call(server.url, "/status")
            assert code == 200 and re.search(r"MLink plan: (faces, cats|cats, faces) \(predicted: people\)",
                                             page.decode())
            _mlink_config(tmp_path, mlink_links, small_scenes / "cam000.mp4", 30)  # every model fits now
            assert daemon.reload()
            said = "[mlink] changed: every stream restarts; restarted stream(s) lobby"
            assert daemon.reloads["last"] == said
            runs = models["people"]["runs"]
            wait_for(lambda: status_of(server.url)["mlink"]["models"]["people"]["runs"] > runs + 10,
                     "people to run on every frame")
            assert sorted(status_of(server.url)["mlink"]["plan"]) == ["cats", "faces", "people"]
    finally:
        daemon.close()


@pytest.mark.slow
def test_the_skip_filter_decides_before_the_mlink_plan(mlink_links, face_skip_filter, small_scenes):
    from coinfer.edge.daemon.mlink_serving import MLINK_KEY, MlinkSettings

    settings = MlinkSettings(links=mlink_links, models=("cats", "faces", "people"), budget=5.0,
                             costs=(("cats", 2.0), ("faces", 2.0), ("people", 20.0)), period=4,
                             profile_fraction=0.0)
    worker = pickle.loads(pickle.dumps(StreamPlugin(("faces",), face_skip_filter, settings)))
    worker.prepare()
    results = []
    for camera in ("cam000", "cam001"):
        with av.open(str(small_scenes / f"{camera}.mp4")) as container:
            results += [worker.infer(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    skipped = [result for result in results if result[FILTER_KEY]]
    kept = [result for result in results[1:] if not result[FILTER_KEY]]
    assert skipped and kept  # the filter skips some frames, not all
    for result in skipped:  # "no face": the filter's answer stands in for the model's, the links read it
        marks = result[MLINK_KEY]
        assert marks["filtered"] == ["faces"] and "faces" not in marks["ran"] and result["faces"] == 0
        assert np.asarray(marks["outputs"]["faces"]).tolist() == [1.0, 0.0, 0.0, 0.0]
    for result in kept:
        assert result[MLINK_KEY]["filtered"] == [] and "faces" in result[MLINK_KEY]["ran"]
