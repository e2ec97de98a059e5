"""`coinfer data drift` and the scenes' `backgrounds` option: the drifting workload evolve runs on."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from coinfer.bench.data import actors, drift, scenes
from coinfer.bench.data.drift import (
    DOMAIN_IDS,
    TASKS,
    DriftFormatError,
    DriftOptions,
    DriftSet,
    agreement,
    generate_drift,
    stream_split,
)
from coinfer.bench.data.scenes import SceneOptions, generate_scenes
from coinfer.sdk.cli.main import main
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.scenes import write_npz

pytest.importorskip("av")
pytest.importorskip("cv2")
pytest.importorskip("skimage")
pytest.importorskip("onnxruntime")

# Every domain in a few frames: one camera per generated domain for one second (2 frames at
# 2 fps, 10 at 10 fps) and two frames of each real clip.
TINY = DriftOptions(size=32, seconds=1.0, cameras=1, source_cameras=1, footage_frames=2,
                    width=192, height=128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> DriftSet:
    return generate_drift(tmp_path_factory.mktemp("drift") / "tiny", TINY, workers=1, progress=False)


def arrays_of(drift_set: DriftSet) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for domain_id in drift_set.ids:
        with np.load(drift_set.root / f"{domain_id}.npz", allow_pickle=False) as archive:
            out[domain_id] = {name: archive[name] for name in archive.files}
    return out


# --- format --------------------------------------------------------------------------


def test_index_follows_the_documented_format(tiny):
    index = json.loads((tiny.root / "drift.json").read_text())
    assert index["format"] == "coinfer-drift" and index["version"] == 1
    assert index["size"] == 32 and index["seed"] == 0
    assert index["tasks"] == ["people", "faces", "cats", "text"]
    assert index["options"] == dataclasses.asdict(TINY)
    assert [d["id"] for d in index["domains"]] == ["source", "A", "B", "C", "D", "E", "F"] == list(DOMAIN_IDS)
    assert sorted(index["files"]) == sorted(f"{i}.npz" for i in DOMAIN_IDS)
    frames = {d["id"]: d["frames"] for d in index["domains"]}
    # The same second at 10, 5 and 2 fps; the footage keeps two frames of each of three clips.
    assert (frames["A"], frames["B"], frames["C"], frames["source"]) == (10, 5, 2, 5)
    assert frames["F"] == 6
    for entry in index["domains"]:
        assert entry["kind"] == ("footage" if entry["id"] == "F" else "generated")
        assert entry["train"] + entry["test"] == entry["frames"]
        assert entry["train"] >= 1 and entry["test"] >= 1
        assert set(entry["positives"]) == set(TASKS)
        assert all(0.0 <= share <= 1.0 for share in entry["positives"].values())
    footage = index["domains"][-1]
    clips = [s["clip"] for s in footage["sources"]]
    assert clips == ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"]
    assert footage["fps"] is None and footage["agreement"] is None  # 25 and 29.97 fps; no truth
    assert [s["annotated_at"] for s in footage["sources"]] == [[640, 272], [640, 360], [176, 144]]


def test_domain_arrays_have_the_documented_shapes(tiny):
    for domain_id in DOMAIN_IDS:
        domain = tiny.domain(domain_id)
        n = len(domain)
        assert domain.frames.dtype == np.uint8 and domain.frames.shape == (n, 32, 32, 3)
        assert domain.labels.dtype == np.bool_ and domain.labels.shape == (n, 4)
        assert domain.small.shape == (n,) and domain.split.dtype == np.int8
        assert domain.time.dtype == np.float32 and domain.time[0] == 0.0 and np.all(np.diff(domain.time) >= 0)
        assert np.array_equal(domain.train(), domain.split == 0)
        assert np.array_equal(domain.test(), ~domain.train())
        assert domain.frames.std() > 5, "frames are pictures, not blank"
        if domain.kind == "generated":
            assert domain.truth is not None and domain.truth.shape == (n, 4) and domain.has_truth
        else:
            assert domain.truth is None and not domain.has_truth
    a = tiny.domain("A")
    np.testing.assert_allclose(a.time, np.arange(10) / 10, atol=1e-6)
    assert a.split.tolist() == [0] * 6 + [1] * 4  # 60/40 in time order
    with np.load(tiny.root / "F.npz", allow_pickle=False) as archive:
        assert "truth" not in archive.files


def test_footage_frames_are_the_clips_frames(tiny):
    """Two frames per clip, the first and the last: frame times per clip are 0 and its length."""
    footage = tiny.domain("F")
    last = [119 * 1001 / 30000, 131 / 25, 249 / 25]  # carphone at 29.97 fps, the others at 25
    np.testing.assert_allclose(np.sort(footage.time), [0, 0, 0, *last], atol=1e-5)
    assert footage.split.tolist().count(0) == 3  # the first frame of every clip is uploaded
    import cv2

    from coinfer.bench.split.images import clip_frames

    first = clip_frames("carphone_pristine.mp4", 1)[0]
    expected = cv2.resize(first, (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.int16)
    assert min(np.abs(frame.astype(np.int16) - expected).mean() for frame in footage.frames[:3]) < 3.0


def test_night_is_infrared_grey_the_country_is_mono_and_the_campus_in_colour(tiny):
    index = {d["id"]: d for d in tiny.index["domains"]}
    assert index["E"]["night"] == 1.0 and all(index[i]["night"] == 0.0 for i in ("source", "A", "D"))
    assert index["D"]["scenes"]["sensor"] == "mono" and index["A"]["scenes"]["sensor"] == "colour"

    def colour(domain: str) -> np.ndarray:
        """Per frame, the mean spread between a pixel's strongest and weakest channel."""
        frames = tiny.domain(domain).frames.astype(np.float32)
        return (frames.max(axis=-1) - frames.min(axis=-1)).mean(axis=(1, 2))

    assert colour("E").max() < 2.0 and colour("D").max() < 2.0  # grey by night, grey on a mono sensor
    assert colour("A").max() > 5.0  # the campus by day (once the morning is bright enough), in colour


