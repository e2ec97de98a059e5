import json
import os

import numpy as np
import pytest

from coinfer.sdk.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ArtifactError,
    Manifest,
    load_artifact,
    save_artifact,
)
from coinfer.sdk.tensor import QuantParams, TensorSpec


def make(tmp_path, name="a", **files):
    manifest = Manifest(
        capability="infi",
        kind="skip-filter",
        inputs=[TensorSpec("x", (None, 4), "int8", QuantParams(0.5, -3))],
        outputs=[TensorSpec("y", (None, 2), "float32")],
        preprocessing={"scale": 1 / 255},
        metadata={"threshold": 0.4},
    )
    return save_artifact(tmp_path / name, manifest, files or {"model.bin": b"\x00\x01weights"})


def test_round_trip_keeps_every_field(tmp_path):
    saved = make(tmp_path, **{"model.bin": b"abc", "vocab/tokens.txt": b"a\nb\n"})
    loaded = load_artifact(saved.path, capability="infi", kind="skip-filter")
    assert loaded.manifest == saved.manifest
    assert loaded.manifest.inputs[0].quantization == QuantParams(0.5, -3)
    assert loaded.manifest.inputs[0].shape == (None, 4)
    assert loaded.file("vocab/tokens.txt").read_bytes() == b"a\nb\n"
    raw = json.loads((saved.path / MANIFEST_NAME).read_text())
    assert raw["format_version"] == FORMAT_VERSION
    assert len(raw["files"]["model.bin"]["sha256"]) == 64


def test_copies_files_given_as_paths(tmp_path):
    source = tmp_path / "weights.npz"
    np.savez(source, w=np.arange(5))
    artifact = make(tmp_path, **{"weights.npz": source})
    assert artifact.file("weights.npz").read_bytes() == source.read_bytes()


def test_tampered_file_is_rejected_by_name(tmp_path):
    artifact = make(tmp_path)
    (artifact.path / "model.bin").write_bytes(b"\x00\x01weightz")
    with pytest.raises(ArtifactError, match=r"model\.bin: sha256 mismatch"):
        load_artifact(artifact.path)


def test_missing_truncated_and_extra_files(tmp_path):
    artifact = make(tmp_path)
    (artifact.path / "model.bin").unlink()
    with pytest.raises(ArtifactError, match=r"model\.bin: listed in the manifest but missing"):
        load_artifact(artifact.path)
    other = make(tmp_path, name="b")
    (other.path / "stowaway.py").write_text("print('hi')")
    with pytest.raises(ArtifactError, match=r"stowaway\.py: not listed"):
        load_artifact(other.path)


def test_manifest_problems_name_the_manifest(tmp_path):
    artifact = make(tmp_path)
    manifest_path = artifact.path / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json: not valid JSON"):
        load_artifact(artifact.path)
    manifest_path.write_text(json.dumps({**data, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ArtifactError, match="newer coinfer"):
        load_artifact(artifact.path)
    del data["kind"]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="missing required field"):
        load_artifact(artifact.path)


def test_wrong_capability_or_kind(tmp_path):
    artifact = make(tmp_path)
    with pytest.raises(ArtifactError, match="capability is 'infi', expected 'gate'"):
        load_artifact(artifact.path, capability="gate")
    with pytest.raises(ArtifactError, match="kind is 'skip-filter'"):
        load_artifact(artifact.path, kind="reuse-cache")


def test_manifest_cannot_point_outside(tmp_path):
    artifact = make(tmp_path)
    manifest_path = artifact.path / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    data["files"]["../escape.bin"] = {"sha256": "0" * 64}
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="invalid artifact file name"):
        load_artifact(artifact.path)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../b", "manifest.json", "a\\b", ""])
def test_bad_member_names_refused_on_save(tmp_path, bad):
    with pytest.raises(ArtifactError):
        save_artifact(tmp_path / "x", Manifest("c", "k"), {bad: b"1"})


def test_save_is_atomic_and_does_not_clobber(tmp_path):
    make(tmp_path)
    with pytest.raises(ArtifactError, match="already exists"):
        make(tmp_path)

    class Exploding:
        def __fspath__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_artifact(tmp_path / "half", Manifest("c", "k"), {"a.bin": b"1", "b.bin": Exploding()})
    assert not (tmp_path / "half").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_overwrite_replaces_whole_directory(tmp_path):
    make(tmp_path, **{"old.bin": b"1"})
    replaced = save_artifact(tmp_path / "a", Manifest("c", "k"), {"new.bin": b"2"}, overwrite=True)
    assert sorted(p.name for p in replaced.path.iterdir()) == [MANIFEST_NAME, "new.bin"]
    assert load_artifact(replaced.path).manifest.capability == "c"


def test_not_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        load_artifact(tmp_path / "empty")


def _manifest_with(artifact, **fields) -> str:
    """The artifact's manifest text with ``fields`` spliced in verbatim (raw JSON values)."""
    text = (artifact.path / MANIFEST_NAME).read_text()
    return text.replace("{", "{" + "".join(f'"{key}": {value}, ' for key, value in fields.items()), 1)


@pytest.mark.parametrize(("raw", "match"), [
    pytest.param({"metadata": "9" * 5000}, r"manifest\.json: not valid JSON: .*digits", id="5000-digit int"),
    pytest.param({"metadata": "[" * 100_000 + "]" * 100_000}, r"manifest\.json: nested deeper than",
                 id="100000 nested lists"),
    pytest.param({"metadata": '{"a": ' * 100_000 + "1" + "}" * 100_000},
                 r"manifest\.json: nested deeper than", id="100000 nested objects"),
])
def test_hostile_manifest_json_is_an_artifact_error(tmp_path, raw, match):
    artifact = make(tmp_path)
    (artifact.path / MANIFEST_NAME).write_text(_manifest_with(artifact, **raw))
    with pytest.raises(ArtifactError, match=match):
        load_artifact(artifact.path)


def test_an_artifact_holds_only_its_listed_regular_files(tmp_path):
    fifo = make(tmp_path, name="fifo")
    os.mkfifo(fifo.path / "pipe")
    with pytest.raises(ArtifactError, match=r"pipe: not a regular file listed in the manifest"):
        load_artifact(fifo.path)
    empty = make(tmp_path, name="empty", **{"model.bin": b"1", "vocab/tokens.txt": b"a"})
    (empty.path / "vocab" / "unused").mkdir()
    with pytest.raises(ArtifactError, match=r"vocab/unused: a directory holding no listed file"):
        load_artifact(empty.path)
    (empty.path / "vocab" / "unused").rmdir()
    assert load_artifact(empty.path).manifest.files.keys() == {"model.bin", "vocab/tokens.txt"}


def test_a_listed_fifo_is_refused_without_reading_it(tmp_path):
    artifact = make(tmp_path)
    (artifact.path / "model.bin").unlink()
    os.mkfifo(artifact.path / "model.bin")  # opening it to hash would block forever
    with pytest.raises(ArtifactError, match=r"model\.bin: listed in the manifest but not a regular file"):
        load_artifact(artifact.path)
