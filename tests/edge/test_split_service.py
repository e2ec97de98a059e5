"""Split inference of EfficientNet-Lite0 end to end: the device's head, the crossing tensors on
the wire and the edge's tail service over loopback give the whole network's logits; the
service refuses what is not the cut's layout, and a bundle pair of different exports."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from coinfer.device.split import SplitClient, SplitClientError
from coinfer.edge.split import SplitServer, SplitServiceOptions, create_app
from coinfer.sdk import wire
from coinfer.sdk.artifact import ArtifactError
from coinfer.sdk.errors import CoinferError, InvalidArgumentError, OutputExistsError
from coinfer.sdk.split import protocol
from coinfer.sdk.split.bundle import (
    DEVICE_DIR,
    EDGE_DIR,
    HEAD_FILE,
    SplitBundleError,
    export_split,
    load_side,
    load_split,
)
from coinfer.sdk.split.graph import SplitGraph

TOKEN = "split-test-token"
#: Cut 43 leaves a residual block open: two tensors cross (block 6's sum and block 7's projection).
MIDDLE = 43
CUTS = {"middle": MIDDLE, "all-edge": 0, "all-device": -1}
#: The frame's own bytes (fixed header, msgpack header with the split's identity) stay under this.
FRAME_OVERHEAD = 1024


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> SplitGraph:
    from coinfer.bench.models.efficientnet_lite import export_onnx

    return SplitGraph.load(export_onnx(tmp_path_factory.mktemp("effnet") / "efficientnet-lite0.onnx"))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    from skimage import data

    from coinfer.bench.models.efficientnet_lite import preprocess

    return preprocess([data.chelsea(), data.coffee(), data.astronaut()])


@pytest.fixture(scope="module")
def whole(graph: SplitGraph, photos: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": photos})[0]
    assert logits.argmax(-1)[:2].tolist() == [285, 967]  # Egyptian cat, espresso
    return logits


@pytest.fixture(scope="module")
def exported(graph: SplitGraph, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, str], Path]:
    """``exported(cut index, encoding)``: the export's directory, written once per module."""
    root = tmp_path_factory.mktemp("splits")
    done: dict[tuple[int, str], Path] = {}

    def export(index: int, encoding: str) -> Path:
        key = (index % len(graph.cuts()), encoding)
        if key not in done:
            done[key] = root / f"cut{key[0]}-{encoding}"
            export_split(graph, graph.cuts()[key[0]], done[key], encoding)
        return done[key]

    return export


@pytest.mark.parametrize("encoding", ["float32", "float16", "int8"])
@pytest.mark.parametrize("where", list(CUTS))
def test_head_on_the_device_and_tail_on_the_edge_give_the_whole_networks_logits(
        graph, photos, whole, exported, where, encoding):
    cut = graph.cuts()[CUTS[where]]
    out = exported(CUTS[where], encoding)
    device, edge = load_split(out / DEVICE_DIR, out / EDGE_DIR)
    assert (device.model is None) == (where == "all-edge") and (edge.model is None) == (where == "all-device")
    with SplitServer(edge, TOKEN, SplitServiceOptions(max_batch=4)) as server:
        client = SplitClient.create_from_bundle(device, server.url, TOKEN, max_batch=4)
        first = client.infer({"image": photos})["logits"]
        logits = client.infer(photos)["logits"]  # warm: the numbers printed are of this call
        info = server.service.info()
    stats = client.last
    np.testing.assert_array_equal(first, logits)
    assert stats is not None and stats.batch == len(photos) and client.calls == 2
    assert client.bytes_sent == 2 * stats.bytes_sent and client.head_ms >= stats.head_ms
    assert logits.shape == whole.shape and logits.dtype == np.float32
    error = float(np.abs(logits - whole).max())
    if encoding == "float32":
        assert error <= 1e-4
    agree = (logits.argmax(-1) == whole.argmax(-1)).mean()
    assert agree == 1.0, f"{where} {encoding}: top-1 differs on {1 - agree:.0%} of the photos"
    overhead = stats.bytes_sent - len(photos) * cut.nbytes(encoding)
    assert 0 < overhead <= FRAME_OVERHEAD
    served = (info["requests"], info["samples"], info["bytes_received"])
    assert served == (2, 2 * len(photos), client.bytes_sent)
    assert (stats.head_ms > 0) == (where != "all-edge") and stats.tail_ms >= 0
    print(f"\n{where:10s} {encoding:7s} tensors={len(cut.tensors)} bytes/sample={cut.nbytes(encoding):7d} "
          f"frame overhead={overhead} B max|err|={error:.3g} top-1 agreement={agree:.0%} "
          f"head={stats.head_ms:.1f} ms tail={stats.tail_ms:.1f} ms round trip={stats.round_trip_ms:.1f} ms")


