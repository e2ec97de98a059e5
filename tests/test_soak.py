"""Soak tests: three services under sustained concurrent load with misbehaving clients mixed in.

- the edge gateway: 8 cameras upload a real H.264 clip concurrently, lap after lap, while a
  junk client sends refused requests to the same streams; every packet is accounted for,
  every stream decides exactly as a lone in-process gateway does, and memory stays flat;
- the STIP model server: several data owners generate concurrently through their own KV-cache
  sessions; every continuation equals the sequential greedy one, and memory stays flat;
- the MLink aggregation service: honest edge servers complete rounds while a registered but
  hostile one sends junk, oversized, non-finite and huge finite updates; the rounds close,
  the global weights stay finite and near the honest mean, and memory stays flat.

Each part is bounded by a number of laps or rounds, never by time. Memory is the test
process's RSS (the services run in it), sampled after each lap: after the warm-up laps no
sample may exceed the last warm-up one by :data:`MEMORY_BOUND`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

# pytest imports this file as tests.test_soak when the root is on sys.path (`python -m pytest`
# run there, as dev.py does), else as test_soak with tests/ itself on sys.path (the `pytest` script).
if __package__:
    from . import service_probes as probes
else:
    import service_probes as probes

pytestmark = pytest.mark.slow

TOKEN = "soak-test-service-token"
MEMORY_BOUND = 100 * probes.MiB


# ----------------------------------------------------------------------------- helpers

#: One ordinary request (see :func:`service_probes.call`), with this file's token unless told otherwise.
call = functools.partial(probes.call, token=TOKEN)


def raw_post(url: str, path: str, body: bytes, declared: int | None = None, token: str = TOKEN) -> int | None:
    """POST ``body`` on a raw socket under a ``Content-Length`` of ``declared`` (default: the
    truth); a lie ends with a half-close (a client that hung up mid-body). The answer's status,
    or None when none came (the server may drop a connection whose client went away)."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {probes.OCTETS}\r\n"
            f"Content-Length: {len(body) if declared is None else declared}\r\n"
            "Connection: close\r\n\r\n")
    received = b""
    with socket.create_connection((host, int(port)), timeout=probes.HANG_GUARD) as sock:
        try:
            sock.sendall(head.encode() + body)
            if declared is not None and declared != len(body):
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(1 << 16):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            if declared is None:
                raise
    parts = received.split(b" ", 2)
    return int(parts[1]) if received.startswith(b"HTTP/1.") and parts[1].isdigit() else None


def assert_flat(samples: list[int], warmup: int) -> None:
    """After ``warmup`` samples, none exceeds the last warm-up one by more than the bound."""
    base = samples[warmup - 1]
    growth = [round((sample - base) / probes.MiB, 1) for sample in samples[warmup:]]
    print(f"RSS {base / probes.MiB:.0f} MiB after warm-up, then {growth} MiB")
    assert max(growth) < MEMORY_BOUND / probes.MiB, f"RSS kept growing after warm-up: +{growth} MiB per lap"


@contextlib.contextmanager
def clean_log() -> Iterator[None]:
    """Fails unless nothing was logged at ERROR or with a traceback (by the services, uvicorn
    included: its loggers do not propagate, so the handler goes on them too)."""
    with probes.service_log(threads=False) as handler:  # run_threads reports its threads' failures
        yield
    assert not handler.bad, "logged errors or tracebacks:\n" + "\n\n".join(handler.bad)


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Run each target on its own thread; re-raise the first failure here."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # surfaced in the test's thread below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # each ends by itself: its requests have time limits
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------- the edge gateway

CAMERAS, LAPS, WARMUP = 8, 8, 3


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    pytest.importorskip("av")
    return probes.load_clip(tmp_path_factory.mktemp("clip"))


