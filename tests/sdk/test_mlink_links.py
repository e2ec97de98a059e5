"""Links of every format pair, ensembles, the link graph artifact and the planner."""

import numpy as np
import pytest

from coinfer.sdk.artifact import ArtifactError
from coinfer.sdk.mlink import (
    EVERY_STEP,
    Endpoint,
    Ensemble,
    ExecutionMode,
    Link,
    LinkError,
    LinkGraph,
    LinkOptions,
    OutputError,
    OutputSpec,
    PlanError,
    Vocabulary,
    activation_scores,
    best_link_estimate,
    brute_force_plan,
    greedy_plan,
    mean_output_accuracy,
    mode_plan,
    performance,
    word_error_rates,
)
from coinfer.sdk.mlink.metrics import box_agreement, mean_average_precision

pytest.importorskip("torch")

FAST = LinkOptions(epochs=25, batch=32, seed=0)


def world(count: int, seed: int) -> dict:
    """Outputs of four made-up models watching the same scenes: how many people (0-3),
    whether someone speaks, the words a recogniser reads off a sign, and a person box."""
    rng = np.random.default_rng(seed)
    people = rng.integers(0, 4, count)
    speaking = (people > 0) & (rng.random(count) < 0.85)
    counts = np.eye(4, dtype=np.float32)[people]
    speech = np.clip(0.1 + 0.8 * speaking + rng.normal(0, 0.05, count), 0, 1).astype(np.float32)[:, None]
    words = [tuple([20 + p] * int(p)) + ((7,) if s else ()) for p, s in zip(people, speaking, strict=True)]
    boxes = np.where(people[:, None] > 0, np.stack([0.1 + 0.15 * people, np.full(count, 0.3),
                                                    0.1 + 0.05 * people, np.full(count, 0.5)], axis=1), 0.0)
    return {"counts": counts, "speech": speech, "words": words, "boxes": boxes.astype(np.float32)}


SPECS = {"counts": OutputSpec.classes(4), "speech": OutputSpec.presence(),
         "words": OutputSpec.sequence(max_length=6), "boxes": OutputSpec.boxes()}


@pytest.fixture(scope="module")
def data():
    return world(360, 0), world(160, 1)


@pytest.fixture(scope="module")
def graph(data):
    train, _ = data
    return LinkGraph.train(train, SPECS, FAST)


@pytest.fixture(scope="module")
def untrained(data):
    """The same graph before training (seeded weights): enough to save, load, serve and refuse."""
    train, _ = data
    return LinkGraph.create(SPECS, {"words": Vocabulary.build(SPECS["words"].check(train["words"], "words"))},
                            FAST)


def baseline(spec, train, test):
    """The best constant prediction: the majority class, the mean, the most common sequence."""
    if spec.is_sequence:
        common = max(set(train), key=train.count)
        return performance(spec, [common] * len(test), test)
    if spec.task == "softmax":
        constant = np.eye(spec.size)[np.argmax(train.sum(axis=0))]
    else:
        constant = np.median(train, axis=0)
    return performance(spec, np.repeat(constant[None], len(test), axis=0), test)


@pytest.mark.slow  # trains twelve links and four ensembles (the graph fixture)
@pytest.mark.parametrize(("source", "target"), [("counts", "speech"), ("words", "counts"),
                                                ("counts", "words"), ("words", "boxes"), ("counts", "boxes")])
def test_every_link_type_beats_the_best_constant(graph, data, source, target):
    train, test = data
    score = performance(SPECS[target], graph.links[(source, target)].predict(test[source]), test[target])
    assert score >= baseline(SPECS[target], train[target], test[target]) + 0.15
    assert score >= 0.8


@pytest.mark.slow  # the graph fixture
def test_sequence_link_decodes_the_tokens_of_the_target_model(graph, data):
    _, test = data
    predicted = graph.links[("counts", "words")].predict(test["counts"][:40])
    people = np.argmax(test["counts"][:40], axis=1)
    assert all(tokens.count(20 + p) == p for tokens, p in zip(predicted, people, strict=True))
    assert all(set(tokens) <= {7, 20, 21, 22, 23} for tokens in predicted)
    assert graph.links[("counts", "words")].predict(test["counts"][:0]) == []
    assert graph.links[("words", "counts")].predict([]).shape == (0, 4)