def test_domains_watch_their_own_backgrounds(tiny):
    index = {d["id"]: d for d in tiny.index["domains"]}
    assert {s["background"] for s in index["source"]["sources"]} <= {"cafe", "launch-pad"}
    assert {s["background"] for s in index["D"]["sources"]} <= set(actors.RURAL_BACKGROUNDS)
    assert all({s["background"] for s in index[i]["sources"]} <= {"garage", "lawn"} for i in "ABC")
    seeds = [index[i]["scenes"]["seed"] for i in DOMAIN_IDS[:-1]]
    assert len(set(seeds)) == len(seeds), "every domain draws from its own seed stream"


def test_labels_and_truth_agree_as_recorded(tiny):
    for entry in tiny.index["domains"]:
        domain = tiny.domain(entry["id"])
        shares = [entry["positives"][t] for t in TASKS]
        np.testing.assert_allclose(shares, domain.labels.mean(axis=0), atol=1e-6)
        if entry["agreement"] is None:
            continue
        for t, task in enumerate(TASKS):
            recorded = entry["agreement"][task]
            assert recorded["truth_positives"] == int(domain.truth[:, t].sum())
            assert recorded["label_positives"] == int(domain.labels[:, t].sum())
            assert recorded["accuracy"] == pytest.approx(np.mean(domain.labels[:, t] == domain.truth[:, t]))
            for key in ("precision", "recall", "accuracy"):
                assert recorded[key] is None or 0.0 <= recorded[key] <= 1.0


def test_agreement_and_stream_split():
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    truth = np.array([1, 1, 0, 1, 0, 0], bool)
    assert agreement(labels, truth) == {"precision": 2 / 3, "recall": 2 / 3, "accuracy": 4 / 6,
                                        "truth_positives": 3, "label_positives": 3}
    nothing = agreement(np.zeros(3, bool), np.zeros(3, bool))
    assert nothing["precision"] is None and nothing["recall"] is None and nothing["accuracy"] == 1.0
    assert stream_split(10, 0.6).tolist() == [0] * 6 + [1] * 4
    assert stream_split(2, 0.9).tolist() == [0, 1]  # one frame kept for testing
    assert stream_split(2, 0.1).tolist() == [0, 1]  # one frame uploaded


# --- determinism ---------------------------------------------------------------------


@pytest.mark.slow  # builds a two-camera tiny set twice, once with cameras and clips over two processes
def test_same_seed_gives_identical_arrays_whatever_the_worker_count(tmp_path):
    options = dataclasses.replace(TINY, cameras=2)
    one = generate_drift(tmp_path / "one", options, workers=1, progress=False)
    two = generate_drift(tmp_path / "two", options, workers=2, progress=False)
    assert two.index["files"] == one.index["files"]
    assert (two.root / "drift.json").read_bytes() == (one.root / "drift.json").read_bytes()


