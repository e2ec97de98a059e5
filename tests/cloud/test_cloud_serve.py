"""`coinfer cloud serve --config cloud.toml`: the STIP model server and the MLink aggregator in one
process from the sample configuration, as an operator runs it; its refusals, metrics and shutdown;
the same app on Ray Serve; configuration errors named by their line."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coinfer.sdk.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "cloud"
TOKEN = "cloud-serve-test-token"
VOCAB = 101
#: The MLink clients of the deployment: two speak with the service token, one with its own.
EDGE_TOKEN = "edge-3-own-token"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> tuple[Path, object, object]:
    """The sample cloud.toml in a folder holding what it names: a STIP bundle published from a
    small random LLaMA (stip/server, stip/user), untrained links and their client list.
    Returns (folder, the plain model, the published instance)."""
    import torch
    import transformers as tf

    from coinfer.cloud.mlink.server import token_digest
    from coinfer.cloud.stip.publish import Protection, publish
    from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec

    folder = tmp_path_factory.mktemp("deployment")
    shutil.copyfile(SAMPLES / "cloud.toml", folder / "cloud.toml")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=64)).eval()
    model.save_pretrained(folder / "model")
    (instance,) = publish(folder / "model", folder / "stip", protection=Protection("private"))
    assert instance.server == folder / "stip" / "server"
    (folder / "mlink").mkdir()
    specs = {"people": OutputSpec.classes(4), "speech": OutputSpec.presence()}
    LinkGraph.create(specs, options=LinkOptions(epochs=2)).save(folder / "mlink" / "links")
    (folder / "mlink" / "clients.txt").write_text(f"edge-1\nedge-2\nedge-3 {token_digest(EDGE_TOKEN)}\n")
    return folder, model, instance


def world(count: int, seed: int) -> dict[str, np.ndarray]:
    """Aligned outputs of two made-up models on one edge server's cameras."""
    rng = np.random.default_rng(seed)
    people = rng.integers(0, 4, count)
    speech = np.clip(0.1 + 0.8 * (people > 0) + rng.normal(0, 0.05, count), 0, 1)
    return {"people": np.eye(4, dtype=np.float32)[people], "speech": speech.astype(np.float32)[:, None]}


