"""What every coinfer service does before its routes run: the API description behind the token,
connections that send slowly or nothing closed, a port that cannot be bound refused."""

from __future__ import annotations

import argparse
import select
import socket
import time
import urllib.error
import urllib.request

import pytest

from coinfer.edge.gateway import GatewayOptions, GatewayServer, create_gateway_app
from coinfer.edge.infi.service import DetectionServer
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.protocol import frames_path
from coinfer.sdk.service import ConnectionLimits, ThreadedServer, uvicorn_options

TOKEN = "service-guards-token"
DESCRIPTION = ("/openapi.json", "/docs", "/redoc")


def get(url: str, token: str | None = None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_api_description_needs_the_token():
    from coinfer.cloud.mlink.server import ClientRegistry, LinkAggregator, create_app
    from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec

    graph = LinkGraph.create({"counts": OutputSpec.classes(4), "speech": OutputSpec.presence()},
                             options=LinkOptions(epochs=1))
    aggregator = LinkAggregator(graph, 1, clients=ClientRegistry.shared(["edge-1"]))
    with (GatewayServer(GatewayOptions(), TOKEN) as gateway,
          DetectionServer(None, TOKEN, detector=lambda frame: []) as detection,
          ThreadedServer(create_app(aggregator, TOKEN)) as links):
        for url in (gateway.url, detection.url, links.url):
            for path in DESCRIPTION:
                assert get(url + path) == 401, url + path
                assert get(url + path, "wrong") == 401, url + path
                assert get(url + path, TOKEN) == 200, url + path


def closes(connection: socket.socket, drip: bytes = b"") -> bool:
    """Whether the server closes ``connection`` within 30 s (an answer before that is read and
    skipped), while ``drip`` is sent every 0.2 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if drip:
            try:
                connection.sendall(drip)
            except OSError:
                return True
        readable, _, _ = select.select([connection], [], [], 0.2 if drip else 30)
        if readable:
            try:
                if not connection.recv(1 << 16):
                    return True
            except OSError:
                return True
    return False


def test_connections_that_send_nothing_or_too_slowly_are_closed():
    limits = ConnectionLimits(idle_seconds=1, header_seconds=2, min_body_rate=1000, max_header_bytes=4096)
    path = frames_path("cam0")
    post = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    with ThreadedServer(create_gateway_app(GatewayOptions(), TOKEN), limits=limits) as running:
        address = running.url.removeprefix("http://").split(":")

        def connect(first: bytes = b"") -> socket.socket:
            connection = socket.create_connection((address[0], int(address[1])), timeout=30)
            connection.sendall(first)
            return connection

        cases = {
            "silent": (b"", b""),
            "half a header": (post, b""),
            "half a body": (post + b"Content-Length: 1000\r\n\r\n0123456789", b""),
            "a header a byte at a time": (post, b"X"),
            "a body a byte at a time": (post + b"Content-Length: 100000\r\n\r\n", b"X"),
        }
        for case, (first, drip) in cases.items():
            with connect(first) as connection:
                assert closes(connection, drip), case
        with connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 8000 + b"\r\n") as connection:
            assert connection.recv(100).startswith(b"HTTP/1.1 400"), "a header over the limit"
        with connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as connection:
            assert connection.recv(100).startswith(b"HTTP/1.1 200")
            assert closes(connection), "idle after an answer"


def test_a_port_out_of_range_is_refused_not_wrapped_around():
    # On uvloop, port 99999 would bind 34463 and the log would still say 99999.
    with pytest.raises(InvalidArgumentError, match="port must be in"):
        ThreadedServer(create_gateway_app(GatewayOptions(), TOKEN), port=99999)
    with pytest.raises(InvalidArgumentError, match="port must be in"):
        uvicorn_options("127.0.0.1", -1)
    with pytest.raises(InvalidArgumentError, match="idle_seconds must be >= 1"):
        ConnectionLimits(idle_seconds=0)


def test_service_commands_pass_their_limits_to_uvicorn(monkeypatch):
    from coinfer.edge.cli import gate_serve, infi_serve

    served: list[tuple[object, dict]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.append((app, options)))
    monkeypatch.setenv("COINFER_TOKEN", TOKEN)
    for command, argv in ((gate_serve, ["--max-packets-per-request", "64"]), (infi_serve, [])):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        args = parser.parse_args([*argv, "--port", "0", "--idle-timeout", "3", "--header-timeout", "2",
                                  "--min-body-rate", "500"])
        assert command.run(args) == 0
        _, options = served[-1]
        assert options["timeout_keep_alive"] == 3 and options["port"] == 0
        assert options["http"].limits == ConnectionLimits(idle_seconds=3, header_seconds=2, min_body_rate=500)
    assert served[0][0].state.gateway.options.max_packets_per_request == 64


def test_a_served_command_closes_a_silent_connection(command_server):
    def ready(port: int) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as response:
            return response.status

    with (command_server(["gate", "serve", "--idle-timeout", "1"], TOKEN, ready) as (port, _),
          socket.create_connection(("127.0.0.1", port), timeout=30) as connection):
        assert closes(connection)
