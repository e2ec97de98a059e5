"""The real image sets split inference is measured on: photos and clip frames, sources held out."""

import numpy as np
import pytest

from coinfer.bench.split import images
from coinfer.sdk.errors import InvalidArgumentError


def test_train_and_test_never_share_a_source():
    train, test = images.image_sets(frames_per_clip=6)
    assert {s.source for s in test} == set(images.TEST_SOURCES)
    assert not {s.source for s in train} & {s.source for s in test}
    assert len(train) == len(images.PHOTOS) - 3 + 2 * 6 and len(test) == 3 + 6
    for sample in train + test:
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 3 and sample.image.shape[2] == 3
    frames = [s.image for s in train if s.source == "bikes.mp4"]
    assert frames[0].shape == (272, 640, 3) and not np.array_equal(frames[0], frames[-1])


def test_unknown_names_are_refused():
    with pytest.raises(InvalidArgumentError, match="unknown photo"):
        images.photo("lena")
    with pytest.raises(InvalidArgumentError, match="unknown clip"):
        images.clip_path("missing.mp4")
    with pytest.raises(InvalidArgumentError, match="unknown test sources"):
        images.image_sets(test_sources=["nowhere"])
