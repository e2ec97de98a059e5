"""`coinfer stip` and `coinfer stip serve` as a user runs them: separate processes."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from coinfer.sdk.cli.main import main

TOKEN = "cli-test-token"


@pytest.fixture(scope="module")
def model_with_tokenizer(tmp_path_factory):
    """A small random LLaMA that speaks MiniLM's real WordPiece vocabulary."""
    import torch
    import transformers as tf

    from coinfer.bench.models import minilm

    torch.manual_seed(1)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=128,
                                               eos_token_id=None, bos_token_id=None))
    path = tmp_path_factory.mktemp("tok-llama")
    model.save_pretrained(path)
    shutil.copyfile(minilm.model_dir() / "tokenizer.json", path / "tokenizer.json")
    return model.eval(), path


def test_verify_reports_equivalence_and_refuses_unknown_models(model_with_tokenizer, tmp_path, capsys):
    import transformers as tf

    _, path = model_with_tokenizer
    assert main(["stip", "verify", "--model", str(path), "--json", str(tmp_path / "v.json")]) == 0
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["rel_err"] <= 1e-4 and report["top1_agreement"] == 1.0 and report["positions"] == 256
    opt = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, ffn_dim=32))
    opt.save_pretrained(tmp_path / "opt")
    assert main(["stip", "verify", "--model", str(tmp_path / "opt")]) == 1
    assert "does not support model_type 'opt'" in capsys.readouterr().err


@pytest.mark.slow
def test_publish_serve_and_chat_as_separate_processes(model_with_tokenizer, tmp_path, command_server):
    import torch
    from tokenizers import Tokenizer

    model, path = model_with_tokenizer
    assert main(["stip", "publish", "--model", str(path), "--provenance", "private",
                 "--out", str(tmp_path / "pub")]) == 0
    env = dict(os.environ, COINFER_TOKEN=TOKEN)

    def info(port: int) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/info",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    with command_server(["stip", "serve", "--bundle", str(tmp_path / "pub" / "server")], TOKEN,
                        info) as (port, answer):
        assert answer["hidden_size"] == 32 and answer["output_kind"] == "logits"
        chat = subprocess.run([sys.executable, "-m", "coinfer.sdk.cli", "stip", "chat", "--bundle",
                               str(tmp_path / "pub" / "user"), "--url", f"http://127.0.0.1:{port}",
                               "--prompt", "secure inference at the edge", "--max-new-tokens", "8"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert chat.returncode == 0, chat.stderr
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokens = tokenizer.encode("secure inference at the edge").ids
    prompt_length = len(tokens)
    with torch.no_grad():
        for _ in range(8):
            tokens.append(int(np.argmax(model(input_ids=torch.tensor([tokens])).logits[0, -1].numpy())))
    assert chat.stdout.strip() == tokenizer.decode(tokens[prompt_length:]).strip()


@pytest.mark.slow
def test_audit_recovers_tokens_from_public_weights_and_publish_refuses_them(model_with_tokenizer, tmp_path,
                                                                            capsys):
    _, path = model_with_tokenizer
    assert main(["data", "corpus", "--out", str(tmp_path / "corpus"), "--messages", "24", "--quiet"]) == 0
    assert main(["stip", "audit", "--model", str(path), "--provenance", "public-base", "--corpus",
                 str(tmp_path / "corpus"), "--settings", "plain,local-1+rotate", "--messages", "12",
                 "--attack-tokens", "6", "--fine-tune-steps", "1", "--json", str(tmp_path / "a.json")]) == 0
    found = json.loads((tmp_path / "a.json").read_text())
    plain, both = found["settings"]["plain"], found["settings"]["local-1+rotate"]
    assert found["provenance"] == "public-base" and plain["tokens_observed"] > 50
    assert plain["vocab_match_recovery"] == 1.0 and found["fine_tuned"]["vocab_match_recovery"] > 0.9
    assert both["vocab_match_recovery"] < 0.2 and both["sequential_recovery_rotation"] == 1.0
    for setting in (plain, both, found["fine_tuned"]):
        assert setting["rel_err"] <= 1e-4 and setting["top1_agreement"] == 1.0
        assert setting["recovery_best"] == 1.0 and setting["repeat_leak"] >= 0.9
    capsys.readouterr()
    assert main(["stip", "publish", "--model", str(path), "--provenance", "public-base",
                 "--out", str(tmp_path / "pub")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "refusing to publish public-base weights" in error
    assert not (tmp_path / "pub").exists()


@pytest.mark.slow
def test_quick_bench_writes_the_issue_metrics(tmp_path):
    assert main(["stip", "bench", "--quick", "--json", str(tmp_path / "b.json")]) == 0
    found = json.loads((tmp_path / "b.json").read_text())
    expected = {"rel_err", "top1_agreement", "cloud_throughput_ratio", "device_overhead_ms",
                "bytes_per_request", "gen_ms_per_token_stip", "gen_ms_per_token_plain", "machine"}
    assert expected <= set(found)
    assert found["rel_err"] <= 1e-4 and found["top1_agreement"] == 1.0
    # One (1, 128) request: 128 x 768 float32 in, 128 x 50257 float32 out, plus frame headers.
    assert 128 * (768 + 50257) * 4 < found["bytes_per_request"] < 128 * (768 + 50257) * 4 + 1024


def test_vit_publish_serve_and_classify_images(tmp_path):
    import torch
    import transformers as tf

    from coinfer.cloud.stip.publish import Protection, load_cloud_model, publish
    from coinfer.cloud.stip.server import BackgroundServer, StipModelServer
    from coinfer.device.stip import STIPClient

    torch.manual_seed(0)
    config = tf.ViTConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                          image_size=16, patch_size=8, num_labels=7)
    model = tf.ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "vit")
    (instance,) = publish(tmp_path / "vit", tmp_path / "pub", protection=Protection("private"))
    assert (instance.user / "pixel_embedding.npz").is_file()
    assert not (instance.user / "embeddings.npy").exists()
    cloud, info = load_cloud_model(instance.server)
    images = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with BackgroundServer(StipModelServer(cloud, info), TOKEN) as running:
        client = STIPClient.create_from_bundle(instance.user, running.url, TOKEN)
        logits = client.forward(images)
    with torch.no_grad():
        plain = model(pixel_values=torch.from_numpy(images)).logits.numpy()
    assert logits.shape == (5, 7)
    assert np.max(np.abs(logits - plain)) / np.max(np.abs(plain)) <= 1e-4


@pytest.mark.slow
def test_full_bench_sweeps_write_plots(tmp_path):
    from coinfer.bench.stip.bench import run_sweeps, write_plots

    sweeps = run_sweeps(layer_counts=(1,), batches=(1, 2), repeats=1, depth_batch=2)
    assert [row["batch"] for row in sweeps["by_batch"]] == [1, 2]
    assert [row["layers"] for row in sweeps["by_layers"]] == [1]
    assert all(row["throughput_ratio"] > 0 for row in sweeps["by_batch"])
    for path in write_plots(sweeps, tmp_path):
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
