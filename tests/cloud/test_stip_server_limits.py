"""What one client can make the STIP server hold, compute or log, and what it tells anyone
without the token."""

from __future__ import annotations

import logging
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from coinfer.cloud.stip.server import BackgroundServer, RequestError, ServerOptions, StipModelServer
from coinfer.sdk import wire
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.stip import protocol

TOKEN = "stip-limits-token"
HIDDEN = 16


def gpt2(vocab: int, positions: int):
    """A tiny GPT-2 built from its config, and the server's info about it."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=positions)
    info = {"hidden_size": HIDDEN, "output_kind": "logits", "output_size": vocab, "max_positions": positions}
    return tf.GPT2LMHeadModel(config).eval(), info


@pytest.fixture(scope="module")
def server_url():
    model, info = gpt2(101, 64)
    with BackgroundServer(StipModelServer(model, info, ServerOptions(max_request_bytes=128 << 20)),
                          TOKEN) as running:
        yield running.url


def get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": protocol.CONTENT_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_api_description_needs_the_token(server_url):
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert get(server_url + path, None) == (401, b'{"detail":"missing or wrong bearer token"}'), path
        assert get(server_url + path, "wrong")[0] == 401, path
        status, page = get(server_url + path, TOKEN)
        assert status == 200 and page, path
    assert protocol.FORWARD_PATH.encode() in get(server_url + "/openapi.json", TOKEN)[1]


def test_a_forward_whose_output_is_too_large_is_refused_before_the_model_runs():
    model, info = gpt2(50257, 1024)

    def never(*args, **kwargs):
        raise AssertionError("the model ran")

    model.forward = never
    server = StipModelServer(model, info)
    # 6 x 1024 rows are a 393 KB request, but their logits over GPT-2's vocabulary 1.2 GB.
    with pytest.raises(RequestError, match=r"6 x 1024 positions x 50257 outputs are 1235116032 bytes of "
                                           r"float32, over the 1073741824-byte response limit") as refused:
        server.forward(np.zeros((6, 1024, HIDDEN), np.float32))
    assert refused.value.status == 413
    small = StipModelServer(model, info, ServerOptions(max_response_bytes=1 << 20))
    with pytest.raises(RequestError, match="over the 1048576-byte response limit"):
        small.forward(np.zeros((1, 8, HIDDEN), np.float32))


class CountingLock:
    """A lock that counts the threads that asked for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked = 0
        self.changed = threading.Condition()

    def __enter__(self) -> None:
        with self.changed:
            self.asked += 1
            self.changed.notify_all()
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class Paused:
    """A model whose calls wait until the test lets them go on."""

    def __init__(self, model) -> None:
        self.model, self.running, self.go = model, threading.Event(), threading.Event()

    def __call__(self, **inputs):
        self.running.set()
        assert self.go.wait(30)
        return self.model(**inputs)


def test_concurrent_steps_of_one_session_cannot_pass_the_position_limit_together():
    model, info = gpt2(101, 64)
    paused = Paused(model)
    server = StipModelServer(paused, info)
    server._model_lock = lock = CountingLock()
    session = server.open_session()
    rows = np.random.default_rng(0).standard_normal((1, 40, HIDDEN)).astype(np.float32)
    outcomes: dict[str, object] = {}

    def step(name: str) -> None:
        try:
            outcomes[name] = server.step(session, rows).shape
        except Exception as error:  # the outcome is what the test compares
            outcomes[name] = error

    first = threading.Thread(target=step, args=("first",))
    first.start()
    assert paused.running.wait(30)
    # The second step of 40 rows arrives while the first runs: the two would hold 80 of 64 positions.
    second = threading.Thread(target=step, args=("second",))
    second.start()
    with lock.changed:
        assert lock.changed.wait_for(lambda: lock.asked == 2, timeout=30)
    paused.go.set()
    first.join(30)
    second.join(30)
    assert outcomes["first"] == (1, 101)
    refused = outcomes["second"]
    assert isinstance(refused, RequestError) and refused.status == 400, refused
    assert "exceed the model's 64 positions" in str(refused)


def test_a_client_that_hangs_up_mid_upload_costs_one_line_in_the_log(server_url):
    records: list[logging.LogRecord] = []
    arrived = threading.Event()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            arrived.set()

    keep = Keep()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(keep)
    try:
        host, port = server_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(f"POST {protocol.FORWARD_PATH} HTTP/1.1\r\nHost: x\r\n"
                               f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n".encode()
                               + b"0123456789")
        assert arrived.wait(30)
    finally:
        logger.removeHandler(keep)
    assert [record.exc_info for record in records] == [None]
    assert "hung up before sending the whole request" in records[0].getMessage()


def test_options_that_would_refuse_every_request_are_refused():
    for bad in ({"max_request_bytes": -1}, {"max_request_bytes": 0}, {"max_batch": 0},
                {"max_response_bytes": (1 << 30) + 1}):
        with pytest.raises(InvalidArgumentError):
            ServerOptions(**bad)


def test_the_frame_limit_follows_the_request_limit(server_url):
    # The server takes requests up to 128 MiB: a 68 MB frame is read and judged on its shape,
    # not refused by the 64 MiB default of the wire format.
    embeds = np.zeros((65, 16400, HIDDEN), np.float32)
    body = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, {protocol.INPUTS: embeds}),
                       wire.WireLimits(max_payload_bytes=128 << 20))
    assert len(body) > 64 << 20
    status, answer = post(server_url + protocol.FORWARD_PATH, body)
    assert status == 400 and b"batch must be 1..64" in answer, answer
