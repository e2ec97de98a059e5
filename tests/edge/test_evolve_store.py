"""The edge's model store: verified publications, kept versions, an index that survives a restart
and a crash mid-publication, token-guarded routes over real HTTP; and the device's updater
fetching from it end to end, refusing what was tampered with or is too large."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import coinfer.edge.evolve.store as store_module
from coinfer.device.evolve.slot import ModelSlot
from coinfer.device.evolve.updater import ModelUpdater, UpdateError
from coinfer.device.runtime.base import RunnerOptions
from coinfer.device.runtime.tflite import TFLiteRunner
from coinfer.edge.evolve.store import (
    ModelStore,
    ModelStoreError,
    ModelStoreServer,
    StoredFile,
    UnknownModelError,
)
from coinfer.sdk.artifact import ArtifactError, save_artifact
from coinfer.sdk.datadir import sha256_file
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.models import MODEL_FILE, DeviceModelError, device_model_manifest, publication_digest

TOKEN = "evolve-store-token"
DEVICE = "cam3"
ARCH = "conv8-gap-dense4"
TASKS = ("person",)
ONE_THREAD = RunnerOptions(num_threads=1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((4, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Tiny Keras CNNs as TFLite, converted once: ``a`` and ``b`` (other weights), ``nan``
    (``a`` with one NaN weight)."""
    import keras
    import tensorflow as tf

    built = {}
    for name, seed in (("a", 0), ("b", 1), ("nan", 0)):
        keras.utils.set_random_seed(seed)
        net = keras.Sequential([keras.Input((16, 16, 3), name="image"),
                                keras.layers.Conv2D(8, 3, activation="relu"),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
        if name == "nan":
            weights = net.get_weights()
            weights[2][0, 0] = np.nan
            net.set_weights(weights)
        built[name] = bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
    return built


@pytest.fixture(scope="module")
def logits(models: dict[str, bytes], images: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("reference")
    found = {}
    for name in ("a", "b"):
        (root / f"{name}.tflite").write_bytes(models[name])
        runner = TFLiteRunner.create_from_file(root / f"{name}.tflite", ONE_THREAD)
        found[name] = runner.run(images)["output_0"]
    return found


class Artifacts:
    """Writes device model artifacts of the module's models into one folder."""

    def __init__(self, root: Path, models: dict[str, bytes]) -> None:
        self.root, self.models = root, models
        (root / "probe.tflite").write_bytes(models["a"])
        runner = TFLiteRunner.create_from_file(root / "probe.tflite")
        self.inputs, self.outputs = runner.input_specs, runner.output_specs
        self.count = 0

    def write(self, name: str, version: int, *, architecture: str = ARCH,
              tasks: tuple[str, ...] = TASKS) -> Path:
        self.count += 1
        path = self.root / f"{name}-v{version}-{self.count}"
        manifest = device_model_manifest(device=DEVICE, architecture=architecture, version=version,
                                         tasks=tasks, inputs=self.inputs, outputs=self.outputs,
                                         metrics={"accuracy": 0.8})
        save_artifact(path, manifest, {MODEL_FILE: self.models[name]})
        return path


@pytest.fixture
def artifacts(tmp_path: Path, models: dict[str, bytes]) -> Artifacts:
    folder = tmp_path / "trained"
    folder.mkdir()
    return Artifacts(folder, models)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.register(DEVICE, ARCH, TASKS)
    return store


def test_publications_become_the_latest_and_only_the_last_three_are_kept(store, artifacts):
    sources = {version: artifacts.write("ab"[version % 2], version) for version in (1, 2, 3, 4)}
    for version, source in sources.items():
        publication = store.publish(DEVICE, source)
        assert (publication.device, publication.version) == (DEVICE, version)
        assert publication.manifest_sha256 == publication_digest(source / "manifest.json")
        model = source / MODEL_FILE
        assert publication.files == {MODEL_FILE: StoredFile(sha256_file(model), model.stat().st_size)}
    assert store.latest(DEVICE) == publication and store.versions(DEVICE) == [2, 3, 4]
    kept = sorted(path.name for path in (store.root / DEVICE).iterdir())
    assert kept == ["v2", "v3", "v4"]
    assert (store.root / DEVICE / "v4" / MODEL_FILE).read_bytes() == (sources[4] / MODEL_FILE).read_bytes()
    restarted = ModelStore(store.root)
    assert restarted.latest(DEVICE) == publication and restarted.versions(DEVICE) == [2, 3, 4]
    assert restarted.latest(DEVICE).files == publication.files
    with restarted.open_file(DEVICE, 3, MODEL_FILE) as handle:
        assert handle.read() == (sources[3] / MODEL_FILE).read_bytes()


def test_a_crash_between_copy_and_index_leaves_the_previous_latest(store, artifacts, monkeypatch):
    first = store.publish(DEVICE, artifacts.write("a", 1))

    def disk_full(*_: object) -> None:
        raise OSError("no space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(store_module, "atomic_write_json", disk_full)
        with pytest.raises(OSError, match="no space left"):
            store.publish(DEVICE, artifacts.write("b", 2))
    assert store.latest(DEVICE) == first and store.versions(DEVICE) == [1]
    assert ModelStore(store.root).latest(DEVICE) == first
    assert sorted(path.name for path in (store.root / DEVICE).iterdir()) == ["v1"]
    # a process killed at that point leaves the copy (and perhaps a staging folder) behind:
    # a restarted store serves the recorded latest and removes them
    save_artifact(store.root / DEVICE / "v2", device_model_manifest(
        device=DEVICE, architecture=ARCH, version=2, tasks=TASKS, inputs=artifacts.inputs,
        outputs=artifacts.outputs), {MODEL_FILE: artifacts.models["b"]})
    (store.root / DEVICE / ".staging-x1").mkdir()
    restarted = ModelStore(store.root)
    assert restarted.latest(DEVICE) == first
    assert sorted(path.name for path in (store.root / DEVICE).iterdir()) == ["v1"]
    assert restarted.publish(DEVICE, artifacts.write("b", 2)).version == 2


def test_publishing_refuses_what_a_device_would_refuse(store, artifacts):
    store.publish(DEVICE, artifacts.write("a", 2))
    tampered = artifacts.write("b", 3)
    data = bytearray((tampered / MODEL_FILE).read_bytes())
    data[100] ^= 0xFF
    (tampered / MODEL_FILE).write_bytes(bytes(data))
    missing = artifacts.write("b", 3)
    (missing / MODEL_FILE).unlink()
    cases = [
        (lambda: store.publish("cam9", artifacts.write("b", 3)), UnknownModelError,
         "unknown device 'cam9' \\(registered: cam3\\)"),
        (lambda: store.publish(DEVICE, artifacts.write("b", 3, architecture="conv16")), DeviceModelError,
         "has architecture 'conv16', expected 'conv8-gap-dense4'"),
        (lambda: store.publish(DEVICE, artifacts.write("b", 3, tasks=("car",))), ModelStoreError,
         "serves tasks \\['car'\\], device 'cam3' is registered for \\['person'\\]"),
        (lambda: store.publish(DEVICE, tampered), ArtifactError, "model.tflite: sha256 mismatch"),
        (lambda: store.publish(DEVICE, missing), ArtifactError,
         "model.tflite: listed in the manifest but missing"),
        (lambda: store.publish(DEVICE, artifacts.write("nan", 3)), DeviceModelError,
         "holds 1 non-finite value"),
        (lambda: store.publish(DEVICE, artifacts.write("b", 2)), ModelStoreError,
         "version 2 is not newer than version 2, the latest published for device 'cam3'"),
        (lambda: store.register(DEVICE, "conv16", TASKS), ModelStoreError,
         "device 'cam3' is registered with architecture 'conv8-gap-dense4'"),
        (lambda: store.register("../etc", ARCH, TASKS), InvalidArgumentError, "invalid device name"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as raised:
            call()
        assert "\n" not in str(raised.value)
    assert store.versions(DEVICE) == [2] and sorted(p.name for p in (store.root / DEVICE).iterdir()) == ["v2"]
    with pytest.raises(InvalidArgumentError, match="keep must be an int >= 1"):
        ModelStore(store.root, keep=0)


def get(url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def server(store: ModelStore) -> Iterator[ModelStoreServer]:
    with ModelStoreServer(store, TOKEN) as running:
        yield running


def test_the_routes_answer_the_latest_and_its_files_to_token_holders_only(server, store, artifacts):
    source = artifacts.write("a", 1)
    publication = store.publish(DEVICE, source)
    base = server.url + "/v1/evolve/models/"
    status, body = get(base + DEVICE)
    assert status == 200 and json.loads(body) == {
        "device": DEVICE, "version": 1, "manifest_sha256": publication.manifest_sha256,
        "files": {MODEL_FILE: {"sha256": publication.files[MODEL_FILE].sha256,
                               "bytes": publication.files[MODEL_FILE].bytes}}}
    assert get(base + f"{DEVICE}/v1/{MODEL_FILE}") == (200, (source / MODEL_FILE).read_bytes())
    assert get(base + f"{DEVICE}/v1/manifest.json") == (200, (source / "manifest.json").read_bytes())
    for path in (base + DEVICE, base + f"{DEVICE}/v1/{MODEL_FILE}", server.url + "/docs",
                 server.url + "/openapi.json"):
        for token in (None, "wrong"):
            status, body = get(path, token)
            assert (status, json.loads(body)) == (401, {"detail": "missing or wrong bearer token"})
    assert get(server.url + "/docs")[0] == 200


@pytest.mark.parametrize(("path", "detail"), [
    ("cam9", "unknown device 'cam9' (registered: cam3)"),
    ("cam9/v1/model.tflite", "unknown device 'cam9' (registered: cam3)"),
    ("cam3/v7/model.tflite", "device 'cam3' has no version 7 (kept: v1)"),
    ("cam3/vlatest/model.tflite", "no version 'latest': versions are whole numbers"),
    ("cam3/v1/index.json", "version 1 of device 'cam3' has no file 'index.json'"),
    ("cam3/v1/..%2f..%2findex.json", None),
    ("cam3/v1/%2e%2e", "version 1 of device 'cam3' has no file '..'"),
    ("cam3/v1/../../index.json", None),
])
def test_unknown_devices_versions_and_files_are_404_and_nothing_outside_is_reachable(server, store, artifacts,
                                                                                     path, detail):
    store.publish(DEVICE, artifacts.write("a", 1))
    status, body = get(server.url + "/v1/evolve/models/" + path)
    assert status == 404 and b"coinfer-evolve-model-store" not in body
    if detail is not None:
        assert json.loads(body) == {"detail": detail}


def test_a_registered_device_without_a_model_is_404(server):
    assert get(server.url + "/v1/evolve/models/cam3") == (
        404, b'{"detail":"no model is published for device \'cam3\' yet"}')


@pytest.fixture
def device(tmp_path: Path, artifacts: Artifacts) -> ModelSlot:
    return ModelSlot(DEVICE, ARCH, artifacts.write("a", 1), ONE_THREAD)


def cache_entries(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir())


def test_the_updater_installs_each_newer_model_and_keeps_two(server, store, artifacts, device, images, logits,
                                                             tmp_path):
    cache = tmp_path / "cache"
    updater = ModelUpdater(server.url, TOKEN, device, cache, timeout=60)
    store.publish(DEVICE, artifacts.write("a", 1))
    assert updater.check_once() is None and cache_entries(cache) == []
    for version, name in ((2, "b"), (3, "a"), (4, "b")):
        store.publish(DEVICE, artifacts.write(name, version))
        assert updater.check_once() == version and device.version == version
        np.testing.assert_array_equal(device.predict(images), logits[name])
        assert device.current.path == cache / f"v{version}"
        assert device.current.manifest_sha256 == store.latest(DEVICE).manifest_sha256
    assert updater.check_once() is None
    assert cache_entries(cache) == ["v3", "v4"]


def test_the_update_loop_installs_and_stops(server, store, artifacts, device, tmp_path):
    store.publish(DEVICE, artifacts.write("b", 2))
    stop = threading.Event()
    updater = ModelUpdater(server.url, TOKEN, device, tmp_path / "cache", timeout=60)
    loop = threading.Thread(target=updater.run, args=(3600.0, stop), daemon=True)
    loop.start()
    deadline = time.monotonic() + 300  # only guards against a hang
    while device.version != 2 and loop.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join()
    assert device.version == 2


def refused(updater: ModelUpdater, device: ModelSlot, message: str, images: np.ndarray,
            served: np.ndarray) -> None:
    with pytest.raises(UpdateError, match=message) as raised:
        updater.check_once()
    assert "\n" not in str(raised.value)
    assert device.version == 1 and len(device.history) == 1
    np.testing.assert_array_equal(device.predict(images), served)
    assert cache_entries(updater.cache_dir) == []


def test_a_file_tampered_on_the_edge_is_refused_by_the_device(server, store, artifacts, device, images,
                                                              logits, tmp_path):
    store.publish(DEVICE, artifacts.write("b", 2))
    updater = ModelUpdater(server.url, TOKEN, device, tmp_path / "cache", timeout=60)
    stored = store.root / DEVICE / "v2" / MODEL_FILE
    original = stored.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 3] ^= 0x01
    stored.write_bytes(bytes(flipped))
    refused(updater, device, "model.tflite of version 2 has sha256 .* refusing a modified file", images,
            logits["a"])
    stored.write_bytes(original)
    manifest = store.root / DEVICE / "v2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"accuracy": 0.8', '"accuracy": 0.9'))
    refused(updater, device, "the manifest of version 2 has sha256 .* refusing a modified publication",
            images, logits["a"])


def test_an_oversized_publication_or_file_is_refused_before_it_is_read(server, store, artifacts, device,
                                                                       images, logits, tmp_path):
    publication = store.publish(DEVICE, artifacts.write("b", 2))
    size = publication.files[MODEL_FILE].bytes
    small = ModelUpdater(server.url, TOKEN, device, tmp_path / "small", max_bytes=size - 1, timeout=60)
    refused(small, device, f"version 2 for device 'cam3' holds {size} bytes, over this device's "
                           f"{size - 1}-byte limit", images, logits["a"])
    stored = store.root / DEVICE / "v2" / MODEL_FILE
    stored.write_bytes(stored.read_bytes() + bytes(4096))  # grown on the edge past the device's limit
    roomy = ModelUpdater(server.url, TOKEN, device, tmp_path / "roomy", max_bytes=size + 1024, timeout=60)
    refused(roomy, device, f"Content-Length {size + 4096} is over the {size}-byte limit", images, logits["a"])


def test_the_updater_reports_an_unreachable_or_refusing_edge_in_one_line(server, device, tmp_path):
    wrong = ModelUpdater(server.url, "wrong", device, tmp_path / "cache")
    with pytest.raises(UpdateError, match=r"GET /v1/evolve/models/cam3: HTTP 401: .*missing or wrong bearer"):
        wrong.check_once()
    with pytest.raises(UpdateError, match="no model is published for device 'cam3' yet"):
        ModelUpdater(server.url, TOKEN, device, tmp_path / "cache").check_once()
    with pytest.raises(UpdateError, match="must start with http:// or https://"):
        ModelUpdater("edge:8300", TOKEN, device, tmp_path / "cache")
    with pytest.raises(UpdateError, match="max_bytes must be an int >= 1"):
        ModelUpdater(server.url, TOKEN, device, tmp_path / "cache", max_bytes=0)