@pytest.mark.parametrize("pair", [("counts", "speech"), ("words", "counts"), ("counts", "words"),
                                  ("words", "words2")])
def test_a_prediction_does_not_depend_on_its_batch_mates(data, pair):
    train, test = data
    source, target = pair
    target_outputs = train["words"] if target == "words2" else train[target]
    spec = SPECS["words"] if target == "words2" else SPECS[target]
    link = Link.train(SPECS[source], spec, train[source], target_outputs, LinkOptions(epochs=3))
    one = [test[source][0]] if isinstance(test[source], list) else test[source][:1]
    mates = test[source][1:30]
    together = link.predict(one + mates if isinstance(one, list) else np.concatenate([one, mates]))
    alone = link.predict(one)
    if spec.is_sequence:
        assert together[0] == alone[0]
    else:
        np.testing.assert_allclose(together[0], alone[0], atol=1e-6)


@pytest.mark.slow  # trains a sequence link 40 epochs
def test_seq_to_seq_learns_a_token_mapping():
    rng = np.random.default_rng(3)
    sources = [tuple(rng.integers(1, 6, rng.integers(0, 5)).tolist()) for _ in range(400)]
    targets = [tuple(100 + token for token in sequence) for sequence in sources]
    link = Link.train(OutputSpec.sequence(6), OutputSpec.sequence(6), sources[:300], targets[:300],
                      LinkOptions(epochs=40))
    score = performance(OutputSpec.sequence(6), link.predict(sources[300:]), targets[300:])
    assert score >= 0.8


@pytest.mark.slow  # the graph fixture
def test_ensemble_prior_keeps_a_weak_source_from_doing_worse_than_a_constant(graph, data):
    train, test = data
    for source, target in (("speech", "boxes"), ("speech", "counts"), ("counts", "speech")):
        ensemble = graph.ensembles[target].predict({source: test[source]})
        score = performance(SPECS[target], ensemble, test[target])
        constant = baseline(SPECS[target], train[target], test[target])
        link = performance(SPECS[target], graph.links[(source, target)].predict(test[source]), test[target])
        assert score >= max(constant, link) - 0.03, (source, target, score, constant, link)


@pytest.mark.slow  # trains two links and an ensemble 30 epochs
def test_ensemble_of_complementary_sources_beats_each_of_them():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 3, 600), rng.integers(0, 3, 600)
    outputs = {"left": np.eye(3, dtype=np.float32)[a], "right": np.eye(3, dtype=np.float32)[b],
               "total": np.eye(5, dtype=np.float32)[a + b]}
    specs = {"left": OutputSpec.classes(3), "right": OutputSpec.classes(3), "total": OutputSpec.classes(5)}
    train = {name: value[:450] for name, value in outputs.items()}
    test = {name: value[450:] for name, value in outputs.items()}
    graph = LinkGraph.train(train, specs, LinkOptions(epochs=30),
                            pairs=[("left", "total"), ("right", "total")])
    ensemble = graph.ensembles["total"]
    singles = [performance(specs["total"], ensemble.predict({name: test[name]}), test["total"])
               for name in ("left", "right")]
    both = performance(specs["total"], graph.predict({"left": test["left"], "right": test["right"]})["total"],
                       test["total"])
    assert max(singles) <= 0.6 and both >= max(singles) + 0.25


def test_ensemble_serves_any_subset_and_names_missing_links(untrained, data):
    graph = untrained
    _, test = data
    for executed in (("counts",), ("speech",), ("counts", "speech"), ("words", "boxes")):
        predicted = graph.predict({name: test[name] for name in executed})
        assert set(predicted) == set(SPECS)
        for name in SPECS:
            if name not in executed:
                assert len(predicted[name]) == len(test[name])
    with pytest.raises(LinkError, match="unknown model"):
        graph.predict({"camera": test["counts"]})
    ensemble = Ensemble(graph.endpoints["speech"], {"counts": graph.links[("counts", "speech")]})
    with pytest.raises(LinkError, match="none of the executed models"):
        ensemble.predict({"words": test["words"]})


