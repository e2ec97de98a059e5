"""A real browser for the tests of pages a service serves: headless Chromium driven over the
DevTools protocol.

Chromium's ``--screenshot`` flag cannot send a header, and every coinfer route wants
``Authorization: Bearer <token>``; the DevTools protocol can (``Network.setExtraHTTPHeaders``),
so this opens the page as a browser an operator's proxy would, renders it, and returns the
HTTP status of the document, the text a reader sees and a PNG of the window.

Example::

    page = capture_page(f"http://127.0.0.1:{port}/status", token, tmp_path / "status.png")
    assert page.status == 200 and "Decode budget" in page.text
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: How long the browser may take to start, load the page or answer a command.
BROWSER_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PageCapture:
    """What the browser saw: the document's HTTP status and its rendered text."""

    status: int
    text: str


def chromium_path() -> str:
    """The Chromium binary, or skip the test with the reason (``.ci/run`` installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium here (Debian: apt-get install chromium; .ci/run installs it)")


class _DevTools:
    """One page target's DevTools connection: commands answered by id, events kept in order."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        self._socket.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == self._next:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def wait_for(self, method: str) -> dict[str, Any]:
        for index, event in enumerate(self.events):
            if event["method"] == method:
                return dict(self.events.pop(index)["params"])
        while True:
            message = self._receive()
            if message.get("method") == method:
                return dict(message["params"])

    def _receive(self) -> dict[str, Any]:
        message = json.loads(self._socket.recv(timeout=BROWSER_TIMEOUT_S))
        if "method" in message:
            self.events.append(message)
        return dict(message)


def _debugging_port(browser: subprocess.Popen[str]) -> int:
    """The port Chromium announces on stderr ("DevTools listening on ws://127.0.0.1:PORT/...")."""
    assert browser.stderr is not None
    deadline = time.monotonic() + BROWSER_TIMEOUT_S
    while time.monotonic() < deadline:
        line = browser.stderr.readline()
        if not line and browser.poll() is not None:
            raise AssertionError(f"chromium exited with {browser.returncode} before listening")
        if "DevTools listening on ws://" in line:
            # Keep reading what it logs, so that a full pipe never stalls the browser.
            threading.Thread(target=browser.stderr.read, daemon=True).start()
            return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    raise AssertionError("chromium did not announce its DevTools port")


def capture_page(url: str, token: str | None, png_path: Path, *, width: int = 1280,
                 height: int = 900) -> PageCapture:
    """Open ``url`` in headless Chromium with ``Authorization: Bearer <token>`` on every request
    (none when ``token`` is None), wait for the load event, write a PNG of the window to
    ``png_path`` and return the document's status and ``document.body.innerText``."""
    from websockets.sync.client import connect

    profile = tempfile.mkdtemp(prefix="coinfer-chromium-")
    browser = subprocess.Popen(
        [chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "about:blank"],
        # Its scratch files (shared memory, without /dev/shm) go to the profile, removed below.
        env=dict(os.environ, TMPDIR=profile), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = _debugging_port(browser)
        listing = f"http://127.0.0.1:{port}/json/list"
        with urllib.request.urlopen(listing, timeout=BROWSER_TIMEOUT_S) as answer:
            targets = json.load(answer)
        page = next(target for target in targets if target["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=BROWSER_TIMEOUT_S) as socket:
            tools = _DevTools(socket)
            tools.call("Network.enable")
            tools.call("Page.enable")
            if token is not None:
                tools.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {token}"})
            tools.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                       deviceScaleFactor=1, mobile=False)
            navigation = tools.call("Page.navigate", url=url)
            if navigation.get("errorText"):
                raise AssertionError(f"{url}: {navigation['errorText']}")
            tools.wait_for("Page.loadEventFired")
            status = next(event["params"]["response"]["status"] for event in tools.events
                          if event["method"] == "Network.responseReceived"
                          and event["params"].get("type") == "Document")
            text = tools.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                              returnByValue=True)["result"]["value"]
            shot = tools.call("Page.captureScreenshot", format="png")
            png_path.write_bytes(base64.b64decode(shot["data"]))
        return PageCapture(int(status), str(text))
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=30)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        shutil.rmtree(profile, ignore_errors=True)
