"""The evolve networks (pruned and tiny bodies on one frozen trunk) and their training steps."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.sdk.errors import InvalidArgumentError

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from coinfer.sdk.evolve import training  # noqa: E402
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, parameter_count  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def pretrained():
    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0

    return load_efficientnet_lite0()


def spec(family: str = "efficientnet-lite0", keep: float = 1.0) -> ArchitectureSpec:
    return ArchitectureSpec(family, keep=keep, input_size=SIZE)


def test_pruning_shrinks_the_body_and_keeps_the_trunk(pretrained):
    frames = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    counts, prefixes = {}, []
    for keep in (1.0, 0.7, 0.5, 0.3):
        net = build_network(spec(keep=keep), pretrained)
        counts[keep] = parameter_count(net, trainable_only=True)
        prefixes.append(training.prefix_features(net, frames))
    assert counts[1.0] > counts[0.7] > counts[0.5] > counts[0.3]
    assert 0.2 < counts[0.3] / counts[1.0] < 0.4
    assert all(np.array_equal(prefixes[0], other) for other in prefixes[1:])


def test_a_skeleton_loads_the_saved_weights_exactly(pretrained):
    from coinfer.sdk.evolve.networks import preprocess_tensor

    frames = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    for architecture in (spec(keep=0.5), spec("tiny")):
        net = build_network(architecture, pretrained)
        skeleton = build_network(architecture)
        skeleton.load_state_dict(net.state_dict())
        with torch.no_grad():
            x = preprocess_tensor(frames)
            assert torch.equal(net(x), skeleton(x))
            assert torch.equal(net(x), net.from_prefix(net.prefix(x)))


def test_weights_of_another_architecture_or_nan_are_refused(pretrained):
    half, tiny = build_network(spec(keep=0.5), pretrained), build_network(spec("tiny"))
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        training.load_state_arrays(half, training.state_arrays(tiny))
    arrays = training.state_arrays(half)
    arrays["predictor.weight"] = np.full_like(arrays["predictor.weight"], np.nan)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        training.load_state_arrays(half, arrays)


def synthetic(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Prefix-shaped features whose channels say which tasks are present."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 4)) < 0.4
    features = rng.normal(shift, 1.0, (n, 112, 2, 2)).astype(np.float32)
    features[:, :4] += 3.0 * labels[:, :, None, None]
    return features.astype(np.float16), labels


def test_fine_tuning_distillation_and_mutual_learning_learn(pretrained):
    features, labels = synthetic(256, 0)
    test_features, test_labels = synthetic(128, 1)
    options = training.TrainOptions(epochs=8, batch_size=32)
    teacher = build_network(spec(keep=0.5), pretrained)
    losses = training.fine_tune(teacher, features, labels, options)
    assert losses[-1] < losses[0]
    assert training.balanced_accuracy(training.logits(teacher, test_features) > 0, test_labels) > 0.8

    student = build_network(spec("tiny"), pretrained)
    training.distill(student, training.logits(teacher, features), features, labels, options)
    assert training.balanced_accuracy(training.logits(student, test_features) > 0, test_labels) > 0.8

    local, mid = build_network(spec(keep=0.3), pretrained), build_network(spec(), pretrained)
    generator = training.train_generator([teacher], labels, training.GeneratorOptions(steps=150))
    with torch.no_grad():
        generated = teacher.predictor(generator.sample(torch.from_numpy(test_labels.astype(np.float32))))
    assert training.balanced_accuracy(generated.numpy() > 0, test_labels) > 0.9
    training.mutual_learning(local, mid, features, labels, options, generator=generator, label_pool=labels)
    for model in (local, mid):
        assert training.balanced_accuracy(training.logits(model, test_features) > 0, test_labels) > 0.8


def test_domain_alignment_keeps_the_source_task(pretrained):
    features, labels = synthetic(192, 2)
    shifted, shifted_labels = synthetic(96, 3, shift=0.5)
    model = build_network(spec("tiny"), pretrained)
    training.align_domains(model, features, labels, shifted, training.TrainOptions(epochs=6))
    assert training.balanced_accuracy(training.logits(model, shifted) > 0, shifted_labels) > 0.8


def test_bad_training_input_gets_one_line(pretrained):
    model = build_network(spec("tiny"))
    with pytest.raises(InvalidArgumentError, match="must agree"):
        training.fine_tune(model, np.zeros((4, 112, 2, 2), np.float16), np.zeros((3, 4), bool),
                           training.TrainOptions(epochs=1))
    with pytest.raises(InvalidArgumentError, match="label_pool"):
        training.mutual_learning(model, model, np.zeros((4, 112, 2, 2), np.float16), np.zeros((4, 4), bool),
                                 training.TrainOptions(epochs=1), generator=object())
    with pytest.raises(InvalidArgumentError, match="uint8"):
        training.prefix_features(model, np.zeros((2, SIZE, SIZE, 3), np.float32))
