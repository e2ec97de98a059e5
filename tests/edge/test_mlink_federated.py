"""Federated averaging of MLink link graphs: the arithmetic, the frames, the cloud service, edge clients."""

import contextlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from coinfer.cloud.mlink.server import (
    ClientRegistry,
    LinkAggregator,
    ServiceOptions,
    create_app,
    latest_saved,
    token_digest,
)
from coinfer.edge.mlink.federated_client import FederatedClient, FederatedClientError
from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec, fedavg, robust
from coinfer.sdk.service import ThreadedServer

pytest.importorskip("torch")

TOKEN = "federated-test-token"
SPECS = {"counts": OutputSpec.classes(4), "speech": OutputSpec.presence(), "boxes": OutputSpec.boxes()}
OPTIONS = LinkOptions(epochs=3)
ROUTES = [("GET", fedavg.GRAPH_PATH), ("GET", fedavg.GLOBAL_PATH), ("POST", fedavg.UPDATES_PATH),
          ("GET", fedavg.STATUS_PATH)]
#: The clients the tests' aggregators know by default, all speaking with the service token.
NAMES = [f"edge-{k}" for k in range(10)]
#: Plain FedAvg: no clipping, no divergence check (for the tests of the exact mean).
PLAIN = robust.RobustOptions("mean", clip_factor=math.inf, max_growth=math.inf)


def world(count: int, seed: int, busy: float = 0.5) -> dict:
    """Outputs of three made-up models on one camera group: how many people (0-3), whether someone
    speaks, and a person box. ``busy`` shifts how crowded the group's scenes are."""
    rng = np.random.default_rng(seed)
    people = rng.binomial(3, busy, count)
    speaking = (people > 0) & (rng.random(count) < 0.85)
    counts = np.eye(4, dtype=np.float32)[people]
    speech = np.clip(0.1 + 0.8 * speaking + rng.normal(0, 0.05, count), 0, 1).astype(np.float32)[:, None]
    boxes = np.where(people[:, None] > 0, np.stack([0.1 + 0.15 * people, np.full(count, 0.3),
                                                    0.1 + 0.05 * people, np.full(count, 0.5)], axis=1), 0.0)
    return {"counts": counts, "speech": speech, "boxes": boxes.astype(np.float32)}


def untrained() -> LinkGraph:
    return LinkGraph.create(SPECS, options=OPTIONS)


@contextlib.contextmanager
def serving(min_clients: int, state_dir=None, graph=None, clients: ClientRegistry | None = None,
            rules: robust.RobustOptions | None = None):
    aggregator = LinkAggregator(graph or untrained(), min_clients, state_dir,
                                clients=clients or ClientRegistry.shared(NAMES), rules=rules)
    with ThreadedServer(create_app(aggregator, TOKEN), name="the MLink aggregator") as running:
        yield aggregator, running.url


def call(url: str, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN):
    """(status, body) of one request; HTTP errors are answers, not exceptions."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def raw_post(url: str, declared: int, body: bytes, answer_within: float = 1.0) -> bytes:
    """POST ``body`` under a ``Content-Length`` of ``declared`` on a raw socket and return the
    first chunk of the answer, or b"" when none came within ``answer_within`` seconds (the
    server waits for the rest of the body). Closing the socket then is a client that crashed
    mid-upload. Where an answer is expected, give ``answer_within`` generously: a loaded
    machine may take seconds to answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = (f"POST {fedavg.UPDATES_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: {fedavg.CONTENT_TYPE}\r\nContent-Length: {declared}\r\n\r\n")
        sock.sendall(head.encode() + body)
        sock.settimeout(answer_within)
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b""


def update_frame(aggregator: LinkAggregator, client: str, round_: int = 0, scale: float = 0.01,
                 seed: int = 0, samples: int = 10) -> tuple[dict, bytes]:
    rng = np.random.default_rng(seed)
    delta = {name: (scale * rng.standard_normal(shape)).astype(np.float32)
             for name, shape in aggregator.shapes.items()}
    return delta, fedavg.encode_update(delta, round=round_, client=client, samples=samples,
                                       graph=aggregator.graph_id)


def status(url: str) -> dict:
    code, body = call(url, "GET", fedavg.STATUS_PATH)
    assert code == 200
    return json.loads(body)