def send(url: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    headers = {**({} if token is None else {"Authorization": f"Bearer {token}"}), **(headers or {})}
    request = urllib.request.Request(url + path, data=body, method="GET" if body is None else "POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Records(logging.Handler):
    """What the service logs while the refusals are sent."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def middle_server(exported) -> Iterator[tuple[SplitServer, Path]]:
    out = exported(MIDDLE, "float32")
    with SplitServer(out / EDGE_DIR, TOKEN, SplitServiceOptions(max_batch=2)) as server:
        yield server, out


def test_the_service_refuses_with_one_line_and_no_traceback(middle_server, exported):
    server, _ = middle_server
    spec = server.service.spec
    good = spec.codec.encode({tensor.name: np.zeros((1, *tensor.shape[1:]), np.float32)
                              for tensor in spec.crossing})
    first, second = (tensor.name for tensor in spec.crossing)

    def frame(arrays: dict, header: dict | None = None, kind=wire.MessageType.REQUEST) -> bytes:
        header = {protocol.SPLIT_KEY: spec.identity} if header is None else header
        return wire.encode(wire.Message(kind, header, arrays))

    nan = good[first].copy()
    nan[0, 3, 2, 1] = np.nan
    refusals = {
        "wrong name": (frame({"other": good[first], second: good[second]}), 422, "unknown ['other']"),
        "wrong shape": (frame({**good, first: good[first][:, :, :7]}), 422, f"'{first}' must have shape"),
        "wrong dtype": (frame({**good, first: good[first].astype(np.float16)}), 422, "got float16"),
        "NaN": (frame({**good, first: nan}), 422, f"array '{first}' holds NaN or infinity"),
        "over the batch": (frame({name: np.repeat(value, 3, axis=0) for name, value in good.items()}), 413,
                           "request body over the 251591-byte limit"),
        "another split": (frame(good, {protocol.SPLIT_KEY: {**spec.identity, "cut": "0" * 16}}), 422,
                          "the request names another split (cut='0000000000000000'"),
        "no split named": (frame(good, {}), 422, "the request names no split"),
        "a response": (frame(good, kind=wire.MessageType.RESPONSE), 400, "expected a REQUEST frame"),
        "not a frame": (b"GET / HTTP/1.1\r\n" * 4, 400, "malformed frame: bad magic"),
        "a short body": (b"CNFR", 400, "malformed frame: truncated frame"),
        "a body over the limit": (bytes(server.service.max_request_bytes + 1), 413, "request body over"),
    }
    logger = logging.getLogger("uvicorn.error")
    records = Records()
    logger.addHandler(records)
    try:
        status, answer = send(server.url, protocol.INFER_PATH, frame(good))
        assert status == 200 and wire.decode(answer).arrays["logits"].shape == (1, 1000)
        for what, (body, expected, detail) in refusals.items():
            status, answer = send(server.url, protocol.INFER_PATH, body)
            message = json.loads(answer)["detail"]
            assert (status, "\n" not in message) == (expected, True), (what, status, message)
            assert detail in message, (what, message)
        # A huge declared length is refused before any of the body is read.
        status, answer = send(server.url, protocol.INFER_PATH, b"x", headers={"Content-Length": str(1 << 40)})
        assert status == 413
    finally:
        logger.removeHandler(records)
    assert [record for record in records.records if record.exc_info or record.levelno >= logging.ERROR] == []
    assert server.service.info()["requests"] == 1


def test_every_route_needs_the_token(middle_server):
    server, _ = middle_server
    for path in (protocol.INFO_PATH, "/docs", "/redoc", "/openapi.json"):
        assert send(server.url, path, token=None) == (401, b'{"detail":"missing or wrong bearer token"}')
        assert send(server.url, path, token="wrong")[0] == 401, path
        assert send(server.url, path)[0] == 200, path
    assert send(server.url, protocol.INFER_PATH, b"CNFR", token=None)[0] == 401
    info = json.loads(send(server.url, protocol.INFO_PATH)[1])
    assert info["max_batch"] == 2 and info["spec"]["cut"] == server.service.spec.cut
    assert info["max_request_bytes"] == protocol.frame_bytes(server.service.spec.request_limits(2))
    assert protocol.INFER_PATH.encode() in send(server.url, "/openapi.json")[1]


def test_a_device_holding_the_head_of_another_export_is_refused(middle_server, exported, photos):
    server, _ = middle_server
    other = exported(MIDDLE, "int8")
    client = SplitClient.create_from_bundle(other / DEVICE_DIR, server.url, TOKEN, max_batch=2)
    with pytest.raises(SplitClientError, match=r"HTTP 422: .*this service runs cut .* in float32; the "
                                               r"request names another split .*encoding='int8'"):
        client.infer(photos[:1])
    wrong = SplitClient.create_from_bundle(other / DEVICE_DIR, server.url, "not the token")
    with pytest.raises(SplitClientError, match="HTTP 401"):
        wrong.infer(photos[:1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(SplitClientError, match=r"cannot reach the split service at http://127\.0\.0\.1"):
        SplitClient.create_from_bundle(other / DEVICE_DIR, closed, TOKEN).infer(photos[:1])


def test_bundle_pairs_of_different_exports_are_refused_at_load(exported, tmp_path):
    middle, edge_cut, int8 = exported(MIDDLE, "float32"), exported(0, "float32"), exported(MIDDLE, "int8")
    with pytest.raises(SplitBundleError, match=r"not two sides of one export: the device holds cut \w{16} of "
                                               r"graph \w{12}\.\.\. in float32, the edge cut \w{16}"):
        load_split(middle / DEVICE_DIR, edge_cut / EDGE_DIR)
    with pytest.raises(SplitBundleError, match=r"in float32, the edge cut .* in int8"):
        load_split(middle / DEVICE_DIR, int8 / EDGE_DIR)
    tiny = export_split(tiny_graph(), tiny_graph().cuts()[1], tmp_path / "tiny", "float32")[1]
    with pytest.raises(SplitBundleError, match="not two sides of one export"):
        load_split(middle / DEVICE_DIR, tiny.artifact.path)
    fingerprint = load_side(middle / DEVICE_DIR, "head").spec.fingerprint
    with pytest.raises(SplitBundleError, match="a split of another graph"):
        load_side(tiny.artifact.path, "tail", fingerprint=fingerprint)
    with pytest.raises(ArtifactError, match="kind is 'tail', expected 'head'"):
        load_side(middle / EDGE_DIR, "head")
    with pytest.raises(CoinferError, match="the edge serves a split's tail, not its head"):
        create_app(load_side(middle / DEVICE_DIR, "head"), TOKEN)
    with pytest.raises(SplitClientError, match="the device runs a split's head, not its tail"):
        SplitClient(load_side(middle / EDGE_DIR, "tail"), "http://127.0.0.1:1", TOKEN)
    with pytest.raises(OutputExistsError, match="already exists"):
        export_split(tiny_graph(), tiny_graph().cuts()[1], tmp_path / "tiny", "float32")


def test_a_tampered_head_is_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported(MIDDLE, "float16") / DEVICE_DIR, copy)
    with open(copy / HEAD_FILE, "r+b") as model:
        model.seek(1000)
        model.write(b"\xff")
    with pytest.raises(ArtifactError, match=r"head\.onnx: sha256 mismatch"):
        SplitClient.create_from_bundle(copy, "http://127.0.0.1:1", TOKEN)


def test_the_device_runs_its_head_without_heavy_frameworks(run_blocked, middle_server, photos, whole,
                                                           tmp_path):
    server, out = middle_server
    np.save(tmp_path / "photos.npy", photos)
    report = run_blocked(f"""
import json, sys
import numpy as np
from coinfer.device.split import SplitClient
client = SplitClient.create_from_bundle({str(out / DEVICE_DIR)!r}, {server.url!r}, {TOKEN!r}, max_batch=2)
photos = np.load({str(tmp_path / "photos.npy")!r})
logits = np.concatenate([client.infer(photos[:2])["logits"], client.infer(photos[2:])["logits"]])
np.save({str(tmp_path / "logits.npy")!r}, logits)
heavy = {{"torch", "tensorflow", "transformers", "onnx", "fastapi"}}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy
                        or m.startswith(("coinfer.edge", "coinfer.cloud", "coinfer.bench")))))
""")
    assert json.loads(report.strip().splitlines()[-1]) == []
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), whole, rtol=0, atol=1e-4)


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"max_batch": 1025}, {"threads": 0}, {"workers": 0},
                                 {"max_batch": 2.0}])
def test_options_that_would_refuse_every_request_are_refused(bad):
    with pytest.raises(InvalidArgumentError, match=f"{next(iter(bad))} must be an int in"):
        SplitServiceOptions(**bad)


def tiny_graph() -> SplitGraph:
    """``y = relu(x) + sigmoid(x)`` with a symbolic batch axis: another model."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in ("x", "y")]
    return SplitGraph(helper.make_model(helper.make_graph(nodes, "g", value[:1], value[1:])))
