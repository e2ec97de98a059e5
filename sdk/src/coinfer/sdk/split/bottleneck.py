"""FrankenSplit's shallow variational bottleneck, injected into a pretrained network: a small
encoder on the device in place of the last layers of the head, a quantised latent with a
factorized prior, and an edge decoder that restores the features the network's tail expects.

Why: sending the head's feature map as it is costs more than a JPEG of the frame (a cut at
stride 16 of EfficientNet-Lite0 is 15,680 floats); a codec trained for the tail's features,
not for pixels, spends bits only on what the tail uses.

Why injected, not from scratch: FrankenSplit trains an encoder that replaces the whole head
on ImageNet. With the few hundred images that ship in packages, a from-scratch encoder of
the pixels did not generalise here (15% top-1 agreement on held-out sources, see
docs/split.md); keeping the network's first layers (the *prefix*, frozen) and learning only
a compressor of their output that replaces the rest of the head, and a decompressor, leaves
few parameters to learn and keeps the device's work no larger than the head it replaces.

Training is head distillation on features: with the prefix's output ``f`` and the head's
output ``h`` (the teacher),

    loss = ||h - decoder(q(encoder(f)))||^2 / var(h) + beta * bits(q(encoder(f))) / elements

where ``q`` adds uniform noise in [-0.5, 0.5) while training (a differentiable stand-in for
rounding) and rounds afterwards, and ``bits`` is ``-log2`` of the latent's probability under
a per-channel logistic prior (the factorized prior: one distribution per channel, the same
at every position). Several ``beta`` give a rate ladder. (Adding a distillation term on the
tail's logits, KL or cross-entropy to the teacher's class, was tried on EfficientNet-Lite0
and lowered held-out agreement: the crops' teacher distributions are flat, 4.6 nats.)

The encoder's integers are entropy-coded with tables quantised once from the prior
(:func:`probability_tables`), so decoding never recomputes a float CDF.

PyTorch is imported when a bottleneck is built or trained, never with this module.
Example::

    model = build_bottleneck(in_channels=80, target_channels=80, options=BottleneckOptions(beta=0.01))
    history = train_bottleneck(model, prefix_features, head_features, BottleneckOptions(beta=0.01))
    latent = model.encode(features)           # integers, on the device
    restored = model.decode(latent)           # on the edge, for the tail
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
    """Shape and training of one bottleneck; ``beta`` trades bits for distortion.
    ``encoder_channels`` is the device encoder's width (its cost), ``hidden_channels`` the
    edge decoder's."""

    latent_channels: int = 24
    encoder_channels: int = 64
    hidden_channels: int = 96
    beta: float = 0.01
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.latent_channels, self.encoder_channels, self.hidden_channels, self.steps,
               self.batch_size) < 1:
            raise InvalidArgumentError("latent_channels, encoder_channels, hidden_channels, steps and "
                                       "batch_size must be >= 1")
        if self.beta < 0 or not self.learning_rate > 0:
            raise InvalidArgumentError(f"need beta >= 0 and learning_rate > 0, got {self.beta}, "
                                       f"{self.learning_rate}")


def build_bottleneck(in_channels: int, target_channels: int, stride: int = 1,
                     options: BottleneckOptions = BottleneckOptions()) -> Any:
    """A new (untrained) bottleneck from ``in_channels`` feature maps (the prefix's output) to
    ``target_channels`` maps at ``1 / stride`` of their resolution (the head's output)."""
    import_torch()  # a clear error when PyTorch is missing
    import torch
    from torch import nn

    if min(in_channels, target_channels) < 1 or stride not in (1, 2, 4):
        raise InvalidArgumentError(f"need channels >= 1 and stride 1, 2 or 4, got {in_channels}, "
                                   f"{target_channels}, {stride}")
    width, hidden, latent = options.encoder_channels, options.hidden_channels, options.latent_channels

    class Bottleneck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stride = stride
            self.encoder = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=stride, padding=1), nn.LeakyReLU(0.1),
                nn.Conv2d(width, latent, 1))
            self.decoder = nn.Sequential(
                nn.Conv2d(latent, hidden, 3, padding=1), nn.LeakyReLU(0.1),
                nn.Conv2d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.1),
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

        def encode(self, features: Any) -> Any:
            """The integer latent the device sends (rounded)."""
            return torch.round(self.encoder(features))

        def decode(self, latent: Any) -> Any:
            return self.decoder(latent)

        def forward(self, features: Any) -> tuple[Any, Any]:
            """Restored features and bits per sample; noisy latent in training, rounded in eval."""
            latent = self.encoder(features)
            if self.training:
                latent = latent + torch.empty_like(latent).uniform_(-0.5, 0.5)
            else:
                latent = torch.round(latent)
            bits = -torch.log2(self.likelihood(latent)).flatten(1).sum(1)
            return self.decoder(latent), bits

    return Bottleneck()


@dataclass(frozen=True)
class TrainingHistory:
    """Every ``report_every`` steps: normalised distortion (MSE / variance of the teacher's
    features) and bits per sample of the batches since the last report."""

    steps: list[int]
    distortion: list[float]
    bits_per_sample: list[float]


def train_bottleneck(model: Any, inputs: np.ndarray, targets: np.ndarray,
                     options: BottleneckOptions = BottleneckOptions(), *, report_every: int = 100,
                     progress: Callable[[int, float, float], None] | None = None) -> TrainingHistory:
    """Head distillation of ``model``: ``inputs`` (N, C, H, W) are the frozen prefix's outputs,
    ``targets`` (N, C', H / stride, W / stride) the head's. ``progress(step, distortion,
    bits)`` follows each report."""
    torch = import_torch()
    inputs = np.asarray(inputs, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    stride = model.stride
    if inputs.ndim != 4 or targets.ndim != 4 or len(inputs) != len(targets) or len(inputs) == 0 \
            or inputs.shape[2] != targets.shape[2] * stride or inputs.shape[3] != targets.shape[3] * stride:
        raise InvalidArgumentError(f"inputs (N, C, H, W) and targets (N, C', H / {stride}, W / {stride}) "
                                   f"must pair up, got {inputs.shape} and {targets.shape}")
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    features, wanted = torch.from_numpy(inputs), torch.from_numpy(targets)
    variance = float(wanted.var())
    elements = wanted[0].numel()
    optimiser = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=options.learning_rate,
                                                   total_steps=options.steps, pct_start=0.15)
    history = TrainingHistory([], [], [])
    distortion_sum = bits_sum = 0.0
    seen = 0
    model.train()
    for step in range(options.steps):
        batch = torch.randint(0, len(features), (options.batch_size,), generator=generator)
        restored, bits = model(features[batch])
        distortion = ((restored - wanted[batch]) ** 2).mean() / variance
        loss = distortion + options.beta * bits.mean() / elements
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        distortion_sum += float(distortion.detach()) * len(batch)
        bits_sum += float(bits.detach().sum())
        seen += len(batch)
        if (step + 1) % report_every == 0 or step + 1 == options.steps:
            history.steps.append(step + 1)
            history.distortion.append(distortion_sum / seen)
            history.bits_per_sample.append(bits_sum / seen)
            distortion_sum = bits_sum = 0.0
            seen = 0
            if progress is not None:
                progress(step + 1, history.distortion[-1], history.bits_per_sample[-1])
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
