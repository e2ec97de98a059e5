"""Budgeted serving, its baselines and online link updates, on made-up aligned outputs."""

import numpy as np
import pytest

from coinfer.bench.mlink import baselines
from coinfer.sdk.mlink import Link, LinkError, LinkGraph, LinkOptions, OutputSpec, performance
from coinfer.sdk.mlink.online import OnlineOptions, OnlineUpdater
from coinfer.sdk.mlink.reuse import ReuseError, calibrate_reuse
from coinfer.sdk.mlink.serving import FrameChanges, RecordedRunner, ServingOptions, serve
from coinfer.sdk.mlink.table import OutputTable, TableError

pytest.importorskip("torch")

SPECS = {"counts": OutputSpec.classes(4), "speech": OutputSpec.presence(),
         "crowd": OutputSpec.classes(3), "boxes": OutputSpec.boxes()}
COSTS = {"counts": {"ms": 2.0}, "speech": {"ms": 1.0}, "crowd": {"ms": 3.0}, "boxes": {"ms": 20.0}}


def table(count: int, seed: int) -> OutputTable:
    """Four models on the same steps: people count, speech (noisy), crowd level, a box."""
    rng = np.random.default_rng(seed)
    people = rng.integers(0, 4, count)
    speaking = (people > 0) & (rng.random(count) < 0.8)
    outputs = {
        "counts": np.eye(4, dtype=np.float32)[people],
        "speech": np.clip(0.1 + 0.8 * speaking + rng.normal(0, 0.05, count), 0, 1)[:, None],
        "crowd": np.eye(3, dtype=np.float32)[np.minimum(people, 2)],
        "boxes": np.where(people[:, None] > 0, np.stack([0.1 + 0.15 * people, np.full(count, 0.3),
                                                         0.1 + 0.05 * people, np.full(count, 0.5)], 1),
                          0).astype(np.float32),
    }
    context = {"camera": np.repeat(np.arange(4), -(-count // 4))[:count],
               "thumb": rng.integers(0, 255, (count, 9, 16)).astype(np.uint8)}
    return OutputTable(SPECS, outputs, context, COSTS)


@pytest.fixture(scope="module")
def world():
    train, profile, stream = table(400, 0), table(100, 1), table(600, 2)
    return LinkGraph.train(train.outputs, SPECS, LinkOptions(epochs=25)), profile, stream


@pytest.mark.slow  # trains links for four models (the world fixture)
def test_serving_keeps_every_plan_in_budget_and_predicts_the_rest(world):
    graph, profile, stream = world
    runner = RecordedRunner(stream)
    budget = 0.25 * sum(runner.costs.values())
    result = serve(graph, runner, len(stream), ServingOptions(budget=budget, period=100), profile)
    assert len(result.plans) == 6 and all(plan.cost <= budget for plan in result.plans)
    assert "boxes" not in result.plans[0].active
    scores = result.accuracy(stream)
    assert scores["boxes"] >= 0.8 and result.mean_accuracy(stream) >= 0.9
    assert result.runs["boxes"] == 6  # profiled once per period, never served
    assert result.model_cost / (sum(runner.costs.values()) * len(stream)) <= 0.3  # links' time is the bench's


@pytest.mark.slow  # trains links for four models (the world fixture)
def test_mlink_beats_standalone_random_and_reducto_at_the_same_budget(world):
    graph, profile, stream = world
    runner = RecordedRunner(stream)
    budget = 0.25 * sum(runner.costs.values())
    mlink = serve(graph, runner, len(stream), ServingOptions(budget=budget), profile).mean_accuracy(stream)
    alone = baselines.standalone(graph, runner, len(stream), budget)
    assert set(alone.plans[0].active) == {"counts", "speech", "crowd"}
    empty = np.mean(stream.outputs["boxes"][:, 2] == 0)  # where boxes' unrun empty output is right
    assert alone.mean_accuracy(stream) == pytest.approx(0.75 + 0.25 * empty)
    reducto = baselines.reducto(graph, runner, stream.context["thumb"], stream.context["camera"], budget)
    assert reducto.model_cost <= budget * len(stream)
    randoms = [baselines.random_subset(graph, runner, len(stream), budget, seed).mean_accuracy(stream)
               for seed in range(3)]
    assert mlink > max(alone.mean_accuracy(stream), reducto.mean_accuracy(stream))
    assert mlink >= np.mean(randoms)
    best = baselines.optimum(graph, runner, len(stream), budget, stream)
    assert best.plans[0].cost <= budget and mlink >= best.mean_accuracy(stream) - 0.02


def repeated(rows: int, run_length: int, seed: int) -> tuple[OutputTable, np.ndarray]:
    """A stream whose outputs hold still for ``run_length`` steps at a time, with thumbnails
    that change exactly when they do: the case frame-difference reuse is made for."""
    base = table(rows, seed)
    index = np.repeat(np.arange(rows), run_length)
    stream = base.take(index)
    stream.context["camera"] = np.zeros(len(index), int)
    return stream, base.context["thumb"][index]


@pytest.mark.slow  # trains links for four models (the world fixture)
def test_serving_with_frame_changes_reuses_where_nothing_moved(world):
    graph, profile, _ = world
    stream, thumbs = repeated(60, 10, 5)
    runner = RecordedRunner(stream)
    budget = 0.25 * sum(runner.costs.values())
    options = ServingOptions(budget=budget, period=100)
    calibration = calibrate_reuse(*repeated(40, 10, 6))
    result = serve(graph, runner, len(stream), options, profile,
                   FrameChanges(thumbs, stream.context["camera"], calibration))
    links_only = serve(graph, runner, len(stream), options, profile)
    assert result.mean_accuracy(stream) > links_only.mean_accuracy(stream)
    assert result.accuracy(stream)["boxes"] == pytest.approx(1.0)  # reused, never guessed
    assert links_only.runs["boxes"] == 6 < result.runs["boxes"] <= 0.2 * len(stream)
    assert result.model_cost <= 1.05 * budget * len(stream)
    assert any(mode.label.startswith("on change") for plan in result.plans for mode in plan.modes.values())
    with pytest.raises(ReuseError, match="one thumbnail per stream step"):
        serve(graph, runner, len(stream), options, profile,
              FrameChanges(thumbs[:-1], stream.context["camera"][:-1], calibration))


def drifting(count: int, seed: int, flipped: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crowd level -> speech; after the drift, people stop talking and the empty scene is loud."""
    rng = np.random.default_rng(seed)
    people = rng.integers(0, 3, count)
    speaking = (people == 0) if flipped else (people > 0)
    return np.eye(3, dtype=np.float32)[people], speaking.astype(np.float32)[:, None]


# loss-prediction also trains its loss network at each update: seconds more.
@pytest.mark.parametrize("strategy", ["periodic", "uncertainty",
                                      pytest.param("loss-prediction", marks=pytest.mark.slow)])
def test_online_updates_recover_from_drift_that_ruins_the_offline_link(strategy):
    source, target = drifting(300, 0, flipped=False)
    stream_source, stream_target = drifting(600, 1, flipped=True)
    spec = OutputSpec.presence()

    def accuracy(option_strategy: str) -> float:
        link = Link.train(OutputSpec.classes(3), spec, source, target, LinkOptions(epochs=20))
        updater = OnlineUpdater(link, OnlineOptions(strategy=option_strategy, labels=8, epochs=10))
        predicted = []
        for start in range(0, 600, 50):
            rows = slice(start, start + 50)
            predicted.append(updater.step(stream_source[rows],
                                          lambda picked, rows=rows: stream_target[rows][picked]))
        return performance(spec, np.concatenate(predicted), stream_target)

    offline = accuracy("none")
    assert offline <= 0.2
    assert accuracy(strategy) >= offline + 0.6


def test_online_options_and_tables_refuse_bad_input(tmp_path):
    with pytest.raises(LinkError, match="strategy"):
        OnlineOptions(strategy="sometimes")
    with pytest.raises(TableError, match="row counts differ"):
        OutputTable({"a": OutputSpec.presence()}, {"a": np.zeros((3, 1))}, {"camera": np.zeros(4)})
    stream = table(20, 4)
    stream.save(tmp_path / "t.npz")
    loaded = OutputTable.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(loaded.outputs["boxes"], stream.outputs["boxes"])
    assert loaded.costs == COSTS
    data = bytearray((tmp_path / "t.npz").read_bytes())
    (tmp_path / "cut.npz").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(TableError, match="truncated or corrupt"):
        OutputTable.load(tmp_path / "cut.npz")
