"""``coinfer infi train | export | run | analyze`` end to end (the bench has its own test)."""

import contextlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest

from coinfer.sdk.cli.main import main
from coinfer.sdk.infi import InputError, MeasurementError, Records, RecordsError, create_measurement


def test_analyze_reports_verdict_and_break_even(tmp_path, capsys):
    out = tmp_path / "a.json"
    assert main(["infi", "analyze", "--measurement", "class-subset", "--option", "keep=sports,finance",
                 "--filter-ms", "1", "--model-ms", "9", "--filtered-ms", "1", "--filter-rate", "0.4",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["filterable"] and report["pays_off"]
    assert report["break_even_rate"] == pytest.approx(0.125)
    assert "why:" in capsys.readouterr().out


def test_analyze_says_confidence_thresholds_are_not_filterable(tmp_path):
    out = tmp_path / "a.json"
    assert main(["infi", "analyze", "--measurement", "confidence-below", "--option", "threshold=0.9",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert not report["filterable"] and report["verdict"].startswith("not filterable")


def test_analyze_rejects_half_given_costs_and_bad_options(capsys):
    assert main(["infi", "analyze", "--measurement", "empty", "--filter-ms", "1"]) == 1
    assert "both" in capsys.readouterr().err
    assert main(["infi", "analyze", "--measurement", "empty", "--option", "nonsense"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["infi", "analyze", "--measurement", "confidence-below", "--option", "threshold=2"]) == 1
    assert "(0, 1)" in capsys.readouterr().err


# --- coinfer infi train | export | run -----------------------------------------------------

def vector_records(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8 features; the 'detector' finds 1-3 objects when the first four sum above 0, else none."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 8)).astype(np.float32)
    counts = np.where(x[:, :4].sum(axis=1) > 0, rng.integers(1, 4, rows), 0)
    return x, counts


def cli(*argv: str) -> tuple[int, str]:
    """Run ``coinfer infi ...`` in this process; the exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["infi", *argv])
    return status, out.getvalue()


@pytest.fixture(scope="module")
def skip_filter_run(tmp_path_factory):
    """Records -> train (empty measurement) -> export float32 and int8, through the CLI."""
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("infi-cli")
    Records(*vector_records(300, seed=0)).save(root / "train.npz")
    Records(*vector_records(120, seed=1)).save(root / "test.npz")
    trained = cli("train", "--records", str(root / "train.npz"), "--measurement", "empty", "--epochs", "6",
                  "--out", str(root / "filter"))
    float32 = cli("export", "--filter", str(root / "filter"), "--out", str(root / "f32"))
    int8 = cli("export", "--filter", str(root / "filter"), "--quantization", "int8",
               "--calibration", str(root / "train.npz"), "--out", str(root / "int8"))
    return root, {"train": trained, "float32": float32, "int8": int8}


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.slow  # trains and exports a TensorFlow filter through the CLI (the skip_filter_run fixture)
def test_train_saves_a_skip_filter_that_records_its_measurement(skip_filter_run):
    root, runs = skip_filter_run
    status, printed = runs["train"]
    assert status == 0
    for row in ("redundant_fraction", "validation_filter_rate", "threshold", "vector (8,)"):
        assert row in printed
    meta = manifest(root / "filter")["metadata"]
    assert meta["filter"] == "skip" and meta["inputs"] == {"vector": {"kind": "vector", "shape": [8],
                                                                       "vocabulary": 0}}
    assert meta["measurements"] == {"redundant": {"name": "empty", "options": {}}}
    _, counts = vector_records(300, seed=0)
    assert meta["metrics"]["records"] == 300
    assert meta["metrics"]["redundant_fraction"][0] == pytest.approx(np.mean(counts == 0), abs=1e-4)


@pytest.mark.slow  # trains and exports a TensorFlow filter through the CLI (the skip_filter_run fixture)
@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_exported_filter_runs_and_its_decisions_are_scored(skip_filter_run, quantization, tmp_path):
    from coinfer.device.infi import load_skip_filter

    root, runs = skip_filter_run
    exported = root / ("f32" if quantization == "float32" else "int8")
    assert runs[quantization][0] == 0 and quantization in runs[quantization][1]
    meta = manifest(exported)
    assert meta["kind"] == "infi-skip-tflite"
    assert meta["metadata"]["measurements"] == {"redundant": {"name": "empty", "options": {}}}
    status, printed = cli("run", "--filter", str(exported), "--records", str(root / "test.npz"),
                          "--json", str(tmp_path / "run.json"))
    assert status == 0 and "skip_precision" in printed
    report = json.loads((tmp_path / "run.json").read_text())
    x, counts = vector_records(120, seed=1)
    skipped = load_skip_filter(exported).skip(x)
    redundant = counts == 0
    assert report["records"] == 120 and report["filter"] == "skip"
    assert report["filter_rate"] == pytest.approx(skipped.mean())
    assert report["redundant_fraction"] == pytest.approx(redundant.mean())
    assert report["skip_precision"] == pytest.approx(redundant[skipped].mean())
    assert report["accuracy"] == pytest.approx(1.0 - np.mean(skipped & ~redundant))
    assert 0.2 < report["filter_rate"] < 0.9 and report["skip_precision"] > 0.7  # a filter that learned


@pytest.mark.slow  # trains and exports a TensorFlow filter through the CLI (the skip_filter_run fixture)
def test_run_loads_the_filter_without_tensorflow(run_blocked, skip_filter_run, tmp_path):
    root, _ = skip_filter_run
    run_blocked(f"""
from coinfer.sdk.cli.main import main
sys.exit(main(["infi", "run", "--filter", {str(root / 'int8')!r}, "--records", {str(root / 'test.npz')!r},
               "--json", {str(tmp_path / 'run.json')!r}]))
""")
    assert json.loads((tmp_path / "run.json").read_text())["filter_rate"] >= 0.0


@pytest.mark.slow  # trains and exports a TensorFlow filter through the CLI (the skip_filter_run fixture)
def test_run_rejects_an_unknown_measurement_and_tolerates_a_missing_one(skip_filter_run, tmp_path, capsys):
    root, _ = skip_filter_run
    for name, change in (("mystery", {"redundant": {"name": "mystery", "options": {}}}), ("old", None)):
        copy = tmp_path / name
        shutil.copytree(root / "f32", copy)
        data = manifest(copy)
        if change is None:
            del data["metadata"]["measurements"]  # exported before measurements were recorded
        else:
            data["metadata"]["measurements"] = change
        (copy / "manifest.json").write_text(json.dumps(data))
    assert main(["infi", "run", "--filter", str(tmp_path / "mystery"),
                 "--records", str(root / "test.npz")]) == 1
    assert "unknown measurement 'mystery'" in capsys.readouterr().err
    assert main(["infi", "run", "--filter", str(tmp_path / "old"), "--records", str(root / "test.npz"),
                 "--json", str(tmp_path / "old.json")]) == 0
    assert "not scored" in capsys.readouterr().err
    assert set(json.loads((tmp_path / "old.json").read_text())) == {"filter", "records", "filter_rate"}


@pytest.mark.slow  # trains and exports a TensorFlow reuse filter
def test_reuse_filter_round_trip_on_string_labels(tmp_path):
    pytest.importorskip("tensorflow")
    x, _ = vector_records(200, seed=2)
    labels = np.where(x[:, 0] > 0, "person", "nobody")
    Records(x, labels).save(tmp_path / "stream.npz")
    status, printed = cli("train", "--records", str(tmp_path / "stream.npz"), "--measurement", "label",
                          "--epochs", "3", "--out", str(tmp_path / "reuse"))
    assert status == 0 and "different_fraction" in printed  # --kind defaults to the measurement's: reuse
    assert cli("export", "--filter", str(tmp_path / "reuse"), "--out", str(tmp_path / "reuse-f32"))[0] == 0
    status, printed = cli("run", "--filter", str(tmp_path / "reuse-f32"), "--records",
                          str(tmp_path / "stream.npz"), "--json", str(tmp_path / "run.json"))
    assert status == 0
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["filter"] == "reuse" and report["records"] == 200
    assert report["reuse_rate"] > 0.3 and report["accuracy"] > 0.7
    Records(x).save(tmp_path / "inputs-only.npz")
    assert main(["infi", "run", "--filter", str(tmp_path / "reuse-f32"), "--records",
                 str(tmp_path / "inputs-only.npz")]) == 1


@pytest.fixture
def records_path(tmp_path):
    x, counts = vector_records(12, seed=3)
    return tmp_path, x, counts


def train_status(path, capsys, *extra: str) -> tuple[int, str]:
    status = main(["infi", "train", "--records", str(path), "--measurement", "empty",
                   "--out", str(path.parent / "never"), *extra])
    assert not (path.parent / "never").exists()
    return status, capsys.readouterr().err


def test_train_names_what_is_wrong_with_the_records(records_path, capsys):
    tmp, x, counts = records_path
    np.savez(tmp / "no-outputs.npz", inputs=x)
    np.savez(tmp / "mismatch.npz", inputs=x, outputs=counts[:-1])
    marker = tmp / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.savez(tmp / "objects.npz", inputs=x, outputs=np.array([Trap()] * len(x), dtype=object))
    blob = (Records(x, counts).save(tmp / "good.npz")).read_bytes()
    (tmp / "truncated.npz").write_bytes(blob[: len(blob) // 2])
    expected = {
        "no-outputs.npz": "missing array(s) 'outputs'",
        "mismatch.npz": "'inputs' has 12 rows but 'outputs' has 11",
        "objects.npz": "never unpickled",
        "truncated.npz": "truncated or corrupt",
        "absent.npz": "no such records file",
    }
    for name, message in expected.items():
        status, err = train_status(tmp / name, capsys)
        assert status == 1 and message in err and name in err, (name, err)
    assert not marker.exists()


def test_records_bound_sizes_before_allocating_and_check_crcs(records_path):
    tmp, x, counts = records_path
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**9, 8)})
    with zipfile.ZipFile(tmp / "liar.npz", "w") as archive:
        archive.writestr("inputs.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(RecordsError, match="declares"):
        Records.load(tmp / "liar.npz", require_outputs=False)
    path = Records(x, counts).save(tmp / "r.npz")
    with pytest.raises(RecordsError, match="limit"):
        Records.load(path, max_bytes=100)
    blob = bytearray(path.read_bytes())
    blob[blob.index(x.tobytes()[:16]) + 5] ^= 0xFF  # a flipped bit inside the stored inputs
    path.write_bytes(bytes(blob))
    with pytest.raises(RecordsError, match="CRC"):
        Records.load(path)


def test_records_read_outputs_the_way_each_measurement_needs(records_path):
    _, x, counts = records_path
    records = Records(x, counts.astype(np.float64))
    empty = create_measurement("empty")
    assert records.outputs_for(empty) == [int(c) for c in counts]
    assert empty.redundant_many(records.outputs_for(empty)).tolist() == (counts == 0).tolist()
    subset = create_measurement("class-subset", keep=["2"])
    assert subset.redundant_many(records.outputs_for(subset)).tolist() == (counts != 2).tolist()
    probabilities = Records(x, np.eye(3)[counts % 3] * 0.8 + 0.05)
    assert probabilities.outputs_for(create_measurement("label")) == [str(c % 3) for c in counts]
    with pytest.raises(MeasurementError, match="whole numbers"):
        Records(x, counts + 0.5).outputs_for(create_measurement("empty"))
    with pytest.raises(MeasurementError, match="negative"):
        Records(x, -counts - 1).outputs_for(create_measurement("count"))
    with pytest.raises(MeasurementError, match="numeric"):
        Records(x, np.array(["a"] * len(x))).outputs_for(create_measurement("empty"))
    with pytest.raises(MeasurementError, match="probabilities"):
        records.outputs_for(create_measurement("confidence-below"))


def test_modality_is_inferred_only_when_the_shape_says_it(records_path):
    _, x, _ = records_path
    assert Records(x).spec().kind == "vector"
    assert Records(np.zeros((2, 8, 8, 3), np.float32)).spec().kind == "image"
    assert Records(np.zeros((2, 4, 8, 8, 1), np.float32)).spec().kind == "video"
    tokens = Records(np.array([[1, 5, 9], [2, 3, 4]], np.int32))
    assert tokens.spec("text").vocabulary == 10 and tokens.spec("text", 50).vocabulary == 50
    with pytest.raises(InputError, match="text or vector"):
        tokens.spec()
    with pytest.raises(InputError, match="audio or vector"):
        Records(np.zeros((2, 20, 40), np.float32)).spec()


def test_train_and_export_refuse_bad_arguments_before_any_work(records_path, capsys):
    tmp, x, counts = records_path
    path = Records(x.astype(np.int32), counts).save(tmp / "ints.npz")
    status, err = train_status(path, capsys)
    assert status == 1 and "--modality" in err and "text or vector" in err
    status, err = train_status(path, capsys, "--kind", "reuse")
    assert status == 1 and "a reuse filter needs a reuse measurement (count, label)" in err
    (tmp / "taken").mkdir()
    assert main(["infi", "train", "--records", str(path), "--measurement", "empty",
                 "--out", str(tmp / "taken")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["infi", "train", "--records", str(path), "--measurement", "mystery", "--out", str(tmp / "m")])
    assert "invalid choice: 'mystery'" in capsys.readouterr().err
    assert main(["infi", "export", "--filter", str(tmp), "--quantization", "int8",
                 "--out", str(tmp / "q")]) == 1
    assert "--calibration" in capsys.readouterr().err and not (tmp / "q").exists()


def test_export_lists_the_converters_quantizations():
    from coinfer.converters import QUANTIZATIONS
    from coinfer.edge.cli import infi_export as export_command

    assert export_command.QUANTIZATIONS == QUANTIZATIONS
