"""InFi's deployments: the edge detection service, offload (bytes on the wire) and on-device reports."""

import http.client
import json

import numpy as np
import pytest

from coinfer.bench.infi.deployments import (
    DetectionClient,
    encode_jpeg,
    offload_report,
    on_device_report,
)
from coinfer.converters.filters import export_filter
from coinfer.edge.infi.service import DETECT_PATH, JPEG_TYPE, DetectionOptions, DetectionServer, jpeg_size
from coinfer.sdk.errors import CoinferError

pytest.importorskip("tensorflow")

TOKEN = "test-token-for-the-detection-service"


@pytest.fixture(scope="session")
def frames(tmp_path_factory):
    """2 cameras x 2 s of daytime scenes (40 frames, a few with faces): small and full."""
    from coinfer.bench.data.scenes import SceneOptions, generate_scenes
    from coinfer.bench.infi.tasks import decode_scene_frames

    options = SceneOptions(cameras=2, seconds=2, tasks=("faces",), crowd=2, day_start="10:00",
                           day_end="14:00")
    root = tmp_path_factory.mktemp("deployments") / "scenes"
    generate_scenes(root, options, workers=1, progress=False)
    return decode_scene_frames(root, (40, 24))


@pytest.fixture(scope="session")
def filters(tmp_path_factory, frames):
    """One tiny trained faces filter exported three ways: as trained, skipping all, skipping none."""
    from coinfer.sdk.infi import (
        FilterOptions,
        ModalitySpec,
        create_measurement,
        redundancy_labels,
        train_skip_filter,
    )

    measurements = {"faces": create_measurement("empty")}
    labels = redundancy_labels({"faces": frames.boxes["faces"]}, measurements)
    trained = train_skip_filter(frames.small, labels, {"frame": ModalitySpec.image(24, 40)}, ("faces",),
                                measurements, FilterOptions(epochs=1, seed=0, validation=0.0))
    root = tmp_path_factory.mktemp("filters")
    paths = {}
    # P(redundant) is a sigmoid in [0, 1]: a threshold of 0 skips everything, above 1 nothing.
    for name, thresholds in (("trained", trained.thresholds), ("all", [0.0]), ("none", [1.5])):
        trained.thresholds = np.asarray(thresholds, dtype=np.float64)
        paths[name] = export_filter(trained, root / name, quantization="float32").artifact.path
    return paths


@pytest.fixture(scope="module")
def server():
    with DetectionServer(DetectionOptions(max_request_bytes=200_000, max_width=640, max_height=360),
                         TOKEN) as running:
        yield running


