"""The rate half of the split bench: codec curves, reading them at a target, and one tiny
run of the whole pipeline (training, real bitstreams, timing, the cross-process decode)."""

from dataclasses import replace

import numpy as np
import pytest

from coinfer.bench.split.codecs import RatePoint, bytes_at_agreement, codec_curve, compress, decompress
from coinfer.sdk.errors import InvalidArgumentError


def test_codecs_shrink_with_quality_and_round_trip_the_shape():
    from coinfer.bench.split.images import photo
    from coinfer.bench.split.rate import resized

    image = resized(photo("chelsea"))
    for codec in ("jpeg", "webp"):
        small, large = compress(image, codec, 10), compress(image, codec, 95)
        assert len(small) < len(large)
        assert decompress(small).shape == image.shape
    with pytest.raises(InvalidArgumentError, match="unknown codec"):
        compress(image, "gif", 50)


def test_codec_curve_counts_agreement_against_the_reference():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[2:] = 200
    curve = codec_curve(images, np.array([0, 0, 1, 0]), lambda batch: (batch.mean(axis=(1, 2, 3)) > 100)
                        .astype(int), "jpeg", (20, 90))
    assert [point.agreement for point in curve] == [0.75, 0.75]
    assert curve[0].bytes_per_image < curve[1].bytes_per_image
    with pytest.raises(InvalidArgumentError, match="reference"):
        codec_curve(images, np.array([0]), lambda batch: batch, "jpeg")


def test_bytes_at_agreement_interpolates_and_never_extrapolates():
    curve = [RatePoint("x", 1, 100.0, 0.5), RatePoint("x", 2, 300.0, 0.9), RatePoint("x", 3, 200.0, 0.7)]
    assert bytes_at_agreement(curve, 0.8) == pytest.approx(250.0)
    assert bytes_at_agreement(curve, 0.4) == 100.0
    assert bytes_at_agreement(curve, 0.95) is None


@pytest.mark.slow
def test_a_tiny_rate_bench_reports_every_key_and_decodes_bit_exactly(tmp_path):
    from coinfer.bench.split.rate import RateSettings, rate_bench
    from coinfer.sdk.split.bottleneck import BottleneckOptions

    settings = replace(RateSettings.for_mode(quick=True), betas=(0.01, 0.1), crops=64, frames_per_clip=2,
                       qualities=(20, 90), timing_repeats=3,
                       options=BottleneckOptions(latent_channels=8, encoder_channels=8, hidden_channels=16,
                                                 steps=20))
    lines = []
    result = rate_bench(True, tmp_path, lines.append, settings)
    assert set(result["rate_accuracy"]) == {"jpeg", "webp", "bottleneck"}
    assert [len(curve) for curve in result["rate_accuracy"].values()] == [2, 2, 2]
    for curve in result["rate_accuracy"].values():
        assert all(0 <= point["agreement"] <= 1 and point["bytes_per_image"] > 29 for point in curve)
    assert result["bit_exact_decode"] is True
    detail = result["bit_exact_detail"]
    assert all(detail["damaged_refused"].values())
    assert detail["other_processes"][1] == detail["here"][1] == detail["other_processes"][2]
    assert result["encoder_ms"] > 0 and result["head_ms"] > 0
    assert any(line.startswith("rate: bottleneck beta") for line in lines)