def test_graph_saves_and_loads_with_identical_predictions(untrained, data, tmp_path):
    graph = untrained
    _, test = data
    graph.save(tmp_path / "links")
    loaded = LinkGraph.load(tmp_path / "links")
    before, after = graph.predict({"counts": test["counts"]}), loaded.predict({"counts": test["counts"]})
    np.testing.assert_array_equal(before["speech"], after["speech"])
    assert before["words"] == after["words"]


def test_tampered_graph_is_rejected(untrained, tmp_path):
    untrained.save(tmp_path / "links")
    weights = tmp_path / "links" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"sha256|hash"):
        LinkGraph.load(tmp_path / "links")


def test_weights_of_the_wrong_shape_or_value_are_refused(untrained):
    link = untrained.links[("counts", "speech")]
    weights = link.weights()
    name = next(iter(weights))
    with pytest.raises(LinkError, match="shape"):
        link.set_weights({**weights, name: np.zeros((1, 1), np.float32)})
    with pytest.raises(LinkError, match="finite"):
        link.set_weights({**weights, name: np.full_like(weights[name], np.nan)})
    with pytest.raises(LinkError, match="missing"):
        link.set_weights({})


@pytest.mark.parametrize(("spec", "outputs", "message"), [
    (OutputSpec.classes(4), np.zeros((3, 5)), "shape"),
    (OutputSpec.presence(), np.array([[0.5], [np.nan]]), "NaN"),
    (OutputSpec.presence(), np.array([[1.5]]), "probabilities"),
    (OutputSpec.sequence(3), [(1, 2, 3, 4)], "max_length"),
    (OutputSpec.sequence(3), [(1, -2)], "negative"),
    (OutputSpec.sequence(3), np.zeros((2, 3), np.int64), "token-id lists"),
    (OutputSpec.sequence(3), [("a",)], "integer token ids"),
])
def test_malformed_outputs_are_named(spec, outputs, message):
    with pytest.raises(OutputError, match=message):
        spec.check(outputs, "camera-3")


def test_bad_specs_and_pairs_are_refused():
    with pytest.raises(OutputError, match="unknown task"):
        OutputSpec("ranking")
    with pytest.raises(OutputError, match="iou"):
        OutputSpec("linear", 3, metric="iou")
    with pytest.raises(LinkError, match="names"):
        LinkGraph.create({"a b": OutputSpec.presence(), "c": OutputSpec.presence()})
    with pytest.raises(LinkError, match="vocabulary"):
        LinkGraph.create({"a": OutputSpec.sequence(), "c": OutputSpec.presence()})
    with pytest.raises(LinkError, match="align"):
        Link.train(OutputSpec.presence(), OutputSpec.presence(), np.zeros((3, 1)), np.zeros((4, 1)),
                   LinkOptions(epochs=1))


def test_vocabulary_maps_unseen_tokens_and_stops_at_the_end():
    vocabulary = Vocabulary.build([(5, 9), (9,)])
    encoded = vocabulary.encode([(9, 5, 77)], length=5)
    assert encoded.tolist() == [[5, 4, 3, 2, 0]]
    assert vocabulary.decode(encoded[0]) == (9, 5)
    assert Endpoint(OutputSpec.sequence(), vocabulary).width == 6


def test_metrics_on_known_values():
    assert word_error_rates([(1, 2, 3), (), (4,)], [(1, 3), (), ()]).tolist() == [0.5, 0.0, 1.0]
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0, 0, 0, 0], [0, 0, 0, 0]])
    truth = np.array([[0.2, 0.1, 0.2, 0.2], [0, 0, 0, 0], [0.5, 0.5, 0.1, 0.1]])
    np.testing.assert_allclose(box_agreement(boxes, truth), [1 / 3, 1.0, 0.0])
    scores = np.array([[0.9], [0.8], [0.1], [0.7]])
    assert mean_average_precision(scores, np.array([[1], [0], [1], [0]])) == pytest.approx((1 + 2 / 4) / 2)
    regression = OutputSpec.regression(scale=2.0)
    assert performance(regression, [[1.0], [3.0]], [[2.0], [3.0]]) == pytest.approx(0.75)


