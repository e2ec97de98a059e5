"""Train InFi filters from ``(input, model output)`` records and save them.

Skip filters learn, per task, whether the model's output will be redundant (BCE on the
measurement's verdict); reuse filters learn, by contrastive training on pairs, whether two
inputs' outputs are interchangeable. Both keep the Keras model so the edge can fine-tune
it later (active update) and export it for devices.

Example::

    inputs = {"frame": ModalitySpec.image(72, 128)}
    labels = redundancy_labels({"faces": outputs}, {"faces": create_measurement("empty")})
    trained = train_skip_filter(frames, labels, inputs, tasks=("faces",))
    trained.save("out/face-skip")
    export_filter(trained, "out/face-skip-int8", quantization="int8", calibration=frames[:200])
    # (export_filter is coinfer.converters.filters.export_filter)
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.artifact import ArtifactError, Manifest, load_artifact, save_artifact
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.infi import networks
from coinfer.sdk.infi.curves import FilterCurve
from coinfer.sdk.infi.measurements import (
    Measurement,
    MeasurementError,
    ReuseMeasurement,
    SkipMeasurement,
    describe_measurements,
    measurements_from_description,
)
from coinfer.sdk.infi.modalities import InputError, ModalitySpec

KINDS = ("skip", "reuse")
ARTIFACT_KIND = "infi-filter"
WEIGHTS_FILE = "weights.npz"
Inputs = np.ndarray | Mapping[str, np.ndarray]


class FilterError(CoinferError, ValueError):
    """A filter asked for what its kind cannot do (a reuse cache from a skip filter, active
    updates of a reuse filter), or whose parts disagree (thresholds, tasks, scores per input).
    Also a ``ValueError``, so callers that caught the builtin keep working."""


@dataclass(frozen=True)
class FilterOptions:
    """Training settings (defaults: the paper's, lr 1e-3, batch 32, 20 epochs).

    ``validation`` is held out to choose the skip threshold for ``target_accuracy``, in
    random runs of ``validation_block`` consecutive records: for records from a stream
    (video frames), single held-out frames have near-identical neighbours in training and
    the threshold comes out too bold for new moments;
    ``pairs_per_input`` sets how many contrastive pairs a reuse filter sees per record,
    half of them with an interchangeable partner when one exists.
    """

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    validation: float = 0.2
    validation_block: int = 1
    target_accuracy: float = 0.9
    pairs_per_input: int = 8
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "pairs_per_input", "validation_block"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.validation < 1.0:
            raise InvalidArgumentError(f"validation must be in [0, 1), got {self.validation}")
        if not 0.0 < self.target_accuracy <= 1.0:
            raise InvalidArgumentError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")


def check_inputs(inputs: Inputs, specs: Mapping[str, ModalitySpec]) -> list[np.ndarray]:
    """Inputs as a list in ``specs`` order: one array when there is one modality, else a mapping."""
    if not specs:
        raise InputError("a filter needs at least one input modality")
    if isinstance(inputs, Mapping):
        missing = [name for name in specs if name not in inputs]
        extra = [name for name in inputs if name not in specs]
        if missing or extra:
            raise InputError(f"filter inputs are {sorted(specs)}; missing {missing}, unexpected {extra}")
        arrays = [spec.check(inputs[name]) for name, spec in specs.items()]
    elif len(specs) == 1:
        arrays = [next(iter(specs.values())).check(inputs)]
    else:
        raise InputError(f"this filter takes several inputs {sorted(specs)}: pass a mapping name -> array")
    sizes = {array.shape[0] for array in arrays}
    if len(sizes) != 1:
        raise InputError(f"inputs disagree on the batch size: {sorted(sizes)}")
    return arrays


def redundancy_labels(outputs: Mapping[str, Sequence[Any]],
                      measurements: Mapping[str, SkipMeasurement]) -> np.ndarray:
    """(records, tasks) 0/1 labels: 1 where the task's output is redundant."""
    if set(outputs) != set(measurements):
        raise MeasurementError(f"outputs name tasks {sorted(outputs)}, measurements {sorted(measurements)}")
    columns = []
    for task, measurement in measurements.items():
        if not isinstance(measurement, SkipMeasurement):
            raise MeasurementError(f"task {task!r}: {measurement.name!r} is a reuse measurement, "
                                   "not a skip one")
        columns.append(measurement.redundant_many(outputs[task]))
    if len({len(column) for column in columns}) != 1:
        raise MeasurementError("tasks have different numbers of outputs")
    return np.stack(columns, axis=1).astype(np.float32)


def _progress_callback(keras: Any, epochs: int, description: str) -> Any:
    """A Keras callback that advances a tqdm bar once per epoch."""
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs, desc=description, unit="epoch")

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.3f}")
            bar.update(1)

        def on_train_end(self, logs: dict | None = None) -> None:
            bar.close()

    return Progress()


