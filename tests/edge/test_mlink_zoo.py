"""The MLink workload: seven real models on aligned frame + audio steps, their outputs in the
formats MLink links, the crowd CNN we train, and the recorded table with its costs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zlib

import numpy as np
import pytest

from coinfer.bench.data import speech
from coinfer.bench.data.scenes import SceneOptions, generate_scenes
from coinfer.edge.mlink.recording import iterate_steps, measure_peak_memory, nonempty, record_outputs
from coinfer.edge.mlink.zoo import (
    MAX_WORDS,
    MODEL_NAMES,
    SpeechModel,
    Step,
    WordsModel,
    create_model,
    create_zoo,
)
from coinfer.edge.models import ocr
from coinfer.edge.models.crowd import (
    CrowdClassifier,
    CrowdModelError,
    crowd_labels,
    downscale,
    export_crowd_network,
    fit_crowd_network,
    network_probabilities,
    save_crowd_classifier,
)
from coinfer.edge.models.vad import model_path as vad_model_path
from coinfer.sdk.artifact import ArtifactError, Manifest, save_artifact
from coinfer.sdk.cli.main import main
from coinfer.sdk.errors import CoinferError, ModelNotAvailableError
from coinfer.sdk.mlink.outputs import OutputSpec
from coinfer.sdk.mlink.table import OutputTable
from coinfer.sdk.scenes import SceneSet

pytest.importorskip("av")
pytest.importorskip("cv2")
pytest.importorskip("torch")

# Daytime at a doubled crowd. With seed 2 (measured): camera 0 has signs but nobody in view
# and no speech; camera 1 has signs, 0, 1 and 2+ people, and speech in 11 of its 30 steps.
TINY = SceneOptions(cameras=2, seconds=3, fps=10, tasks=(), seed=2, day_start="07:00", day_end="19:00",
                    crowd=2, audio=True)
STEPS = 60
CONTEXT = {"camera", "index", "night", "people", "speech_truth", "clock_hours"}


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory) -> SceneSet:
    try:
        speech.espeak_paths()
    except ModelNotAvailableError as error:
        pytest.skip(str(error))
    return generate_scenes(tmp_path_factory.mktemp("zoo") / "scenes", TINY, workers=1, progress=False)


@pytest.fixture(scope="module")
def steps(scene_set) -> list[Step]:
    return list(iterate_steps(scene_set.root))


@pytest.fixture(scope="module")
def crowd(steps, scene_set):
    """The crowd CNN trained a few epochs on the tiny set: (network, ONNX bytes, inputs, labels)."""
    inputs = downscale(np.stack([step.frame for step in steps]))
    labels = np.concatenate([crowd_labels(camera) for camera in scene_set.cameras])
    network = fit_crowd_network(inputs, labels, epochs=45, seed=0)
    return network, export_crowd_network(network), inputs, labels


@pytest.fixture(scope="module")
def memory_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("memory") / "outputs.memory.json"


@pytest.fixture(scope="module")
def table(scene_set, crowd, memory_cache) -> OutputTable:
    return record_outputs(scene_set.root, create_zoo(crowd[1]), progress=False, memory_cache=memory_cache)


def test_steps_pair_each_frame_with_its_audio_window(scene_set, steps):
    assert len(steps) == STEPS
    assert [(s.camera, s.index) for s in steps] == [(c, k) for c in range(2) for k in range(30)]
    for step in steps[::7]:
        assert step.frame.dtype == np.uint8 and step.frame.shape == (TINY.height, TINY.width, 3)
        np.testing.assert_array_equal(step.audio, scene_set.cameras[step.camera].audio_window(step.index))
    assert steps[0].audio.dtype == np.float32 and steps[0].audio.shape == (TINY.samples_per_frame,)


def test_a_scene_set_without_audio_is_refused(tmp_path):
    silent = generate_scenes(tmp_path / "silent", dataclasses.replace(TINY, audio=False, seconds=0.5),
                             workers=1, progress=False)
    with pytest.raises(CoinferError, match="has no audio track"):
        next(iterate_steps(silent.root))


@pytest.mark.slow  # trains the crowd CNN and runs the seven real models (the table fixture)
def test_every_output_fits_its_spec(table):
    assert table.models == list(MODEL_NAMES)
    expected = {"faces": OutputSpec.classes(4), "cats": OutputSpec.presence(), "people": OutputSpec.boxes(),
                "text": OutputSpec.boxes(), "words": OutputSpec.sequence(max_length=MAX_WORDS),
                "speech": OutputSpec.presence(), "crowd": OutputSpec.classes(3)}
    assert table.specs == expected
    for name, spec in table.specs.items():
        checked = spec.check(table.outputs[name], name)
        assert len(checked) == STEPS
    faces = table.outputs["faces"]
    assert set(np.unique(faces)) <= {0.0, 1.0} and np.all(faces.sum(axis=1) == 1)
    np.testing.assert_allclose(table.outputs["crowd"].sum(axis=1), 1.0, atol=1e-5)
    for name in ("people", "text"):
        boxes = table.outputs[name]
        assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 0] + boxes[:, 2] <= 1 + 1e-6)
    # The signs of both cameras are found and read; the models are not all silent.
    assert nonempty(table.specs["text"], table.outputs["text"]).mean() > 0.3
    assert nonempty(table.specs["words"], table.outputs["words"]).mean() > 0.3


@pytest.mark.slow  # runs the real OCR detector and recognizer on 20 frames
def test_word_tokens_are_crc32_of_the_lower_cased_words(steps):
    model = WordsModel()
    read = 0
    for step in steps[::3]:
        words = model.words(step.frame)
        tokens = model(step)
        assert all(word == word.lower() and word.split() == [word] for word in words)
        assert tokens == tuple(zlib.crc32(word.encode()) & 0x7FFFFFFF for word in words[:MAX_WORDS])
        read += bool(words)
    assert read >= 5
    # A frame with 16 words keeps the first 12 in reading order.
    image, _ = ocr.render_text_image(["Speed 88 Room four", "Apple Banana Cherry Delta",
                                      "Echo Foxtrot Golf Hotel", "India Juliet Kilo Lima"])
    page = Step(np.ascontiguousarray(image[..., ::-1]), steps[0].audio, 0, 0)
    words = model.words(page.frame)
    assert len(words) > MAX_WORDS and words[:3] == ["speed", "88", "room"]
    assert model(page) == tuple(zlib.crc32(word.encode()) & 0x7FFFFFFF for word in words[:MAX_WORDS])


@pytest.mark.slow  # trains the crowd CNN and runs the seven real models (the table fixture)
def test_speech_is_higher_where_the_scene_has_speech(table):
    truth = table.context["speech_truth"]
    assert truth.any() and not truth.all()
    scores = table.outputs["speech"][:, 0]
    assert scores[truth].mean() > scores[~truth].mean() + 0.3
    assert np.mean((scores > 0.5) == truth) > 0.8


@pytest.mark.slow  # trains the crowd CNN and runs the seven real models (the table fixture)
def test_speech_state_is_reset_for_each_camera(steps, table):
    first = [step for step in steps if step.camera == 0]
    second = [step for step in steps if step.camera == 1]
    model = SpeechModel()
    alone = np.array([model(step) for step in second])
    model.reset()
    for step in first:
        model(step)
    carried = np.array([model(step) for step in second])
    model.reset()
    after_reset = np.array([model(step) for step in second])
    np.testing.assert_array_equal(after_reset, alone)
    assert not np.array_equal(carried, alone)  # the state really does carry over without a reset
    np.testing.assert_array_equal(table.outputs["speech"][table.context["camera"] == 1], alone)


@pytest.mark.slow  # trains the crowd CNN and runs the seven real models (the table fixture)
def test_record_outputs_keeps_context_and_costs(table, scene_set, memory_cache, tmp_path):
    assert len(table) == STEPS and set(table.context) == CONTEXT
    context = table.context
    np.testing.assert_array_equal(context["camera"], np.repeat([0, 1], 30))
    np.testing.assert_array_equal(context["index"], np.tile(np.arange(30), 2))
    assert context["night"].dtype == bool and context["speech_truth"].dtype == bool
    people = np.concatenate([c.truth_counts("face", 0.3) + c.truth_counts("person", 0.3)
                             for c in scene_set.cameras])
    np.testing.assert_array_equal(context["people"], people)
    speech_truth = np.concatenate([c.speech for c in scene_set.cameras])
    np.testing.assert_array_equal(context["speech_truth"], speech_truth)
    assert set(table.costs) == set(MODEL_NAMES)
    for name, costs in table.costs.items():
        assert costs["ms"] > 0 and costs["mib"] >= 0, name
    assert table.costs["text"]["mib"] > table.costs["faces"]["mib"]
    table.save(tmp_path / "outputs.npz")
    loaded = OutputTable.load(tmp_path / "outputs.npz")
    assert loaded.costs == table.costs and loaded.outputs["words"] == table.outputs["words"]
    # The peak memory is cached per model: a second measurement reads the cache.
    cache = json.loads(memory_cache.read_text())
    assert len(cache["mib"]) == len(MODEL_NAMES)
    cache["mib"] = {key: 123.0 for key in cache["mib"]}
    memory_cache.write_text(json.dumps(cache))
    zoo = {name: create_model(name) for name in ("faces", "speech")}
    assert measure_peak_memory(scene_set, zoo, cache=memory_cache, progress=False) == \
        {"faces": 123.0, "speech": 123.0}


@pytest.mark.slow  # trains the crowd CNN and runs the seven real models (the table fixture)
def test_the_command_line_records_the_same_table(scene_set, crowd, table, memory_cache, tmp_path, capsys):
    save_crowd_classifier(tmp_path / "crowd", crowd[1])
    out = tmp_path / "outputs.npz"
    shutil.copy(memory_cache, tmp_path / "outputs.memory.json")  # the cache the command reads
    code = main(["mlink", "record", "--scenes", str(scene_set.root), "--crowd", str(tmp_path / "crowd"),
                 "--out", str(out), "--quiet"])
    assert code == 0 and "60" in capsys.readouterr().out
    again = OutputTable.load(out)
    for name in MODEL_NAMES:
        if table.specs[name].is_sequence:
            assert again.outputs[name] == table.outputs[name], name
        else:
            np.testing.assert_array_equal(again.outputs[name], table.outputs[name], err_msg=name)
    assert {name: costs["mib"] for name, costs in again.costs.items()} == dict.fromkeys(MODEL_NAMES, 123.0)


@pytest.mark.slow  # trains the crowd CNN (the crowd fixture)
def test_the_crowd_cnn_learns_and_exports_exactly(crowd):
    network, onnx_bytes, inputs, labels = crowd
    majority = np.bincount(labels).max() / len(labels)
    classifier = CrowdClassifier(onnx_bytes)
    assert np.mean(classifier.predict(inputs).argmax(axis=1) == labels) > majority
    np.testing.assert_allclose(classifier.predict(inputs[:6]), network_probabilities(network, inputs[:6]),
                               atol=1e-5)
    # Deterministic for a seed.
    a, b = (network_probabilities(fit_crowd_network(inputs, labels, epochs=1, seed=3), inputs[:4])
            for _ in range(2))
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # trains the crowd CNN (the crowd fixture)
def test_a_corrupt_or_foreign_crowd_model_is_rejected(crowd, steps, tmp_path):
    onnx_bytes = crowd[1]
    artifact = save_crowd_classifier(tmp_path / "crowd", onnx_bytes, metrics={"held_out_accuracy": 0.5})
    np.testing.assert_array_equal(CrowdClassifier(artifact.path)(steps[0].frame),
                                  CrowdClassifier(onnx_bytes)(steps[0].frame))
    model_file = artifact.path / "crowd.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"crowd\.onnx: sha256 mismatch"):
        create_zoo(artifact.path)
    with pytest.raises(CrowdModelError, match="not a loadable ONNX model"):
        CrowdClassifier(b"not an onnx model")
    with pytest.raises(CrowdModelError, match="is not a crowd classifier"):
        CrowdClassifier(vad_model_path())
    other = save_artifact(tmp_path / "other", Manifest(capability="mlink", kind="link-graph"),
                          {"crowd.onnx": onnx_bytes})
    with pytest.raises(ArtifactError, match="kind is 'link-graph', expected 'crowd-classifier'"):
        CrowdClassifier(other.path)
    with pytest.raises(CoinferError, match="the crowd model needs the trained crowd CNN"):
        create_model("crowd")
    with pytest.raises(CoinferError, match="unknown zoo model 'pose'"):
        create_model("pose")


@pytest.mark.slow  # trains the crowd CNN and runs the seven real models (the table fixture)
def test_the_live_runner_runs_the_real_models_only_where_asked(scene_set, crowd, table):
    from coinfer.edge.mlink.live import ZooRunner

    zoo, costs = create_zoo(crowd[1]), {name: 1.0 for name in MODEL_NAMES}
    runner = ZooRunner(scene_set, zoo, costs, window=40)
    rows = np.array([3, 10, 25, 39])  # both cameras: the second starts at step 30
    for name in ("faces", "people", "crowd"):
        np.testing.assert_array_equal(runner(name, rows), table.outputs[name][rows], err_msg=name)
    assert runner("words", rows) == [table.outputs["words"][row] for row in rows]
    assert runner("text", np.array([], np.int64)).shape == (0, 4)
    assert runner.calls == {**dict.fromkeys(MODEL_NAMES, 0), "faces": 4, "people": 4, "crowd": 4, "words": 4}
    assert runner.seconds["cats"] == 0 and runner.seconds["faces"] > 0
    runner("cats", np.array([40]))
    with pytest.raises(CoinferError, match=r"step 0 is no longer kept: only the last 40 .* \(up to 40\)"):
        runner("faces", np.array([0]))
    with pytest.raises(CoinferError, match="the scene set has 60 steps; serving asked for step 60"):
        runner("faces", np.array([60]))
    streamed = ZooRunner(scene_set, zoo, costs)
    every = np.arange(STEPS)
    np.testing.assert_array_equal(streamed("speech", every), table.outputs["speech"])  # reset per camera
    streamed.restart()
    np.testing.assert_array_equal(streamed("speech", every[:30]), table.outputs["speech"][:30])
    with pytest.raises(CoinferError, match=r"costs name model\(s\) \['lidar'\]"):
        ZooRunner(scene_set, create_zoo(crowd[1]), {"lidar": 1.0})


@pytest.mark.slow  # trains the crowd CNN and runs the seven real models (the table fixture)
def test_mlink_run_serves_live_what_it_replays(scene_set, crowd, table, tmp_path):
    from coinfer.sdk.cli.main import main

    save_crowd_classifier(tmp_path / "crowd", crowd[1])
    table.save(tmp_path / "outputs.npz")
    assert main(["mlink", "train", "--records", str(tmp_path / "outputs.npz"), "--epochs", "3",
                 "--out", str(tmp_path / "links")]) == 0
    # A memory budget: a time budget carries the measured link time into later periods, so two
    # runs would plan alike only on an idle machine; this compares where the models run.
    common = ["mlink", "run", "--links", str(tmp_path / "links"), "--records", str(tmp_path / "outputs.npz"),
              "--budget-fraction", "0.3", "--cost", "mib", "--period", "20", "--profile-fraction", "0.1"]
    assert main([*common, "--json", str(tmp_path / "replay.json")]) == 0
    assert main([*common, "--scenes", str(scene_set.root), "--crowd", str(tmp_path / "crowd"),
                 "--json", str(tmp_path / "live.json")]) == 0
    replay, live = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("replay", "live"))
    assert live["plans"] == replay["plans"]
    assert {key: value for key, value in live.items() if key.startswith("runs ")} == \
        {key: value for key, value in replay.items() if key.startswith("runs ")}
    assert live["mean output accuracy"] == pytest.approx(replay["mean output accuracy"], abs=0.02)
    assert live["live model seconds"] > 0 and live["recorded seconds of every model"] > 0
    assert main([*common, "--scenes", str(scene_set.root)]) != 0
