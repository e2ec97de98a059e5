"""Co-evolution: federated rounds of mutual learning, the middle models' average as the new global."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from coinfer.sdk.errors import InvalidArgumentError

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from coinfer.sdk.evolve import training  # noqa: E402
from coinfer.sdk.evolve.coevolution import (  # noqa: E402
    CANDIDATES,
    CoEvolutionOptions,
    Participant,
    average_models,
    co_evolve,
)
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def pretrained():
    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0

    return load_efficientnet_lite0()


def camera(n: int, seed: int, channels: slice) -> tuple[np.ndarray, np.ndarray]:
    """Prefix-shaped features whose ``channels`` say which tasks are present: cameras that use
    different channels are domains a model trained on one does not read."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 4)) < 0.4
    features = rng.normal(0.0, 1.0, (n, 112, 2, 2)).astype(np.float32)
    features[:, channels] += 3.0 * labels[:, :, None, None]
    return features.astype(np.float16), labels


def accuracy(model, data) -> float:
    return training.balanced_accuracy(training.logits(model, data[0]) > 0, data[1])


def test_co_evolution_moves_the_global_model_to_every_camera(pretrained):
    spec = ArchitectureSpec("efficientnet-lite0", input_size=SIZE)
    options = training.TrainOptions(epochs=4, batch_size=32)
    source = camera(192, 0, slice(0, 4))
    global_model = build_network(spec, pretrained)
    training.fine_tune(global_model, *source, options)
    original = copy.deepcopy(training.state_arrays(global_model))
    domains = {"near": slice(0, 4), "far": slice(8, 12)}
    uploads = {name: camera(192, 1 + k, channels) for k, (name, channels) in enumerate(domains.items())}
    tests = {name: camera(128, 10 + k, channels) for k, (name, channels) in enumerate(domains.items())}
    devices = {name: build_network(ArchitectureSpec("tiny", input_size=SIZE), pretrained) for name in domains}
    for device in devices.values():
        training.fine_tune(device, *source, options)
    before = {name: accuracy(devices[name], tests[name]) for name in domains}
    union = tuple(np.concatenate(parts) for parts in zip(*tests.values(), strict=True))
    lines: list[str] = []
    result = co_evolve(global_model, [Participant(name, devices[name], *uploads[name]) for name in domains],
                       CoEvolutionOptions(train=options, rounds=2,
                                          generator=training.GeneratorOptions(steps=30)), lines.append)

    assert accuracy(result.global_model, union) > accuracy(global_model, union) + 0.1
    assert accuracy(devices["far"], tests["far"]) > before["far"] + 0.2
    assert accuracy(devices["near"], tests["near"]) > 0.8
    assert set(result.seconds) == set(domains) and min(result.seconds.values()) > 0
    assert len(lines) == 3 and "generator trained" in lines[0] and "generator" not in lines[1]
    assert lines[2].startswith("kept per device")
    for name in domains:  # each device ended as the candidate its held-out uploads rated best
        scores = result.validation[name]
        assert set(scores) == set(CANDIDATES) and scores[result.chosen[name]] == max(scores.values())
    for name, value in training.state_arrays(global_model).items():  # the global model is not touched
        np.testing.assert_array_equal(value, original[name])


def test_the_mean_of_models_weights_them_by_their_uploads(pretrained):
    spec = ArchitectureSpec("tiny", input_size=SIZE)
    base = build_network(spec, pretrained)
    one, two = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        for parameter in one.predictor.parameters():
            parameter.add_(1.0)
        for parameter in two.predictor.parameters():
            parameter.add_(-1.0)
    merged = average_models(base, [one, two], "mean", samples=[3, 1])
    name = next(n for n in training.state_arrays(base) if n.startswith("predictor"))
    np.testing.assert_allclose(training.state_arrays(merged)[name], training.state_arrays(base)[name] + 0.5,
                               atol=1e-5)
    same = average_models(base, [copy.deepcopy(base)] * 3, "median")
    for key, value in training.state_arrays(base).items():
        np.testing.assert_allclose(training.state_arrays(same)[key], value, atol=1e-6)


def test_bad_co_evolution_input_gets_one_line(pretrained):
    model = build_network(ArchitectureSpec("tiny", input_size=SIZE))
    features, labels = camera(8, 0, slice(0, 4))
    with pytest.raises(InvalidArgumentError, match="at least one participant"):
        co_evolve(model, [], CoEvolutionOptions())
    with pytest.raises(InvalidArgumentError, match="distinct"):
        co_evolve(model, [Participant("a", model, features, labels)] * 2, CoEvolutionOptions())
    with pytest.raises(InvalidArgumentError, match="aggregate must be one of"):
        CoEvolutionOptions(aggregate="max")
    with pytest.raises(InvalidArgumentError, match="validation must be in"):
        CoEvolutionOptions(validation=0.9)


def test_a_device_keeps_its_model_when_every_new_candidate_validates_worse(pretrained):
    """Training that destroys the models (a learning rate of 1): the guard must hand every
    device its old model back, weights unchanged."""
    spec = ArchitectureSpec("tiny", input_size=SIZE)
    participants, before = [], {}
    for k in range(2):
        features, labels = camera(160, 3 + k, slice(0, 4))
        model = build_network(spec, pretrained)
        training.fine_tune(model, features, labels, training.TrainOptions(epochs=4, batch_size=32))
        before[f"cam{k}"] = copy.deepcopy(training.state_arrays(model))
        participants.append(Participant(f"cam{k}", model, features, labels))
    global_model = build_network(ArchitectureSpec("efficientnet-lite0", input_size=SIZE), pretrained)
    wrecking = training.TrainOptions(epochs=2, batch_size=32, lr=1.0)
    result = co_evolve(global_model, participants,
                       CoEvolutionOptions(train=wrecking, rounds=1, generator=None))
    for participant in participants:
        scores = result.validation[participant.id]
        assert result.chosen[participant.id] == "kept" and scores["kept"] > 0.8, scores
        for name, value in training.state_arrays(participant.model).items():
            np.testing.assert_array_equal(value, before[participant.id][name])
