"""The kivy device app of samples/device_app: its camera pipeline and chat client without a
display, its real window under Xvfb with the heavy frameworks blocked uploading to a real
gateway, and the aarch64 wheels a Raspberry Pi installs it from."""

from __future__ import annotations

import ast
import doctest
import functools
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest
import tomllib
from conftest import BLOCKER, FILTER_FRAME_SIZE

from coinfer.sdk.config_file import ConfigError

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "samples" / "device_app"
TOKEN = "device-app-token"
#: What the app must not load: heavy frameworks, and what only the edge or the cloud installs.
NOT_ON_A_DEVICE = ("tensorflow", "torch", "transformers", "keras", "jax", "onnxruntime", "cv2", "fastapi",
                   "uvicorn", "coinfer.edge", "coinfer.cloud", "coinfer.bench", "coinfer.converters")


@functools.cache
def app_module(name: str) -> ModuleType:
    """One of the app's modules (settings, pipeline, chat), imported from its file under a name
    of its own, so that ``settings`` or ``pipeline`` cannot clash with anything else."""
    spec = importlib.util.spec_from_file_location(f"device_app_{name}", APP / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def expected_skips(video: Path, skip_filter_dir: Path, frames: int | None = None) -> list[bool]:
    """The filter's verdicts on a video's frames, computed here the documented way."""
    from coinfer.device.infi import load_skip_filter

    height, width = FILTER_FRAME_SIZE
    with av.open(str(video)) as container:
        pixels = [frame.to_ndarray(width=width, height=height, format="rgb24")
                  for frame in container.decode(video=0)][:frames]
    inputs = np.stack(pixels).astype(np.float32) / 255
    return [bool(s) for s in load_skip_filter(skip_filter_dir).skip({"frame": inputs})]


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# ----------------------------------------------------------------------------- without a display


@pytest.mark.parametrize("name", ["settings", "pipeline", "chat"])
def test_the_app_modules_pass_their_doctests(name):
    result = doctest.testmod(app_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_settings_come_from_the_config_file_and_the_flags_override_it(tmp_path):
    settings = app_module("settings")
    config = tmp_path / "device_app.toml"
    config.write_text('[camera]\nvideo = "clips/cam0.mp4"\nfilter = "faces"\n\n[gateway]\n'
                      'url = "http://edge:8100"\nstream = "pi-cam0"\nuplink_bytes_per_s = 20000\n\n'
                      '[stip]\nurl = "http://cloud:8000"\nbundle = "user"\n')
    read = settings.parse_settings(["--config", str(config), "--stream", "from-flag"])
    assert read.video == str(tmp_path / "clips" / "cam0.mp4") and read.filter == tmp_path / "faces"
    assert (read.gateway_url, read.stream, read.uplink_bytes_per_s) == ("http://edge:8100", "from-flag",
                                                                         20000)
    assert (read.stip_url, read.stip_bundle, read.max_new_tokens) == ("http://cloud:8000",
                                                                      tmp_path / "user", 48)
    camera = settings.parse_settings(["--config", str(config), "--camera", "/dev/video2"])
    assert (camera.camera, camera.video) == ("/dev/video2", None)  # the flag's source replaces the file's
    config.write_text('[camera]\nvideo = "rtsp://cam/0"\n\n[gateway]\nuplink_bytes_per_s = -5\n')
    with pytest.raises(ConfigError, match=r"device_app.toml:5: \[gateway\] uplink_bytes_per_s must be >= 1"):
        settings.parse_settings(["--config", str(config)])
    config.write_text('[camera]\nvideo = "rtsp://cam/0"\nfps = 5\n')
    with pytest.raises(ConfigError, match=r"device_app.toml:3: \[camera\] fps is not a known key"):
        settings.parse_settings(["--config", str(config)])
    assert settings.parse_settings(["--camera", "/dev/video0"]).camera == "/dev/video0"
    example = settings.parse_settings(["--config", str(APP / "device_app.example.toml")])
    assert example.video == str(APP / "clips" / "cam000.mp4") and example.stip_bundle == APP / "stip" / "user"
    assert (example.stream, example.gateway_token_file) == ("pi-cam0", APP / "gateway.token")


def test_bad_settings_and_a_missing_video_are_one_line_before_any_window(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}

    def app(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(APP / "main.py"), *argv], env=env, capture_output=True,
                              text=True, timeout=600)

    bad = app("--video", "cam0.mp4", "--uplink-bytes-per-s", "-5")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "argument --uplink-bytes-per-s: must be positive, got -5" in bad.stderr
    missing = app("--video", str(tmp_path / "none.mp4"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith(f"device_app: error: cannot open video source '{tmp_path / 'none.mp4'}'")


@pytest.mark.slow  # trains the face filter (the session's fixture)
def test_the_pipeline_gates_filters_and_counts_as_a_screenless_camera_would(small_scenes, face_skip_filter,
                                                                             tmp_path):
    from coinfer.device.gate import CameraGate, CameraGateOptions, PacketSource
    from coinfer.edge.gateway import EdgeGateway, GatewayOptions, GatewayServer

    pipeline_module, settings_module = app_module("pipeline"), app_module("settings")
    video = small_scenes / "cam001.mp4"
    (tmp_path / "token").write_text(TOKEN + "\n")
    with GatewayServer(GatewayOptions(), TOKEN) as server:
        settings = settings_module.AppSettings(video=str(video), filter=face_skip_filter,
                                               gateway_url=server.url, gateway_token_file=tmp_path / "token",
                                               stream="cam1", uplink_bytes_per_s=12_000)
        pipeline = pipeline_module.CameraPipeline.open(settings)
        frames = list(pipeline.frames())
        pipeline.close()
        numbers = pipeline.numbers("finished")
        status = server.gateway.status("cam1")
    skips = expected_skips(video, face_skip_filter)
    assert [frame.skipped for frame in frames] == skips and numbers.frames == len(skips) == 40
    assert numbers.skipped == sum(skips) and numbers.skip_rate == pytest.approx(sum(skips) / 40)
    assert frames[0].rgb.shape == (180, 320, 3) and frames[0].rgb.dtype == np.uint8
    assert [frame.time_s for frame in frames] == pytest.approx([k / 10 for k in range(40)])

    # The same packets through a gate of its own, uploading to a gateway object: same choices.
    with PacketSource.open(str(video)) as source:
        packets = list(source)
        edge = EdgeGateway()
        alone = CameraGate(source.parameters, lambda body: edge.ingest("cam1", body),
                           CameraGateOptions(12_000), stream="cam1")
    alone.run(packets)
    assert numbers.packets_seen == len(packets)
    assert 0 < numbers.packets_sent == alone.stats.packets_uploaded < len(packets)
    assert numbers.bytes_sent == alone.stats.bytes_sent and numbers.send_failures == 0
    assert status["packets_received"] == status["packets_decoded"] == numbers.packets_sent
    assert status["frames_decoded"] == numbers.gateway_frames == numbers.packets_sent
    assert numbers.gateway_accepted == numbers.packets_sent
    assert status["bytes_received"] == numbers.bytes_sent and status["decode_errors"] == 0
    assert numbers.state == "finished" and numbers.problem is None


@pytest.mark.slow  # trains the face filter (the session's fixture)
def test_a_refused_token_stops_the_uploads_but_not_the_camera(small_scenes, face_skip_filter, tmp_path):
    from coinfer.edge.gateway import GatewayOptions, GatewayServer

    pipeline_module, settings_module = app_module("pipeline"), app_module("settings")
    (tmp_path / "token").write_text("not-the-token")
    with GatewayServer(GatewayOptions(), TOKEN) as server:
        settings = settings_module.AppSettings(video=str(small_scenes / "cam000.mp4"),
                                               filter=face_skip_filter, gateway_url=server.url,
                                               gateway_token_file=tmp_path / "token")
        runner = pipeline_module.PipelineRunner(pipeline_module.CameraPipeline.open(settings), max_frames=6)
        runner.start()
        assert runner.finished.wait(600)
        assert server.gateway.streams() == []
    published, frame, numbers = runner.latest()
    assert published == numbers.frames == 6 and frame is not None
    assert numbers.state == "finished" and numbers.packets_sent == 0 and numbers.gateway_frames == 0
    assert numbers.problem.startswith("the gateway refused the uploads: POST ")
    assert "HTTP 401" in numbers.problem
    assert numbers.labels()["status"] == f"finished: {numbers.problem}"


# ----------------------------------------------------------------------------- the chat screen's client


@pytest.fixture(scope="module")
def stip_published(tmp_path_factory) -> tuple[object, Path, Path]:
    """A small random LLaMA speaking MiniLM's real WordPiece vocabulary, published for STIP:
    (the model, its folder, the publish output with server/ and user/)."""
    import torch
    import transformers as tf

    from coinfer.bench.models import minilm
    from coinfer.sdk.cli.main import main

    torch.manual_seed(3)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, max_position_embeddings=128,
                                               eos_token_id=None, bos_token_id=None)).eval()
    folder = tmp_path_factory.mktemp("chat-llama")
    model.save_pretrained(folder / "model")
    shutil.copyfile(minilm.model_dir() / "tokenizer.json", folder / "model" / "tokenizer.json")
    assert main(["stip", "publish", "--model", str(folder / "model"), "--provenance", "private",
                 "--out", str(folder / "published")]) == 0
    return model, folder / "model", folder / "published"


def test_the_chat_client_answers_an_unreachable_server_with_an_error_line(run_blocked, stip_published,
                                                                          tmp_path):
    _, _, published = stip_published
    (tmp_path / "token").write_text(TOKEN)
    port = closed_port()
    out = run_blocked(f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(APP)!r})
