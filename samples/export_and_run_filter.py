"""Train a tiny skip filter in Keras, export it to int8 TFLite, run it with the device runtime.

    python samples/export_and_run_filter.py [OUT_DIR]

The exported directory is a coinfer artifact: copy it to a phone or Raspberry Pi that has
``pip install 'coinfer[device]'`` and load it with ``create_runner``; no TensorFlow needed there.
"""

import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from coinfer.converters import ExportOptions, keras_to_tflite
from coinfer.device.runtime import create_runner


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((600, 6)).astype(np.float32)
    skip = (features[:, :3].sum(axis=1) > 0.5).astype(np.int64)  # "this input's result is useless"

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,), name="features"),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(features[:500], skip[:500], epochs=30, verbose=0)

    result = keras_to_tflite(model, out, quantization="int8", representative_data=features[:500],
                             samples=features[500:],
                             options=ExportOptions(capability="infi", kind="skip-filter", overwrite=True))
    print(f"artifact: {result.artifact.path}")
    print(f"int8 vs Keras: top-1 agreement {result.parity.top1_agreement:.3f}, "
          f"max abs error {result.parity.max_abs_err:.4f}, {result.parity.model_bytes} bytes")

    runner = create_runner(out)                    # what a device does
    decisions = runner.run(features[500:])["output_0"].argmax(axis=1)
    print(f"device filter skips {decisions.mean():.0%} of inputs; "
          f"agrees with the labels on {(decisions == skip[500:]).mean():.1%}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "skip-filter")
