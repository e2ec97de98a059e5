"""``coinfer split train``: a FrankenSplit bottleneck for EfficientNet-Lite0, ready to deploy.

    coinfer split train --out out/bottleneck --beta 0.005
    coinfer split export --model out/bottleneck/bottleneck.onnx --cut latent --encoding entropy \\
        --tables out/bottleneck/tables.npz --out out/split

Trains one bottleneck (:mod:`coinfer.sdk.split.bottleneck`) at the injection point of the
bench (:class:`~coinfer.bench.split.rate.Injection`) on random crops of the training sources
(:mod:`coinfer.bench.split.images`, the held-out sources never seen), then writes, in one
atomic step:

- ``bottleneck.onnx``: the whole network with the bottleneck inside, ``image`` -> the kept
  layers -> encoder -> rounding (the tensor ``latent``, what crosses) -> decoder -> tail ->
  ``logits``; ``coinfer split export --cut latent`` cuts it into the device's encoder and the
  edge's decoder and tail;
- ``tables.npz``: the prior's integer entropy tables (:class:`~coinfer.sdk.split.entropy.EntropyTables`);
- ``training.json``: the options, the injection point and the training history.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import add_output, add_quiet, add_seed, check_output, positive

#: The name of the tensor that crosses, in the exported graph.
LATENT = "latent"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coinfer.bench.split.rate import RateSettings

    defaults = RateSettings()
    parser.add_argument("--beta", type=positive(float), default=defaults.options.beta,
                        help=f"bits against distortion: larger is fewer bytes (default "
                             f"{defaults.options.beta})")
    parser.add_argument("--latent-channels", type=positive(int), default=defaults.options.latent_channels,
                        help=f"channels of the latent (default {defaults.options.latent_channels})")
    parser.add_argument("--steps", type=positive(int), default=defaults.options.steps,
                        help=f"training steps of {defaults.options.batch_size} crops (default "
                             f"{defaults.options.steps})")
    parser.add_argument("--crops", type=positive(int), default=defaults.crops,
                        help=f"random training crops (default {defaults.crops})")
    add_seed(parser, "the crops and the initial weights")
    add_quiet(parser)
    add_output(parser, "bottleneck.onnx, tables.npz and training.json")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.cli.report import report

    check_output(args)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    summary = train_and_export(args.out, beta=args.beta, latent_channels=args.latent_channels,
                               steps=args.steps, crops=args.crops, seed=args.seed, overwrite=args.overwrite,
                               progress=say)
    report("coinfer split train", summary)
    return 0


def train_and_export(out: Path, *, beta: float, latent_channels: int, steps: int, crops: int, seed: int,
                     overwrite: bool = False, progress: Any = None) -> dict[str, Any]:
    """Train one bottleneck and write the folder described in the module doc; returns a summary."""
    import torch

    from coinfer.bench.models.efficientnet_lite import export_onnx, load_efficientnet_lite0, preprocess
    from coinfer.bench.split.images import image_sets
    from coinfer.bench.split.rate import NetworkParts, RateSettings, training_crops
    from coinfer.sdk.fsutil import atomic_directory
    from coinfer.sdk.split.bottleneck import build_bottleneck, probability_tables, train_bottleneck
    from coinfer.sdk.split.entropy import EntropyTables

    say = progress or (lambda line: None)
    settings = RateSettings()
    options = replace(settings.options, beta=beta, latent_channels=latent_channels, steps=steps, seed=seed)
    model = load_efficientnet_lite0()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parts = NetworkParts(model, settings.injection)
    train, _ = image_sets(frames_per_clip=settings.frames_per_clip)
    started = time.perf_counter()
    images = torch.from_numpy(preprocess(training_crops([sample.image for sample in train], crops, seed)))
    inputs, targets = parts.teacher(images)
    say(f"split train: {crops} crops of {len(train)} training images through the teacher "
        f"({time.perf_counter() - started:.0f} s)")
    torch.manual_seed(seed)
    stride = inputs.shape[2] // targets.shape[2]
    bottleneck = build_bottleneck(inputs.shape[1], targets.shape[1], stride, options)
    history = train_bottleneck(bottleneck, inputs, targets, options, report_every=max(1, steps // 10),
                               progress=lambda step, distortion, bits: say(
                                   f"split train: step {step}/{steps}: distortion {distortion:.3f}, "
                                   f"{bits / 8:.0f} bytes per crop"))
    tables = EntropyTables.from_probabilities(*probability_tables(bottleneck))

    class WithBottleneck(torch.nn.Module):
        """The network with the bottleneck in place of the head's last blocks."""

        def __init__(self) -> None:
            super().__init__()
            self.prefix, self.bottleneck, self.tail = parts.prefix, bottleneck, parts.tail

        def forward(self, image: Any) -> Any:
            latent = torch.round(self.bottleneck.encoder(self.prefix(image)))
            return self.tail(self.bottleneck.decoder(latent))

    with atomic_directory(out, overwrite=overwrite) as staging:
        export_onnx(staging / "bottleneck.onnx", WithBottleneck().eval())
        name_latent(staging / "bottleneck.onnx")
        tables.save(staging / "tables.npz")
        (staging / "training.json").write_text(json.dumps({
            "injection": asdict(settings.injection), "options": asdict(options), "crops": crops,
            "training_images": len(train), "history": asdict(history)}, indent=2))
    return {"latent channels": latent_channels, "beta": beta, "steps": steps,
            "final distortion": round(history.distortion[-1], 4),
            "bytes per crop (prior)": round(history.bits_per_sample[-1] / 8), "out": str(out)}


def name_latent(path: Path) -> None:
    """Rename the rounding's output to :data:`LATENT`, so ``split export --cut latent`` finds it."""
    import onnx

    model = onnx.load(str(path))
    rounds = [node for node in model.graph.node if node.op_type == "Round"]
    if len(rounds) != 1:
        raise RuntimeError(f"expected one Round node in the exported bottleneck, found {len(rounds)}")
    old = rounds[0].output[0]
    for node in model.graph.node:
        node.input[:] = [LATENT if name == old else name for name in node.input]
        node.output[:] = [LATENT if name == old else name for name in node.output]
    onnx.save(model, str(path))
