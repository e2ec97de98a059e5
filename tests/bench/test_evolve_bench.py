"""The evolve bench's methods and compression sections on a tiny drift set."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from coinfer.bench.data.drift import DriftOptions, generate_drift  # noqa: E402
from coinfer.bench.evolve.methods import METHODS, EvolveOptions, build_world, drift_drop, source_accuracy  # noqa: E402
from coinfer.sdk.errors import InvalidArgumentError  # noqa: E402
from coinfer.sdk.evolve.training import TrainOptions  # noqa: E402

TINY = DriftOptions(size=64, seconds=2.0, cameras=1, source_cameras=1, footage_frames=6, width=128, height=96)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from coinfer.bench.models.efficientnet_lite import load_efficientnet_lite0

    drift = generate_drift(tmp_path_factory.mktemp("drift") / "tiny", TINY, workers=1, progress=False)
    options = EvolveOptions(cameras=("A", "E", "F"), pretrain=TrainOptions(epochs=1, batch_size=8),
                            evolve=TrainOptions(epochs=2, batch_size=8))
    return build_world(drift, load_efficientnet_lite0(), options, say=lambda line: None), options


@pytest.fixture(scope="module")
def methods(world):
    from coinfer.bench.evolve.bench import methods_report

    world, options = world
    return methods_report(world, options, 600.0, say=lambda line: None)


@pytest.mark.slow
def test_every_method_reports_every_key(world, methods):
    world, _ = world
    report = methods
    assert set(report) == set(METHODS)
    for name, summary in report.items():
        for key in ("device_accuracy_before", "device_accuracy_after", "device_gain",
                    "global_accuracy_before", "global_accuracy_after", "lcp"):
            assert key in summary, (name, key)
        assert set(summary["per_camera"]) == {"A", "E", "F"}
    unchanged = report["no_evolution"]["per_camera"]
    np.testing.assert_equal([v["before"] for v in unchanged.values()],
                            [v["after"] for v in unchanged.values()])
    untouched = ("no_evolution", "independent_distillation", "domain_adaptation")
    assert all(report[n]["global_accuracy_after"] == report[n]["global_accuracy_before"] for n in untouched)
    assert report["nestevo"]["mode"] in ("device-only", "co-evolution")
    source = source_accuracy(world)
    assert set(drift_drop(world, source)) == {"A", "E", "F"}


@pytest.mark.slow
def test_the_accuracy_over_time_plot_is_written(methods, tmp_path):
    from coinfer.bench.evolve.plots import write_plots

    (plot,) = write_plots({"methods": methods}, tmp_path / "evolve", 600.0)
    assert plot.name == "evolve-accuracy.png" and plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_compression_counts_bytes_and_time(world):
    from coinfer.bench.evolve.compression import compression_section

    world, options = world
    report = compression_section(world, options, say=lambda line: None)
    assert report["upload_bytes_adaptive"] <= report["upload_bytes_full"]
    assert 0 <= report["pooled_share"] <= 1
    for key in ("upload_bytes_saved", "training_time_saved", "accuracy_drop"):
        assert key in report


def test_a_camera_named_source_is_refused():
    with pytest.raises(InvalidArgumentError, match="other than source"):
        EvolveOptions(cameras=("source", "A"))
