"""The MLink bench's workload: the drifting day, a second day on which the people in view go quiet."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.bench.data import speech
from coinfer.bench.mlink import workload
from coinfer.sdk.errors import CoinferError, ModelNotAvailableError
from coinfer.sdk.scenes import SceneSet

pytest.importorskip("av")
pytest.importorskip("cv2")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def voices() -> None:
    """The scenes' speech needs eSpeak NG; skip where it is not installed."""
    try:
        speech.espeak_paths()
    except ModelNotAvailableError as error:
        pytest.skip(str(error))


def test_the_drifting_day_records_the_asked_models_on_a_day_that_goes_quiet(voices, tmp_path):
    with pytest.raises(CoinferError, match="build the workload in"):
        workload.build_drifting_day(tmp_path, "12:00", ["crowd", "speech"], cameras=1, seconds=3)
    with pytest.raises(CoinferError, match=r"unknown model\(s\) \['voices'\]"):
        workload.build_drifting_day(tmp_path, "12:00", ["speech", "voices"], cameras=1, seconds=3)
    day = workload.build_drifting_day(tmp_path, "12:00", ["speech"], cameras=1, seconds=3, seed=2, crowd=2,
                                      hours=("07:00", "19:00"), progress=False)
    assert day.models == ["speech"] and len(day) == 30
    quiet = SceneSet.load(tmp_path / workload.DRIFT_SCENES_DIR)
    assert quiet.index["seed"] == 2 + workload.DRIFT_SEED_OFFSET
    assert quiet.index["audio"]["silent_from"] == "12:00"
    after = day.context["clock_hours"] >= 12.0
    assert after.any() and not day.context["speech_truth"][after].any()
    again = workload.build_drifting_day(tmp_path, "12:00", ["speech"], cameras=1, seconds=3, seed=2, crowd=2,
                                        hours=("07:00", "19:00"), progress=False)
    np.testing.assert_array_equal(again.outputs["speech"], day.outputs["speech"])
    with pytest.raises(CoinferError, match="holds a scene set made with"):
        workload.build_drifting_day(tmp_path, "13:00", ["speech"], cameras=1, seconds=3, seed=2, crowd=2,
                                    hours=("07:00", "19:00"), progress=False)
