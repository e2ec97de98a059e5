import numpy as np
import pytest

from coinfer.converters import ExportError, ExportOptions, ParityLimits, keras_to_tflite, torch_to_onnx
from coinfer.sdk.artifact import load_artifact
from coinfer.sdk.cli.main import main


def test_keras_exports_record_parity_in_a_verified_manifest(filter_artifacts):
    for quantization, result in filter_artifacts.items():
        artifact = load_artifact(result.artifact.path, capability="infi", kind="skip-filter")
        parity = artifact.manifest.metadata["parity"]
        assert artifact.manifest.metadata["quantization"] == quantization
        assert parity["samples"] == 400
        assert parity["model_bytes"] == artifact.file("model.tflite").stat().st_size
        assert parity["latency_ms"] > 0
    assert filter_artifacts["float32"].parity.max_abs_err < 1e-5
    assert filter_artifacts["float32"].parity.top1_agreement == 1.0
    assert filter_artifacts["int8"].parity.top1_agreement >= 0.97
    assert 1e-5 < filter_artifacts["int8"].parity.max_abs_err < 0.1


def test_float16_export_is_close(tmp_path, keras_filter, filter_data):
    x, _ = filter_data
    result = keras_to_tflite(keras_filter, tmp_path / "f16", quantization="float16", samples=x)
    assert result.parity.max_abs_err < 5e-3
    assert result.parity.top1_agreement >= 0.99


def test_parity_limits_block_the_artifact(tmp_path, keras_filter, filter_data):
    x, _ = filter_data
    with pytest.raises(ExportError, match="exceeds the limit"):
        keras_to_tflite(keras_filter, tmp_path / "strict", quantization="int8", representative_data=x,
                        options=ExportOptions(limits=ParityLimits(max_abs_err=1e-9)))
    assert not (tmp_path / "strict").exists()


def test_bad_export_requests(tmp_path, keras_filter, torch_net, filter_data):
    x, _ = filter_data
    with pytest.raises(ExportError, match="needs representative_data"):
        keras_to_tflite(keras_filter, tmp_path / "a", quantization="int8")
    with pytest.raises(ExportError, match="unknown quantization 'int4'"):
        keras_to_tflite(keras_filter, tmp_path / "a", quantization="int4")
    with pytest.raises(ExportError, match="fails on the example inputs"):
        torch_to_onnx(torch_net, [x[:1, :5]], tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_torch_onnx_parity(tmp_path, torch_net, filter_data):
    x, _ = filter_data
    result = torch_to_onnx(torch_net, [x[:1]], tmp_path / "net", samples=[x], output_names=["scores"])
    assert result.parity.max_abs_err < 1e-5
    assert result.parity.top1_agreement == 1.0
    assert [spec.name for spec in result.artifact.manifest.outputs] == ["scores"]


@pytest.mark.slow  # converts through litert-torch: seconds
def test_torch_tflite_through_litert_torch(tmp_path, torch_net, filter_data):
    pytest.importorskip("litert_torch")
    from coinfer.converters import torch_to_tflite
    from coinfer.device.runtime import create_runner

    x, _ = filter_data
    result = torch_to_tflite(torch_net, [x[:1]], tmp_path / "net")
    assert result.parity.max_abs_err < 1e-5
    runner = create_runner(result.artifact)
    import torch

    with torch.no_grad():
        reference = torch_net(torch.from_numpy(x[:9])).numpy()
    np.testing.assert_allclose(runner.run(x[:9])["output_0"], reference, atol=1e-5)


def test_cli_export_keras_and_verify(tmp_path, keras_filter, filter_data, capsys):
    x, _ = filter_data
    keras_filter.save(tmp_path / "filter.keras")
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "cli-int8"
    code = main(["export", "keras", str(tmp_path / "filter.keras"), "--out", str(out),
                 "--quantization", "int8", "--calibration", str(tmp_path / "calib.npy"),
                 "--capability", "infi"])
    assert code == 0
    assert load_artifact(out, capability="infi").manifest.metadata["parity"]["top1_agreement"] >= 0.97
    assert main(["export", "verify", str(out)]) == 0
    (out / "model.tflite").write_bytes(b"tampered")
    assert main(["export", "verify", str(out)]) == 1
    assert "model.tflite: sha256 mismatch" in capsys.readouterr().out


NET_SOURCE = """
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5))
"""


def test_cli_export_torch_with_safetensors_weights(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text(NET_SOURCE)
    torch.manual_seed(3)
    trained = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 6 * 6, 5))
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "net-onnx"
    code = main(["export", "torch", "--model", f"{tmp_path / 'net.py'}:build", "--weights",
                 str(tmp_path / "w.safetensors"), "--input-shape", "2,3,8,8", "--out", str(out)])
    assert code == 0
    from coinfer.device.runtime import create_runner

    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        reference = trained(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(create_runner(out).run(x)["output_0"], reference, atol=1e-5)
    assert main(["export", "torch", "--model", "no_such_module:build", "--input-shape", "1,3",
                 "--out", str(tmp_path / "x")]) == 1
    assert "cannot import no_such_module" in capsys.readouterr().err
    assert main(["export", "torch", "--model", f"{tmp_path / 'net.py'}:build", "--input-shape", "1,x",
                 "--out", str(tmp_path / "x")]) == 1
    assert "bad --input-shape" in capsys.readouterr().err
