"""A bottleneck's split deployed with the ``entropy`` encoding: the device's client and the
edge's tail service over loopback, each with only its side of the export (and the tables in
it), give exactly the whole graph's outputs; what crosses is the bitstreams and their
lengths; a corrupt or foreign frame is a 422 with one line, never a 500 or another latent."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coinfer.device.split import SplitClient, SplitClientError
from coinfer.edge.split import SplitServer, SplitServiceOptions
from coinfer.sdk import wire
from coinfer.sdk.cli.main import main
from coinfer.sdk.split import protocol
from coinfer.sdk.split.bundle import DEVICE_DIR, EDGE_DIR, TABLES_FILE, export_split
from coinfer.sdk.split.entropy import EntropyTables, encode, quantize
from coinfer.sdk.split.graph import SplitGraph
from coinfer.sdk.split.tensors import ENCODINGS

TOKEN = "entropy-split-token"
CHANNELS, HEIGHT, WIDTH, OUT = 4, 6, 5, 3
MAX_BATCH = 4
#: The frame's own bytes (fixed header, msgpack header with the identity and the array table).
FRAME_OVERHEAD = 400


def bottleneck_graph() -> SplitGraph:
    """A bottleneck's shape: ``latent = round(conv(x))`` on the device, ``y = relu(conv(latent))``
    on the edge (1x1 convolutions with random weights; the latent is integer-valued float32)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    encoder = (2 * rng.standard_normal((CHANNELS, 3, 1, 1))).astype(np.float32)
    decoder = rng.standard_normal((OUT, CHANNELS, 1, 1)).astype(np.float32)
    weights = [numpy_helper.from_array(encoder, "we"), numpy_helper.from_array(decoder, "wd")]
    nodes = [helper.make_node("Conv", ["x", "we"], ["encoded"]),
             helper.make_node("Round", ["encoded"], ["latent"]),
             helper.make_node("Conv", ["latent", "wd"], ["decoded"]),
             helper.make_node("Relu", ["decoded"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, HEIGHT, WIDTH])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT, HEIGHT, WIDTH])]
    return SplitGraph(helper.make_model(helper.make_graph(nodes, "bottleneck", inputs, outputs, weights),
                                        opset_imports=[helper.make_opsetid("", 17)]))


def images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, HEIGHT, WIDTH)).astype(np.float32)