def test_mean_delta_is_the_sample_weighted_mean_and_refuses_what_does_not_fit():
    theta = {"a": np.array([1.0, 2.0], np.float32), "b": np.zeros((2, 2), np.float32)}
    deltas = [{"a": np.array([1.0, 0.0], np.float32), "b": np.ones((2, 2), np.float32)},
              {"a": np.array([-1.0, 4.0], np.float32), "b": np.full((2, 2), 3.0, np.float32)}]
    np.testing.assert_allclose(fedavg.apply_mean_delta(theta, deltas)["a"], [1.0, 4.0])
    weighted = fedavg.apply_mean_delta(theta, deltas, [3, 1])
    np.testing.assert_allclose(weighted["a"], [1.5, 3.0])
    np.testing.assert_allclose(weighted["b"], np.full((2, 2), 1.5))
    assert all(value.dtype == np.float32 for value in weighted.values())
    local = {"a": np.array([0.5, 2.5], np.float32), "b": np.eye(2, dtype=np.float32)}
    np.testing.assert_allclose(fedavg.weight_delta(local, theta)["a"], [-0.5, 0.5])

    with pytest.raises(fedavg.WeightMismatchError, match=r"edge-2.*missing 'b'"):
        fedavg.apply_mean_delta(theta, [deltas[0], {"a": deltas[1]["a"]}], clients=["edge-1", "edge-2"])
    with pytest.raises(fedavg.WeightMismatchError, match=r"'b' has shape \(4,\)"):
        fedavg.apply_mean_delta(theta, [{"a": deltas[0]["a"], "b": np.zeros(4, np.float32)}])
    with pytest.raises(fedavg.NonFiniteError, match=r"edge-1.*'a'"):
        fedavg.apply_mean_delta(theta, [{**deltas[0], "a": np.array([np.nan, 0], np.float32)}],
                                clients=["edge-1"])
    with pytest.raises(fedavg.NonFiniteError, match=r"edge-1: array 'a' overflows"):
        fedavg.apply_mean_delta({**theta, "a": np.array([3e38, 0], np.float32)},
                                [{**deltas[0], "a": np.array([3e38, 0], np.float32)}], clients=["edge-1"])
    with pytest.raises(fedavg.FederatedError, match="sample count"):
        fedavg.apply_mean_delta(theta, deltas, [1, 0])
    with pytest.raises(fedavg.WeightMismatchError, match="unexpected 'c'"):
        fedavg.weight_delta({**local, "c": np.zeros(1, np.float32)}, theta)


def test_update_frames_round_trip_and_every_field_is_checked():
    graph = untrained()
    theta = graph.weights()
    shapes, gid = fedavg.weight_shapes(theta), fedavg.graph_id(graph.describe())
    assert gid == fedavg.graph_id(json.loads(json.dumps(graph.describe())))
    delta = {name: np.full(shape, 0.5, np.float32) for name, shape in shapes.items()}
    frame = fedavg.encode_update(delta, round=4, client="edge-1", samples=300, graph=gid)
    update = fedavg.decode_update(frame, shapes, gid)
    assert (update.round, update.client, update.samples, update.graph) == (4, "edge-1", 300, gid)
    assert all(np.array_equal(update.delta[name], delta[name]) for name in shapes)
    assert len(frame) <= fedavg.max_frame_bytes(shapes)
    model = fedavg.decode_global(fedavg.encode_global(theta, round=2, graph=gid), shapes, gid)
    assert model.round == 2 and all(np.array_equal(model.weights[n], theta[n]) for n in shapes)

    def forged(header_changes: dict, arrays: dict | None = None) -> bytes:
        header = {"kind": "mlink-update", "round": 0, "client": "edge-1", "samples": 5, "graph": gid,
                  **header_changes}
        header = {key: value for key, value in header.items() if value is not None}
        return wire.encode(wire.Message(wire.MessageType.TENSORS, header, arrays or delta))

    for changes, problem in [({"round": -1}, "'round'"), ({"samples": 0}, "'samples'"),
                             ({"samples": 10**9 + 1}, "'samples'"), ({"client": "../etc"}, "client name"),
                             ({"client": "x" * 65}, "client name"), ({"graph": "0" * 64}, "not this graph"),
                             ({"kind": "mlink-global"}, "expected a 'mlink-update'"),
                             ({"extra": 1}, "exactly the fields"), ({"samples": None}, "exactly the fields"),
                             ({"round": True}, "'round'")]:
        with pytest.raises(fedavg.FederatedError, match=problem):
            fedavg.decode_update(forged(changes), shapes, gid)
    name = next(iter(shapes))
    renamed = {("link/x/y/z" if key == name else key): value for key, value in delta.items()}
    with pytest.raises(fedavg.WeightMismatchError, match="unexpected 'link/x/y/z'"):
        fedavg.decode_update(forged({}, renamed), shapes, gid)
    with pytest.raises(fedavg.WeightMismatchError, match="float32"):
        fedavg.decode_update(forged({}, {**delta, name: delta[name].astype(np.float16)}), shapes, gid)
    with pytest.raises(wire.WireError):  # one array more than the graph has exceeds the wire limits
        fedavg.decode_update(forged({}, {**delta, "extra": np.zeros(1, np.float32)}), shapes, gid)


