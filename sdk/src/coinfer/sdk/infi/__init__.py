"""InFi: learnable input filters that skip inputs with useless results or reuse cached ones.

Train on ``(input, model output)`` records with a redundancy measurement
(:mod:`~coinfer.sdk.infi.measurements`), for any modality
(:mod:`~coinfer.sdk.infi.modalities`), kept on disk as :class:`Records`; serve with
:class:`SkipFilter` or :class:`ReuseCache`; keep a drifting filter fresh with
:class:`ActiveUpdater`; ask :func:`analyze` whether a task is worth filtering.
:mod:`coinfer.device.infi` runs the exported TFLite filters on devices.

Example::

    from coinfer.sdk.infi import ModalitySpec, SkipFilter, create_measurement, train_skip_filter
    from coinfer.sdk.infi import redundancy_labels

    labels = redundancy_labels({"faces": boxes}, {"faces": create_measurement("empty")})
    trained = train_skip_filter(frames, labels, {"frame": ModalitySpec.image(72, 128)}, ("faces",))
    skip = SkipFilter.create_from_trained(trained)
    outputs = skip.run(new_frames, model=face_detector, default=np.zeros((0, 4)))
"""

from coinfer.sdk.infi.active import ActiveOptions, ActiveUpdater
from coinfer.sdk.infi.analyze import Analysis, analyze, break_even_rate
from coinfer.sdk.infi.curves import FilterCurve, optimal_rate
from coinfer.sdk.infi.measurements import (
    MEASUREMENTS,
    Measurement,
    MeasurementError,
    ReuseMeasurement,
    SkipMeasurement,
    create_measurement,
    describe_measurements,
    measurements_from_description,
)
from coinfer.sdk.infi.modalities import MODALITIES, InputError, ModalitySpec, log_mel_spectrogram
from coinfer.sdk.infi.records import Records, RecordsError
from coinfer.sdk.infi.reuse import (
    CacheOptions,
    Lookup,
    ReuseCache,
    ReuseCurve,
    repeated_fraction,
    replay,
    reuse_curve,
)
from coinfer.sdk.infi.skip import FilterStats, SkipFilter, trained_scorer
from coinfer.sdk.infi.training import (
    FilterError,
    FilterOptions,
    TrainedFilter,
    check_inputs,
    redundancy_labels,
    train_reuse_filter,
    train_skip_filter,
)

__all__ = [
    "MEASUREMENTS",
    "MODALITIES",
    "ActiveOptions",
    "ActiveUpdater",
    "Analysis",
    "CacheOptions",
    "FilterCurve",
    "FilterError",
    "FilterOptions",
    "FilterStats",
    "InputError",
    "Lookup",
    "Measurement",
    "MeasurementError",
    "ModalitySpec",
    "Records",
    "RecordsError",
    "ReuseCache",
    "ReuseCurve",
    "ReuseMeasurement",
    "SkipFilter",
    "SkipMeasurement",
    "TrainedFilter",
    "analyze",
    "break_even_rate",
    "check_inputs",
    "create_measurement",
    "describe_measurements",
    "log_mel_spectrogram",
    "measurements_from_description",
    "optimal_rate",
    "redundancy_labels",
    "repeated_fraction",
    "replay",
    "reuse_curve",
    "train_reuse_filter",
    "train_skip_filter",
    "trained_scorer",
]
