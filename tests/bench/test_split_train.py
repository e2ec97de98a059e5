"""``coinfer split train`` writes a bottleneck that deploys through the split runtime: cut at
its latent, entropy-coded on the device, decoded on the edge, the same logits as the whole graph."""

import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.slow
def test_a_trained_bottleneck_exports_serves_and_answers_like_the_whole_graph(tmp_path):
    import json

    import onnxruntime as ort

    from coinfer.bench.models.efficientnet_lite import preprocess
    from coinfer.bench.split.images import photo
    from coinfer.device.split import SplitClient
    from coinfer.edge.split import SplitServer

    trained, split = tmp_path / "bottleneck", tmp_path / "split"
    for command in (["split", "train", "--out", str(trained), "--steps", "20", "--crops", "32",
                     "--latent-channels", "8", "--quiet"],
                    ["split", "export", "--model", str(trained / "bottleneck.onnx"), "--cut", "latent",
                     "--encoding", "entropy", "--tables", str(trained / "tables.npz"), "--out", str(split)]):
        done = subprocess.run([sys.executable, "-m", "coinfer.sdk.cli", *command], capture_output=True,
                              text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((trained / "training.json").read_text())["history"]
    assert history["steps"][-1] == 20 and len(history["distortion"]) == len(history["steps"])

    images = preprocess([photo("chelsea"), photo("coffee")])
    whole = ort.InferenceSession(str(trained / "bottleneck.onnx")).run(None, {"image": images})[0]
    with SplitServer(split / "edge", "secret") as server:
        client = SplitClient.create_from_bundle(split / "device", server.url, "secret")
        logits = client.infer(images)["logits"]
    np.testing.assert_array_equal(logits, whole)
    assert client.last is not None and client.last.clipped == 0
    assert 0 < client.last.bytes_sent < images[0].nbytes  # far below the image as float32
