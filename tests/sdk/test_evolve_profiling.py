"""The profiler's inputs read off real torch networks: layer costs and task features, checked by hand."""

import pytest
import torch
from torch import nn

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve.memory import MemoryModel, predict_training_memory
from coinfer.sdk.evolve.networks import ArchitectureSpec, build_network, parameter_count
from coinfer.sdk.evolve.profiling import forward_macs, layer_costs, prefix_shape, task_features


class Small(nn.Module):
    """conv 4->8 3x3 pad 1 (+bias) on 5x5, BN, ReLU, in-place ReLU, pool, flatten, linear 8->2;
    the first conv's weights frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 2)
        self.body[0].weight.requires_grad_(False)

    def from_prefix(self, x):
        return self.head(self.body(x))


def test_a_small_network_counted_by_hand():
    model = Small()
    costs = layer_costs(model, (4, 5, 5))
    got = [(c.name, c.params, c.activation_elements) for c in costs]
    assert got == [
        ("body.0", 8, 8 * 5 * 5),       # frozen weight: only the 8 biases train
        ("body.1", 16, 8 * 5 * 5),      # BN scale and shift
        ("body.2", 0, 8 * 5 * 5),       # ReLU makes a new tensor
        ("body.3", 0, 0),               # in place: nothing new
        ("body.4", 0, 8),               # pooled to 1x1
        ("body.5", 0, 0),               # flatten is a view
        ("head", 8 * 2 + 2, 2),
    ]
    # conv: 200 outputs x 4 inputs x 9 taps; linear: 2 outputs x 8 inputs
    assert forward_macs(model, (4, 5, 5)) == 200 * 4 * 9 + 2 * 8
    features = task_features(model, 100, 3, 16, feature_shape=(4, 5, 5))
    assert (features.trainable_params, features.samples, features.epochs, features.batch_size,
            features.work_per_sample) == (8 + 16 + 18, 100, 3, 16, 7216)
    assert task_features(model, 100, 3, 16).work_per_sample is None  # no spec, no shape given
    assert model.training  # the trace left the mode as it found it


def test_the_trace_keeps_eval_mode_and_needs_from_prefix():
    model = Small().eval()
    layer_costs(model, (4, 3, 3))
    assert not model.training
    with pytest.raises(InvalidArgumentError, match="from_prefix"):
        layer_costs(nn.Linear(2, 2), (2, 1, 1))
    with pytest.raises(InvalidArgumentError, match="feature_shape"):
        layer_costs(model, (4, 5))
    with pytest.raises(InvalidArgumentError, match="multiple of 16"):
        prefix_shape(100)


def test_the_tiny_network_by_hand():
    model = build_network(ArchitectureSpec("tiny", input_size=64))
    costs = layer_costs(model, prefix_shape(64))
    assert prefix_shape(64) == (112, 4, 4)
    assert sum(c.params for c in costs) == parameter_count(model, trainable_only=True) == 48_804
    # 1x1 conv 112->96 on 4x4, BN, ReLU6; depthwise 3x3 stride 2 -> 2x2 (BN, ReLU6); 1x1 96->160
    # (BN, ReLU6); pool 160; flatten (view); embedding 128 (+ReLU 128); 4 logits
    assert sum(c.activation_elements for c in costs) == 3 * 96 * 16 + 3 * 96 * 4 + 3 * 160 * 4 + 160 + 128 \
        + 128 + 4
    assert forward_macs(model, (112, 4, 4)) == 96 * 16 * 112 + 96 * 4 * 9 + 160 * 4 * 96 + 128 * 160 + 4 * 128


def test_pruning_orders_the_predicted_memory():
    """Bigger bodies and bigger inputs need more memory and more work."""
    totals, works = [], []
    for keep in (0.3, 0.5, 0.7, 1.0):
        model = build_network(ArchitectureSpec("efficientnet-lite0", keep=keep, input_size=128))
        costs = layer_costs(model, prefix_shape(128))
        assert sum(c.params for c in costs) == parameter_count(model, trainable_only=True)
        totals.append(predict_training_memory(costs, 32, MemoryModel(optimizer="adam")).total)
        works.append(task_features(model, 10, 1, 32).work_per_sample)
    assert totals == sorted(totals) and totals[0] * 2 < totals[-1]
    assert works == sorted(works)
    big = build_network(ArchitectureSpec("efficientnet-lite0", keep=1.0, input_size=224))
    assert task_features(big, 10, 1, 32).work_per_sample > works[-1] * 2.5  # 14x14 against 8x8


def test_a_layer_returning_a_tuple_is_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def from_prefix(self, x):
            return self.pair(x)[0]

    with pytest.raises(InvalidArgumentError, match="not one tensor"):
        layer_costs(Net(), (1, 2, 2))
    assert torch.is_grad_enabled()