def call(url: str, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN
         ) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are answers, not exceptions."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def declared_oversize(url: str, path: str, size: int) -> tuple[int, bytes]:
    """POST declaring a ``size``-byte body and send none of it: a limit refuses from the header."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Authorization", f"Bearer {TOKEN}")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = call(url, "GET", "/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def cloud_process(argv: list[str], log: Path, port: int, env: dict[str, str] | None = None
                  ) -> Iterator[subprocess.Popen]:
    """``coinfer cloud serve ARGV`` as its own process, yielded once ``/healthz`` answers on ``port``;
    killed afterwards if the test left it running. The wait ends when it answers or exits; the
    deadline only guards against a hang."""
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "coinfer.sdk.cli", "cloud", "serve", *argv],
                                   env=env or dict(os.environ), stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as response:
                    if response.status == 200:
                        break
            except (OSError, http.client.HTTPException):
                pass
            if process.poll() is not None:
                raise AssertionError(log.read_text())
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def stop(process: subprocess.Popen, log: Path) -> None:
    """SIGTERM, then the exit status must be 0 and the log free of tracebacks."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def check_stip_exact(url: str, model, instance) -> None:
    """A device-side STIP client through the cloud app gets the plain model's answers."""
    import torch

    from coinfer.device.stip import STIPClient

    client = STIPClient.create_from_bundle(instance.user, url, TOKEN)
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(2, 12))
    with torch.no_grad():
        plain = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    recovered = client.forward(ids)
    assert np.max(np.abs(recovered - plain)) / np.max(np.abs(plain)) <= 1e-4
    assert np.array_equal(recovered.argmax(-1), plain.argmax(-1))
    tokens = [5, 6, 7]
    with torch.no_grad():
        for _ in range(6):
            tokens.append(int(model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    assert client.generate([5, 6, 7], 6) == tokens[3:]


@pytest.mark.slow
def test_one_process_serves_stip_and_mlink_refuses_clearly_counts_and_stops_on_sigterm(deployment, tmp_path):
    from coinfer.edge.mlink.federated_client import FederatedClient, FederatedClientError
    from coinfer.sdk import wire
    from coinfer.sdk.mlink.fedavg import STATUS_PATH, UPDATES_PATH
    from coinfer.sdk.stip import protocol

    folder, model, instance = deployment
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()  # --port and --token-file override the sample's port 8200 and $COINFER_TOKEN
    argv = ["--config", str(folder / "cloud.toml"), "--port", str(port),
            "--token-file", str(tmp_path / "token")]
    env = {key: value for key, value in os.environ.items() if key != "COINFER_TOKEN"}
    log = tmp_path / "cloud.log"
    url = f"http://127.0.0.1:{port}"
    with cloud_process(argv, log, port, env) as process:
        health = json.loads(call(url, "GET", "/healthz", token=None)[1])
        assert health == {"ok": True, "services": ["stip", "mlink"]}
        before = scrape(url)
        assert value(before, "coinfer_mlink_round") == 0 and value(before, "coinfer_stip_sessions") == 0
        assert value(before, "coinfer_stip_sessions_max") == 64

        check_stip_exact(url, model, instance)
        session = json.loads(call(url, "POST", protocol.SESSIONS_PATH)[1])["session"]
        assert value(scrape(url), "coinfer_stip_sessions") == 1
        assert call(url, "DELETE", f"{protocol.SESSIONS_PATH}/{session}")[0] == 200

        # An MLink round through the same process: edge-1 with the service token, edge-3 with its own.
        first = FederatedClient(url, TOKEN, "edge-1")
        graph = first.fetch_graph()
        assert first.train_round(graph, world(80, seed=1)).staged == 1
        with pytest.raises(FederatedClientError, match="does not speak for client 'edge-3'") as refused:
            FederatedClient(url, TOKEN, "edge-3").train_round(graph, world(80, seed=2))
        assert refused.value.status == 403
        third = FederatedClient(url, EDGE_TOKEN, "edge-3")
        result = third.train_round(third.fetch_graph(), world(80, seed=2))
        assert result.closed and first.status()["round"] == 1
        assert (folder / "mlink" / "links-rounds" / "round-000001").is_dir()
        # A client's own token reaches the MLink routes only.
        assert call(url, "GET", protocol.INFO_PATH, token=EDGE_TOKEN)[0] == 401
        assert call(url, "GET", "/metrics", token=EDGE_TOKEN)[0] == 401

        # Every refusal is one clear answer, and the process serves on after each.
        refusals = {"token": 0, "too_large": 0, "malformed": 0, "forbidden": 1}
        for path, method in ((protocol.INFO_PATH, "GET"), (protocol.FORWARD_PATH, "POST"),
                             (STATUS_PATH, "GET"), ("/metrics", "GET")):
            for token in (None, "wrong-token"):
                status, body = call(url, method, path, b"" if method == "POST" else None, token=token)
                assert (status, json.loads(body)) == (401, {"detail": "missing or wrong bearer token"}), path
                refusals["token"] += 1
        refusals["token"] += 2  # the edge client's token on the STIP info and /metrics above
        for path in (protocol.FORWARD_PATH, UPDATES_PATH):
            status, body = declared_oversize(url, path, (64 << 20) + 1)
            assert status == 413 and "byte limit" in json.loads(body)["detail"], body
            refusals["too_large"] += 1
        status, body = call(url, "POST", protocol.FORWARD_PATH, b"\x00" * 64)
        assert status == 400 and json.loads(body)["detail"].startswith("malformed frame"), body
        status, body = call(url, "POST", UPDATES_PATH, b"\x00" * 64)
        assert status == 400 and json.loads(body)["detail"].startswith("malformed update"), body
        wrong_width = wire.encode(wire.Message(wire.MessageType.REQUEST, {},
                                               {protocol.INPUTS: np.zeros((1, 3, 31), np.float32)}))
        status, body = call(url, "POST", protocol.FORWARD_PATH, wrong_width)
        assert status == 400 and "must have shape (batch, tokens, 32)" in json.loads(body)["detail"]
        refusals["malformed"] += 3
        check_stip_exact(url, model, instance)

        after = scrape(url)
        for reason, count in refusals.items():
            assert value(after, "coinfer_requests_refused_total", reason=reason) == count, reason
        assert value(after, "coinfer_stip_requests_total", code="200") > value(
            before, "coinfer_stip_requests_total", code="200") >= 0
        assert value(after, "coinfer_stip_requests_total", code="413") == 1
        assert value(after, "coinfer_mlink_requests_total", code="403") == 1
        assert value(after, "coinfer_stip_forward_seconds_count", call="forward") == 2
        assert value(after, "coinfer_stip_forward_seconds_count", call="step") == 2 * 6
        assert value(after, "coinfer_stip_forward_seconds_sum", call="forward") > 0
        assert value(after, "coinfer_mlink_round") == 1 and value(after, "coinfer_mlink_staged") == 0
        assert value(after, "coinfer_mlink_updates_total", outcome="accepted") == 2
        assert value(after, "coinfer_mlink_updates_total", outcome="refused") == 2  # not edge-3's, junk
        assert value(after, "coinfer_mlink_bytes_total", direction="received") > 0
        stop(process, log)


def test_sample_configuration_parses_and_the_command_line_overrides_it(deployment):
    from coinfer.cloud.daemon.config import read_config

    folder, _, _ = deployment
    config = read_config(folder / "cloud.toml")
    assert config.services == ("stip", "mlink")
    assert (config.server.host, config.server.port, config.server.token_file) == ("127.0.0.1", 8200, None)
    assert config.server.max_request_bytes == 64 << 20 and config.server.limits.max_header_bytes == 64 << 10
    assert config.stip.bundle == folder / "stip" / "server" and config.stip.max_sessions == 64
    assert config.mlink.min_clients == 2 and config.mlink.state_dir == folder / "mlink" / "links-rounds"
    assert config.mlink.rules.aggregate == "median" and config.mlink.rules.clip_factor == 2.0
    changed = config.with_overrides(host="0.0.0.0", port=9001, token_file=Path("t"))
    server = changed.server
    assert (server.host, server.port, server.token_file) == ("0.0.0.0", 9001, Path("t"))
    assert changed.server.limits == config.server.limits and changed.stip == config.stip


GOOD_STIP = '[stip]\nbundle = "stip/server"\n'
GOOD_MLINK = '[mlink]\nlinks = "mlink/links"\nclients = "mlink/clients.txt"\nmin_clients = 2\n'


BAD_CONFIGS = [
    ("port out of range", "[server]\nport = 70000\n" + GOOD_STIP,
     "cloud.toml:2: [server] port must be in [0, 65535], got 70000"),
    ("host not a string", "[server]\nhost = 8\n" + GOOD_STIP,
     "cloud.toml:2: [server] host must be a non-empty string, got 8"),
    ("zero request limit", "[server]\n\nmax_request_mib = 0\n" + GOOD_STIP,
     "cloud.toml:3: [server] max_request_mib must be in [1, 4096]"),
    ("unknown server key", "[server]\nport = 1\nbogus = 2\n" + GOOD_STIP,
     "cloud.toml:3: [server] bogus is not a known key"),
    ("sessions not a number", GOOD_STIP + "max_sessions = 'many'\n",
     "cloud.toml:3: [stip] max_sessions must be an integer"),
    ("missing bundle", '[stip]\nbundle = "nowhere"\n', "cloud.toml:2: [stip] bundle is "),
    ("no bundle key", "[stip]\nmax_batch = 4\n", "cloud.toml:1: [stip]: missing required key 'bundle'"),
    ("unknown aggregate", GOOD_MLINK + "aggregate = 'krum'\n",
     "cloud.toml:5: [mlink] aggregate must be one of median, trimmed-mean"),
    ("trim of a half", GOOD_MLINK + "trim = 0.5\n",
     "cloud.toml:5: [mlink] trim must be in (0, 0.5), got 0.5"),
    ("clip factor word", GOOD_MLINK + "clip_factor = 'none'\n",
     "cloud.toml:5: [mlink] clip_factor must be one of off"),
    ("growth of 1", GOOD_MLINK + "max_growth = 1\n", "cloud.toml:5: [mlink] max_growth must be above 1"),
    ("client list a folder", '[mlink]\nlinks = "mlink/links"\nclients = "mlink/links"\nmin_clients = 2\n',
     "cloud.toml:3: [mlink] clients is "),
    ("evolve table", GOOD_STIP + "[evolve]\nrounds = 3\n", "cloud.toml:3: [evolve] has no cloud half"),
    ("unknown table", GOOD_STIP + "[gate]\n", "cloud.toml:3: unknown table or key 'gate'"),
    ("no service", "[server]\nport = 8200\n", "configures no service"),
    ("not TOML", "[server\nport = 8200\n", "cloud.toml:1: not valid TOML"),
]


@pytest.mark.parametrize(("text", "says"),
                         [pytest.param(text, says, id=name) for name, text, says in BAD_CONFIGS])
def test_a_bad_configuration_is_one_line_naming_its_line(deployment, text, says, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("bound a port"))
    folder, _, _ = deployment
    (folder / "bad").mkdir(exist_ok=True)
    config = folder / "bad" / "cloud.toml"
    config.write_text(text)
    for name in ("stip", "mlink"):
        if not (folder / "bad" / name).exists():
            (folder / "bad" / name).symlink_to(folder / name)
    assert main(["cloud", "serve", "--config", str(config)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("coinfer cloud serve: error: "), error
    assert says in error, error


def test_a_file_that_cannot_be_loaded_is_named_by_the_line_of_its_key(deployment, tmp_path, capsys,
                                                                      monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("bound a port"))
    monkeypatch.setenv("COINFER_TOKEN", TOKEN)
    folder, _, _ = deployment
    (tmp_path / "empty").mkdir()
    (tmp_path / "one.txt").write_text("edge-1\n")
    links, empty, one = folder / "mlink" / "links", tmp_path / "empty", tmp_path / "one.txt"
    cases = [
        (f'[stip]\nbundle = "{empty}"\n', "cloud.toml:2: [stip] bundle cannot be loaded: "),
        (f'[mlink]\nlinks = "{links}"\nclients = "{one}"\nmin_clients = 2\n',
         "cloud.toml:4: [mlink] min_clients is 2, but only 1 clients are listed"),
        (f'[mlink]\nlinks = "{empty}"\nclients = "{one}"\nmin_clients = 1\n',
         "cloud.toml:2: [mlink] links cannot be loaded: "),
        (f'[server]\nmax_request_mib = 1\n[mlink]\nlinks = "{links}"\nclients = "{one}"\nmin_clients = 1\n'
         f'state_dir = "{tmp_path / "rounds"}"\n', None),
    ]
    for text, says in cases:
        (tmp_path / "cloud.toml").write_text(text)
        if says is None:  # a valid configuration reaches uvicorn.run
            with pytest.raises(pytest.fail.Exception, match="bound a port"):
                main(["cloud", "serve", "--config", str(tmp_path / "cloud.toml")])
            continue
        assert main(["cloud", "serve", "--config", str(tmp_path / "cloud.toml")]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and says in error, error


def test_the_serve_config_file_is_valid_and_builds_the_app(deployment, monkeypatch):
    pytest.importorskip("ray")
    import yaml  # type: ignore[import-untyped]  # Ray Serve's own dependency, for its config files
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from coinfer.cloud.daemon import ray_app
    from coinfer.sdk.errors import CoinferError, InvalidArgumentError

    folder, _, _ = deployment
    schema = ServeDeploySchema.model_validate(yaml.safe_load((SAMPLES / "serve.yaml").read_text()))
    (application,) = schema.applications
    assert (schema.http_options.host, schema.http_options.port) == ("127.0.0.1", 8200)
    assert application.route_prefix == "/" and application.name == ray_app.APP_NAME
    module, _, name = application.import_path.partition(":")
    assert (module, name) == ("coinfer.cloud.daemon.ray_app", "app_builder")
    assert (ROOT / application.args["config"]).resolve() == (SAMPLES / "cloud.toml").resolve()
    # The sample's cloud.toml, where what it names exists: the builder makes the Serve application.
    monkeypatch.setenv("COINFER_TOKEN", TOKEN)
    built = ray_app.app_builder({**application.args, "config": str(folder / "cloud.toml")})
    assert isinstance(built, serve.Application)
    with pytest.raises(InvalidArgumentError, match=r"\[mlink\] holds its round in one process"):
        ray_app.app_builder({"config": str(folder / "cloud.toml"), "replicas": 2})
    with pytest.raises(InvalidArgumentError, match=r"unknown application args \['port'\]"):
        ray_app.app_builder({"config": str(folder / "cloud.toml"), "port": 1})
    monkeypatch.delenv("COINFER_TOKEN")
    with pytest.raises(CoinferError, match="no token"):
        ray_app.app_builder({"config": str(folder / "cloud.toml")})


@pytest.mark.slow
def test_ray_serve_deploys_the_same_app_on_the_configured_port(deployment, tmp_path):
    pytest.importorskip("ray")
    from coinfer.sdk.mlink.fedavg import STATUS_PATH
    from coinfer.sdk.stip import protocol

    folder, model, instance = deployment
    port = free_port()
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = dict(os.environ, COINFER_TOKEN=TOKEN, RAY_TMPDIR=ray_dir)
    log = tmp_path / "ray.log"
    url = f"http://127.0.0.1:{port}"
    try:
        with cloud_process(["--config", str(folder / "cloud.toml"), "--port", str(port), "--ray"], log, port,
                           env) as process:
            check_stip_exact(url, model, instance)
            status, body = call(url, "GET", STATUS_PATH)
            assert status == 200 and json.loads(body)["clients"] == 3
            for path in (protocol.INFO_PATH, "/metrics"):
                status, body = call(url, "GET", path, token="wrong-token")
                assert (status, json.loads(body)) == (401, {"detail": "missing or wrong bearer token"})
            status, body = declared_oversize(url, protocol.FORWARD_PATH, (64 << 20) + 1)
            assert status == 413 and "byte limit" in json.loads(body)["detail"]
            metrics = scrape(url)
            assert value(metrics, "coinfer_stip_forward_seconds_count", call="forward") >= 1
            assert value(metrics, "coinfer_requests_refused_total", reason="token") >= 1
            stop(process, log)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