def gate_junk(url: str, clip: SimpleNamespace, lap: int) -> Callable[[], None]:
    """A client that sends the cameras' streams requests the gateway must refuse whole (so the
    cameras' counters stay exact), plus valid sessions on streams of its own."""
    from coinfer.sdk import wire
    from coinfer.sdk.gate.protocol import encode_packets, frames_path

    def run() -> None:
        for n in range(24):
            camera = f"cam-{n % CAMERAS}"
            path = frames_path(camera)
            packets = [(p.info, p.data, True) for p in clip.packets[6:8]]
            chunk = encode_packets(camera, f"lap{lap}", 1, packets)
            other = encode_packets("elsewhere", f"lap{lap}", 1, packets)
            message = wire.decode(chunk)
            bad_rows = wire.encode(wire.Message(message.type, {**message.header, "packets": [[0] * 9]},
                                                dict(message.arrays)))
            kind = n % 8
            if kind == 0:
                assert call(url, "POST", path, chunk, token="wrong")[0] == 401
            elif kind == 1:
                assert call(url, "POST", path, chunk[:-5])[0] == 400
            elif kind == 2:
                assert call(url, "POST", path, other)[0] == 400
            elif kind == 3:
                assert call(url, "POST", path, bad_rows)[0] == 400
            elif kind == 4:
                assert raw_post(url, path, b"", declared=1 << 40) in (413, None)
            elif kind == 5:
                assert raw_post(url, path, chunk[: len(chunk) // 2], declared=len(chunk)) in (400, None)
            elif kind == 6:
                assert call(url, "POST", path, b"\x00" * 300 + chunk)[0] == 400
            else:  # a whole valid session on a stream of its own
                junk = f"junk-{n // 8}"
                for body in probes.clip_bodies(clip, junk, f"lap{lap}-{n}")[:3]:
                    assert call(url, "POST", frames_path(junk), body)[0] == 200

    return run


def test_gateway_with_eight_cameras_and_junk_stays_exact_and_flat(clip: SimpleNamespace) -> None:
    from coinfer.edge.gateway import EdgeGateway, GatewayOptions, GatewayServer
    from coinfer.sdk.gate.protocol import frames_path

    options = GatewayOptions(max_request_bytes=1 << 20, max_streams=16, plugin=probes.bright_plugin(),
                             redundancy={"bright": "iou"})
    lone = EdgeGateway(options)
    reference = probes.summarize([lone.ingest("cam", body) for body in probes.clip_bodies(clip, "cam", "s")])
    assert reference["accepted"] == reference["frames"] == probes.CLIP_FRAMES \
        and reference["decode_errors"] == 0
    assert len(reference["results"]) == probes.CLIP_FRAMES and not reference["resync"]
    laps: dict[str, list[dict[str, Any]]] = {f"cam-{k}": [] for k in range(CAMERAS)}

    def camera(stream: str, session: str) -> Callable[[], None]:
        def run() -> None:
            replies = []
            for body in probes.clip_bodies(clip, stream, session):
                status, answer = call(server.url, "POST", frames_path(stream), body)
                assert status == 200, (stream, status, answer)
                replies.append(json.loads(answer))
            laps[stream].append(probes.summarize(replies))

        return run

    samples = []
    with clean_log(), GatewayServer(options, TOKEN) as server:
        for lap in range(LAPS):
            run_threads([camera(stream, f"lap{lap}") for stream in laps] + [gate_junk(server.url, clip, lap)])
            samples.append(probes.rss())
        statuses = {stream: server.gateway.status(stream) for stream in laps}
        assert len(server.gateway.streams()) == CAMERAS + 3  # and the junk client's own three
    for stream, status in statuses.items():
        assert laps[stream] == [reference] * LAPS, stream  # every lap decided as the lone gateway did
        packets = LAPS * probes.CLIP_FRAMES
        assert status["packets_received"] == status["packets_decoded"] == status["frames_decoded"] == packets
        assert status["frames_inferred"] == packets and status["requests"] == LAPS * len(probes.clip_bodies(
            clip, stream, "s"))
        assert status["packets_dropped"] == status["duplicate_chunks"] == status["resyncs_requested"] == 0
        assert status["decode_errors"] == status["corrupt_frames"] == 0 and status["sessions"] == LAPS
    assert_flat(samples, WARMUP)


# ----------------------------------------------------------------------------- the STIP model server

OWNERS, STIP_ROUNDS, NEW_TOKENS, VOCAB, HIDDEN = 4, 6, 12, 97, 32


@pytest.fixture(scope="module")
def stip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A tiny random GPT-2 published for STIP, served."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")

    from coinfer.cloud.stip.publish import Protection, load_cloud_model, publish_model
    from coinfer.cloud.stip.server import BackgroundServer, ServerOptions, StipModelServer

    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4,
                                             n_positions=64, bos_token_id=None, eos_token_id=None))
    with torch.no_grad():  # sharper logits than the initialisation's, so greedy decoding has no ties
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    instance = publish_model(model.eval(), tmp_path_factory.mktemp("stip"), Protection("private"))
    cloud, info = load_cloud_model(instance.server)
    server = StipModelServer(cloud, info, ServerOptions(max_request_bytes=1 << 20, max_sessions=OWNERS))
    with BackgroundServer(server, TOKEN) as running:
        yield SimpleNamespace(url=running.url, server=server, user=instance.user)