import chat
session = chat.ChatSession("http://127.0.0.1:{port}", Path({str(published / "user")!r}),
                           Path({str(tmp_path / "token")!r}))
replies = [session.ask(prompt) for prompt in ("is the edge there?", "   ", "still there?")]
print(json.dumps([[reply.text, reply.error] for reply in replies]))
""")
    first, empty, again = json.loads(out.strip().splitlines()[-1])
    assert first == ["", f"cannot reach the STIP server at http://127.0.0.1:{port}: "
                         "[Errno 111] Connection refused"]
    assert empty == ["", "type a prompt first"] and again == first


@pytest.mark.slow
def test_the_chat_client_gets_the_plain_models_answer_from_a_stip_server(stip_published, command_server,
                                                                         tmp_path):
    import torch
    from tokenizers import Tokenizer

    model, folder, published = stip_published
    (tmp_path / "token").write_text(TOKEN)

    def info(port: int) -> dict:
        return get_json(f"http://127.0.0.1:{port}/v1/info", TOKEN)

    with command_server(["stip", "serve", "--bundle", str(published / "server")], TOKEN, info) as (port, _):
        session = app_module("chat").ChatSession(f"http://127.0.0.1:{port}", published / "user",
                                                 tmp_path / "token", max_new_tokens=6)
        reply = session.ask("  a camera on the shelf ")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokens = tokenizer.encode("a camera on the shelf").ids
    prompt = len(tokens)
    with torch.no_grad():
        for _ in range(6):
            tokens.append(int(model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    assert reply.error is None and reply.prompt == "a camera on the shelf"
    assert reply.text == tokenizer.decode(tokens[prompt:]).strip() and reply.text


# ----------------------------------------------------------------------------- the window under Xvfb


@pytest.fixture(scope="module")
def xvfb(tmp_path_factory) -> Iterator[str]:
    """A virtual X display, ``:N``; Xvfb picks a free number itself and writes it once it is ready."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): the app's window needs an X display")
    log = tmp_path_factory.mktemp("xvfb") / "xvfb.log"
    read, write = os.pipe()
    with open(log, "wb") as errors:
        server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24",
                                   "-nolisten", "tcp"], pass_fds=(write,), stdout=subprocess.DEVNULL,
                                  stderr=errors)
    os.close(write)
    with os.fdopen(read) as announced:
        number = announced.readline().strip()  # ends when Xvfb is ready, or when it exits
    try:
        assert number.isdigit(), f"Xvfb did not start: {log.read_text()}"
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=60)


