"""FrankenSplit's shallow variational bottleneck: a small device encoder in place of a network's
first stages, a quantised latent with a factorized prior, and an edge decoder that restores
the features the network's tail expects.

Why: sending the head's feature map as it is costs more than a JPEG of the frame (a cut
at stride 8 of EfficientNet-Lite0 is 31,360 floats); a codec trained for the tail's
features, not for pixels, spends bits only on what the tail uses. Training is head
distillation: with the pretrained head ``h = head(x)`` as the teacher,

    loss = ||h - decoder(q(encoder(x)))||^2 / var(h) + beta * bits(q(encoder(x))) / elements

where ``q`` adds uniform noise in [-0.5, 0.5) while training (a differentiable stand-in for
rounding) and rounds afterwards, and ``bits`` is ``-log2`` of the latent's probability
under a per-channel logistic prior (the factorized prior: one distribution per channel,
the same at every position). Several ``beta`` give a rate ladder.

The encoder's integers are entropy-coded with tables quantised once from the prior
(:func:`probability_tables`), so decoding never recomputes a float CDF.

PyTorch is imported when a bottleneck is built or trained, never with this module.
Example::

    head, tail = split_network(load_efficientnet_lite0())       # the teacher and the rest
    model = build_bottleneck(target_channels=40, options=BottleneckOptions(beta=0.05))
    history = train_bottleneck(model, images, head, BottleneckOptions(beta=0.05))
    latent = model.encode(x)                                      # integers, on the device
    features = model.decode(latent)                               # on the edge, for tail()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.frameworks import import_torch


@dataclass(frozen=True)
class BottleneckOptions:
    """Shape and training of one bottleneck; ``beta`` trades bits for distortion."""

    latent_channels: int = 24
    hidden_channels: int = 48
    beta: float = 0.05
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.latent_channels, self.hidden_channels, self.epochs, self.batch_size) < 1:
            raise InvalidArgumentError("latent_channels, hidden_channels, epochs and batch_size must be >= 1")
        if self.beta < 0 or not self.learning_rate > 0:
            raise InvalidArgumentError(f"need beta >= 0 and learning_rate > 0, got {self.beta}, "
                                       f"{self.learning_rate}")


#: The encoder's total stride: its latent has the resolution of a stride-8 feature map.
STRIDE = 8


def build_bottleneck(target_channels: int, options: BottleneckOptions = BottleneckOptions()) -> Any:
    """A new (untrained) bottleneck whose decoder outputs ``target_channels`` feature maps at
    1/8 of the input's resolution."""
    import_torch()  # a clear error when PyTorch is missing
    import torch
    from torch import nn

    hidden, latent = options.hidden_channels, options.latent_channels

    class Bottleneck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Conv2d(3, hidden // 2, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(hidden // 2, hidden, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(hidden, latent, 3, stride=2, padding=1))
            self.decoder = nn.Sequential(
                nn.Conv2d(latent, hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(hidden, target_channels, 1))
            self.prior_location = nn.Parameter(torch.zeros(latent))
            self.prior_log_scale = nn.Parameter(torch.zeros(latent))

        def likelihood(self, values: Any) -> Any:
            """P(symbol) of each (noisy or rounded) latent value under its channel's logistic."""
            location = self.prior_location.view(1, -1, 1, 1)
            scale = self.prior_log_scale.exp().view(1, -1, 1, 1)
            upper = torch.sigmoid((values + 0.5 - location) / scale)
            lower = torch.sigmoid((values - 0.5 - location) / scale)
            return (upper - lower).clamp_min(1e-9)

        def encode(self, images: Any) -> Any:
            """The integer latent the device sends (rounded)."""
            return torch.round(self.encoder(images))

        def decode(self, latent: Any) -> Any:
            return self.decoder(latent)

        def forward(self, images: Any) -> tuple[Any, Any]:
            """Restored features and bits per image; noisy latent in training, rounded in eval."""
            latent = self.encoder(images)
            if self.training:
                latent = latent + torch.empty_like(latent).uniform_(-0.5, 0.5)
            else:
                latent = torch.round(latent)
            bits = -torch.log2(self.likelihood(latent)).flatten(1).sum(1)
            return self.decoder(latent), bits

    return Bottleneck()


@dataclass(frozen=True)
class TrainingHistory:
    """Per epoch: normalised distortion (MSE / variance of the teacher's features) and bits
    per image, both averaged over the training images."""

    distortion: list[float]
    bits_per_image: list[float]


def train_bottleneck(model: Any, images: np.ndarray, teacher: Callable[[Any], Any],
                     options: BottleneckOptions = BottleneckOptions(),
                     progress: Callable[[int, float, float], None] | None = None) -> TrainingHistory:
    """Head distillation of ``model`` on (N, 3, H, W) float32 ``images`` against ``teacher``
    (the head it replaces, a PyTorch callable); horizontal flips double the images."""
    torch = import_torch()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0 or images.shape[2] % STRIDE \
            or images.shape[3] % STRIDE:
        raise InvalidArgumentError(f"images must be (N, 3, H, W) with H and W multiples of {STRIDE}, "
                                   f"got {images.shape}")
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    inputs = torch.from_numpy(np.concatenate([images, images[..., ::-1]]))
    with torch.no_grad():
        targets = torch.cat([teacher(part) for part in inputs.split(32)])
    variance = float(targets.var())
    elements = targets[0].numel()
    optimiser = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    history = TrainingHistory([], [])
    model.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        distortion_sum = bits_sum = 0.0
        for start in range(0, len(inputs), options.batch_size):
            batch = order[start:start + options.batch_size]
            restored, bits = model(inputs[batch])
            distortion = ((restored - targets[batch]) ** 2).mean() / variance
            loss = distortion + options.beta * bits.mean() / elements
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            distortion_sum += float(distortion.detach()) * len(batch)
            bits_sum += float(bits.detach().sum())
        history.distortion.append(distortion_sum / len(inputs))
        history.bits_per_image.append(bits_sum / len(inputs))
        if progress is not None:
            progress(epoch, history.distortion[-1], history.bits_per_image[-1])
    model.eval()
    return history


def probability_tables(model: Any, radius: int = 64) -> tuple[list[np.ndarray], list[int]]:
    """Per channel, the prior's probability of every integer in ``[round(location) - radius,
    round(location) + radius]`` (float64, summing to at most 1) and that range's low end: the
    input of the integer entropy tables that ship with the encoder and decoder."""
    torch = import_torch()
    if radius < 1:
        raise InvalidArgumentError(f"radius must be >= 1, got {radius}")
    with torch.no_grad():
        locations = model.prior_location.double()
        scales = model.prior_log_scale.double().exp()
    probabilities, lows = [], []
    for location, scale in zip(locations.tolist(), scales.tolist(), strict=True):
        low = round(location) - radius
        symbols = torch.arange(low, low + 2 * radius + 1, dtype=torch.float64)
        mass = (torch.sigmoid((symbols + 0.5 - location) / scale)
                - torch.sigmoid((symbols - 0.5 - location) / scale))
        probabilities.append(mass.numpy())
        lows.append(low)
    return probabilities, lows