def test_three_clients_average_exactly_and_rounds_advance_only_when_all_arrived(tmp_path):
    state = tmp_path / "rounds"
    with serving(min_clients=3, state_dir=state, rules=PLAIN) as (aggregator, url):
        clients = [FederatedClient(url, TOKEN, f"edge-{k}") for k in range(3)]
        graphs = [client.fetch_graph() for client in clients]
        _, theta = aggregator.global_weights()
        global_frame = call(url, "GET", fedavg.GLOBAL_PATH)[1]
        samples, deltas = [150, 200, 250], []
        for k, (client, graph) in enumerate(zip(clients, graphs, strict=True)):
            result = client.train_round(graph, world(samples[k], seed=k))
            deltas.append(fedavg.weight_delta(graph.weights(), theta))
            sent = fedavg.encode_update(deltas[-1], round=0, client=client.name, samples=samples[k],
                                        graph=aggregator.graph_id)
            reply = {"accepted": True, "round": 0, "staged": k + 1, "closed": k == 2, "rejected": None}
            assert result.bytes_sent == len(sent)
            assert result.bytes_received == len(global_frame) + len(json.dumps(reply, separators=(",", ":")))
            assert (result.round, result.staged, result.closed, result.samples) == (0, k + 1, k == 2,
                                                                                    samples[k])
            if k < 2:
                assert status(url)["round"] == 0 and latest_saved(state) is None
                with pytest.raises(FederatedClientError, match="already sent its update") as refused:
                    client.train_round(graph, world(50, seed=9))
                assert refused.value.status == 409
                assert status(url)["staged"] == [c.name for c in clients[:k + 1]]

        after = status(url)
        assert after["round"] == 1 and after["staged"] == [] and after["updates_accepted"] == 3
        expected = {name: (value.astype(np.float64) + sum(n * d[name].astype(np.float64)
                                                          for n, d in zip(samples, deltas, strict=True))
                           / sum(samples)).astype(np.float32)
                    for name, value in theta.items()}
        round_, new = aggregator.global_weights()
        assert round_ == 1
        for name in theta:
            np.testing.assert_allclose(new[name], expected[name], rtol=1e-6, atol=1e-8)
        served = fedavg.decode_global(call(url, "GET", fedavg.GLOBAL_PATH)[1], aggregator.shapes,
                                      aggregator.graph_id)
        assert served.round == 1 and all(np.array_equal(served.weights[n], new[n]) for n in theta)
        saved_round, saved_path = latest_saved(state)
        assert saved_round == 1 and saved_path.name == "round-000001"
        saved = LinkGraph.load(saved_path).weights()
        assert all(np.array_equal(saved[name], new[name]) for name in theta)

        stale = fedavg.encode_update(deltas[0], round=0, client="edge-9", samples=5,
                                     graph=aggregator.graph_id)
        code, body = call(url, "POST", fedavg.UPDATES_PATH, stale)
        assert code == 409 and "round 0 (stale)" in json.loads(body)["detail"]
        future = fedavg.encode_update(deltas[0], round=7, client="edge-9", samples=5,
                                      graph=aggregator.graph_id)
        code, body = call(url, "POST", fedavg.UPDATES_PATH, future)
        assert code == 409 and "from the future" in json.loads(body)["detail"]
        assert status(url)["staged"] == []

    resumed = LinkAggregator(untrained(), 3, state, clients=ClientRegistry.shared(NAMES))
    assert resumed.round == 1
    assert all(np.array_equal(resumed.global_weights()[1][n], new[n]) for n in theta)
    other = LinkGraph.create(SPECS, options=LinkOptions(epochs=3, hidden=8))
    with pytest.raises(CoinferError, match="different graph"):
        LinkAggregator(other, 3, state, clients=ClientRegistry.shared(NAMES))


def test_every_route_needs_the_token():
    with serving(min_clients=2) as (aggregator, url):
        _, frame = update_frame(aggregator, "edge-1")
        for method, path in ROUTES:
            body = frame if method == "POST" else None
            for token in (None, "wrong-token"):
                code, answer = call(url, method, path, body, token=token)
                assert code == 401, (method, path, token)
                assert "bearer token" in json.loads(answer)["detail"]
        assert status(url)["staged"] == [] and status(url)["bytes_received"] == 0


