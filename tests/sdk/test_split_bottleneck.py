"""The FrankenSplit bottleneck learns the head output it restores, and beta trades bits for distortion."""

import numpy as np
import pytest

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.split.bottleneck import (
    BottleneckOptions,
    build_bottleneck,
    probability_tables,
    train_bottleneck,
)


@pytest.fixture(scope="module")
def features():
    """Smooth random feature maps and a fixed nonlinear 'head' of them at half resolution."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((64, 6, 16, 16)).astype(np.float32)
    inputs = (inputs + np.roll(inputs, 1, axis=2) + np.roll(inputs, 1, axis=3)) / 3
    pooled = inputs.reshape(64, 6, 8, 2, 8, 2).mean(axis=(3, 5))
    targets = np.concatenate([np.maximum(pooled, 0), pooled[:, :2] * 2], axis=1)
    return inputs, targets


def test_training_lowers_distortion_and_beta_buys_fewer_bits(features):
    inputs, targets = features
    found = {}
    for beta in (0.0, 2.0):
        options = BottleneckOptions(beta=beta, steps=150, latent_channels=4, encoder_channels=8,
                                    hidden_channels=16, batch_size=16)
        model = build_bottleneck(6, 8, stride=2, options=options)
        history = train_bottleneck(model, inputs, targets, options, report_every=50)
        assert history.steps == [50, 100, 150]
        assert history.distortion[-1] < history.distortion[0]
        found[beta] = history
    assert found[2.0].bits_per_sample[-1] < found[0.0].bits_per_sample[-1]


def test_the_encoder_sends_integers_and_the_tables_cover_them():
    import torch

    options = BottleneckOptions(latent_channels=4, encoder_channels=8, hidden_channels=8)
    model = build_bottleneck(40, 80, stride=2, options=options).eval()
    latent = model.encode(torch.randn(1, 40, 28, 28))
    assert latent.shape == (1, 4, 14, 14) and torch.equal(latent, latent.round())
    assert model.decode(latent).shape == (1, 80, 14, 14)
    probabilities, lows = probability_tables(model, radius=8)
    assert len(probabilities) == len(lows) == 4
    for mass, low in zip(probabilities, lows, strict=True):
        assert mass.shape == (17,) and 0.99 < mass.sum() <= 1.0 and low == -8


def test_bad_options_and_shapes_are_refused(features):
    inputs, targets = features
    with pytest.raises(InvalidArgumentError, match="beta"):
        BottleneckOptions(beta=-1)
    with pytest.raises(InvalidArgumentError, match="stride"):
        build_bottleneck(6, 8, stride=3)
    with pytest.raises(InvalidArgumentError, match="pair up"):
        train_bottleneck(build_bottleneck(6, 8, stride=2), inputs, targets[:, :, :4])
