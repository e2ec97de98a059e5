"""The device tier without heavy frameworks: fresh interpreters where importing them fails."""

import json

import numpy as np


def test_device_tier_runs_a_tflite_filter_without_heavy_frameworks(run_blocked, filter_artifacts, filter_data,
                                                                   tmp_path):
    x, _ = filter_data
    np.save(tmp_path / "inputs.npy", x[:32])
    out = run_blocked(f"""
import json
import numpy as np
import coinfer.device
from coinfer.device.runtime import create_runner
runner = create_runner({str(filter_artifacts['int8'].artifact.path)!r})
scores = runner.run(np.load({str(tmp_path / 'inputs.npy')!r}))["output_0"]
np.save({str(tmp_path / 'scores.npy')!r}, scores)
print(json.dumps({{"backend": runner.backend, "loaded": sorted(m for m in sys.modules
      if m.split(".")[0] in {{"tensorflow", "torch", "transformers", "onnxruntime", "cv2"}})}}))
""")
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"backend": "ai_edge_litert.interpreter", "loaded": []}
    device_scores = np.load(tmp_path / "scores.npy")
    in_process = filter_artifacts["int8"].artifact
    from coinfer.device.runtime import create_runner

    np.testing.assert_array_equal(device_scores, create_runner(in_process).run(x[:32])["output_0"])


def test_every_sdk_and_device_module_imports_without_heavy_frameworks(run_blocked):
    out = run_blocked("""
import importlib, pkgutil
import coinfer.sdk, coinfer.device
names = []
for package in (coinfer.sdk, coinfer.device):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
print(len(names), "modules")
""")
    assert int(out.split()[0]) >= 10
