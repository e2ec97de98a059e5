import numpy as np
import pytest

from coinfer.device.runtime import (
    ONNXRunner,
    RunnerError,
    RunnerOptions,
    TFLiteRunner,
    create_runner,
)
from coinfer.sdk.artifact import ArtifactError


def keras_probabilities(model, x):
    return np.asarray(model(x, training=False))


def test_tflite_runner_names_and_specs_come_from_the_signature(filter_artifacts):
    runner = create_runner(filter_artifacts["float32"].artifact)
    assert isinstance(runner, TFLiteRunner)
    assert runner.backend == "ai_edge_litert.interpreter"
    (spec,) = runner.input_specs
    assert (spec.name, spec.shape, spec.dtype) == ("features", (None, 6), "float32")
    assert runner.output_specs[0].shape == (None, 2)


def test_tflite_float_matches_keras_for_any_batch(filter_artifacts, keras_filter, filter_data):
    x, _ = filter_data
    runner = create_runner(filter_artifacts["float32"].artifact.path)
    for batch in (1, 7, 400):
        got = runner.run(x[:batch])["output_0"]
        np.testing.assert_allclose(got, keras_probabilities(keras_filter, x[:batch]), atol=1e-5)


def test_int8_runner_quantizes_inputs_and_dequantizes_outputs(filter_artifacts, keras_filter, filter_data):
    x, _ = filter_data
    runner = create_runner(filter_artifacts["int8"].artifact)
    (spec,) = runner.input_specs
    assert spec.dtype == "int8" and spec.quantization is not None
    probabilities = runner.run(x)["output_0"]
    assert probabilities.dtype == np.float32
    reference = keras_probabilities(keras_filter, x)
    assert np.mean(probabilities.argmax(1) == reference.argmax(1)) >= 0.97
    assert np.max(np.abs(probabilities - reference)) < 0.1
    # Already-quantised inputs pass straight through and give the same answer.
    quantized = spec.quantization.quantize(x, np.int8)
    np.testing.assert_array_equal(runner.run(quantized)["output_0"], probabilities)
    raw = create_runner(filter_artifacts["int8"].artifact, RunnerOptions(dequantize_outputs=False))
    assert raw.run(x[:3])["output_0"].dtype == np.int8


def test_batch_size_option_chunks_without_changing_results(filter_artifacts, filter_data):
    x, _ = filter_data
    whole = create_runner(filter_artifacts["float32"].artifact).run(x)["output_0"]
    chunked = create_runner(filter_artifacts["float32"].artifact, RunnerOptions(batch_size=64, num_threads=1))
    np.testing.assert_allclose(chunked.run(x)["output_0"], whole, atol=1e-6)


def test_fixed_batch_models_are_split_and_padded(tmp_path, filter_data):
    import keras

    from coinfer.converters import keras_to_tflite

    x, _ = filter_data
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,), batch_size=4, name="features"), keras.layers.Dense(3)])
    result = keras_to_tflite(model, tmp_path / "fixed", samples=x[:4])
    runner = create_runner(result.artifact)
    assert runner.input_specs[0].shape == (4, 6)
    got = runner.run(x[:11])["output_0"]
    assert got.shape == (11, 3)
    np.testing.assert_allclose(got, np.asarray(model(x[:11])), atol=1e-5)


def test_wrong_inputs_raise_clear_errors_before_invoking(filter_artifacts, filter_data):
    x, _ = filter_data
    runner = create_runner(filter_artifacts["float32"].artifact)
    with pytest.raises(RunnerError, match=r"'features' float32\[\?, 6\] got shape \(2, 5\)"):
        runner.run(x[:2, :5])
    with pytest.raises(RunnerError, match="expects rank 2"):
        runner.run(x[0])
    with pytest.raises(RunnerError, match="cannot take dtype <U"):
        runner.run(np.array([["a"] * 6]))
    with pytest.raises(RunnerError, match="cannot take dtype complex"):
        runner.run(x[:2].astype(np.complex64))
    with pytest.raises(RunnerError, match=r"missing \['features'\], unknown \['feature'\]"):
        runner.run({"feature": x[:2]})
    with pytest.raises(RunnerError, match="empty batch"):
        runner.run(x[:0])
    with pytest.raises(RunnerError, match="takes 1 input"):
        runner.run([x[:2], x[:2]])
    # float64 and int inputs are safely cast
    np.testing.assert_allclose(runner.run(x[:2].astype(np.float64))["output_0"],
                               runner.run(x[:2])["output_0"], atol=1e-6)


def test_onnx_runner_dynamic_and_static_batch(tmp_path, torch_net, filter_data):
    import torch

    from coinfer.converters import torch_to_onnx

    x, _ = filter_data
    dynamic = torch_to_onnx(torch_net, [x[:1]], tmp_path / "dyn", input_names=["features"])
    static = torch_to_onnx(torch_net, [x[:5]], tmp_path / "static", dynamic_batch=False)
    with torch.no_grad():
        reference = torch_net(torch.from_numpy(x)).numpy()
    dyn_runner = create_runner(dynamic.artifact, RunnerOptions(num_threads=1))
    assert isinstance(dyn_runner, ONNXRunner)
    assert dyn_runner.input_specs[0].shape == (None, 6)
    np.testing.assert_allclose(dyn_runner.run(x)["output_0"], reference, atol=1e-5)
    static_runner = create_runner(static.artifact)
    assert static_runner.input_specs[0].shape == (5, 6)
    np.testing.assert_allclose(static_runner.run(x[:13])["output_0"], reference[:13], atol=1e-5)
    with pytest.raises(RunnerError, match="input_0"):
        static_runner.run(x[:3, :2])


def test_bad_model_files(tmp_path):
    with pytest.raises(RunnerError, match="does not exist"):
        TFLiteRunner.create_from_file(tmp_path / "missing.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(RunnerError, match="not a loadable TFLite model"):
        TFLiteRunner.create_from_file(junk)
    junk_onnx = tmp_path / "junk.onnx"
    junk_onnx.write_bytes(b"not a protobuf")
    with pytest.raises(RunnerError, match="not a loadable ONNX model"):
        ONNXRunner.create_from_file(junk_onnx)
    with pytest.raises(RunnerError, match="unknown model format"):
        create_runner(tmp_path / "model.pt")
    with pytest.raises(RunnerError, match="num_threads"):
        RunnerOptions(num_threads=0)


def test_tampered_artifact_is_not_run(filter_artifacts, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(filter_artifacts["int8"].artifact.path, copy)
    model = copy / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.tflite: sha256 mismatch"):
        create_runner(copy)


def test_interpreter_fallback_chain(monkeypatch, filter_artifacts, filter_data):
    from coinfer.device.runtime import tflite

    x, _ = filter_data
    expected = create_runner(filter_artifacts["float32"].artifact).run(x[:5])["output_0"]
    chain = ("no_such_litert.interpreter", "tensorflow.lite.python.interpreter")
    monkeypatch.setattr(tflite, "INTERPRETER_MODULES", chain)
    runner = create_runner(filter_artifacts["float32"].artifact)
    assert runner.backend == "tensorflow.lite.python.interpreter"
    np.testing.assert_allclose(runner.run(x[:5])["output_0"], expected, atol=1e-6)
    monkeypatch.setattr(tflite, "INTERPRETER_MODULES", ("no_such_litert.interpreter",))
    with pytest.raises(RunnerError, match="no TFLite interpreter is installed; pip install ai-edge-litert"):
        create_runner(filter_artifacts["float32"].artifact)