def test_another_seed_gives_other_generated_frames(tiny, tmp_path):
    # Only the generated domains depend on the seed; domain A alone keeps this quick.
    plan = drift.DOMAINS[1]
    one, _ = drift._generated_domain(plan, 1, TINY, tmp_path, 1, False)
    other, _ = drift._generated_domain(plan, 1, dataclasses.replace(TINY, seed=1), tmp_path, 1, False)
    np.testing.assert_array_equal(one["frames"], tiny.domain("A").frames)
    assert not np.array_equal(one["frames"], other["frames"])
    assert not list(tmp_path.iterdir()), "the temporary scene sets are deleted"


# --- loader ----------------------------------------------------------------------------


@pytest.fixture
def copy_of(tiny, tmp_path):
    return shutil.copytree(tiny.root, tmp_path / "copy")


def test_loader_rejects_a_tampered_file(copy_of):
    path = copy_of / "D.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DriftFormatError, match=r"D\.npz does not match its sha256"):
        DriftSet.load(copy_of)


def test_loader_rejects_missing_files_and_other_versions(copy_of):
    index = json.loads((copy_of / "drift.json").read_text())
    (copy_of / "drift.json").write_text(json.dumps({**index, "version": 2}))
    with pytest.raises(DriftFormatError, match=r"drift\.json: version 2 is not supported"):
        DriftSet.load(copy_of)
    (copy_of / "drift.json").write_text(json.dumps(index))
    (copy_of / "C.npz").unlink()
    with pytest.raises(DriftFormatError, match=r"C\.npz is missing"):
        DriftSet.load(copy_of)
    (copy_of / "drift.json").unlink()
    with pytest.raises(DriftFormatError, match=r"drift\.json is missing: not a drift set"):
        DriftSet.load(copy_of)


def rewrite(root, name: str, change) -> None:
    """Apply ``change`` to a domain's arrays and re-hash the file, so only shape checks can object."""
    from coinfer.sdk.datadir import sha256_file

    path = root / name
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(arrays)
    write_npz(path, arrays)
    index = json.loads((root / "drift.json").read_text())
    index["files"][name] = sha256_file(path)
    (root / "drift.json").write_text(json.dumps(index))


@pytest.mark.parametrize(("name", "change", "message"), [
    ("B.npz", lambda a: a.pop("truth"), "has no array 'truth'"),
    ("B.npz", lambda a: a.update(labels=a["labels"][:, :3]), "'labels' is bool (5, 3), expected bool (5, 4)"),
    ("B.npz", lambda a: a.update(frames=a["frames"][:, :16]), "array 'frames' is uint8 (5, 16, 32, 3)"),
    ("B.npz", lambda a: a.update(split=np.full(5, 2, np.int8)), "split must hold only 0 (train) and 1"),
    ("F.npz", lambda a: a.update(truth=np.zeros((6, 4), bool)), "unexpected array(s) ['truth']"),
    ("F.npz", lambda a: a.pop("time"), "missing array(s) 'time'"),
])
def test_loader_checks_the_arrays(copy_of, name, change, message):
    rewrite(copy_of, name, change)
    with pytest.raises(DriftFormatError, match=name.replace(".", r"\.")) as caught:
        DriftSet.load(copy_of)
    assert message in str(caught.value)


def test_unknown_domain_or_task_is_a_clear_error(tiny):
    with pytest.raises(InvalidArgumentError, match="has no domain 'G'; it has source, A, B, C, D, E, F"):
        tiny.domain("G")
    assert tiny.domain("A").task("cats") == 2
    with pytest.raises(InvalidArgumentError, match="unknown task 'dogs'"):
        tiny.domain("A").task("dogs")


@pytest.mark.parametrize(("fields", "message"), [
    ({"size": 8}, "size must be an integer in [16, 512]"),
    ({"seconds": 0.5}, "seconds must be in [1, 3600]"),
    ({"cameras": 0}, "cameras must be an integer in [1, 64]"),
    ({"train_fraction": 1.0}, "train_fraction must be in (0, 1)"),
    ({"footage_frames": True}, "footage_frames must be an integer"),
])
def test_options_are_validated(fields, message):
    with pytest.raises(InvalidArgumentError, match="invalid drift options") as caught:
        DriftOptions(**fields)
    assert message in str(caught.value)