def ocr_lines(png: Path) -> list[str]:
    """The text lines RapidOCR's PP-OCRv4 models read in an image, spaces removed."""
    import cv2

    from coinfer.edge.models import ocr
    from coinfer.edge.models.ocr_recognizer import TextRecognizer

    image = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert image is not None, f"{png} is not an image"
    detector = ocr.cpu_session(ocr.detector_model_path())
    boxes = ocr.detect_text(image, lambda x: detector.run(None, {"x": x})[0])
    return [re.sub(r"\s+", "", line.text) for line in TextRecognizer().read(image, boxes)]


@pytest.mark.slow
def test_the_app_shows_live_numbers_under_xvfb_with_the_frameworks_blocked(xvfb, small_scenes,
                                                                            face_skip_filter, command_server,
                                                                            tmp_path):
    import cv2

    video = small_scenes / "cam001.mp4"
    (tmp_path / "token").write_text(TOKEN + "\n")
    shot, stats_file = tmp_path / "out" / "window.png", tmp_path / "out" / "stats.json"

    def healthy(port: int) -> bytes:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60).read()

    # The edge gateway daemon, hosting camera uploads only (the token comes from COINFER_TOKEN).
    config = tmp_path / "gateway.toml"
    config.write_text('[uploads]\ntasks = ["faces"]\n')
    with command_server(["edge", "gateway", "--config", str(config)], TOKEN, healthy) as (port, _):
        gateway = f"http://127.0.0.1:{port}"
        argv = ["--video", str(video), "--filter", str(face_skip_filter), "--gateway-url", gateway,
                "--gateway-token-file", str(tmp_path / "token"), "--stream", "cam1",
                "--uplink-bytes-per-s", "12000", "--frames", "30", "--screenshot", str(shot),
                "--stats", str(stats_file)]
        runner = BLOCKER + f"""
import json, runpy, sys
sys.path.insert(0, {str(APP)!r})
sys.argv = ["main.py", *{argv!r}]
try:
    runpy.run_path({str(APP / "main.py")!r}, run_name="__main__")
finally:
    print("LOADED", json.dumps(sorted(m for m in sys.modules if m.startswith({NOT_ON_A_DEVICE!r}))))
"""
        env = {key: value for key, value in os.environ.items() if key != "COINFER_TOKEN"}
        env.update(DISPLAY=xvfb, KIVY_HOME=str(tmp_path / "kivy"))
        app = subprocess.run([sys.executable, "-c", runner], env=env, capture_output=True, text=True,
                             timeout=600)
        assert app.returncode == 0, app.stderr[-4000:]
        status = get_json(f"{gateway}/v1/gate/streams/cam1", TOKEN)
    assert "LOADED []" in app.stdout, app.stdout

    stats = json.loads(stats_file.read_text())
    skips = expected_skips(video, face_skip_filter, 30)
    assert stats["state"] == "finished" and stats["problem"] is None and stats["frames"] == 30
    assert stats["skipped"] == sum(skips) and stats["skip_rate"] == pytest.approx(sum(skips) / 30)
    assert 0 <= stats["skip_rate"] <= 1
    assert 0 < stats["packets_sent"] < stats["packets_seen"] and stats["send_failures"] == 0
    # The gateway received and decoded every packet the app sent, and ran the face detector on
    # the ones the gate chose for inference.
    assert status["packets_received"] == status["packets_decoded"] == stats["packets_sent"]
    assert status["frames_decoded"] == stats["gateway_frames"] == stats["packets_sent"]
    assert status["bytes_received"] == stats["bytes_sent"] and status["decode_errors"] == 0
    assert status["frames_inferred"] == stats["gateway_results"] == stats["packets_inferred"] > 0

    # The widgets show exactly the numbers, and the screenshot shows the widgets.
    fields = {key: value for key, value in stats.items() if key not in
              ("widgets", "window", "view_box", "screenshot", "skip_rate")}
    assert stats["widgets"] == app_module("pipeline").LiveNumbers(**fields).labels()
    assert stats["widgets"]["frames"] == "frames 30"
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image.shape == (stats["window"][1], stats["window"][0], 3) == (600, 960, 3)
    read = ocr_lines(shot)
    for text in stats["widgets"].values():
        assert re.sub(r"\s+", "", text) in read, (text, read)
    left, top, width, height = stats["view_box"]
    view = image[top:top + height, left:left + width].astype(np.float64)
    assert width >= 320 and height >= 180 and view.std() > 20  # a picture, not an empty widget
    background = image[-4, 4].astype(np.float64)  # the window's bottom left corner
    assert np.abs(view - background).mean() > 30