def post(server, body, headers):
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", DETECT_PATH, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_service_detects_on_a_jpeg_and_refuses_bad_requests_clearly(server, frames):
    jpeg = encode_jpeg(frames.full[0])
    good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": JPEG_TYPE}
    status, answer = post(server, jpeg, good)
    assert status == 200 and answer["task"] == "faces" and (answer["width"], answer["height"]) == (320, 180)
    assert answer["count"] == len(answer["boxes"])

    assert post(server, jpeg, {"Content-Type": JPEG_TYPE}) == (401, {"detail":
                                                                     "missing or wrong bearer token"})
    assert post(server, jpeg, {**good, "Authorization": "Bearer nope"})[0] == 401
    status, answer = post(server, b"\xff\xd8" + bytes(250_000), good)
    assert status == 413 and "200000-byte limit" in answer["detail"]
    status, answer = post(server, b"GIF89a not a jpeg at all", good)
    assert status == 400 and "not a JPEG" in answer["detail"]
    status, answer = post(server, jpeg[:len(jpeg) // 2], good)
    assert status == 400 and "does not decode" in answer["detail"]
    status, answer = post(server, jpeg, {**good, "Content-Type": "application/octet-stream"})
    assert status == 415 and JPEG_TYPE in answer["detail"]
    # a header declaring 10000x180 pixels is refused before anything is decoded
    sof = jpeg.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    huge = jpeg[:sof + 7] + (10_000).to_bytes(2, "big") + jpeg[sof + 9:]
    assert jpeg_size(huge) == (10_000, 180)
    status, answer = post(server, huge, good)
    assert status == 400 and "10000x180" in answer["detail"] and "640x360" in answer["detail"]
    with DetectionClient(server.url, "wrong") as client, pytest.raises(CoinferError, match="401"):
        client.detect(jpeg)


def test_jpeg_size_reads_baseline_and_progressive_headers():
    import cv2

    frame = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for flags in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        assert jpeg_size(cv2.imencode(".jpg", frame, flags)[1].tobytes()) == (70, 50)


@pytest.mark.slow  # trains and exports three TFLite filters (the fixture)
def test_offload_skipping_everything_sends_nothing_and_skipping_nothing_saves_nothing(filters, frames):
    faces = np.array([len(b) > 0 for b in frames.boxes["faces"]])
    skip_all = offload_report(filters["all"], frames.small, frames.full)
    assert skip_all["offload_requests"] == 0 and skip_all["offload_frames_skipped"] == len(frames.full)
    assert skip_all["offload_bytes_with_filter"] == 0 and skip_all["offload_bytes_saved"] == 1.0
    assert skip_all["offload_accuracy"] == pytest.approx(1 - skip_all["offload_frames_with_faces"] / 40)
    assert abs(skip_all["offload_frames_with_faces"] - faces.sum()) <= 3  # JPEG vs. the decoded video

    skip_none = offload_report(filters["none"], frames.small, frames.full)
    assert skip_none["offload_requests"] == skip_none["offload_requests_without_filter"] == len(frames.full)
    assert skip_none["offload_frames_skipped"] == 0 and skip_none["offload_accuracy"] == 1.0
    assert skip_none["offload_bytes_saved"] == pytest.approx(0.0, abs=1e-9)
    assert skip_none["offload_ms_per_frame_with_filter"] > 0


@pytest.mark.slow  # trains and exports three TFLite filters (the fixture)
def test_offload_counts_exactly_the_bytes_it_sends(filters, frames):
    quality = 60
    with DetectionServer(None, TOKEN) as server:
        report = offload_report(filters["none"], frames.small, frames.full, url=server.url, token=TOKEN,
                                quality=quality)
        received = server.service.stats()
    jpegs = [len(encode_jpeg(frame, quality)) for frame in frames.full]
    assert report["offload_request_body_bytes_with_filter"] == sum(jpegs)
    assert report["offload_request_body_bytes_without_filter"] == sum(jpegs)
    # the service got exactly those bodies, plus a warm-up frame on each way's connection
    assert received["requests"] == 2 * len(jpegs) + 2
    assert received["bytes_received"] == 2 * sum(jpegs) + report["offload_warmup_request_body_bytes"]
    # request line and headers, as http.client writes them
    host = server.url.removeprefix("http://")
    headers = sum(len(f"POST {DETECT_PATH} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: identity\r\n"
                      f"Content-Length: {size}\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: {JPEG_TYPE}\r\n\r\n") for size in jpegs)
    assert report["offload_request_header_bytes_with_filter"] == headers
    assert report["offload_bytes_with_filter"] == (sum(jpegs) + headers
                                                   + report["offload_response_bytes_with_filter"])


@pytest.mark.slow  # trains and exports three TFLite filters (the fixture)
def test_a_trained_filter_reports_consistently_on_device_and_offloaded(filters, frames):
    from coinfer.edge.models.detectors import face_detector

    offload = offload_report(filters["trained"], frames.small, frames.full)
    device = on_device_report(filters["trained"], frames.small, frames.full, face_detector())
    n = len(frames.full)
    assert offload["offload_requests"] + offload["offload_frames_skipped"] == n
    assert 0.0 <= offload["offload_accuracy"] <= 1.0 and 0.0 <= device["on_device_accuracy"] <= 1.0
    assert device["on_device_frames_skipped"] == round(device["on_device_filter_rate"] * n)
    # the same filter on the same small frames decides the same way in both deployments
    assert device["on_device_frames_skipped"] == offload["offload_frames_skipped"]
    assert device["on_device_speedup"] > 0 and device["on_device_filter_ms"] > 0

    skip_all = on_device_report(filters["all"], frames.small, frames.full, face_detector(), repeats=2)
    assert skip_all["on_device_filter_rate"] == 1.0
    assert skip_all["on_device_accuracy"] == pytest.approx(1 - skip_all["on_device_frames_with_faces"] / n)
    with pytest.raises(ValueError, match="as many small frames"):
        on_device_report(filters["all"], frames.small[:3], frames.full, face_detector())