def test_stip_concurrent_sessions_match_sequential_greedy_and_stay_flat(stip: SimpleNamespace) -> None:
    from coinfer.device.stip import STIPClient

    rng = np.random.default_rng(4)
    prompts = [[int(t) for t in rng.integers(0, VOCAB, rng.integers(1, 8))] for _ in range(2 * OWNERS)]
    sequential_client = STIPClient.create_from_bundle(stip.user, stip.url, TOKEN)
    sequential = [sequential_client.generate(prompt, NEW_TOKENS) for prompt in prompts]
    assert all(len(tokens) == NEW_TOKENS for tokens in sequential)
    found: dict[int, list[int]] = {}

    def owner(k: int) -> Callable[[], None]:
        def run() -> None:
            client = STIPClient.create_from_bundle(stip.user, stip.url, TOKEN)
            for n in (2 * k, 2 * k + 1):
                found[n] = client.generate(prompts[n], NEW_TOKENS)

        return run

    samples = []
    with clean_log():
        for _ in range(STIP_ROUNDS):
            found.clear()
            run_threads([owner(k) for k in range(OWNERS)])  # as many sessions at once as the server allows
            assert [found[n] for n in range(len(prompts))] == sequential
            assert len(stip.server._sessions) == 0  # every generation closed its session
            samples.append(probes.rss())
    assert_flat(samples, WARMUP)


# ----------------------------------------------------------------------------- the MLink aggregation service

FED_ROUNDS = 10
HONEST = {f"edge-{k}": f"edge-{k}-token" for k in range(3)}
ATTACKER, ATTACKER_TOKEN = "edge-3", "edge-3-token"  # registered: its stolen (or its own) credential


@pytest.fixture(scope="module")
def mlink() -> Iterator[SimpleNamespace]:
    pytest.importorskip("torch")
    from coinfer.cloud.mlink.server import ClientRegistry, LinkAggregator, create_app
    from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec
    from coinfer.sdk.service import ThreadedServer

    graph = LinkGraph.create({"counts": OutputSpec.classes(4), "speech": OutputSpec.presence(),
                              "boxes": OutputSpec.boxes()}, options=LinkOptions(epochs=1))
    registry = ClientRegistry.with_tokens({**HONEST, ATTACKER: ATTACKER_TOKEN})
    aggregator = LinkAggregator(graph, len(HONEST) + 1, clients=registry)  # the service's default rules
    with ThreadedServer(create_app(aggregator, TOKEN), name="the MLink aggregator") as running:
        yield SimpleNamespace(url=running.url, aggregator=aggregator)


