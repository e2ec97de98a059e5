"""STIP's three parties as separate roles: publish, serve over loopback HTTP, and a device client."""

import http.client
import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest

from coinfer.cloud.stip.publish import Protection, load_cloud_model, publish
from coinfer.cloud.stip.server import BackgroundServer, ServerOptions, StipModelServer
from coinfer.device.stip import STIPClient, StipClientError
from coinfer.sdk import wire
from coinfer.sdk.stip import DeveloperKeys, UserKeys, protocol

VOCAB = 211
TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    return model.eval(), path


@pytest.fixture(scope="module")
def published(plain_model, tmp_path_factory):
    _, path = plain_model
    out = tmp_path_factory.mktemp("published") / "out"
    (instance,) = publish(path, out, protection=Protection("private"))
    return instance


@pytest.fixture(scope="module")
def server_url(published):
    model, info = load_cloud_model(published.server)
    server = StipModelServer(model, info, ServerOptions(max_request_bytes=1 << 20, max_sessions=4))
    with BackgroundServer(server, TOKEN) as running:
        yield running.url


@pytest.fixture
def client(published, server_url):
    return STIPClient.create_from_bundle(published.user, server_url, TOKEN)


def test_publish_splits_what_each_party_gets(published, tmp_path, plain_model):
    from safetensors.numpy import load_file

    weights = load_file(str(published.server / "model.safetensors"))
    assert not any("embed_tokens" in name for name in weights)
    assert "lm_head.weight" in weights
    assert not (published.server / "user.keys.npz").exists()
    assert os.stat(published.user / "user.keys.npz").st_mode & 0o777 == 0o600
    assert os.stat(published.developer_keys).st_mode & 0o777 == 0o600
    assert published.developer_keys.parent not in (published.server, published.user)
    keys = DeveloperKeys.load(published.developer_keys)
    user = UserKeys.load(published.user / "user.keys.npz")
    assert np.array_equal(keys.user.hidden, user.hidden)
    # Independently keyed instances.
    first, second = publish(plain_model[1], tmp_path / "multi", protection=Protection("private"), instances=2)
    a, b = UserKeys.load(first.user / "user.keys.npz"), UserKeys.load(second.user / "user.keys.npz")
    assert not np.array_equal(a.hidden, b.hidden)


def test_forward_over_http_matches_the_plain_model(client, plain_model):
    import torch

    model, _ = plain_model
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, 64))
    recovered = client.forward(ids)
    with torch.no_grad():
        plain = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    rel_err = np.max(np.abs(recovered - plain)) / np.max(np.abs(plain))
    assert rel_err <= 1e-4
    assert np.mean(recovered.argmax(-1) == plain.argmax(-1)) == 1.0
    assert client.bytes_sent > 4 * 64 * 64 * 4 and client.bytes_received > 4 * 64 * VOCAB * 4


def test_kv_cache_generation_reproduces_plain_greedy_decoding(client, plain_model):
    import torch

    model, _ = plain_model
    for prompt in ([5, 17, 42], [100, 3, 7, 9, 150], [1]):
        tokens = list(prompt)
        with torch.no_grad():
            for _ in range(24):
                logits = model(input_ids=torch.tensor([tokens])).logits[0, -1].numpy()
                tokens.append(int(np.argmax(logits)))
        sent_before = client.bytes_sent
        generated = client.generate(prompt, max_new_tokens=24)
        assert generated == tokens[len(prompt):]
        # Each decoding step sends one permuted row, not the whole sequence.
        per_step = (client.bytes_sent - sent_before) / 24
        assert per_step < 64 * 4 * 2 + 200


def post(url, body, token=TOKEN, content_type=protocol.CONTENT_TYPE):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def frame(embeds):
    return wire.encode(wire.Message(wire.MessageType.REQUEST, {}, {protocol.INPUTS: embeds}))


def test_server_refuses_bad_requests_clearly(server_url):
    url = server_url + protocol.FORWARD_PATH
    good = frame(np.zeros((1, 4, 64), np.float32))
    assert post(url, good)[0] == 200
    assert post(url, good, token=None) == (401, b'{"detail":"missing or wrong bearer token"}')
    assert post(url, good, token="wrong")[0] == 401
    status, body = post(url, frame(np.zeros((1, 4, 63), np.float32)))
    assert status == 400 and b"must have shape (batch, tokens, 64)" in body
    status, body = post(url, frame(np.zeros((1, 4, 64), np.float64)))
    assert status == 400 and b"must be float32" in body
    status, body = post(url, frame(np.full((1, 4, 64), np.nan, np.float32)))
    assert status == 400 and b"NaN" in body
    status, body = post(url, frame(np.zeros((1, 300, 64), np.float32)))
    assert status == 400 and b"256 positions" in body
    status, body = post(url, b"\x00" * 100)
    assert status == 400 and b"malformed frame" in body
    # An oversized declared body is refused from its headers, before any of it is read.
    connection = http.client.HTTPConnection(server_url.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", protocol.FORWARD_PATH)
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(15 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and b"byte limit" in response.read()
    connection.close()
    status, body = post(server_url + protocol.SESSIONS_PATH + "/nope/step", good)
    assert status == 404
    # A STIP server never takes token ids in clear (only a benchmark's plain baseline does).
    opened = urllib.request.Request(server_url + protocol.SESSIONS_PATH, method="POST",
                                    headers={"Authorization": f"Bearer {TOKEN}"})
    session = json.loads(urllib.request.urlopen(opened, timeout=30).read())["session"]
    ids = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, {protocol.TOKEN_IDS: np.array([[1, 2]])}))
    status, body = post(f"{server_url}{protocol.SESSIONS_PATH}/{session}/step", ids)
    assert status == 400 and b"not token ids" in body


def test_client_reports_server_errors(published, server_url):
    wrong = STIPClient.create_from_bundle(published.user, server_url, "not-the-token")
    with pytest.raises(StipClientError, match="HTTP 401"):
        wrong.forward(np.array([[1, 2, 3]]))
    offline = STIPClient.create_from_bundle(published.user, "http://127.0.0.1:9", TOKEN, timeout=2)
    with pytest.raises(StipClientError, match="cannot reach the STIP server"):
        offline.forward(np.array([[1, 2, 3]]))
    client = STIPClient.create_from_bundle(published.user, server_url, TOKEN)
    with pytest.raises(StipClientError, match="token ids must be integers"):
        client.embed(np.array([[VOCAB]]))
