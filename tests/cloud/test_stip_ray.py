"""The STIP model server deployed on a local Ray Serve instance."""

import shutil
import socket
import tempfile

import numpy as np
import pytest

TOKEN = "ray-token"


@pytest.mark.slow
def test_stip_server_on_local_ray_serve(tmp_path):
    ray = pytest.importorskip("ray")
    import torch
    import transformers as tf
    from ray import serve

    from coinfer.cloud.stip.publish import Protection, publish
    from coinfer.cloud.stip.ray_serve import deploy
    from coinfer.device.stip import STIPClient, StipClientError

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=4,
                                               num_key_value_heads=2)).eval()
    model.save_pretrained(tmp_path / "model")
    (instance,) = publish(tmp_path / "model", tmp_path / "pub", protection=Protection("private"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_dir, log_to_driver=False)
    try:
        url = deploy(instance.server, TOKEN, port=port)
        client = STIPClient.create_from_bundle(instance.user, url, TOKEN)
        ids = np.random.default_rng(0).integers(0, 101, size=(2, 16))
        with torch.no_grad():
            plain = model(input_ids=torch.from_numpy(ids)).logits.numpy()
        recovered = client.forward(ids)
        assert np.max(np.abs(recovered - plain)) / np.max(np.abs(plain)) <= 1e-4
        assert len(client.generate([5, 6, 7], 4)) == 4
        with pytest.raises(StipClientError, match="HTTP 401"):
            STIPClient.create_from_bundle(instance.user, url, "wrong").forward(ids)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
