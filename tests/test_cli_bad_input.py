"""Every command of the catalogue, given bad input, says why in one line and exits non-zero.

DESIGN.md promises it ("Bad input: one line, non-zero exit"): a usage error exits 2 through
argparse, any other bad input raises a :class:`~coinfer.sdk.errors.CoinferError` that
``coinfer`` reports as ``coinfer GROUP ACTION: error: ...`` with exit status 1, never a
traceback, and nothing is (half-)written where the command would have put its output.

The commands are walked from the catalogue (:data:`coinfer.sdk.cli.registry.GROUPS`), so a new
command without cases in :data:`CASES` fails :func:`test_every_command_has_bad_input_cases`.
The cases run in process and fail before any long work: services are checked for argument
errors and missing inputs only (``uvicorn.run`` fails the test if it is reached), benches,
generators and the demo for argument and output-path errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coinfer.sdk.cli.main import main
from coinfer.sdk.cli.registry import GROUPS


@dataclass(frozen=True)
class Case:
    """``argv`` after the command's words; ``{name}`` is replaced by the path of input ``name``
    (see :func:`inputs`). ``usage``: an argparse error (exit 2) rather than a CoinferError (1)."""

    name: str
    argv: tuple[str, ...]
    usage: bool = False


def usage(name: str, *argv: str) -> Case:
    """Input argparse refuses (exit 2): a missing required argument, a number out of range."""
    return Case(name, argv, usage=True)


def error(name: str, *argv: str) -> Case:
    """Input the command refuses with a CoinferError (exit 1): a missing or corrupt file, ..."""
    return Case(name, argv)


OUT = ("--out", "{out}")
EXISTING_OUT = ("--out", "{existing}")
LINKS = ("--links", "{links}", "--records", "{table}")

#: Bad input per command (``"group action"``, or ``"group"`` for a command without actions).
CASES: dict[str, tuple[Case, ...]] = {
    "gate run": (
        usage("no sources"),
        usage("budget fraction above 1", "{junk_mp4}", "--budget-fraction", "2"),
        usage("negative budget", "{junk_mp4}", "--budget", "-5"),
        usage("zero workers", "{junk_mp4}", "--workers", "0"),
        usage("malformed redundancy", "{junk_mp4}", "--redundancy", "faces"),
        usage("json into a directory", "{junk_mp4}", "--json", "{existing}"),
        error("missing source", "{missing}"),
        error("corrupt source", "{junk_mp4}"),
        error("missing predictor", "{junk_mp4}", "--predictor", "{missing}"),
        error("corrupt predictor", "{junk_mp4}", "--predictor", "{broken}"),
        error("links as predictor", "{junk_mp4}", "--predictor", "{links}"),
        error("unknown redundancy measure", "{junk_mp4}", "--redundancy", "faces=bogus"),
        error("unknown task", "{junk_mp4}", "--tasks", "bogus"),
    ),
    "gate train": (
        usage("no out", "--scenes", "{missing}"),
        usage("videos and scenes", "--videos", "{missing}", "--scenes", "{missing}", *OUT),
        usage("negative epochs", "--scenes", "{missing}", "--epochs", "-1", *OUT),
        usage("zero window", "--scenes", "{missing}", "--window", "0", *OUT),
        error("nothing to train on", *OUT),
        error("missing videos", "--videos", "{missing}", "--detector", "faces", *OUT),
        error("videos without detector", "--videos", "{missing}", *OUT),
        error("unknown detector", "--videos", "{missing}", "--detector", "bogus", *OUT),
        error("missing logs", "--logs", "{missing}", *OUT),
        error("missing scenes", "--scenes", "{missing}", *OUT),
        error("scenes.json not JSON", "--scenes", "{broken}", *OUT),
        error("scenes is a file", "--scenes", "{junk_npz}", *OUT),
        error("out exists", "--scenes", "{broken}", *EXISTING_OUT),
    ),
    "gate serve": (
        usage("port out of range", "--port", "70000"),
        usage("zero streams", "--max-streams", "0"),
        usage("zero request size", "--max-request-mib", "0"),
        error("missing token file", "--token-file", "{missing}"),
        error("unknown task", "--tasks", "bogus"),
    ),
    "gate bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        error("missing scenes", "--quick", "--scenes", "{missing}"),
        error("scenes.json not JSON", "--quick", "--scenes", "{broken}"),
    ),
    "infi train": (
        usage("no records", "--measurement", "empty", *OUT),
        usage("no measurement", "--records", "{records}", *OUT),
        usage("negative epochs", "--records", "{records}", "--measurement", "empty", "--epochs", "-1", *OUT),
        error("missing records", "--records", "{missing}", "--measurement", "empty", *OUT),
        error("corrupt records", "--records", "{junk_npz}", "--measurement", "empty", *OUT),
        error("target accuracy above 1", "--records", "{records}", "--measurement", "empty",
              "--target-accuracy", "2", *OUT),
        error("malformed option", "--records", "{records}", "--measurement", "empty", "--option", "x", *OUT),
        error("out exists", "--records", "{records}", "--measurement", "empty", *EXISTING_OUT),
    ),
    "infi export": (
        usage("no filter", *OUT),
        usage("unknown quantization", "--filter", "{missing}", "--quantization", "int4", *OUT),
        error("missing filter", "--filter", "{missing}", *OUT),
        error("manifest not JSON", "--filter", "{broken}", *OUT),
        error("links as filter", "--filter", "{links}", *OUT),
        error("int8 without calibration", "--filter", "{broken}", "--quantization", "int8", *OUT),
        error("missing calibration", "--filter", "{broken}", "--quantization", "int8",
              "--calibration", "{missing}", *OUT),
        error("corrupt calibration", "--filter", "{broken}", "--quantization", "int8",
              "--calibration", "{junk_npz}", *OUT),
        error("out exists", "--filter", "{broken}", *EXISTING_OUT),
    ),
    "infi run": (
        usage("no filter", "--records", "{records}"),
        usage("json into a directory", "--filter", "{broken}", "--records", "{records}", "--json",
              "{existing}"),
        error("missing filter", "--filter", "{missing}", "--records", "{records}"),
        error("manifest not JSON", "--filter", "{broken}", "--records", "{records}"),
        error("links as filter", "--filter", "{links}", "--records", "{records}"),
        error("table as records", "--filter", "{links}", "--records", "{table}"),
        error("missing records", "--filter", "{broken}", "--records", "{missing}"),
        error("corrupt records", "--filter", "{broken}", "--records", "{junk_npz}"),
    ),
    "infi analyze": (
        usage("no measurement"),
        usage("unknown measurement", "--measurement", "bogus"),
        usage("cost not a number", "--measurement", "empty", "--filter-ms", "fast"),
        error("one cost of two", "--measurement", "empty", "--filter-ms", "1"),
        error("negative cost", "--measurement", "empty", "--filter-ms", "-1", "--model-ms", "5"),
        error("filter rate above 1", "--measurement", "empty", "--filter-rate", "2"),
        error("malformed option", "--measurement", "class-subset", "--option", "keep"),
    ),
    "infi serve": (
        usage("unknown task", "--task", "bogus"),
        usage("port out of range", "--port", "65536"),
        usage("zero request size", "--max-request-mib", "0"),
        error("missing token file", "--token-file", "{missing}"),
    ),
    "infi bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        usage("negative epochs", "--quick", "--epochs", "-1"),
    ),
    "stip publish": (
        usage("no model", *OUT),
        usage("zero instances", "--model", "{missing}", "--instances", "0", *OUT),
        error("missing model", "--model", "{missing}", *OUT),
        error("config.json not JSON", "--model", "{broken}", *OUT),
        error("missing gguf", "--model", "{broken}", "--gguf", "missing.gguf", *OUT),
        error("out exists", "--model", "{broken}", *EXISTING_OUT),
    ),
    "stip verify": (
        usage("no model"),
        usage("zero batch", "--model", "{missing}", "--batch", "0"),
        error("missing model", "--model", "{missing}"),
        error("config.json not JSON", "--model", "{broken}"),
    ),
    "stip audit": (
        usage("no model"),
        usage("json into a directory", "--model", "{missing}", "--json", "{existing}"),
        error("missing model", "--model", "{missing}"),
        error("config.json not JSON", "--model", "{broken}"),
    ),
    "stip serve": (
        usage("no bundle"),
        usage("port out of range", "--bundle", "{missing}", "--port", "-1"),
        usage("zero replicas", "--bundle", "{missing}", "--replicas", "0"),
        error("missing bundle", "--bundle", "{missing}"),
        error("manifest not JSON", "--bundle", "{broken}"),
        error("links as bundle", "--bundle", "{links}"),
        error("missing token file", "--bundle", "{missing}", "--token-file", "{missing}"),
    ),
    "stip chat": (
        usage("no bundle"),
        usage("zero new tokens", "--bundle", "{missing}", "--max-new-tokens", "0"),
        error("missing bundle", "--bundle", "{missing}", "--prompt", "hi"),
        error("manifest not JSON", "--bundle", "{broken}", "--prompt", "hi"),
        error("links as bundle", "--bundle", "{links}", "--prompt", "hi"),
    ),
    "stip bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
    ),
    "mlink record": (
        usage("no scenes", "--crowd", "{missing}", *OUT),
        usage("no out", "--scenes", "{missing}", "--crowd", "{missing}"),
        error("missing scenes", "--scenes", "{missing}", "--crowd", "{missing}", *OUT),
        error("scenes.json not JSON", "--scenes", "{broken}", "--crowd", "{missing}", *OUT),
        error("videos folder without videos", "--videos", "{existing}", "--crowd", "{links}", *OUT),
        error("out exists", "--scenes", "{broken}", "--crowd", "{missing}", *EXISTING_OUT),
    ),
    "mlink train": (
        usage("no records", *OUT),
        usage("epochs not a number", "--records", "{table}", "--epochs", "many", *OUT),
        error("missing records", "--records", "{missing}", *OUT),
        error("corrupt records", "--records", "{junk_npz}", *OUT),
        error("records of InFi", "--records", "{records}", *OUT),
        error("manifest as records", "--records", "{broken}/manifest.json", *OUT),
        usage("negative epochs", "--records", "{table}", "--epochs", "-1", *OUT),
        error("train fraction above 1", "--records", "{table}", "--train-fraction", "2", *OUT),
        error("out exists", "--records", "{table}", *EXISTING_OUT),
    ),
    "mlink plan": (
        usage("no budget", "--links", "{links}", "--records", "{table}"),
        usage("budget fraction above 1", *LINKS, "--budget-fraction", "2"),
        usage("negative budget", "--links", "{links}", "--records", "{table}", "--budget", "-1"),
        error("missing links", "--links", "{missing}", "--records", "{table}", "--budget-fraction", "0.5"),
        error("manifest not JSON", "--links", "{broken}", "--records", "{table}", "--budget-fraction", "0.5"),
        error("missing records", "--links", "{links}", "--records", "{missing}", "--budget-fraction", "0.5"),
        error("corrupt records", "--links", "{links}", "--records", "{junk_npz}", "--budget-fraction", "0.5"),
        error("links without their models", "--links", "{links}", "--records", "{other_table}",
              "--budget-fraction", "0.5"),
        error("no memory costs", *LINKS, "--budget", "1", "--cost", "mib"),
    ),
    "mlink run": (
        usage("no links", "--records", "{table}", "--budget-fraction", "0.5"),
        error("missing links", "--links", "{missing}", "--records", "{table}", "--budget-fraction", "0.5"),
        error("missing records", "--links", "{links}", "--records", "{missing}", "--budget-fraction", "0.5"),
        error("corrupt records", "--links", "{links}", "--records", "{junk_npz}", "--budget-fraction", "0.5"),
        error("zero period", "--links", "{links}", "--records", "{table}", "--budget-fraction", "0.5",
              "--period", "0"),
        usage("profile fraction above 1", *LINKS, "--budget-fraction", "0.5", "--profile-fraction", "2"),
        error("scenes without crowd", *LINKS, "--budget-fraction", "0.5", "--scenes", "{missing}"),
        error("missing scenes", *LINKS, "--budget-fraction", "0.5", "--scenes", "{missing}", "--crowd",
              "{missing}"),
    ),
    "mlink federate": (
        usage("no server", "--name", "e1", "--records", "{table}"),
        error("zero rounds", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}",
              "--rounds", "0"),
        error("missing records", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{missing}"),
        error("corrupt records", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{junk_npz}"),
        error("missing token file", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}",
              "--token-file", "{missing}"),
        error("out exists", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}",
              *EXISTING_OUT),
    ),
    "mlink serve": (
        usage("no links", "--min-clients", "2"),
        usage("zero clients", "--links", "{links}", "--min-clients", "0"),
        error("missing links", "--links", "{missing}", "--min-clients", "2"),
        error("manifest not JSON", "--links", "{broken}", "--min-clients", "2"),
        error("table as links", "--links", "{table}", "--min-clients", "2"),
        usage("state dir is a file", "--links", "{links}", "--min-clients", "2", "--state-dir", "{junk_npz}"),
        error("missing token file", "--links", "{links}", "--min-clients", "2", "--token-file", "{missing}"),
    ),
    "mlink bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        usage("negative epochs", "--quick", "--epochs", "-1"),
    ),
    "data scenes": (
        usage("no out"),
        error("out exists", *EXISTING_OUT),
        error("zero cameras", "--cameras", "0", *OUT),
        error("negative seconds", "--seconds", "-1", *OUT),
        error("malformed size", "--size", "big", *OUT),
        error("unknown codec", "--codec", "bogus", *OUT),
        error("unknown task", "--tasks", "bogus", *OUT),
        error("clock out of range", "--day-start", "25:00", *OUT),
        error("zero workers", "--workers", "0", *OUT),
    ),
    "data corpus": (
        usage("no out"),
        error("out exists", *EXISTING_OUT),
        error("zero messages", "--messages", "0", *OUT),
        error("mixed share above 1", "--mixed", "2", *OUT),
        error("zero batch size", "--batch-size", "0", *OUT),
    ),
    "data speech": (
        usage("no out"),
        usage("malformed snr", "--snr", "loud", *OUT),
        error("out exists", *EXISTING_OUT),
        error("zero clips", "--clips", "0", *OUT),
        error("negative seconds", "--seconds", "-1", *OUT),
        error("unknown noise kind", "--kinds", "bogus", *OUT),
    ),
    "export keras": (
        usage("no model", *OUT),
        usage("no out", "{missing}"),
        error("missing model", "{missing}", *OUT),
        error("corrupt model", "{junk_keras}", *OUT),
        error("missing calibration", "{junk_keras}", "--quantization", "int8", "--calibration", "{missing}",
              *OUT),
        error("corrupt calibration", "{junk_keras}", "--quantization", "int8", "--calibration", "{junk_npz}",
              *OUT),
        error("out exists", "{junk_keras}", *EXISTING_OUT),
    ),
    "export torch": (
        usage("no input shape", "--model", "x.py:build", *OUT),
        error("malformed model", "--model", "build", "--input-shape", "1,4", *OUT),
        error("missing model file", "--model", "{missing}.py:build", "--input-shape", "1,4", *OUT),
        error("missing module", "--model", "no_such_module_here:build", "--input-shape", "1,4", *OUT),
        error("malformed input shape", "--model", "{missing}.py:build", "--input-shape", "1,x", *OUT),
        error("negative input shape", "--model", "{missing}.py:build", "--input-shape", "1,-4", *OUT),
        error("unknown input dtype", "--model", "{missing}.py:build", "--input-shape", "1,4", "--input-dtype",
              "bogus", *OUT),
        error("missing weights", "--model", "{missing}.py:build", "--input-shape", "1,4", "--weights",
              "{missing}", *OUT),
        error("missing samples", "--model", "{missing}.py:build", "--input-shape", "1,4", "--samples",
              "{missing}", *OUT),
        error("corrupt samples", "--model", "{missing}.py:build", "--input-shape", "1,4", "--samples",
              "{junk_npz}", *OUT),
        error("out exists", "--model", "{missing}.py:build", "--input-shape", "1,4", *EXISTING_OUT),
    ),
    "export verify": (
        usage("no artifacts"),
        error("missing artifact", "{missing}"),
        error("manifest not JSON", "{broken}"),
        error("a file, not an artifact", "{junk_npz}"),
        error("one good, one missing", "{links}", "{missing}"),
    ),
    "demo": (
        usage("unknown option", "--bogus"),
        usage("json into a directory", "--json", "{existing}"),
        usage("out is a file", "--out", "{junk_npz}"),
        error("unknown stage", "--stages", "bogus"),
        error("no stage", "--stages", ","),
    ),
}


def commands() -> list[str]:
    """Every implemented command of the catalogue, as the words that run it."""
    found = []
    for group in GROUPS:
        if group.distribution is not None:
            found.append(group.name)
        found.extend(f"{group.name} {action.name}" for action in group.actions)
    return found


def test_every_command_has_bad_input_cases():
    implemented = commands()
    assert [name for name in implemented if not CASES.get(name)] == []
    assert sorted(set(CASES) - set(implemented)) == []


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The paths the cases name: missing, corrupt and valid inputs, and output paths."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    junk = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    paths = {"missing": root / "missing", "out": root / "out", "existing": root / "existing",
             "broken": root / "broken"}
    for name in ("junk.npz", "junk.mp4", "junk.keras"):
        (root / name).write_bytes(junk)
        paths[name.replace(".", "_")] = root / name
    paths["broken"].mkdir()
    for name in ("manifest.json", "scenes.json", "config.json"):
        (paths["broken"] / name).write_text("{this is not JSON")
    paths["existing"].mkdir()
    (paths["existing"] / "keep.txt").write_text("left alone")

    from coinfer.sdk.infi import Records

    paths["records"] = Records(rng.random((24, 6)).astype(np.float32),
                               rng.integers(0, 3, 24)).save(root / "records.npz")

    from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec
    from coinfer.sdk.mlink.table import OutputTable

    steps = 24
    table = OutputTable(
        {"cats": OutputSpec.presence(), "faces": OutputSpec.classes(3)},
        {"cats": rng.random((steps, 1)).astype(np.float32),
         "faces": np.eye(3, dtype=np.float32)[rng.integers(0, 3, steps)]},
        {"camera": np.repeat([0, 1], steps // 2)},
        {"cats": {"ms": 1.0, "ms_mean": 1.0}, "faces": {"ms": 2.0, "ms_mean": 2.0}})
    paths["table"] = root / "table.npz"
    table.save(paths["table"])
    paths["other_table"] = root / "other.npz"
    OutputTable({"speech": OutputSpec.presence()}, {"speech": rng.random((steps, 1)).astype(np.float32)},
                costs={"speech": {"ms": 1.0}}).save(paths["other_table"])
    paths["links"] = root / "links"
    LinkGraph.train(table.outputs, table.specs, LinkOptions(epochs=1)).save(paths["links"])
    return paths


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


@pytest.fixture
def no_binding(monkeypatch):
    """A service that got as far as binding a port failed to refuse its bad input."""
    import uvicorn

    def bind(*args, **kwargs):
        pytest.fail("the service reached uvicorn.run: bad input must be refused before binding")

    monkeypatch.setattr(uvicorn, "run", bind)


@pytest.mark.parametrize(("command", "case"), [(command, case) for command in commands()
                                               for case in CASES.get(command, ())],
                         ids=lambda value: value if isinstance(value, str) else value.name)
def test_bad_input_is_one_line_and_a_non_zero_exit(command, case, inputs, no_binding, capsys, monkeypatch):
    monkeypatch.setenv("COINFER_TOKEN", "test-token")
    argv = [*command.split(), *(word.format(**{key: str(path) for key, path in inputs.items()})
                                for word in case.argv)]
    root = inputs["existing"].parent
    before = _snapshot(root)
    if case.usage:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        status = exited.value.code
    else:
        status = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), captured.err
    assert status == (2 if case.usage else 1), captured.err
    # argparse reports options no parser knows from the top: "coinfer: error: unrecognized arguments"
    prefix = "coinfer" if case.usage else f"coinfer {command}"
    assert lines[0].startswith(prefix) and ": error: " in lines[0], captured.err
    assert _snapshot(root) == before, "the command wrote (or left) files"
    assert not os.path.exists(inputs["out"])