@dataclass
class TrainedFilter:
    """A trained skip or reuse filter on the edge: Keras networks plus what it was trained for.

    ``thresholds`` (skip): per task, skip when P(redundant) >= threshold. ``homogeneity``
    (reuse): the cache's hit threshold. ``metrics`` records training and validation numbers.
    """

    kind: str
    inputs: dict[str, ModalitySpec]
    tasks: tuple[str, ...]
    measurements: dict[str, Measurement]
    model: Any
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    homogeneity: float = 0.5
    metrics: dict[str, Any] = field(default_factory=dict)
    _inference: Any = field(default=None, init=False, repr=False)

    @property
    def features(self) -> Any:
        return self.model.get_layer("features")

    def scores(self, inputs: Inputs, batch_size: int = 256) -> np.ndarray:
        """Skip: P(redundant) per input and task, (n, tasks)."""
        self._need("skip")
        return networks.sigmoid(_predict(self._frozen(), check_inputs(inputs, self.inputs), batch_size))

    def embed(self, inputs: Inputs, batch_size: int = 256) -> np.ndarray:
        """Reuse: the embedding of every input, (n, embedding)."""
        self._need("reuse")
        return _predict(self.features, check_inputs(inputs, self.inputs), batch_size)

    def pair_head(self) -> tuple[np.ndarray, float]:
        """Reuse: the weights of ``P(different) = sigmoid(|e1 - e2| @ w + b)``."""
        self._need("reuse")
        kernel, bias = self.model.get_layer("pair_head").get_weights()
        return kernel[:, 0].astype(np.float32), float(bias[0])

    def fine_tune(self, inputs: Inputs, labels: np.ndarray, options: FilterOptions) -> TrainedFilter:
        """A copy trained further on new skip labels (the edge's active update); this one is kept."""
        self._need("skip")
        model = _clone(self.model)
        _fit(model, check_inputs(inputs, self.inputs), _check_labels(labels, len(self.tasks)), options)
        return TrainedFilter(self.kind, self.inputs, self.tasks, self.measurements, model,
                             self.thresholds.copy(), self.homogeneity, dict(self.metrics))

    def save(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        buffer = io.BytesIO()
        np.savez(buffer, **{f"w{i:04d}": w for i, w in enumerate(self.model.get_weights())})
        metadata = {
            "filter": self.kind,
            "inputs": {name: spec.to_dict() for name, spec in self.inputs.items()},
            "tasks": list(self.tasks),
            "measurements": describe_measurements(self.measurements),
            "thresholds": [float(t) for t in self.thresholds],
            "homogeneity": self.homogeneity,
            "metrics": self.metrics,
        }
        manifest = Manifest(capability="infi", kind=ARTIFACT_KIND, metadata=metadata)
        return save_artifact(out, manifest, {WEIGHTS_FILE: buffer.getvalue()}, overwrite=overwrite).path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedFilter:
        artifact = load_artifact(path, capability="infi", kind=ARTIFACT_KIND)
        meta = artifact.manifest.metadata
        try:
            kind = meta["filter"]
            if kind not in KINDS:
                raise ArtifactError(f"{artifact.path}: unknown filter kind {kind!r}; expected one of {KINDS}")
            inputs = {name: ModalitySpec.from_dict(spec) for name, spec in meta["inputs"].items()}
            tasks = tuple(str(task) for task in meta["tasks"])
            measurements = measurements_from_description(meta["measurements"])
            thresholds = np.asarray(meta["thresholds"], dtype=np.float64)
            homogeneity = float(meta["homogeneity"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ArtifactError(f"{artifact.path}: bad filter description: {error}") from error
        model = _build(kind, inputs, len(tasks))
        try:
            with np.load(artifact.file(WEIGHTS_FILE), allow_pickle=False) as archive:
                weights = [archive[name] for name in sorted(archive.files)]
            model.set_weights(weights)
        except (OSError, ValueError) as error:
            raise ArtifactError(
                f"{artifact.file(WEIGHTS_FILE)}: weights do not fit the network: {error}") from error
        return cls(kind, inputs, tasks, measurements, model, thresholds, homogeneity,
                   dict(meta.get("metrics", {})))

    def device_network(self) -> tuple[Any, dict[str, Any]]:
        """What a device runs and needs besides it: the Keras network to export (the frozen
        skip model, or the reuse embedding network) and the manifest metadata.

        The metadata carries the thresholds, or the pair head and the homogeneity threshold of
        the reuse cache; and the measurements, so ``coinfer infi run`` can score the filter's
        decisions against recorded outputs (artifacts exported before they were recorded
        simply lack ``measurements``). :func:`coinfer.converters.filters.export_filter` writes
        it as TFLite.
        """
        metadata: dict[str, Any] = {
            "filter": self.kind,
            "inputs": {name: spec.to_dict() for name, spec in self.inputs.items()},
            "tasks": list(self.tasks),
            "measurements": describe_measurements(self.measurements),
        }
        if self.kind == "skip":
            metadata["thresholds"] = [float(t) for t in self.thresholds]
            metadata["scores"] = "logits"
            return self._frozen(), metadata
        weights, bias = self.pair_head()
        metadata.update(pair_weights=weights.tolist(), pair_bias=bias, homogeneity=self.homogeneity)
        return self.features, metadata

    def _frozen(self) -> Any:
        """The inference network with e(0) baked in (built once; thresholds do not enter it)."""
        if self._inference is None:
            self._inference = networks.frozen_skip_network(self.features, self.model.get_layer("skip_heads"),
                                                           self.inputs)
        return self._inference

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise FilterError(f"this is a {self.kind} filter; that needs a {kind} filter")


def train_skip_filter(inputs: Inputs, labels: np.ndarray, specs: Mapping[str, ModalitySpec],
                      tasks: Sequence[str] = ("redundant",),
                      measurements: Mapping[str, Measurement] | None = None,
                      options: FilterOptions | None = None) -> TrainedFilter:
    """Fit a skip filter on (input, redundant?) records and pick thresholds on held-out data."""
    options = options or FilterOptions()
    specs, tasks = dict(specs), tuple(tasks)
    arrays = check_inputs(inputs, specs)
    labels = _check_labels(labels, len(tasks), arrays[0].shape[0])
    train, held = _split(arrays[0].shape[0], options)
    _seed(options.seed)
    model = _build("skip", specs, len(tasks))
    history = _fit(model, [a[train] for a in arrays], labels[train], options)
    trained = TrainedFilter("skip", specs, tasks, dict(measurements or {}), model,
                            metrics={"loss": history, "records": int(labels.shape[0]),
                                     "redundant_fraction": labels.mean(axis=0).round(4).tolist()})
    check = held if held.size else train
    scores = trained.scores(dict(zip(specs, [a[check] for a in arrays], strict=True)))
    curves = [FilterCurve.from_scores(scores[:, k], labels[check, k] > 0.5) for k in range(len(tasks))]
    trained.thresholds = np.array([curve.threshold_for(options.target_accuracy) for curve in curves])
    trained.metrics["validation_rate_at_target"] = [curve.rate_at(options.target_accuracy)
                                                     for curve in curves]
    return trained


def train_reuse_filter(inputs: Inputs, outputs: Sequence[Any], specs: Mapping[str, ModalitySpec],
                       measurement: ReuseMeasurement, options: FilterOptions | None = None,
                       homogeneity: float = 0.5) -> TrainedFilter:
    """Fit a reuse filter by contrastive training on pairs labelled 1 when outputs differ."""
    options = options or FilterOptions()
    if not isinstance(measurement, ReuseMeasurement):
        raise MeasurementError(f"{measurement.name!r} is a skip measurement; a reuse filter needs "
                               "count or label")
    specs = dict(specs)
    arrays = check_inputs(inputs, specs)
    if len(outputs) != arrays[0].shape[0]:
        raise InputError(f"{arrays[0].shape[0]} inputs but {len(outputs)} outputs")
    keys = measurement.keys(outputs)
    first, second = _pairs(keys, options)
    different = np.array([not measurement.same(outputs[a], outputs[b])
                          for a, b in zip(first, second, strict=True)], dtype=np.float32)[:, None]
    _seed(options.seed)
    model = _build("reuse", specs, 1)
    history = _fit(model, [a[first] for a in arrays] + [a[second] for a in arrays], different, options)
    return TrainedFilter("reuse", specs, ("reuse",), {"reuse": measurement}, model, homogeneity=homogeneity,
                         metrics={"loss": history, "records": len(outputs), "pairs": int(first.size),
                                  "different_fraction": float(different.mean())})


def _build(kind: str, specs: Mapping[str, ModalitySpec], tasks: int) -> Any:
    features = networks.feature_network(specs)
    if kind == "skip":
        return networks.skip_network(features, specs, tasks)
    return networks.pair_network(features, specs)


def _fit(model: Any, arrays: list[np.ndarray], labels: np.ndarray, options: FilterOptions) -> float:
    keras = networks.keras_module()
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss="binary_crossentropy")
    callbacks = [_progress_callback(keras, options.epochs, "training filter")] if options.progress else []
    history = model.fit(networks.feeds(model, arrays), labels, batch_size=options.batch_size,
                        epochs=options.epochs, verbose=0, shuffle=True, callbacks=callbacks)
    return float(history.history["loss"][-1])


def _clone(model: Any) -> Any:
    keras = networks.keras_module()
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _predict(model: Any, arrays: list[np.ndarray], batch_size: int) -> np.ndarray:
    outputs = model.predict(networks.feeds(model, arrays), batch_size=batch_size, verbose=0)
    return np.asarray(outputs, dtype=np.float32)


def _check_labels(labels: np.ndarray, tasks: int, rows: int | None = None) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 1 and tasks == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[1] != tasks or (rows is not None and labels.shape[0] != rows):
        raise InputError(f"labels must be ({rows or 'n'}, {tasks}), got {labels.shape}")
    if not np.all((labels == 0) | (labels == 1)):
        raise InputError("skip labels must be 0 or 1 (1: the output is redundant)")
    return labels


def _split(rows: int, options: FilterOptions) -> tuple[np.ndarray, np.ndarray]:
    if rows < 4:
        raise InputError(f"training a filter needs at least 4 records, got {rows}")
    block = options.validation_block
    blocks = -(-rows // block)
    order = np.random.default_rng(options.seed).permutation(blocks)
    held_blocks = order[:round(blocks * options.validation)]
    held = np.isin(np.arange(rows) // block, held_blocks)
    return np.flatnonzero(~held), np.flatnonzero(held)


def _pairs(keys: Sequence[Any], options: FilterOptions) -> tuple[np.ndarray, np.ndarray]:
    """Contrastive pairs: for each record, partners with the same key (when any) and random ones."""
    rng = np.random.default_rng(options.seed)
    rows = len(keys)
    if rows < 2:
        raise InputError(f"training a reuse filter needs at least 2 records, got {rows}")
    groups: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    first, second = [], []
    for index, key in enumerate(keys):
        same = groups[key]
        for k in range(options.pairs_per_input):
            if k % 2 == 0 and len(same) > 1:
                partner = same[int(rng.integers(len(same)))]
            else:
                partner = int(rng.integers(rows))
            first.append(index)
            second.append(partner)
    return np.array(first), np.array(second)


def _seed(seed: int) -> None:
    networks.keras_module().utils.set_random_seed(seed)
