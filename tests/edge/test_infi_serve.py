"""`coinfer infi serve` as an edge box runs it: its own process, the real face detector, a token."""

import urllib.error
import urllib.request

import pytest

from coinfer.edge.infi.service import DETECT_PATH, JPEG_TYPE, STATS_PATH

TOKEN = "infi-serve-test-token"


def _get(port: int, path: str, token: str | None = TOKEN) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    return urllib.request.urlopen(request, timeout=60).read()


@pytest.mark.slow
def test_the_service_detects_a_real_face_and_refuses_without_the_token(command_server):
    import json

    import cv2
    from skimage import data

    # the astronaut's head and shoulders: the face fills the frame as at a camera's doorway
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut()[:256, 96:352], cv2.COLOR_RGB2BGR))
    assert ok
    with command_server(["infi", "serve", "--task", "faces"], TOKEN,
                        lambda port: json.loads(_get(port, STATS_PATH))) as (port, stats):
        assert stats["requests"] == 0
        post = urllib.request.Request(f"http://127.0.0.1:{port}{DETECT_PATH}", data=jpeg.tobytes(),
                                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": JPEG_TYPE})
        answer = json.loads(urllib.request.urlopen(post, timeout=60).read())
        assert answer["task"] == "faces" and answer["count"] >= 1
        assert (answer["width"], answer["height"]) == (256, 256)
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(port, STATS_PATH, token="wrong")
        assert refused.value.code == 401