def test_bad_uploads_are_refused_and_change_nothing():
    with serving(min_clients=2) as (aggregator, url):
        _, good = update_frame(aggregator, "edge-1")
        assert call(url, "POST", fedavg.UPDATES_PATH, good)[0] == 200
        before = call(url, "GET", fedavg.GLOBAL_PATH)[1]
        limit = aggregator.max_update_bytes
        delta, _ = update_frame(aggregator, "edge-2")
        name = next(iter(delta))

        def frame(arrays: dict, **header) -> bytes:
            fields = {"round": 0, "client": "edge-2", "samples": 10, "graph": aggregator.graph_id, **header}
            return wire.encode(wire.Message(wire.MessageType.TENSORS, {"kind": "mlink-update", **fields},
                                            arrays))

        nan = {**delta, name: np.full(delta[name].shape, np.nan, np.float32)}
        bad = {
            "garbage": (b"not a coinfer frame, only some bytes", "bad magic"),
            "truncated": (good[:-7], "truncated frame"),
            "names": (frame({("x" if k == name else k): v for k, v in delta.items()}), "unexpected 'x'"),
            "shape": (frame({**delta, name: np.zeros(3, np.float32)}), f"{name}' has shape (3,)"),
            "nan": (frame(nan), "NaN"),
            "dtype": (frame({**delta, name: delta[name].astype(np.float16)}), "float32"),
            "graph": (frame(delta, graph="f" * 64), "not this graph"),
        }
        for case, (body, problem) in bad.items():
            code, answer = call(url, "POST", fedavg.UPDATES_PATH, body)
            assert code == 400, case
            assert problem in json.loads(answer)["detail"], (case, answer)
        code, answer = call(url, "POST", fedavg.UPDATES_PATH, good + b"\0" * (limit - len(good) + 1))
        assert code == 413 and f"{limit}-byte limit" in json.loads(answer)["detail"]
        # A declared length over the limit is refused from the headers alone; no body is sent.
        assert raw_post(url, 1 << 40, b"", answer_within=60).startswith(b"HTTP/1.1 413")
        current = status(url)
        assert current["round"] == 0 and current["staged"] == ["edge-1"]
        assert current["updates_refused"] == len(bad) and current["updates_accepted"] == 1
        assert call(url, "GET", fedavg.GLOBAL_PATH)[1] == before

    aggregator = LinkAggregator(untrained(), 2, clients=ClientRegistry.shared(NAMES))
    with pytest.raises(CoinferError, match="raise --max-request-mib"):
        create_app(aggregator, TOKEN, ServiceOptions(max_request_bytes=aggregator.max_update_bytes - 1))