def attacker(url: str, aggregator: Any, round_: int, rng: np.random.Generator) -> Callable[[], None]:
    """Junk, oversized, non-finite, misaddressed and stale or early updates, then its one
    accepted update for the round: huge finite deltas under the largest sample count."""
    from coinfer.sdk import wire
    from coinfer.sdk.mlink import fedavg

    shapes, graph = aggregator.shapes, aggregator.graph_id

    def update(value: float, client: str = ATTACKER, round_: int = round_) -> bytes:
        delta = {name: np.full(shape, value, np.float32) for name, shape in shapes.items()}
        return fedavg.encode_update(delta, round=round_, client=client, samples=fedavg.MAX_SAMPLES,
                                    graph=graph)

    def send(body: bytes, token: str = ATTACKER_TOKEN) -> int:
        return call(url, "POST", fedavg.UPDATES_PATH, body, token=token)[0]

    def run() -> None:
        huge = update(1e30)
        name = next(iter(shapes))
        message = wire.decode(huge)
        wrong_shape = wire.encode(wire.Message(message.type, message.header, {
            **message.arrays, name: np.zeros(3, np.float32)}))
        assert send(rng.bytes(500)) == 400
        assert send(huge[: len(huge) // 2]) == 400
        assert send(wrong_shape) == 400
        assert send(update(np.nan)) == 400 and send(update(np.inf)) == 400
        assert send(huge + b"\0" * (aggregator.max_update_bytes + 1)) == 413
        assert raw_post(url, fedavg.UPDATES_PATH, b"", declared=1 << 40, token=ATTACKER_TOKEN) in (413, None)
        assert raw_post(url, fedavg.UPDATES_PATH, huge[:100], declared=len(huge),
                        token=ATTACKER_TOKEN) in (400, None)
        assert send(update(1e30, client="edge-0")) == 403  # a name its token does not speak for
        assert send(update(1e30, client="sybil")) == 403  # a name nobody registered
        assert send(huge, token=TOKEN) == 403  # the service token does not speak for a client with its own
        assert send(huge, token="guess") == 401
        assert send(update(1e30, round_=round_ + 1)) == 409
        if round_:
            assert send(update(1e30, round_=round_ - 1)) == 409
        too_many = {**message.header, "samples": fedavg.MAX_SAMPLES + 1}
        assert send(wire.encode(wire.Message(message.type, too_many, message.arrays))) == 400
        assert send(huge) == 200  # accepted, and bounded by the rules

    return run


def honest(url: str, aggregator: Any, client: str, delta: dict[str, np.ndarray], round_: int,
           replies: dict[str, dict]) -> Callable[[], None]:
    """An honest edge server sending its update for the round; its reply lands in ``replies``."""
    from coinfer.sdk.mlink import fedavg

    def run() -> None:
        frame = fedavg.encode_update(delta, round=round_, client=client, samples=100,
                                     graph=aggregator.graph_id)
        status, answer = call(url, "POST", fedavg.UPDATES_PATH, frame, token=HONEST[client])
        assert status == 200, (client, answer)
        replies[client] = json.loads(answer)

    return run


def test_mlink_rounds_complete_near_the_honest_mean_despite_a_hostile_client(mlink: SimpleNamespace) -> None:
    from coinfer.sdk.mlink import fedavg, robust

    aggregator = mlink.aggregator
    rng = np.random.default_rng(9)
    samples = []
    with clean_log():
        for round_ in range(FED_ROUNDS):
            start, theta = aggregator.global_weights()
            assert start == round_
            base = {name: 0.01 * rng.standard_normal(value.shape) for name, value in theta.items()}
            deltas = {client: {name: (value + 0.001 * rng.standard_normal(value.shape)).astype(np.float32)
                               for name, value in base.items()} for client in HONEST}
            replies: dict[str, dict] = {}
            clients = [honest(mlink.url, aggregator, client, deltas[client], round_, replies)
                       for client in HONEST]
            run_threads([*clients, attacker(mlink.url, aggregator, round_, np.random.default_rng(round_))])
            now, new = aggregator.global_weights()
            assert now == round_ + 1  # the round closed with all four updates
            assert not any(reply["rejected"] for reply in replies.values())
            mean = {name: np.mean([delta[name] for delta in deltas.values()], axis=0) for name in theta}
            for name in theta:
                step = new[name].astype(np.float64) - theta[name]
                stacked = np.stack([delta[name] for delta in deltas.values()])
                assert np.isfinite(new[name]).all(), name
                assert (stacked.min(0) - 1e-6 <= step).all() and (step <= stacked.max(0) + 1e-6).all(), name
            off = robust.delta_norm({name: new[name].astype(np.float64) - theta[name] - mean[name]
                                     for name in theta})
            assert off < 0.5 * robust.delta_norm(mean), (round_, off, robust.delta_norm(mean))
            samples.append(probes.rss())
        assert call(mlink.url, "GET", fedavg.STATUS_PATH)[0] == 200  # the last request's log has arrived
    status = aggregator.status()
    assert status["round"] == FED_ROUNDS and status["rounds_rejected"] == 0 and status["staged"] == []
    assert status["updates_accepted"] == 4 * FED_ROUNDS and status["updates_clipped"] >= FED_ROUNDS
    assert_flat(samples, WARMUP)