def session(graph: SplitGraph, *outputs: str):
    """ONNX Runtime on the whole graph, answering ``outputs`` (inner tensors such as the latent too)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = type(graph.model)()
    model.CopyFrom(graph.model)
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in outputs if name not in {o.name for o in model.graph.output})
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def latent_of(graph: SplitGraph, x: np.ndarray) -> np.ndarray:
    return session(graph, "latent").run(["latent"], {"x": x})[0]


def whole(graph: SplitGraph, x: np.ndarray, *, clip: EntropyTables | None = None) -> np.ndarray:
    """The whole graph's outputs; with ``clip``, the latent clipped to the tables' range first
    (and the rest of the graph, its tail, run on that)."""
    if clip is None:
        return session(graph).run(["y"], {"x": x})[0]
    import onnxruntime as ort

    clipped = np.clip(latent_of(graph, x), clip.lows.reshape(-1, 1, 1), clip.highs.reshape(-1, 1, 1))
    clipped = clipped.astype(np.float32)
    _, tail = graph.extract(graph.cut_after("latent"))
    assert tail is not None
    return ort.InferenceSession(tail.SerializeToString()).run(["y"], {"latent": clipped})[0]


def fitted_tables(graph: SplitGraph, seed: int = 0, margin: int = 2) -> EntropyTables:
    """Tables from the histograms of many latents, the range widened by ``margin``."""
    latent = latent_of(graph, images(64, seed)).astype(np.int64)
    ends = np.stack([np.full(latent.shape[1:], latent.min() - margin), np.full(latent.shape[1:],
                                                                            latent.max() + margin)])
    return EntropyTables.from_samples(np.concatenate([latent, ends]))


@pytest.fixture(scope="module")
def graph() -> SplitGraph:
    return bottleneck_graph()


@pytest.fixture(scope="module")
def tables(graph) -> EntropyTables:
    return fitted_tables(graph)


@pytest.fixture(scope="module")
def exported(graph, tables, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("entropy") / "split"
    export_split(graph, graph.cut_after("latent"), out, "entropy", tables=tables)
    return out


@pytest.fixture(scope="module")
def server(exported) -> Iterator[SplitServer]:
    with SplitServer(exported / EDGE_DIR, TOKEN, SplitServiceOptions(max_batch=MAX_BATCH)) as running:
        yield running


def test_the_split_gives_exactly_the_whole_graphs_outputs(graph, tables, exported, server):
    client = SplitClient.create_from_bundle(exported / DEVICE_DIR, server.url, TOKEN, max_batch=MAX_BATCH)
    for batch, seed in ((1, 1), (3, 2), (MAX_BATCH, 3)):
        x = images(batch, seed)
        outputs = client.infer(x)
        np.testing.assert_array_equal(outputs["y"], whole(graph, x))  # in range: nothing clipped
        assert client.last is not None and client.last.clipped == 0
    assert client.calls == 3 and server.service.info()["requests"] >= 3


def test_values_beyond_the_tables_are_clipped_and_counted(graph, tables, exported, server):
    client = SplitClient.create_from_bundle(exported / DEVICE_DIR, server.url, TOKEN, max_batch=MAX_BATCH)
    x = 6 * images(2, 4)  # latents far beyond what the tables were fitted on
    outputs = client.infer(x)
    latent = latent_of(graph, x)
    outside = (latent < tables.lows.reshape(-1, 1, 1)) | (latent > tables.highs.reshape(-1, 1, 1))
    assert client.last is not None and client.last.clipped == int(outside.sum()) > 0
    np.testing.assert_array_equal(outputs["y"], whole(graph, x, clip=tables))


def test_the_bytes_sent_are_the_bitstreams_and_their_lengths_plus_the_frame(graph, tables, exported, server):
    client = SplitClient.create_from_bundle(exported / DEVICE_DIR, server.url, TOKEN, max_batch=MAX_BATCH)
    for batch in (1, 2, MAX_BATCH):
        x = images(batch, 10 + batch)
        client.infer(x)
        streams = [encode(quantize(sample, tables)[0], tables) for sample in latent_of(graph, x)]
        arrays = {"latent": np.frombuffer(b"".join(streams), np.uint8),
                  protocol.lengths_name("latent"): np.array([len(s) for s in streams], np.int32)}
        expected = wire.encode(wire.Message(wire.MessageType.REQUEST,
                                            {protocol.SPLIT_KEY: client.spec.identity}, arrays))
        assert client.last is not None and client.last.bytes_sent == len(expected)
        overhead = client.last.bytes_sent - sum(map(len, streams)) - 4 * batch
        assert 0 < overhead < FRAME_OVERHEAD
        # far below the float32 latent, and within the bound the service allows per sample
        assert max(map(len, streams)) <= client.spec.codec.max_stream_bytes
        assert sum(map(len, streams)) < batch * CHANNELS * HEIGHT * WIDTH
    info = server.service.info()
    assert info["sample_bytes"] == client.spec.codec.max_stream_bytes + 4
    assert info["spec"]["tables"] == f"{tables.fingerprint:08x}"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def send(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + protocol.INFER_PATH, data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": protocol.CONTENT_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_corrupt_truncated_or_foreign_frames_are_a_422_with_one_line(graph, tables, exported, server):
    spec = server.service.spec
    good = spec.codec.encode({"latent": np.rint(2 * images(2, 5)[:, :1].repeat(CHANNELS, 1)).clip(-3, 3)})
    data, lengths = good["latent"], good[protocol.lengths_name("latent")]
    identity = {protocol.SPLIT_KEY: spec.identity}
    untabled = {key: value for key, value in spec.identity.items() if key != "tables"}

    def frame(arrays: dict, header: dict = identity) -> bytes:
        return wire.encode(wire.Message(wire.MessageType.REQUEST, header, arrays))

    flipped = data.copy()
    flipped[-1] ^= 0x10
    # the likeliest latent codes far below the bound: more than MAX_BATCH of them fit its bytes
    modes = np.array([tables.lows[c] + np.argmax(tables.table(c)) for c in range(CHANNELS)], np.float32)
    likely = np.broadcast_to(modes[:, None, None], (1, CHANNELS, HEIGHT, WIDTH))
    one = spec.codec.encode({"latent": np.ascontiguousarray(likely)})["latent"].size + 4
    many = MAX_BATCH * spec.codec.sample_bytes // one
    assert many > MAX_BATCH
    small = spec.codec.encode({"latent": np.ascontiguousarray(np.repeat(likely, many, axis=0))})
    refusals = {
        "a flipped bit": (frame({**good, "latent": flipped}), 422,
                          "array 'latent', sample 1: bitstream fails its CRC32"),
        "truncated": (frame({**good, "latent": data[:-3]}), 422, "its lengths add up to"),
        "a length past the bound": (frame({**good, protocol.lengths_name("latent"): np.array(
            [spec.codec.max_stream_bytes + 1, 1], np.int32)}), 422, "outside [29, "),
        "the lengths swapped": (frame({**good, protocol.lengths_name("latent"): lengths[::-1].copy()}), 422,
                                "array 'latent', sample 0:") if lengths[0] != lengths[1] else None,
        "a float latent": (frame({"latent": np.zeros((1, CHANNELS, HEIGHT, WIDTH), np.float32)}), 422,
                           "missing ['latent#lengths']"),
        "small samples past max_batch": (frame(small), 422, f"a batch of {many} is over the limit of "
                                                            f"{MAX_BATCH} samples"),
        "other tables": (frame(good, {protocol.SPLIT_KEY: {**spec.identity, "tables": "0" * 8}}), 422,
                         f"in entropy with entropy tables {spec.tables_fingerprint}; the request names "
                         "another split (cut="),
        "no tables named": (frame(good, {protocol.SPLIT_KEY: untabled}), 422, "another split"),
    }
    records = Records()
    logging.getLogger("uvicorn.error").addHandler(records)
    try:
        assert send(server.url, frame(good))[0] == 200
        for what, refusal in refusals.items():
            if refusal is None:
                continue
            body, status, detail = refusal
            answered, answer = send(server.url, body)
            assert answered == status and "\n" not in answer["detail"], (what, answered, answer)
            assert detail in answer["detail"], (what, answer)
    finally:
        logging.getLogger("uvicorn.error").removeHandler(records)
    assert [record for record in records.records if record.exc_info or record.levelno >= logging.ERROR] == []


def test_a_device_with_other_tables_is_refused(graph, tmp_path, server):
    other = fitted_tables(graph, seed=9, margin=5)
    export_split(graph, graph.cut_after("latent"), tmp_path / "other", "entropy", tables=other)
    client = SplitClient.create_from_bundle(tmp_path / "other" / DEVICE_DIR, server.url, TOKEN)
    with pytest.raises(SplitClientError, match=r"HTTP 422: .*with entropy tables [0-9a-f]{8}; the request "
                                               r"names another split .*tables="):
        client.infer(images(1, 0))


def test_the_device_codes_without_heavy_frameworks(run_blocked, graph, exported, server, tmp_path):
    x = images(2, 6)
    np.save(tmp_path / "x.npy", x)
    report = run_blocked(f"""