def test_an_existing_output_is_refused_before_any_work(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(CoinferError, match="already exists"):
        generate_drift(tmp_path / "taken", TINY, workers=1, progress=False)
    with pytest.raises(InvalidArgumentError, match="workers must be an integer"):
        generate_drift(tmp_path / "new", TINY, workers=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_modules_import_without_video_or_vision_libraries():
    probe = ("import sys\n"
             "import coinfer.bench.data.drift, coinfer.bench.cli.data_drift\n"
             "heavy = ('av', 'cv2', 'skimage', 'onnxruntime', 'tqdm')\n"
             "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the scenes' backgrounds and sensor options -----------------------------------------


def test_backgrounds_restrict_what_cameras_watch():
    rural = SceneOptions(cameras=12, backgrounds=("meadow", "gravel-track"))
    assert rural.backgrounds == ("gravel-track", "meadow")  # sorted: the order given does not matter
    assert SceneOptions(cameras=12, backgrounds="meadow,gravel-track") == rural
    assert {scenes.CameraPlan.draw(rural, i).background for i in range(12)} == {"meadow", "gravel-track"}
    default = [scenes.CameraPlan.draw(SceneOptions(cameras=32), i).background for i in range(32)]
    assert set(default) == set(actors.DEFAULT_BACKGROUNDS)  # country photographs only when asked for
    # Only the background's draw reads the list: the rest of the plan is the same draws.
    one = scenes.CameraPlan.draw(SceneOptions(backgrounds=("cafe",)), 3)
    two = scenes.CameraPlan.draw(SceneOptions(backgrounds=("lawn",)), 3)
    assert one.busyness == two.busyness and one.kind_weights == two.kind_weights
    assert one.sunrise == two.sunrise and one.background == "cafe" and two.background == "lawn"


def test_country_backgrounds_are_coloured_photographs():
    for name in actors.RURAL_BACKGROUNDS:
        image = actors.background(name)
        assert image.dtype == np.uint8 and image.shape == (512, 512, 3)
        assert image.std() > 20 and np.abs(image[..., 1].astype(int) - image[..., 2]).mean() > 10


@pytest.mark.parametrize(("value", "message"), [
    (("meadow", "moon"), "unknown background(s) ['moon']"),
    ((), "backgrounds must name at least one"),
])
def test_backgrounds_are_validated(value, message):
    with pytest.raises(CoinferError, match="invalid scene options") as caught:
        SceneOptions(backgrounds=value)
    assert message in str(caught.value)


def test_sensor_is_validated():
    with pytest.raises(CoinferError, match="unknown sensor 'infrared'; choose from colour, mono"):
        SceneOptions(sensor="infrared")


def test_scenes_cli_takes_backgrounds_and_sensor(tmp_path, capsys):
    out = tmp_path / "rural"
    assert main(["data", "scenes", "--out", str(out), "--cameras", "2", "--seconds", "1", "--fps", "2",
                 "--size", "160x96", "--tasks", "", "--backgrounds", "meadow", "--sensor", "mono",
                 "--day-start", "12:00", "--day-end", "13:00", "--quiet"]) == 0
    index = json.loads((out / "scenes.json").read_text())
    assert index["backgrounds"] == ["meadow"] and {c["background"] for c in index["cameras"]} == {"meadow"}
    assert index["sensor"] == "mono"
    frames = np.stack([frame for _, frame in scenes.decode_frames(out / index["cameras"][0]["video"])])
    # Noon on a mono sensor: grey (the green meadow photograph has lost its colour) and flat.
    assert np.abs(frames[..., 1].astype(int) - frames[..., 2]).mean() < 3
    assert frames.min() >= scenes.MONO_LIFT - 20
    capsys.readouterr()
    bad = ["--out", str(tmp_path / "bad"), "--backgrounds", "meadow,mars", "--quiet"]
    assert main(["data", "scenes", *bad]) == 1
    assert "unknown background(s) ['mars']" in capsys.readouterr().err


def test_a_set_without_backgrounds_records_none(tmp_path):
    options = SceneOptions(cameras=1, seconds=1, fps=2, width=96, height=64, tasks=())
    index = json.loads((generate_scenes(tmp_path / "s", options, workers=1, progress=False).root
                        / "scenes.json").read_text())
    assert "backgrounds" not in index  # the index of a default set is as it always was
