"""The FrankenSplit bottleneck learns the head it replaces, and beta trades bits for distortion."""

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
def teacher_and_images():
    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0, preprocess, split_network
    from coinfer.bench.split.images import image_sets

    head, _ = split_network(load_efficientnet_lite0())
    train, _ = image_sets(frames_per_clip=2)
    return head, preprocess([sample.image for sample in train[:12]])


def test_training_lowers_distortion_and_beta_buys_fewer_bits(teacher_and_images):
    head, images = teacher_and_images
    found = {}
    for beta in (0.0, 1.0):
        options = BottleneckOptions(beta=beta, epochs=6, latent_channels=8, hidden_channels=16)
        model = build_bottleneck(40, options)
        history = train_bottleneck(model, images, head, options)
        assert history.distortion[-1] < history.distortion[0]
        found[beta] = history
    assert found[1.0].bits_per_image[-1] < found[0.0].bits_per_image[-1]


def test_the_encoder_sends_integers_at_stride_8_and_the_tables_cover_them():
    import torch

    model = build_bottleneck(40, BottleneckOptions(latent_channels=4, hidden_channels=8)).eval()
    latent = model.encode(torch.zeros(1, 3, 224, 224))
    assert latent.shape == (1, 4, 28, 28) and torch.equal(latent, latent.round())
    assert model.decode(latent).shape == (1, 40, 28, 28)
    probabilities, lows = probability_tables(model, radius=8)
    assert len(probabilities) == len(lows) == 4
    for mass, low in zip(probabilities, lows, strict=True):
        assert mass.shape == (17,) and 0.99 < mass.sum() <= 1.0 and low == -8


def test_bad_options_and_images_are_refused(teacher_and_images):
    head, _ = teacher_and_images
    with pytest.raises(InvalidArgumentError, match="beta"):
        BottleneckOptions(beta=-1)
    with pytest.raises(InvalidArgumentError, match="multiples of 8"):
        train_bottleneck(build_bottleneck(40), np.zeros((2, 3, 100, 100), np.float32), head)
