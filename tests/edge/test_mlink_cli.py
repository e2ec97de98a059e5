"""``coinfer mlink train | plan | run`` on a recorded output table, and their refusals."""

import json

import numpy as np
import pytest

from coinfer.sdk.cli.main import main
from coinfer.sdk.mlink import OutputSpec
from coinfer.sdk.mlink.table import OutputTable

pytest.importorskip("torch")


def recorded(count: int, seed: int) -> OutputTable:
    """Three models on four cameras: a people count, a speech score, a person box."""
    rng = np.random.default_rng(seed)
    people = rng.integers(0, 4, count)
    speaking = (people > 0) & (rng.random(count) < 0.9)
    boxes = np.where(people[:, None] > 0, np.stack([0.1 + 0.15 * people, np.full(count, 0.3),
                                                    0.1 + 0.05 * people, np.full(count, 0.5)], 1), 0)
    return OutputTable(
        {"counts": OutputSpec.classes(4), "speech": OutputSpec.presence(), "boxes": OutputSpec.boxes()},
        {"counts": np.eye(4)[people], "speech": (0.05 + 0.9 * speaking)[:, None], "boxes": boxes},
        {"camera": np.repeat(np.arange(4), count // 4)},
        {"counts": {"ms": 2.0, "mib": 5.0}, "speech": {"ms": 1.0, "mib": 20.0},
         "boxes": {"ms": 12.0, "mib": 8.0}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlink-cli")
    recorded(400, 0).save(root / "outputs.npz")
    code = main(["mlink", "train", "--records", str(root / "outputs.npz"), "--epochs", "20",
                 "--out", str(root / "links"), "--json", str(root / "train.json")])
    assert code == 0
    return root


def test_train_reports_every_link_on_held_out_steps(trained):
    report = json.loads((trained / "train.json").read_text())
    assert report["train steps"] == 280 and report["held-out steps"] == 120
    assert report["counts->boxes"] >= 0.9 and report["boxes->counts"] >= 0.9
    assert (trained / "links" / "manifest.json").is_file()


def test_plan_fits_the_budget_and_matches_the_optimum_here(trained, capsys):
    out = trained / "plan.json"
    code = main(["mlink", "plan", "--links", str(trained / "links"),
                 "--records", str(trained / "outputs.npz"), "--budget", "3", "--brute-force",
                 "--json", str(out)])
    assert code == 0
    plan = json.loads(out.read_text())
    assert plan["cost"] <= 3 and "boxes" not in plan["run"]
    assert plan["expected accuracy"] >= plan["optimum accuracy"] - 0.02
    code = main(["mlink", "plan", "--links", str(trained / "links"),
                 "--records", str(trained / "outputs.npz"), "--budget", "13", "--cost", "mib",
                 "--json", str(out)])
    memory = json.loads(out.read_text())
    assert code == 0 and memory["cost"] <= 13 and "speech" not in memory["run"]


def test_run_serves_the_stream_and_saves_time(trained):
    out = trained / "run.json"
    recorded(200, 1).save(trained / "stream.npz")
    code = main(["mlink", "run", "--links", str(trained / "links"), "--records", str(trained / "stream.npz"),
                 "--budget-fraction", "0.25", "--period", "50", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["mean output accuracy"] >= 0.9
    assert report["runs boxes"] < 20 and report["time saved"] > 0.5


def test_refusals_name_the_problem(trained, tmp_path, capsys):
    OutputTable({"speech": OutputSpec.presence(), "counts": OutputSpec.classes(4)},
                {"speech": np.zeros((4, 1)), "counts": np.eye(4)}, costs={}).save(tmp_path / "partial.npz")
    assert main(["mlink", "plan", "--links", str(trained / "links"),
                 "--records", str(tmp_path / "partial.npz"), "--budget", "3"]) != 0
    assert "no outputs for model(s) ['boxes']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["mlink", "run", "--links", str(trained / "links"), "--records", str(trained / "outputs.npz"),
              "--budget-fraction", "1.5"])
    assert usage.value.code == 2
    assert "argument --budget-fraction: must be in [0, 1], got 1.5" in capsys.readouterr().err
    table, links = str(trained / "outputs.npz"), str(trained / "links")
    assert main(["mlink", "train", "--records", table, "--out", links]) != 0
    assert "already exists" in capsys.readouterr().err
