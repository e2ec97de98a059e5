"""The browser harness of the page tests (tests/browser.py) against a real token-guarded
service: Chromium sends the bearer token, renders the page and writes a screenshot; without
the token it sees the 401."""

import struct

import pytest
from browser import capture_page
from fastapi import Depends
from fastapi.responses import HTMLResponse

from coinfer.sdk.service import ServiceError, ThreadedServer, create_service_app

PAGE = "<html><body><h1>coinfer status</h1><p>Decode budget 0.50</p></body></html>"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow  # starts Chromium
def test_chromium_sends_the_token_renders_the_page_and_writes_a_screenshot(tmp_path):
    app, authorize = create_service_app("browser check", ServiceError, "s3cret")
    app.add_api_route("/status", lambda: HTMLResponse(PAGE), dependencies=[Depends(authorize)])
    with ThreadedServer(app, name="the page server") as running:
        seen = capture_page(f"{running.url}/status", "s3cret", tmp_path / "page.png", width=800, height=600)
        refused = capture_page(f"{running.url}/status", None, tmp_path / "refused.png")
    assert seen.status == 200
    assert "coinfer status" in seen.text and "Decode budget 0.50" in seen.text
    assert _png_size((tmp_path / "page.png").read_bytes()) == (800, 600)
    assert refused.status == 401 and "missing or wrong bearer token" in refused.text