import json, sys
import numpy as np
from coinfer.device.split import SplitClient
client = SplitClient.create_from_bundle({str(exported / DEVICE_DIR)!r}, {server.url!r}, {TOKEN!r})
np.save({str(tmp_path / "y.npy")!r}, client.infer(np.load({str(tmp_path / "x.npy")!r}))["y"])
heavy = {{"torch", "tensorflow", "transformers", "onnx", "fastapi"}}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy
                        or m.startswith(("coinfer.edge", "coinfer.cloud", "coinfer.bench")))))
print("constriction" in sys.modules)
""")
    *_, modules, coded = report.strip().splitlines()
    assert json.loads(modules) == [] and coded == "True"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), whole(graph, x))


def test_split_export_writes_an_entropy_split_with_its_tables(graph, tables, tmp_path, capsys):
    import onnx

    onnx.save(graph.model, str(tmp_path / "bottleneck.onnx"))
    tables.save(tmp_path / "tables.npz")
    assert main(["split", "export", "--model", str(tmp_path / "bottleneck.onnx"), "--cut", "latent",
                 "--encoding", "entropy", "--tables", str(tmp_path / "tables.npz"),
                 "--out", str(tmp_path / "split")]) == 0
    printed = capsys.readouterr().out
    for side in (DEVICE_DIR, EDGE_DIR):
        manifest = json.loads((tmp_path / "split" / side / "manifest.json").read_text())
        assert TABLES_FILE in manifest["files"]
        assert EntropyTables.load(tmp_path / "split" / side / TABLES_FILE).fingerprint == tables.fingerprint
    bound = json.loads((tmp_path / "split" / EDGE_DIR / "split.json").read_text())
    assert bound["tables"] == f"{tables.fingerprint:08x}"
    assert "latent cross (at most" in printed and "bytes per sample entropy-coded" in printed


def test_the_cli_offers_the_sdks_encodings():
    from coinfer.edge.cli.split_export import ENCODINGS as OFFERED

    assert OFFERED == ENCODINGS
