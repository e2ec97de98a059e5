"""The device's model slot: a verified newer model replaces the served one atomically while
requests keep being answered; a tampered, non-finite, foreign or differently shaped model is
refused and the served model stays."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coinfer.device.evolve.checks import check_finite_weights, verify_device_model
from coinfer.device.evolve.slot import ModelSlot
from coinfer.device.runtime.base import RunnerError, RunnerOptions
from coinfer.device.runtime.tflite import TFLiteRunner
from coinfer.sdk.artifact import ArtifactError, save_artifact
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.models import (
    MODEL_FILE,
    DeviceModelError,
    check_device_model,
    device_model_manifest,
    publication_digest,
)
from coinfer.sdk.tensor import TensorSpec

DEVICE = "cam3"
ARCH = "conv8-gap-dense4"
ONE_THREAD = RunnerOptions(num_threads=1)


@dataclass(frozen=True)
class Model:
    """A converted TFLite model, its signature and its logits on the test images."""

    tflite: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    logits: np.ndarray


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((5, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> dict[str, Model]:
    """Tiny Keras CNNs converted once: ``a`` and ``b`` (same layers, other weights), ``nan``
    (``a`` with one NaN in its convolution kernel) and ``wide`` (five classes, not four)."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("tflite")
    built = {}
    for name, seed, classes in (("a", 0, 4), ("b", 1, 4), ("nan", 0, 4), ("wide", 2, 5)):
        keras.utils.set_random_seed(seed)
        net = keras.Sequential([keras.Input((16, 16, 3), name="image"),
                                keras.layers.Conv2D(8, 3, activation="relu"),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)])
        if name == "nan":
            weights = net.get_weights()
            weights[0][0, 0, 0, 0] = np.nan
            net.set_weights(weights)
        tflite = bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
        path = root / f"{name}.tflite"
        path.write_bytes(tflite)
        runner = TFLiteRunner.create_from_file(path, ONE_THREAD)
        logits = runner.run(images)["output_0"] if name != "nan" else np.empty(0)
        built[name] = Model(tflite, runner.input_specs, runner.output_specs, logits)
    assert not np.array_equal(built["a"].logits, built["b"].logits)
    return built


def write(root: Path, model: Model, version: int, *, device: str = DEVICE, architecture: str = ARCH,
          tasks: tuple[str, ...] = ("person",)) -> Path:
    """``model`` saved as a device model artifact under ``root``; returns its directory."""
    path = root / f"{device}-{architecture}-v{version}-{len(list(root.iterdir()))}"
    manifest = device_model_manifest(device=device, architecture=architecture, version=version, tasks=tasks,
                                     inputs=model.inputs, outputs=model.outputs, metrics={"accuracy": 0.5})
    save_artifact(path, manifest, {MODEL_FILE: model.tflite})
    return path


def test_an_installed_model_answers_in_place_of_the_old_one(models, images, tmp_path):
    first, second = write(tmp_path, models["a"], 1), write(tmp_path, models["b"], 2)
    slot = ModelSlot(DEVICE, ARCH, first, ONE_THREAD)
    np.testing.assert_array_equal(slot.predict(images), models["a"].logits)
    assert slot.install(second) == 2 and slot.version == 2
    np.testing.assert_array_equal(slot.predict(images), models["b"].logits)
    assert [(served.version, served.path) for served in slot.history] == [(1, first), (2, second)]
    assert slot.current.manifest_sha256 == publication_digest(second / "manifest.json")
    assert (slot.input_spec.shape, slot.output_spec.shape) == ((None, 16, 16, 3), (None, 4))
    with pytest.raises(RunnerError, match="rank 4"):
        slot.predict(images[0])


def refused_and_still_serving(slot: ModelSlot, artifact: Path, error: type[Exception], message: str,
                              images: np.ndarray, served: np.ndarray) -> None:
    with pytest.raises(error, match=message) as raised:
        slot.install(artifact)
    assert "\n" not in str(raised.value)
    assert slot.version == 1 and len(slot.history) == 1
    np.testing.assert_array_equal(slot.predict(images), served)