def test_a_client_that_crashes_mid_upload_changes_nothing():
    with serving(min_clients=2) as (aggregator, url):
        _, first = update_frame(aggregator, "edge-1", seed=1)
        assert call(url, "POST", fedavg.UPDATES_PATH, first)[0] == 200
        before = call(url, "GET", fedavg.GLOBAL_PATH)[1]
        _, crashing = update_frame(aggregator, "edge-2", seed=2)
        assert raw_post(url, len(crashing), crashing[: len(crashing) // 2]) == b""  # silence: never early
        deadline = time.monotonic() + 120  # the wait ends when the server counts the abort
        while status(url)["aborted_uploads"] == 0:
            assert time.monotonic() < deadline, "the server never noticed the hang-up"
            time.sleep(0.05)
        current = status(url)
        assert current["round"] == 0 and current["staged"] == ["edge-1"] and current["updates_refused"] == 0
        assert call(url, "GET", fedavg.GLOBAL_PATH)[1] == before
        # The crashed client comes back and completes the round normally.
        code, answer = call(url, "POST", fedavg.UPDATES_PATH, crashing)
        assert code == 200 and json.loads(answer) == {"accepted": True, "round": 0, "staged": 2,
                                                      "closed": True, "rejected": None}
        assert status(url)["round"] == 1


def test_robust_aggregates_bound_an_outlier_and_refuse_a_diverging_result():
    theta = {"a": np.zeros(2, np.float32), "b": np.ones((2, 2), np.float32)}
    rng = np.random.default_rng(5)
    honest = [{name: (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
               for name, value in theta.items()} for _ in range(4)]
    attacker = {name: np.full(value.shape, 1e30, np.float32) for name, value in theta.items()}
    deltas, samples = [*honest, attacker], [100, 120, 90, 110, fedavg.MAX_SAMPLES]
    norms = [robust.delta_norm(delta) for delta in honest]
    for name in robust.AGGREGATES:
        result = robust.aggregate(theta, deltas, samples, robust.RobustOptions(name))
        assert result.clipped == [False] * 4 + [True] and result.bound == pytest.approx(2 * np.median(
            [*norms, robust.delta_norm(attacker)]))
        step = {key: result.weights[key].astype(np.float64) - theta[key] for key in theta}
        if name == "mean":  # weighted by at most max_samples, and clipped: bounded, not ignored
            assert robust.delta_norm(step) <= result.bound
        else:  # the outlier's vote cannot leave the honest clients' range, coordinate by coordinate
            for key in theta:
                stacked = np.stack([delta[key] for delta in honest])
                assert (stacked.min(0) - 1e-6 <= step[key]).all()
                assert (step[key] <= stacked.max(0) + 1e-6).all()
        robust.check_divergence(theta, result.weights, 10.0)
    # Without the bounds, the old mean: one client drowns the others and the result is refused.
    plain = robust.aggregate(theta, deltas, samples, PLAIN)
    assert plain.clipped == [False] * 5 and np.abs(plain.weights["a"]).min() > 1e29
    with pytest.raises(robust.DivergenceError, match=r"weight norm would jump from 2 to .*e\+30, over 10x"):
        robust.check_divergence(theta, plain.weights, 10.0)
    overflowing = robust.aggregate({**theta, "a": np.full(2, 3e38, np.float32)}, [{**attacker, "a": np.full(
        2, 3e38, np.float32)}], None, PLAIN)
    with pytest.raises(robust.DivergenceError, match="'a' would hold NaN or infinity"):
        robust.check_divergence(theta, overflowing.weights, math.inf)
    # Capped sample counts: 10**9 weighs what max_samples does.
    capped = robust.aggregate(theta, honest[:2], [10**9, 50],
                              robust.RobustOptions("mean", clip_factor=math.inf, max_samples=50))
    np.testing.assert_allclose(capped.weights["a"], (honest[0]["a"] + honest[1]["a"]) / 2, rtol=1e-6)
    for bad, problem in [({"aggregate": "krum"}, "aggregate must be one of"), ({"trim": 0.5}, "trim"),
                         ({"clip_factor": 0.5}, "clip_factor"), ({"max_samples": 0}, "max_samples"),
                         ({"max_growth": 1.0}, "max_growth")]:
        with pytest.raises(fedavg.FederatedError, match=problem):
            robust.RobustOptions(**bad)


def test_client_names_must_be_registered_and_match_the_token_that_sends_them(tmp_path):
    registry = ClientRegistry({"edge-1": token_digest("edge-1-token"), "edge-2": token_digest("edge-2-token"),
                               "edge-3": None})  # edge-3 speaks with the service token
    with serving(min_clients=3, clients=registry) as (aggregator, url):
        for token, client, problem in [("edge-1-token", "mallory", "'mallory' is not registered"),
                                       ("edge-1-token", "edge-2", "does not speak for client 'edge-2'"),
                                       ("edge-1-token", "edge-3", "does not speak for client 'edge-3'"),
                                       (TOKEN, "edge-1", "does not speak for client 'edge-1'")]:
            _, frame = update_frame(aggregator, client)
            code, answer = call(url, "POST", fedavg.UPDATES_PATH, frame, token=token)
            assert code == 403 and problem in json.loads(answer)["detail"], (token, client, answer)
        assert call(url, "POST", fedavg.UPDATES_PATH, update_frame(aggregator, "edge-1")[1],
                    token="made-up-token")[0] == 401
        for token in ("edge-1-token", "edge-2-token", TOKEN):  # every credential reads
            assert all(call(url, method, path, token=token)[0] == 200
                       for method, path in ROUTES if method == "GET")
        for token, client in [("edge-1-token", "edge-1"), (TOKEN, "edge-3")]:
            _, frame = update_frame(aggregator, client)
            assert call(url, "POST", fedavg.UPDATES_PATH, frame, token=token)[0] == 200
        current = status(url)
        assert current["staged"] == ["edge-1", "edge-3"] and current["clients"] == 3
        assert current["updates_refused"] == 4 and current["updates_accepted"] == 2  # and one 401

    # The registry file: a name alone shares the service token; a name and a digest has its own.
    listing = tmp_path / "clients.txt"
    listing.write_text(f"# edge servers\n\nedge-1  {token_digest('t1')}   # the lobby\nedge-2\n")
    loaded = ClientRegistry.load(listing)
    assert loaded.names == ["edge-1", "edge-2"]
    assert loaded.speaks_for("Bearer t1", TOKEN) == {"edge-1"}
    assert loaded.speaks_for(f"Bearer {TOKEN}", TOKEN) == {"edge-2"}
    assert loaded.speaks_for("Bearer t2", TOKEN) is None and loaded.speaks_for("t1", TOKEN) is None
    digest = token_digest("t1")
    for text, problem in [("edge-1 md5:abc\n", r"clients.txt:1: .*sha256:<64 hex digits>"),
                          (f"edge-1\nedge-1 {digest}\n", r"clients.txt:2: client 'edge-1' is listed twice"),
                          (f"edge-1 {digest}\nedge-2 {digest}\n", r"clients.txt:2: .*same token as 'edge-1'"),
                          ("../etc\n", r"clients.txt:1: client name must be"),
                          (f"edge-1 {digest} extra\n", r"clients.txt:1: expected 'NAME' or 'NAME sha256:"),
                          ("# nobody\n", r"clients.txt lists no clients")]:
        listing.write_text(text)
        with pytest.raises(CoinferError, match=problem):
            ClientRegistry.load(listing)
    listing.write_bytes(b"\xff\xfe\0junk")
    with pytest.raises(CoinferError, match=r"clients\.txt: unreadable client list"):
        ClientRegistry.load(listing)
    with pytest.raises(CoinferError, match="no such client list"):
        ClientRegistry.load(tmp_path / "missing.txt")
    with pytest.raises(CoinferError, match=r"a round of 3 updates .* only 2 clients are registered"):
        LinkAggregator(untrained(), 3, clients=loaded)
    with pytest.raises(CoinferError, match="'edge-1' has the service token as its own"):
        create_app(LinkAggregator(untrained(), 2, clients=loaded), "t1")


def test_an_attacker_among_honest_clients_has_bounded_influence_and_a_restart_loads_a_good_round(tmp_path):
    """The reported poisoning, end to end with the service's defaults: 1e30 deltas and 10**9 samples
    under a made-up name, a borrowed name, and the attacker's own registered name."""
    state = tmp_path / "rounds"
    tokens = {f"edge-{k}": f"edge-{k}-token" for k in range(4)}  # edge-3 is the attacker's (stolen) one
    registry = ClientRegistry.with_tokens(tokens)
    with serving(min_clients=4, state_dir=state, clients=registry) as (aggregator, url):
        honest = [FederatedClient(url, tokens[f"edge-{k}"], f"edge-{k}") for k in range(3)]
        graphs = [client.fetch_graph() for client in honest]
        huge = {name: np.full(shape, 1e30, np.float32) for name, shape in aggregator.shapes.items()}

        def attack(client: str, round_: int, token: str = tokens["edge-3"]) -> tuple[int, dict]:
            frame = fedavg.encode_update(huge, round=round_, client=client, samples=fedavg.MAX_SAMPLES,
                                         graph=aggregator.graph_id)
            code, answer = call(url, "POST", fedavg.UPDATES_PATH, frame, token=token)
            return code, json.loads(answer)

        assert attack("sybil-1", 0)[0] == 403 and attack("edge-0", 0)[0] == 403
        assert attack("sybil-2", 0, token=TOKEN)[0] == 403 and attack("sybil-3", 0, token="guess")[0] == 401
        for round_ in range(2):
            _, theta = aggregator.global_weights()
            deltas = []
            for k, (client, graph) in enumerate(zip(honest, graphs, strict=True)):
                client.train_round(graph, world(120, seed=10 * round_ + k))  # NonFiniteError before the fix
                deltas.append(fedavg.weight_delta(graph.weights(), theta))
            code, answer = attack("edge-3", round_)
            assert code == 200 and answer["closed"] and answer["rejected"] is None
            round_now, new = aggregator.global_weights()
            assert round_now == round_ + 1
            mean = {name: np.mean([delta[name] for delta in deltas], axis=0) for name in theta}
            for name in theta:
                step = new[name].astype(np.float64) - theta[name]
                stacked = np.stack([delta[name] for delta in deltas])
                assert np.isfinite(new[name]).all()
                assert (stacked.min(0) - 1e-5 <= step).all() and (step <= stacked.max(0) + 1e-5).all(), name
            honest_step = robust.delta_norm(mean)
            off = robust.delta_norm({name: new[name].astype(np.float64) - theta[name] - mean[name]
                                     for name in theta})
            assert off < 0.5 * honest_step, (off, honest_step)
        current = status(url)
        assert current["round"] == 2 and current["updates_clipped"] == 2 and current["rounds_rejected"] == 0
        assert current["updates_refused"] == 3  # the 401 never reached the aggregator
        _, served = aggregator.global_weights()

    resumed = LinkAggregator(untrained(), 4, state, clients=registry)
    assert resumed.round == 2
    assert all(np.array_equal(resumed.global_weights()[1][name], served[name]) for name in served)
    assert robust.delta_norm(served) < 10 * robust.delta_norm(untrained().weights())


def test_a_diverging_round_is_discarded_logged_and_shown_in_status(tmp_path, caplog):
    state = tmp_path / "rounds"
    rules = robust.RobustOptions("mean", clip_factor=math.inf)  # only the divergence check is left
    with serving(min_clients=2, state_dir=state, rules=rules) as (aggregator, url):
        before = call(url, "GET", fedavg.GLOBAL_PATH)[1]
        assert call(url, "POST", fedavg.UPDATES_PATH, update_frame(aggregator, "edge-1")[1])[0] == 200
        huge = {name: np.full(shape, 1e30, np.float32) for name, shape in aggregator.shapes.items()}
        frame = fedavg.encode_update(huge, round=0, client="edge-2", samples=10, graph=aggregator.graph_id)
        with caplog.at_level(logging.WARNING, logger="coinfer.cloud.mlink.server"):
            code, answer = call(url, "POST", fedavg.UPDATES_PATH, frame)
        reply = json.loads(answer)
        assert code == 200 and reply["closed"] and "weight norm would jump" in reply["rejected"]
        records = [record for record in caplog.records if record.name == "coinfer.cloud.mlink.server"]
        assert len(records) == 1 and records[0].exc_info is None
        assert "\n" not in records[0].getMessage()
        assert "round 0 rejected (clients edge-1, edge-2): the weight norm" in records[0].getMessage()
        current = status(url)
        assert current["round"] == 1 and current["staged"] == [] and current["rounds_rejected"] == 1
        assert current["rejected"] == [{"round": 0, "clients": ["edge-1", "edge-2"],
                                        "reason": reply["rejected"]}]
        served = fedavg.decode_global(call(url, "GET", fedavg.GLOBAL_PATH)[1], aggregator.shapes,
                                      aggregator.graph_id)
        kept = fedavg.decode_global(before, aggregator.shapes, aggregator.graph_id)
        assert served.round == 1
        assert all(np.array_equal(served.weights[name], kept.weights[name]) for name in kept.weights)
        assert latest_saved(state) is None  # nothing saved, so nothing to reload
        # The next round goes on from the kept global links.
        for client in ("edge-1", "edge-2"):
            _, frame = update_frame(aggregator, client, round_=1)
            assert call(url, "POST", fedavg.UPDATES_PATH, frame)[0] == 200
        assert status(url)["round"] == 2 and latest_saved(state)[0] == 2


def test_a_state_dir_that_cannot_be_a_directory_is_refused_at_start(tmp_path, monkeypatch, capsys):
    import uvicorn

    from coinfer.sdk.cli.main import main

    taken = tmp_path / "links-rounds"
    taken.write_text("not a directory")
    registry = ClientRegistry.shared(NAMES)
    for state in (taken, taken / "below"):
        with pytest.raises(CoinferError, match=f"{taken} is a file"):
            LinkAggregator(untrained(), 2, state, clients=registry)
    untrained().save(tmp_path / "links")
    (tmp_path / "clients.txt").write_text("edge-1\nedge-2\n")

    def bind(*args, **kwargs):
        pytest.fail("the service started with a state directory it can never write")

    monkeypatch.setattr(uvicorn, "run", bind)
    monkeypatch.setenv("COINFER_TOKEN", TOKEN)
    # The default state directory, LINKS-rounds next to --links, is the file.
    assert main(["mlink", "serve", "--links", str(tmp_path / "links"), "--min-clients", "2",
                 "--clients", str(tmp_path / "clients.txt")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"{taken} is a file" in lines[0], lines
    assert taken.read_text() == "not a directory"


def test_a_round_that_cannot_be_saved_is_a_503_and_stages_nothing(tmp_path, caplog):
    state = tmp_path / "rounds"
    with serving(min_clients=2, state_dir=state) as (aggregator, url):
        assert call(url, "POST", fedavg.UPDATES_PATH, update_frame(aggregator, "edge-1")[1])[0] == 200
        state.write_text("the disk changed under the service")  # after the check at start
        _, closing = update_frame(aggregator, "edge-2", seed=1)
        with caplog.at_level(logging.ERROR, logger="coinfer.cloud.mlink.server"):
            code, answer = call(url, "POST", fedavg.UPDATES_PATH, closing)
        detail = json.loads(answer)["detail"]
        assert code == 503 and "round 0 could not be saved" in detail and "send it again" in detail
        records = [record for record in caplog.records if record.name == "coinfer.cloud.mlink.server"]
        assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
        assert status(url)["round"] == 0 and status(url)["staged"] == ["edge-1"]
        state.unlink()
        assert call(url, "POST", fedavg.UPDATES_PATH, closing)[0] == 200
        assert status(url)["round"] == 1 and latest_saved(state)[0] == 1


@pytest.mark.slow  # three edge clients train links for four rounds
def test_federated_rounds_on_shifted_camera_groups_improve_links_on_an_unseen_group():
    groups = {"edge-quiet": world(240, seed=11, busy=0.2), "edge-mixed": world(240, seed=12, busy=0.5),
              "edge-busy": world(240, seed=13, busy=0.8)}
    unseen = world(300, seed=99, busy=0.6)
    rounds = 4
    initial = untrained()
    before = np.mean(list(initial.link_performance(unseen).values()))
    registry = ClientRegistry.shared(groups)
    with serving(min_clients=len(groups), graph=initial, clients=registry) as (aggregator, url):
        update_bytes = fedavg.max_frame_bytes(aggregator.shapes)
        results: dict[str, list] = {name: [] for name in groups}
        errors: list[BaseException] = []

        def edge(name: str) -> None:
            try:
                client = FederatedClient(url, TOKEN, name)
                graph = client.fetch_graph()
                for round_ in range(rounds):
                    results[name].append(client.train_round(graph, groups[name]))
                    client.wait_for_round(round_ + 1, timeout=300, interval=0.02)
            except BaseException as error:  # surfaced in the main thread below
                errors.append(error)

        threads = [threading.Thread(target=edge, args=(name,)) for name in groups]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # each ends by itself: its requests and waits for a round have time limits
        assert not errors, errors
        final = FederatedClient(url, TOKEN, "observer")
        graph = final.fetch_graph()
        assert aggregator.round == rounds
        global_bytes = len(call(url, "GET", fedavg.GLOBAL_PATH)[1])
    after = np.mean(list(graph.link_performance(unseen).values()))
    assert after >= before + 0.15, (before, after)
    for name, per_round in results.items():
        assert [result.round for result in per_round] == list(range(rounds))
        for result in per_round:
            # Sent: exactly one update frame; received: the global frame plus a short JSON reply.
            assert result.bytes_sent <= update_bytes and result.bytes_sent > 4 * sum(
                int(np.prod(shape)) for shape in aggregator.shapes.values())
            assert global_bytes < result.bytes_received < global_bytes + 100, name
    assert sum(result.closed for per_round in results.values() for result in per_round) == rounds


@pytest.mark.slow  # starts `coinfer mlink serve` as its own process
def test_cli_serves_a_saved_graph(tmp_path, command_server):
    untrained().save(tmp_path / "links")
    # edge-1 speaks with the service token, edge-2 with its own.
    (tmp_path / "clients.txt").write_text(f"# name, token digest\nedge-1\n"
                                          f"edge-2 {token_digest('edge-2-token')}\n")
    argv = ["mlink", "serve", "--links", str(tmp_path / "links"), "--min-clients", "2",
            "--clients", str(tmp_path / "clients.txt"), "--aggregate", "trimmed-mean", "--max-samples", "500"]

    def status(port: int) -> dict:
        return FederatedClient(f"http://127.0.0.1:{port}", TOKEN, "edge-1").status()

    with command_server(argv, TOKEN, status) as (port, answer):
        url = f"http://127.0.0.1:{port}"
        client = FederatedClient(url, TOKEN, "edge-1")
        assert answer["round"] == 0 and answer["min_clients"] == 2 and answer["clients"] == 2
        assert answer["rules"]["aggregate"] == "trimmed-mean" and answer["rules"]["max_samples"] == 500
        graph = client.fetch_graph()
        assert answer["graph"] == fedavg.graph_id(graph.describe())
        with pytest.raises(FederatedClientError, match="does not speak for client 'edge-2'") as refused:
            FederatedClient(url, TOKEN, "edge-2").train_round(graph, world(64, seed=3))
        assert refused.value.status == 403
        for name, token in (("edge-1", TOKEN), ("edge-2", "edge-2-token")):
            FederatedClient(url, token, name).train_round(graph, world(64, seed=3))
        assert client.status()["round"] == 1
        assert latest_saved(tmp_path / "links-rounds")[0] == 1


@pytest.mark.slow
def test_edge_processes_federate_through_the_command_line(tmp_path):
    from coinfer.sdk.mlink.table import OutputTable

    held_out = world(300, seed=40, busy=0.5)
    before = np.mean(list(untrained().link_performance(held_out).values()))
    tokens = {"edge-0": "edge-0-token", "edge-1": "edge-1-token"}
    with serving(min_clients=2, clients=ClientRegistry.with_tokens(tokens)) as (aggregator, url):
        edges = []
        for k, busy in enumerate((0.3, 0.7)):
            OutputTable(SPECS, world(300, seed=30 + k, busy=busy)).save(tmp_path / f"edge-{k}.npz")
            command = [sys.executable, "-m", "coinfer.sdk.cli", "mlink", "federate", "--server", url,
                       "--name", f"edge-{k}", "--records", str(tmp_path / f"edge-{k}.npz"), "--rounds", "2",
                       "--epochs", "3", "--json", str(tmp_path / f"edge-{k}.json")]
            env = dict(os.environ, COINFER_TOKEN=tokens[f"edge-{k}"])
            if k == 0:  # its own token from a file; edge-1 takes its own from COINFER_TOKEN
                (tmp_path / "edge-0.token").write_text(tokens["edge-0"] + "\n")
                command += ["--out", str(tmp_path / "links"), "--token-file", str(tmp_path / "edge-0.token")]
                env["COINFER_TOKEN"] = "not-edge-0s-token"
            edges.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
        for edge in edges:
            assert edge.wait(timeout=300) == 0, edge.stderr.read().decode()
        assert aggregator.round == 2
    for k in range(2):
        report = json.loads((tmp_path / f"edge-{k}.json").read_text())
        assert report["rounds"] == 2 and report["global round"] == 2 and report["steps"] == 300
        assert report["bytes sent"] > 0 and report["bytes received"] > report["bytes sent"]
    after = np.mean(list(LinkGraph.load(tmp_path / "links").link_performance(held_out).values()))
    assert after > before + 0.1


def test_federate_needs_a_token_and_names_the_way_to_give_it(tmp_path, monkeypatch, capsys):
    from coinfer.sdk.cli.main import main

    monkeypatch.delenv("COINFER_TOKEN", raising=False)
    assert main(["mlink", "federate", "--server", "http://127.0.0.1:9", "--name", "edge-1",
                 "--records", str(tmp_path / "none.npz")]) != 0
    assert "no token: set COINFER_TOKEN or give --token-file" in capsys.readouterr().err