# ----------------------------------------------------------------------------- what a Raspberry Pi installs


def extra_requirements(extra: str) -> list[str]:
    """The requirements of the meta-distribution's ``extra``, read from setup.py's EXTRAS."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    extras = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "EXTRAS" for t in node.targets))
    assert isinstance(extras, ast.Dict)
    value = next(v for k, v in zip(extras.keys, extras.values, strict=True)
                 if k is not None and ast.literal_eval(k) == extra)
    assert isinstance(value, ast.List)
    found = []
    for element in value.elts:
        if isinstance(element, ast.Call):  # tier("device", "stip") -> coinfer-device[stip]
            name, *wanted = (ast.literal_eval(arg) for arg in element.args)
            found.append(f"coinfer-{name}[{','.join(wanted)}]" if wanted else f"coinfer-{name}")
        else:
            found.append(ast.literal_eval(element))
    return found


def resolve(requirements: list[str], environment: dict[str, str]) -> list[str]:
    """Third-party requirements, following coinfer-* ones into their pyproject.toml (with extras)."""
    from packaging.requirements import Requirement

    found: list[str] = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        if requirement.name.startswith("coinfer-"):
            project = tomllib.loads((ROOT / requirement.name.removeprefix("coinfer-") / "pyproject.toml")
                                    .read_text())["project"]
            inner = list(project["dependencies"])
            for extra in sorted(requirement.extras):
                inner += project["optional-dependencies"][extra]
            found += resolve(inner, environment)
        elif text not in found:
            found.append(text)
    return found


#: Raspberry Pi OS Bookworm, 64-bit: Python 3.11 on Debian 12's glibc 2.36. pip takes --platform
#: literally (manylinux_2_27 does not admit a manylinux_2_17 wheel), so every tag that system
#: accepts is listed.
PI_PLATFORMS = ["manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37))]
PI_ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython",
                  "extra": ""}


@pytest.mark.slow
def test_every_device_dependency_and_kivy_has_a_wheel_for_a_64_bit_raspberry_pi(tmp_path):
    requirements = resolve(extra_requirements("device"), PI_ENVIRONMENT)
    names = {re.split(r"[<>=!~\[; ]", text)[0].lower() for text in requirements}
    assert {"numpy", "ai-edge-litert", "av", "msgpack", "tokenizers"} <= names and not any(
        name.startswith("coinfer") or name == "tomli" for name in names), names
    app = extra_requirements("app")
    assert [re.split(r"[<>=]", text)[0] for text in app] == ["kivy"]
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "-d", str(tmp_path / "probe"), "tqdm"], capture_output=True, text=True,
                           timeout=600)
    if probe.returncode != 0:
        pytest.skip(f"the package index cannot be reached: {probe.stderr.strip().splitlines()[-1:]}")
    platforms = [flag for platform in PI_PLATFORMS for flag in ("--platform", platform)]
    download = subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", *platforms,
                               "--python-version", "3.11", "--no-deps", "-d", str(tmp_path / "wheels"),
                               *requirements, *app], capture_output=True, text=True, timeout=600)
    assert download.returncode == 0, download.stderr[-3000:]
    wheels = sorted(path.name for path in (tmp_path / "wheels").iterdir())
    assert len(wheels) == len(requirements) + len(app), wheels
    for wheel in wheels:
        assert wheel.endswith("-none-any.whl") or re.search(r"manylinux[0-9_]*_aarch64", wheel), wheel
