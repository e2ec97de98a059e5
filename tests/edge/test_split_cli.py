"""`coinfer split export | serve | run` as a user runs them: three commands, two processes."""

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np

from coinfer.sdk.cli.main import main

TOKEN = "split-cli-token"


def test_export_serve_and_run_as_separate_processes(tmp_path, command_server, capsys):
    import onnxruntime as ort
    from skimage import data

    from coinfer.bench.models.efficientnet_lite import export_onnx, preprocess

    model = export_onnx(tmp_path / "effnet.onnx")
    batch = preprocess([data.chelsea(), data.coffee()])
    np.save(tmp_path / "batch.npy", batch)
    assert main(["split", "export", "--model", str(model), "--cut", "43", "--encoding", "float16",
                 "--out", str(tmp_path / "split")]) == 0
    assert "(62720 bytes per sample as float16)" in capsys.readouterr().out  # two tensors cross

    def info(port: int) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/split/info",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    with command_server(["split", "serve", "--bundle", str(tmp_path / "split" / "edge")], TOKEN,
                        info) as (port, answer):
        assert answer["spec"]["encoding"] == "float16"
        result = subprocess.run(
            [sys.executable, "-m", "coinfer.sdk.cli", "split", "run", "--bundle",
             str(tmp_path / "split" / "device"), "--url", f"http://127.0.0.1:{port}",
             "--inputs", str(tmp_path / "batch.npy"), "--json", str(tmp_path / "run.json")],
            env=dict(os.environ, COINFER_TOKEN=TOKEN), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "run.json").read_text())
    whole = ort.InferenceSession(str(model)).run(None, {"image": batch})[0]
    assert found["logits"] == whole.argmax(1).tolist() == [285, 967]
    assert found["batch"] == 2 and found["bytes_sent"] > 2 * 62_720
