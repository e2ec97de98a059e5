"""The gateway daemon's status page in a real browser (headless Chromium, tests/browser.py),
served by a real ``coinfer edge gateway`` whose ``--host``, ``--port`` and ``--token-file``
override its configuration file: the page renders with the live numbers for the token of the
flag, and the browser without it sees the 401."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from browser import capture_page

TOKEN = "status-page-token"
#: Guards the waits on the daemon against a hang; never a time anything is expected to take.
DEADLINE_S = 300.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(url: str, token: str) -> dict | None:
    request = urllib.request.Request(url + "/v1/status", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as answer:
            return json.load(answer)
    except (urllib.error.URLError, OSError):
        return None


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_the_status_page_in_chromium_behind_the_token_of_the_flag(small_scenes, tmp_path):
    (tmp_path / "file-token").write_text("not-this-one")
    (tmp_path / "flag-token").write_text(TOKEN)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""[server]
host = "0.0.0.0"
port = {_free_port()}
token_file = "file-token"

[gate]
budget_fraction = 0.7

[[streams]]
name = "entrance"
url = {json.dumps(str(small_scenes / "cam000.mp4"))}
loop = true

[uploads]
""")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if key != "COINFER_TOKEN"}
    with (tmp_path / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "coinfer.sdk.cli", "edge", "gateway", "--config", str(config), "--host",
             "127.0.0.1", "--port", str(port), "--token-file", str(tmp_path / "flag-token")],
            stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            status = _status(url, TOKEN)
            if status is not None and status["streams"][0]["packets"] > 0:
                break
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "the daemon did not start gating"
            time.sleep(0.2)
        page = capture_page(f"{url}/status", TOKEN, tmp_path / "status.png", width=1280, height=900)
        refused = capture_page(f"{url}/status", "not-this-one", tmp_path / "refused.png")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=DEADLINE_S) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert page.status == 200
    for words in ("coinfer edge gateway", "Decode budget", "70%", "Decode saved", "Filter skip rate",
                  "Streams", "entrance", "running", "Camera uploads", "No camera has uploaded yet", url):
        assert words in page.text, words
    assert _png_size((tmp_path / "status.png").read_bytes()) == (1280, 900)
    assert refused.status == 401 and "missing or wrong bearer token" in refused.text
