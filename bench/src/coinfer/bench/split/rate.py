"""The rate half of ``coinfer split bench``: FrankenSplit bottlenecks against JPEG and WebP.

Why: a split is worth its cut only if what crosses is smaller than the frame a camera
would send anyway. This measures, on held-out sources (:mod:`coinfer.bench.split.images`),
bytes per image against top-1 agreement with the unsplit EfficientNet-Lite0 for a ladder of
bottlenecks (one per ``beta``, real bitstreams of :mod:`coinfer.sdk.split.entropy`) and for
JPEG and WebP at several qualities (:mod:`coinfer.bench.split.codecs`); reads every curve at
95% agreement; times the device's encoder against the head it replaces; and checks that the
bitstreams decode to the same symbols and the same logits in other processes with other
thread counts, and that damaged ones are refused.

The bottleneck is injected at :class:`Injection`: the network's stem and blocks up to
``prefix`` stay as they are (frozen, on the device), the learned encoder replaces blocks
``prefix + 1 .. head`` and the decoder restores block ``head``'s output for the tail.
Training images are random crops and flips of the training sources. Example::

    result = rate_bench(quick=True, work_dir=Path("out/split-rate"), progress=print)
    print(result["bytes_ratio_vs_best_codec_at_95"], result["encoder_ms_over_head_ms"])
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.bench.split.codecs import CODECS, QUALITIES, RatePoint, bytes_at_agreement, codec_curve
from coinfer.sdk.split.bottleneck import (
    BottleneckOptions,
    build_bottleneck,
    probability_tables,
    train_bottleneck,
)
from coinfer.sdk.split.entropy import EntropyCodingError, EntropyTables, decode, encode, quantize

#: The agreement at which bytes are compared, and the issue's target for the ratio.
TARGET_AGREEMENT = 0.95
TARGET_RATIO = 0.5
#: Radius of the integer tables around each channel's prior location.
TABLE_RADIUS = 48
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Injection:
    """Where the bottleneck sits: the device keeps the stem and blocks ``0..prefix``; the
    encoder replaces blocks ``prefix + 1 .. head``; the tail starts at block ``head + 1``."""

    prefix: int
    head: int

    @property
    def name(self) -> str:
        return f"blocks-{self.prefix + 1}-{self.head}"


@dataclass(frozen=True)
class RateSettings:
    """How much to train and measure."""

    injection: Injection = Injection(prefix=6, head=7)
    betas: tuple[float, ...] = (0.005, 0.02, 0.08)
    options: BottleneckOptions = field(default_factory=lambda: BottleneckOptions(
        latent_channels=48, encoder_channels=64, hidden_channels=128, beta=0.02, steps=2000))
    crops: int = 2048
    frames_per_clip: int = 250
    qualities: tuple[int, ...] = QUALITIES
    timing_repeats: int = 30
    seed: int = 0

    @classmethod
    def for_mode(cls, quick: bool) -> RateSettings:
        if quick:
            return cls(options=BottleneckOptions(latent_channels=48, encoder_channels=64, hidden_channels=128,
                                                 steps=500),
                       crops=512, frames_per_clip=60, timing_repeats=15)
        return cls()


def rate_bench(quick: bool, work_dir: Path, progress: Progress | None = None,
               settings: RateSettings | None = None) -> dict[str, Any]:
    """Train the bottleneck ladder, measure every curve and return the bench JSON's rate keys."""
    import torch

    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0, preprocess
    from coinfer.bench.split.images import image_sets

    say = progress or (lambda line: print(line, file=sys.stderr))
    settings = settings or RateSettings.for_mode(quick)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    model = load_efficientnet_lite0()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parts = NetworkParts(model, settings.injection)
    train, test = image_sets(frames_per_clip=settings.frames_per_clip)
    test_images = np.stack([resized(sample.image) for sample in test])
    test_inputs = torch.from_numpy(preprocess(list(test_images)))
    with torch.no_grad():
        reference = batched(model, test_inputs).argmax(1).numpy()
    say(f"rate: {len(train)} training and {len(test)} held-out images "
        f"({len(set(sample.source for sample in test))} sources, {len(set(reference.tolist()))} classes)")

    def classify(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return batched(model, torch.from_numpy(preprocess(list(images)))).argmax(1).numpy()

    curves: dict[str, list[RatePoint]] = {}
    for codec in CODECS:
        curves[codec] = codec_curve(test_images, reference, classify, codec, settings.qualities)
        say(f"rate: {codec} " + ", ".join(f"q{p.setting:g} {p.bytes_per_image:.0f} B {p.agreement:.3f}"
                                          for p in curves[codec]))

    started = time.perf_counter()
    crops = torch.from_numpy(preprocess(training_crops([sample.image for sample in train], settings.crops,
                                                       settings.seed)))
    inputs, targets = parts.teacher(crops)
    say(f"rate: {len(crops)} training crops through the teacher in {time.perf_counter() - started:.0f} s")
    with torch.no_grad():
        test_features = parts.prefix(test_inputs)
    ladder, trained = [], []
    for beta in settings.betas:
        options = replace(settings.options, beta=beta, seed=settings.seed)
        bottleneck = build_bottleneck(inputs.shape[1], targets.shape[1], inputs.shape[2] // targets.shape[2],
                                      options)
        started = time.perf_counter()
        train_bottleneck(bottleneck, inputs, targets, options)
        tables = EntropyTables.from_probabilities(*probability_tables(bottleneck, TABLE_RADIUS))
        point, streams = measure_bottleneck(bottleneck, tables, parts, test_features, reference, beta)
        ladder.append(point)
        trained.append((bottleneck, tables, streams))
        say(f"rate: bottleneck beta {beta:g}: {point.bytes_per_image:.0f} B per image, agreement "
            f"{point.agreement:.3f} (trained in {time.perf_counter() - started:.0f} s)")
    curves["bottleneck"] = ladder

    at_target = {method: bytes_at_agreement(curve, TARGET_AGREEMENT) for method, curve in curves.items()}
    codec_bytes = [value for codec in CODECS if (value := at_target[codec]) is not None]
    best_codec = min(codec_bytes) if codec_bytes else None
    ratio = (at_target["bottleneck"] / best_codec
             if at_target["bottleneck"] is not None and best_codec is not None else None)
    best = max(ladder, key=lambda point: (point.agreement, -point.bytes_per_image))
    codec_at_best = [value for codec in CODECS
                     if (value := bytes_at_agreement(curves[codec], best.agreement)) is not None]
    encoder_ms, head_ms = time_encoder_and_head(parts, trained[len(trained) // 2][0], work_dir,
                                                settings.timing_repeats)
    exact = check_bit_exact(parts, *trained[len(trained) // 2], 8, work_dir)
    say(f"rate: encoder {encoder_ms:.2f} ms, head {head_ms:.2f} ms; "
        f"bit-exact decode {exact['bit_exact_decode']}")
    return {
        "rate_accuracy": {method: [point.to_dict() for point in curve] for method, curve in curves.items()},
        "bytes_at_95": at_target,
        "bytes_ratio_vs_best_codec_at_95": ratio,
        "bottleneck_best": {**best.to_dict(),
                            "best_codec_bytes_at_same_agreement": min(codec_at_best, default=None),
                            "bytes_ratio_vs_best_codec": (best.bytes_per_image / min(codec_at_best)
                                                          if codec_at_best else None)},
        "encoder_ms": encoder_ms, "head_ms": head_ms,
        "encoder_ms_over_head_ms": encoder_ms / head_ms,
        **exact,
        "rate_setup": {
            "injection": {**asdict(settings.injection), "name": settings.injection.name},
            "latent_shape": list(trained[0][2][1]), "options": asdict(settings.options),
            "betas": list(settings.betas), "training_crops": settings.crops,
            "test_images": len(test), "test_sources": sorted({sample.source for sample in test}),
            "test_classes": len(set(reference.tolist())),
            "targets": {"bytes_ratio_vs_best_codec_at_95": TARGET_RATIO, "encoder_ms_over_head_ms": 1.0},
            "how_measured": "bytes are real bitstreams (entropy-coded latents, 29-byte header included; "
                            "Pillow JPEG/WebP files of the 224 x 224 image); agreement is top-1 against the "
                            "unsplit network on the original image; encoder and head are ONNX Runtime, "
                            "1 thread, median",
        },
    }


def resized(image: np.ndarray) -> np.ndarray:
    """An RGB image at the network's input size, as the device would send it."""
    from PIL import Image

    from coinfer.bench.models.efficientnet_lite import IMAGE_SIZE

    return np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))


def training_crops(images: Sequence[np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """``count`` random square crops (35-100% of the shorter side), half of them mirrored."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        image = images[int(rng.integers(len(images)))]
        height, width = image.shape[:2]
        side = int(min(height, width) * rng.uniform(0.35, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = image[top:top + side, left:left + side]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


def batched(module: Any, inputs: Any, size: int = 64) -> Any:
    """``module`` over ``inputs`` in batches (bounded memory), concatenated."""
    import torch

    with torch.no_grad():
        return torch.cat([module(part) for part in inputs.split(size)])


class NetworkParts:
    """EfficientNet-Lite0 cut at an :class:`Injection`: ``prefix`` (kept on the device),
    ``head_rest`` (what the encoder replaces) and ``tail``, as frozen PyTorch modules."""

    def __init__(self, model: Any, injection: Injection) -> None:
        import torch

        from coinfer.bench.models.efficientnet_lite import split_network

        self.injection = injection
        self.prefix, _ = split_network(model, injection.prefix)
        self.head, self.tail = split_network(model, injection.head)
        self.head_rest = torch.nn.Sequential(*model._blocks[injection.prefix + 1:injection.head + 1]).eval()

    def teacher(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """The prefix's and the head's outputs of ``images``: the bottleneck's inputs and targets."""
        features = batched(self.prefix, images)
        return features.numpy(), batched(self.head_rest, features).numpy()


Coded = tuple[list[bytes], tuple[int, ...]]


def measure_bottleneck(bottleneck: Any, tables: EntropyTables, parts: NetworkParts, features: Any,
                       reference: np.ndarray, beta: float) -> tuple[RatePoint, Coded]:
    """Real bitstreams of every held-out image and the tail's agreement on what they decode to."""
    import torch

    with torch.no_grad():
        latent = bottleneck.encoder(features).numpy()
    streams, decoded = [], []
    for sample in latent:
        symbols, _ = quantize(sample, tables)
        stream = encode(symbols, tables)
        streams.append(stream)
        decoded.append(decode(stream, tables, symbols.shape))
    with torch.no_grad():
        restored = bottleneck.decode(torch.from_numpy(np.stack(decoded).astype(np.float32)))
        classes = batched(parts.tail, restored).argmax(1).numpy()
    point = RatePoint("bottleneck", beta, float(np.mean([len(stream) for stream in streams])),
                      float(np.mean(classes == reference)))
    return point, (streams, tuple(latent.shape[1:]))


def time_encoder_and_head(parts: NetworkParts, bottleneck: Any, work_dir: Path,
                          repeats: int) -> tuple[float, float]:
    """Median ms of the device's encoder (prefix + learned encoder + rounding) and of the head
    it replaces, both exported to ONNX and run on ONNX Runtime with one thread."""
    import torch

    class DeviceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.prefix, self.encoder = parts.prefix, bottleneck.encoder

        def forward(self, images: Any) -> Any:
            return torch.round(self.encoder(self.prefix(images)))

    example = torch.zeros(1, 3, 224, 224)
    encoder_path = export_module(DeviceEncoder().eval(), example, work_dir / "device-encoder.onnx")
    head_path = export_module(parts.head, example, work_dir / "head.onnx")
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    encoder = session(encoder_path, threads=1)
    head = session(head_path, threads=1)
    encoder_times, head_times = [], []
    for _ in range(repeats):  # alternate, so that load on the machine hits both alike
        encoder_times.append(timed(encoder, image))
        head_times.append(timed(head, image))
    return statistics.median(encoder_times), statistics.median(head_times)


def export_module(module: Any, example: Any, path: Path) -> Path:
    """A PyTorch module of one input shaped like ``example`` as ONNX (opset 17, batch symbolic)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamo=False, opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def session(path: Path, threads: int) -> Any:
    """An ONNX Runtime session with ``threads`` intra-op threads (sequential execution)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(model: Any, image: np.ndarray) -> float:
    started = time.perf_counter()
    model.run(None, {"input": image})
    return (time.perf_counter() - started) * 1000.0


def check_bit_exact(parts: NetworkParts, bottleneck: Any, tables: EntropyTables, coded: Coded, count: int,
                    work_dir: Path) -> dict[str, Any]:
    """Decode the same bitstreams here and in fresh processes with 1 and 2 threads: the
    symbols and the edge's logits (decoder + tail on ONNX Runtime) must be identical; a
    flipped byte, a truncated stream and a stream read with other tables must be refused."""
    import torch

    streams, shape = coded
    streams = streams[:count]

    class EdgeSide(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder, self.tail = bottleneck.decoder, parts.tail

        def forward(self, latent: Any) -> Any:
            return self.tail(self.decoder(latent))

    folder = work_dir / "bit-exact"
    folder.mkdir(parents=True, exist_ok=True)
    export_module(EdgeSide().eval(), torch.zeros(1, *shape), folder / "edge.onnx")
    tables.save(folder / "tables.npz")
    for index, stream in enumerate(streams):
        (folder / f"{index}.bin").write_bytes(stream)
    (folder / "shape.json").write_text(json.dumps({"shape": list(shape), "count": len(streams)}))
    digests = {threads: decode_folder(folder, threads) for threads in (1, 2)}
    children = {}
    for threads in (1, 2):
        answer = subprocess.run([sys.executable, "-m", "coinfer.bench.split.rate", str(folder), str(threads)],
                                capture_output=True, text=True, timeout=600, check=False)
        children[threads] = (json.loads(answer.stdout) if answer.returncode == 0
                             else {"error": answer.stderr[-400:]})
    same = all(child == digests[1] for child in children.values()) and digests[1] == digests[2]
    refused = damaged_streams_refused(streams[0], tables, shape)
    return {"bit_exact_decode": bool(same and all(refused.values())),
            "bit_exact_detail": {"here": digests, "other_processes": children, "damaged_refused": refused}}


def decode_folder(folder: Path, threads: int) -> dict[str, str]:
    """SHA-256 of the decoded symbols and of the edge's logits (float32 bytes) of a folder of
    bitstreams, decoded with its tables and run with ``threads`` intra-op threads."""
    spec = json.loads((folder / "shape.json").read_text())
    tables = EntropyTables.load(folder / "tables.npz")
    symbols = np.stack([decode((folder / f"{index}.bin").read_bytes(), tables, spec["shape"])
                        for index in range(spec["count"])])
    logits = session(folder / "edge.onnx", threads).run(None, {"input": symbols.astype(np.float32)})[0]
    return {"symbols": hashlib.sha256(symbols.astype(np.int32).tobytes()).hexdigest(),
            "logits": hashlib.sha256(np.ascontiguousarray(logits, np.float32).tobytes()).hexdigest()}


def damaged_streams_refused(stream: bytes, tables: EntropyTables, shape: tuple[int, ...]) -> dict[str, bool]:
    """Whether each kind of damage is refused with :class:`EntropyCodingError`."""
    flipped = bytearray(stream)
    flipped[len(flipped) // 2] ^= 0x40
    other = EntropyTables.from_samples(np.zeros((1, *shape), np.int32))
    cases = {"flipped_byte": (bytes(flipped), tables), "truncated": (stream[:-3], tables),
             "other_tables": (stream, other)}
    refused = {}
    for name, (data, used) in cases.items():
        try:
            decode(data, used, shape)
            refused[name] = False
        except EntropyCodingError:
            refused[name] = True
    return refused


if __name__ == "__main__":  # the other process of the bit-exact check: FOLDER THREADS
    print(json.dumps(decode_folder(Path(sys.argv[1]), int(sys.argv[2]))))