def test_a_tampered_model_is_refused_and_the_old_one_keeps_serving(models, images, tmp_path):
    slot = ModelSlot(DEVICE, ARCH, write(tmp_path, models["a"], 1), ONE_THREAD)
    tampered = write(tmp_path, models["b"], 2)
    data = bytearray((tampered / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / MODEL_FILE).write_bytes(bytes(data))
    refused_and_still_serving(slot, tampered, ArtifactError, "model.tflite: sha256 mismatch", images,
                              models["a"].logits)
    stray = write(tmp_path, models["b"], 2)
    (stray / "extra.bin").write_bytes(b"x")
    refused_and_still_serving(slot, stray, ArtifactError, "extra.bin: not listed in the manifest", images,
                              models["a"].logits)


def test_nan_weights_are_refused(models, images, tmp_path):
    slot = ModelSlot(DEVICE, ARCH, write(tmp_path, models["a"], 1), ONE_THREAD)
    poisoned = write(tmp_path, models["nan"], 2)
    refused_and_still_serving(slot, poisoned, DeviceModelError, r"holds 1 non-finite value\(s\)", images,
                              models["a"].logits)
    with pytest.raises(DeviceModelError, match="non-finite"):
        ModelSlot(DEVICE, ARCH, poisoned)
    # every kernel value was read (3x3x3x8 convolution, 8x4 dense), no activation buffer
    clean = check_finite_weights(write(tmp_path, models["a"], 3) / MODEL_FILE)
    assert 3 * 3 * 3 * 8 + 8 * 4 <= clean <= 3 * 3 * 3 * 8 + 8 + 8 * 4 + 4


@pytest.mark.parametrize(("change", "message"), [
    ({"device": "cam4"}, "model is for device 'cam4', expected 'cam3'"),
    ({"architecture": "conv16-gap-dense4"},
     "model for device 'cam3' has architecture 'conv16-gap-dense4', expected 'conv8-gap-dense4'"),
    ({"version": 1}, "version 1 is not newer than the served version 1"),
])
def test_a_model_for_another_device_architecture_or_an_old_version_is_refused(models, images, tmp_path,
                                                                               change, message):
    slot = ModelSlot(DEVICE, ARCH, write(tmp_path, models["a"], 1), ONE_THREAD)
    candidate = write(tmp_path, models["b"], **{"version": 2, **change})
    refused_and_still_serving(slot, candidate, DeviceModelError, message, images, models["a"].logits)


def test_a_model_of_other_layers_under_the_same_architecture_id_is_refused_by_its_signature(models, images,
                                                                                           tmp_path):
    slot = ModelSlot(DEVICE, ARCH, write(tmp_path, models["a"], 1), ONE_THREAD)
    refused_and_still_serving(slot, write(tmp_path, models["wide"], 2), DeviceModelError,
                              r"output 'output_0' float32\[\?, 5\] differs from the served model's "
                              r"'output_0' float32\[\?, 4\]", images, models["a"].logits)
    # a manifest declaring another signature than the file's is refused before anything runs
    lying = write(tmp_path, models["a"], 2)
    manifest = device_model_manifest(device=DEVICE, architecture=ARCH, version=2, tasks=["person"],
                                     inputs=models["a"].inputs, outputs=models["wide"].outputs)
    save_artifact(lying, manifest, {MODEL_FILE: models["a"].tflite}, overwrite=True)
    refused_and_still_serving(slot, lying, DeviceModelError, "is not the manifest's", images,
                              models["a"].logits)


def test_a_file_that_is_no_tflite_model_is_refused(models, images, tmp_path):
    slot = ModelSlot(DEVICE, ARCH, write(tmp_path, models["a"], 1), ONE_THREAD)
    garbage = write(tmp_path, Model(b"\x00" * 64, models["a"].inputs, models["a"].outputs, np.empty(0)), 2)
    refused_and_still_serving(slot, garbage, DeviceModelError, "not a loadable TFLite model", images,
                              models["a"].logits)


@pytest.mark.parametrize(("change", "message"), [
    ({"device": "../cam3"}, "invalid device name '../cam3'"),
    ({"architecture": ""}, "architecture must be a printable string"),
    ({"version": 0}, "version must be an int >= 1, got 0"),
    ({"version": True}, "version must be an int >= 1, got True"),
    ({"tasks": []}, "tasks must be a non-empty list"),
    ({"tasks": ["a", "a"]}, "tasks must be distinct"),
    ({"metrics": {"version": 3}}, "reserved metadata key"),
    ({"metrics": {"loss": float("nan")}}, "finite JSON values"),
    ({"outputs": ()}, "one image input and one logits output, got 1 input"),
])
def test_device_model_manifests_refuse_bad_descriptions(models, change, message):
    given = {"device": DEVICE, "architecture": ARCH, "version": 1, "tasks": ["person"],
             "inputs": models["a"].inputs, "outputs": models["a"].outputs, **change}
    with pytest.raises(InvalidArgumentError, match=message):
        device_model_manifest(**given)


def test_a_manifest_of_another_kind_is_no_device_model(models):
    manifest = device_model_manifest(device=DEVICE, architecture=ARCH, version=1, tasks=["person"],
                                     inputs=models["a"].inputs, outputs=models["a"].outputs)
    manifest.kind = "skip-filter"
    with pytest.raises(DeviceModelError, match="not a device model: capability 'evolve', kind 'skip-filter'"):
        check_device_model(manifest, device=DEVICE, architecture=ARCH)
    manifest.kind = "device-model"
    del manifest.metadata["tasks"]
    with pytest.raises(DeviceModelError, match="metadata lacks tasks"):
        check_device_model(manifest, device=DEVICE, architecture=ARCH)


def test_requests_never_fail_and_never_see_a_torn_model_while_models_are_swapped(models, images, tmp_path):
    """Two threads call predict in a tight loop while three versions are installed (b, a, b over
    a): every answer is exactly one model's logits, and each thread sees the versions in order."""
    slot = ModelSlot(DEVICE, ARCH, write(tmp_path, models["a"], 1), ONE_THREAD)
    updates = [write(tmp_path, models[name], version) for version, name in ((2, "b"), (3, "a"), (4, "b"))]
    expected = {"a": models["a"].logits, "b": models["b"].logits}
    answers: list[list[str]] = [[], []]
    failures: list[BaseException] = []
    stop = threading.Event()
    answered = threading.Condition()

    def serve(seen: list[str]) -> None:
        while not stop.is_set():
            try:
                logits = slot.predict(images)
            except BaseException as error:  # any failure of a request is what this test looks for
                failures.append(error)
                continue
            which = [name for name, value in expected.items() if np.array_equal(logits, value)]
            with answered:
                seen.append(which[0] if len(which) == 1 else "torn")
                answered.notify_all()

    def wait_for_answers(count: int) -> None:
        with answered:  # the timeout only guards against a hang
            assert answered.wait_for(lambda: min(map(len, answers)) >= count, timeout=300)

    threads = [threading.Thread(target=serve, args=(seen,), daemon=True) for seen in answers]
    for thread in threads:
        thread.start()
    try:
        wait_for_answers(3)
        for artifact in updates:
            slot.install(artifact)
            wait_for_answers(max(map(len, answers)) + 3)  # answers started before the swap finish first
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    for seen in answers:
        assert [name for name, _ in itertools.groupby(seen)] == ["a", "b", "a", "b"]
    assert [served.version for served in slot.history] == [1, 2, 3, 4]


def test_verification_builds_a_runner_that_answers_like_the_model(models, images, tmp_path):
    verified = verify_device_model(write(tmp_path, models["b"], 7), device=DEVICE, architecture=ARCH,
                                   options=ONE_THREAD)
    assert (verified.info.version, verified.info.tasks) == (7, ("person",))
    np.testing.assert_array_equal(verified.runner.run(images)["output_0"], models["b"].logits)


def test_the_slot_and_updater_run_on_a_device_without_heavy_frameworks(run_blocked, models, images, tmp_path):
    first, second = write(tmp_path, models["a"], 1), write(tmp_path, models["b"], 2)
    np.save(tmp_path / "images.npy", images)
    out = run_blocked(f"""
import json
import numpy as np
import coinfer.device.evolve.updater
from coinfer.device.evolve.slot import ModelSlot
slot = ModelSlot({DEVICE!r}, {ARCH!r}, {str(first)!r})
slot.install({str(second)!r})
np.save({str(tmp_path / 'logits.npy')!r}, slot.predict(np.load({str(tmp_path / 'images.npy')!r})))
print(json.dumps({{"version": slot.version, "loaded": sorted(m for m in sys.modules
      if m.split(".")[0] in {{"tensorflow", "torch", "transformers", "keras"}})}}))
""")
    assert json.loads(out.strip().splitlines()[-1]) == {"version": 2, "loaded": []}
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), models["b"].logits, rtol=1e-5, atol=1e-6)