def test_activation_score_follows_the_formula():
    links = {("a", "b"): 0.9, ("b", "a"): 0.3, ("a", "c"): 0.7, ("c", "a"): 0.5,
             ("b", "c"): 0.2, ("c", "b"): 0.6}
    costs = {"a": 2.0, "b": 1.0, "c": 4.0}
    scores = activation_scores(links, costs)
    w = 2.0 / 1.0
    assert scores["a"] == pytest.approx((1 + (0.9 + 0.7) / 2 - (0.3 + 0.5) / 2) / (w * 2.0))
    assert scores["b"] == pytest.approx((1 + (0.3 + 0.2) / 2 - (0.9 + 0.6) / 2) / (w * 1.0))
    plan = greedy_plan(scores, costs, budget=3.0)
    assert plan.cost <= 3.0 and set(plan.active) == {"a", "b"}
    with pytest.raises(PlanError, match="positive"):
        activation_scores(links, {"a": 0.0, "b": 1.0})


def test_brute_force_finds_the_optimum_greedy_can_miss():
    costs = {"big": 3.0, "x": 2.0, "y": 2.0}

    def predicted(active):
        table = {("big",): {"x": 0.2, "y": 0.2}, ("x",): {"big": 0.9, "y": 0.9},
                 ("y",): {"big": 0.9, "x": 0.9}, ("x", "y"): {"big": 0.95}}
        return table.get(tuple(sorted(active)), {})

    best = brute_force_plan(costs, 4.0, predicted)
    assert set(best.active) == {"x", "y"}
    assert best.accuracy == pytest.approx((2 + 0.95) / 3)
    assert mean_output_accuracy(("big",), costs, predicted) == pytest.approx((1 + 0.4) / 3)
    assert brute_force_plan(costs, 0.0, predicted).active == ()
    with pytest.raises(PlanError, match="at most"):
        brute_force_plan({f"m{i}": 1.0 for i in range(17)}, 1.0, predicted)


def test_mode_plan_spends_the_budget_where_accuracy_per_cost_is_highest():
    costs = {"cheap": 1.0, "a": 10.0, "b": 10.0}
    reuse = ExecutionMode("on change", 0.3, 0.95)
    modes = {"a": [reuse], "b": [reuse]}
    links = {("cheap", "a"): 0.5, ("cheap", "b"): 0.9}
    plan = mode_plan(costs, modes, 7.0, best_link_estimate(links, costs))
    assert plan.modes == {"cheap": EVERY_STEP, "a": reuse, "b": reuse}
    assert plan.cost == pytest.approx(7.0) and plan.accuracy == pytest.approx((1 + 0.95 + 0.95) / 3)
    tight = mode_plan(costs, modes, 4.0, best_link_estimate(links, costs))
    assert tight.modes == {"cheap": EVERY_STEP, "a": reuse}  # b is linked well enough from cheap
    assert tight.accuracy == pytest.approx((1 + 0.95 + 0.9) / 3)
    assert mode_plan(costs, {}, 0.5, best_link_estimate(links, costs)).modes == {}


def test_mode_plan_counts_what_a_model_adds_to_the_others_ensembles():
    costs = {"hub": 2.0, "x": 1.0}

    def predicted(active):
        return {"x": 0.9} if "hub" in active else {"hub": 0.1}

    plan = mode_plan(costs, {}, 2.0, predicted)
    assert plan.active == ("hub",)  # x alone scores (1 + 0.1) / 2, hub alone (1 + 0.9) / 2


def test_mode_plan_refuses_bad_modes():
    predicted = best_link_estimate({}, ["a"])
    with pytest.raises(PlanError, match="without a cost"):
        mode_plan({"a": 1.0}, {"b": [EVERY_STEP]}, 1.0, predicted)
    with pytest.raises(PlanError, match="0 < rate <= 1"):
        mode_plan({"a": 1.0}, {"a": [ExecutionMode("free", 0.0, 0.9)]}, 1.0, predicted)
