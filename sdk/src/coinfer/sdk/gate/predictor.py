"""Contextual view: a tiny three-view network predicting whether decoding a packet is necessary.

Views (PacketGame fig. 2.8): the last ``window`` intra-picture sizes, the last ``window``
predicted-picture sizes (each Conv1D(32, k=1, relu) x2 -> global max pool), and the
temporal estimate. The two size views are merged into one score (Dense(1, sigmoid)),
joined with the temporal view, then Dense(128, relu) -> Dense(tasks, sigmoid): one
necessity probability per downstream task. About 5K multiply-adds per stream.

It is trained with TensorFlow (:func:`train_predictor`) and then frozen; the edge runs it
with :class:`ContextualPredictor`, a numpy forward batched over every stream that equals
Keras within 1e-5, and devices run the TFLite export
(:func:`coinfer.converters.filters.export_predictor`).

Example: ``train_predictor(dataset, options)`` trains one with TensorFlow (rows from
:func:`coinfer.sdk.gate.replay.collect_training_rows`); here untrained weights show the
forward, which needs numpy only:

>>> import tempfile
>>> import numpy as np
>>> from coinfer.sdk.gate.predictor import ContextualPredictor, PredictorOptions
>>> predictor = ContextualPredictor.untrained(PredictorOptions(tasks=("faces", "cats")))
>>> rng = np.random.default_rng(0)
>>> i_view, p_view = rng.random((2, 64, 5, 4), dtype=np.float32)  # 64 streams' size windows
>>> mu = rng.random(64)                                            # their temporal estimates
>>> probabilities = predictor.predict(i_view, p_view, mu)
>>> probabilities.shape, bool(((0 < probabilities) & (probabilities < 1)).all())
((64, 2), True)
>>> work = tempfile.TemporaryDirectory()
>>> loaded = ContextualPredictor.load(predictor.save(f"{work.name}/predictor"))
>>> loaded.tasks, bool(np.array_equal(loaded.predict(i_view, p_view, mu), probabilities))
(('faces', 'cats'), True)
>>> work.cleanup()

Live, a streaming forward recomputes only the window slots that changed since the last round:

>>> forward = predictor.streaming(streams=64)
>>> bool(np.allclose(forward.predict(i_view, p_view, mu), probabilities, atol=1e-6))
True
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk.artifact import ArtifactError, Manifest, load_artifact, save_artifact
from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.gate.errors import GateError
from coinfer.sdk.gate.features import CHANNELS, FEEDBACK_CHANNELS

KIND = "contextual-predictor"
WEIGHTS_FILE = "weights.npz"
_LAYERS = ("i_conv1", "i_conv2", "p_conv1", "p_conv2", "context", "hidden", "heads")


@dataclass(frozen=True)
class PredictorOptions:
    """Architecture and training settings (defaults: the paper's).

    ``use_temporal=False`` gives the contextual-only ablation: trained and frozen blind to
    the temporal view (the UCB estimate and the decision-dependent size channels).
    """

    tasks: tuple[str, ...] = ("necessary",)
    window: int = 5
    filters: int = 32
    hidden: int = 128
    use_temporal: bool = True
    epochs: int = 30
    batch_size: int = 2048
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tasks:
            raise InvalidArgumentError("the predictor needs at least one task, got none")
        for name in ("window", "filters", "hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PredictorDataset:
    """Training rows: the two size views, the temporal estimate, and 0/1 labels per task."""

    i_view: np.ndarray
    p_view: np.ndarray
    temporal: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = self.labels.shape[0]
        for name in ("i_view", "p_view", "temporal"):
            if getattr(self, name).shape[0] != rows:
                raise GateError(f"{name} has {getattr(self, name).shape[0]} rows, labels have {rows}")
        shape = self.i_view.shape
        if len(shape) != 3 or shape[2] != CHANNELS or shape != self.p_view.shape:
            raise GateError(f"size views must be (rows, window, {CHANNELS}), got {self.i_view.shape} "
                            f"and {self.p_view.shape}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class ContextualPredictor:
    """Frozen predictor: numpy weights, forward batched over streams."""

    def __init__(self, weights: dict[str, np.ndarray], options: PredictorOptions,
                 metrics: dict[str, Any] | None = None) -> None:
        missing = [f"{layer}.{part}" for layer in _LAYERS for part in ("w", "b")
                   if f"{layer}.{part}" not in weights]
        if missing:
            raise ArtifactError(f"predictor weights lack {', '.join(missing)}")
        self.options = options
        self.metrics = dict(metrics or {})
        self._w = {name: np.asarray(value, dtype=np.float32) for name, value in weights.items()}
        w = self._w
        self._conv1_w = np.stack([w["i_conv1.w"], w["p_conv1.w"]])
        self._conv1_b = np.stack([w["i_conv1.b"], w["p_conv1.b"]])[:, np.newaxis]
        self._conv2_w = np.stack([w["i_conv2.w"], w["p_conv2.w"]])
        self._conv2_b = np.stack([w["i_conv2.b"], w["p_conv2.b"]])[:, np.newaxis]
        self._context_w = w["context.w"].reshape(2, -1, 1)
        if self._w["heads.w"].shape[1] != len(options.tasks):
            raise ArtifactError(f"predictor has {self._w['heads.w'].shape[1]} heads, options name "
                                f"{len(options.tasks)} tasks")

    @classmethod
    def untrained(cls, options: PredictorOptions, seed: int = 0) -> ContextualPredictor:
        """Random (Glorot-scaled) weights: for wiring tests and as a starting point, not for use."""
        rng = np.random.default_rng(seed)
        f, h = options.filters, options.hidden
        shapes = {"i_conv1": (CHANNELS, f), "i_conv2": (f, f), "p_conv1": (CHANNELS, f), "p_conv2": (f, f),
                  "context": (2 * f, 1), "hidden": (2, h), "heads": (h, len(options.tasks))}
        weights = {}
        for layer, (fan_in, fan_out) in shapes.items():
            weights[f"{layer}.w"] = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), (fan_in, fan_out))
            weights[f"{layer}.b"] = rng.normal(0.0, 0.1, fan_out)
        return cls(weights, options)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.options.tasks

    def predict(self, i_view: np.ndarray, p_view: np.ndarray, temporal: np.ndarray) -> np.ndarray:
        """Necessity probability per stream and task, shape (streams, tasks)."""
        window = self.options.window
        self._check_views(i_view, p_view)
        streams = i_view.shape[0]
        # both views at once, window-major, so the max-pool is a few contiguous elementwise maxima
        x = np.stack([i_view, p_view]).astype(np.float32, copy=False).transpose(0, 2, 1, 3)
        x = np.matmul(x.reshape(2, window * streams, CHANNELS), self._conv1_w)
        x += self._conv1_b
        np.maximum(x, 0, out=x)
        x = np.matmul(x, self._conv2_w)
        x += self._conv2_b
        np.maximum(x, 0, out=x)
        slots = x.reshape(2, window, streams, -1)
        pooled = slots[:, 0].copy()
        for k in range(1, window):
            np.maximum(pooled, slots[:, k], out=pooled)
        return self._heads(pooled, temporal)

    def streaming(self, streams: int) -> StreamingPredictor:
        """A forward for live windows that recomputes only the slots that changed."""
        return StreamingPredictor(self, streams)

    def _check_views(self, i_view: np.ndarray, p_view: np.ndarray) -> None:
        shape = (self.options.window, CHANNELS)
        for name, view in (("i_view", i_view), ("p_view", p_view)):
            if view.ndim != 3 or view.shape[1:] != shape:
                raise GateError(f"{name} must be (streams, {shape[0]}, {shape[1]}), got {view.shape}")

    def _slots(self, view: int, cells: np.ndarray) -> np.ndarray:
        """Both 1x1 convolutions of one view on a batch of window slots, (n, CHANNELS) -> (n, filters)."""
        x = cells @ self._conv1_w[view]
        x += self._conv1_b[view]
        np.maximum(x, 0, out=x)
        x = x @ self._conv2_w[view]
        x += self._conv2_b[view]
        return np.maximum(x, 0, out=x)

    def _heads(self, pooled: np.ndarray, temporal: np.ndarray) -> np.ndarray:
        """Max-pooled views (2, streams, filters) + temporal estimate -> (streams, tasks)."""
        w = self._w
        context = _sigmoid(np.matmul(pooled, self._context_w).sum(axis=0) + w["context.b"])
        mu = np.asarray(temporal, dtype=np.float32).reshape(-1, 1)
        # Dense(hidden) on the two scalars [context, mu]: two outer products
        hidden = context * w["hidden.w"][0] + mu * w["hidden.w"][1]
        hidden += w["hidden.b"]
        np.maximum(hidden, 0, out=hidden)
        return _sigmoid(hidden @ w["heads.w"] + w["heads.b"])

    def save(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        buffer = io.BytesIO()
        # numpy's savez stub has allow_pickle: bool beside **kwds, and mypy lets a **dict fill it.
        np.savez(buffer, **self._w)  # type: ignore[arg-type]
        manifest = Manifest(capability="gate", kind=KIND,
                            metadata={"options": _options_to_dict(self.options), "metrics": self.metrics})
        return save_artifact(out, manifest, {WEIGHTS_FILE: buffer.getvalue()}, overwrite=overwrite).path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ContextualPredictor:
        artifact = load_artifact(path, capability="gate", kind=KIND)
        try:
            options = _options_from_dict(artifact.manifest.metadata["options"])
        except (KeyError, TypeError, ValueError) as error:
            raise ArtifactError(f"{artifact.path}: bad predictor options: {error}") from error
        try:
            with np.load(artifact.file(WEIGHTS_FILE), allow_pickle=False) as archive:
                weights = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as error:
            raise ArtifactError(f"{artifact.file(WEIGHTS_FILE)}: unreadable weights: {error}") from error
        return cls(weights, options, artifact.manifest.metadata.get("metrics"))

    def keras_model(self) -> Any:
        """The same network as a Keras model carrying these weights (for export and checks)."""
        model = build_keras_model(self.options)
        for layer in _LAYERS:
            kernel = self._w[f"{layer}.w"]
            if layer.endswith(("conv1", "conv2")):
                kernel = kernel[np.newaxis]
            model.get_layer(layer).set_weights([kernel, self._w[f"{layer}.b"]])
        return model


class StreamingPredictor:
    """:meth:`ContextualPredictor.predict` for the live buffers of one gate, incrementally.

    A 1x1 convolution sees one window slot at a time and a slot never changes once written,
    so the activations of every slot are kept and only slots whose features changed since
    the previous call are recomputed: about one per stream a round instead of all
    ``2 x window``. The output equals the stateless forward (same arithmetic per slot).

    Example::

        forward = predictor.streaming(streams=64)
        probabilities = forward.predict(i_view, p_view, mu)   # every round
    """

    def __init__(self, predictor: ContextualPredictor, streams: int) -> None:
        options = predictor.options
        self.predictor = predictor
        self.streams = streams
        self._cells = np.zeros((2, streams, options.window, CHANNELS), dtype=np.float32)
        # window-major, so the max-pool is a few contiguous elementwise maxima
        self._activations = np.zeros((2, options.window, streams, options.filters), dtype=np.float32)
        self._pooled = np.empty((2, streams, options.filters), dtype=np.float32)
        self._fresh = True

    def predict(self, i_view: np.ndarray, p_view: np.ndarray, temporal: np.ndarray) -> np.ndarray:
        self.predictor._check_views(i_view, p_view)
        if i_view.shape[0] != self.streams or p_view.shape[0] != self.streams:
            raise GateError(f"this forward serves {self.streams} streams, got views of "
                            f"{i_view.shape[0]} and {p_view.shape[0]}")
        for view, cells in enumerate((i_view, p_view)):
            cells = np.ascontiguousarray(cells, dtype=np.float32)
            if self._fresh:
                changed = np.ones(cells.shape[:2], dtype=bool)
            else:
                # a slot's four float32 channels compared as one 16-byte value
                changed = cells.view(np.complex128)[..., 0] != self._cells[view].view(np.complex128)[..., 0]
            rows, slots = np.nonzero(changed)
            if rows.size:
                fresh = cells[rows, slots]
                self._cells[view, rows, slots] = fresh
                self._activations[view, slots, rows] = self.predictor._slots(view, fresh)
        self._fresh = False
        pooled = self._pooled
        np.copyto(pooled, self._activations[:, 0])
        for k in range(1, self._activations.shape[1]):
            np.maximum(pooled, self._activations[:, k], out=pooled)
        return self.predictor._heads(pooled, temporal)


def _options_to_dict(options: PredictorOptions) -> dict[str, Any]:
    data = asdict(options)
    data["tasks"] = list(options.tasks)
    return data


def _options_from_dict(data: dict[str, Any]) -> PredictorOptions:
    return PredictorOptions(**{**data, "tasks": tuple(data["tasks"])})


def build_keras_model(options: PredictorOptions) -> Any:
    """The three-view Keras network (untrained)."""
    from coinfer.sdk.frameworks import import_tensorflow

    tf = import_tensorflow()
    layers = tf.keras.layers
    i_in = layers.Input((options.window, CHANNELS), name="i_view")
    p_in = layers.Input((options.window, CHANNELS), name="p_view")
    t_in = layers.Input((1,), name="temporal")
    pooled = []
    for prefix, view in (("i", i_in), ("p", p_in)):
        x = layers.Conv1D(options.filters, 1, activation="relu", name=f"{prefix}_conv1")(view)
        x = layers.Conv1D(options.filters, 1, activation="relu", name=f"{prefix}_conv2")(x)
        pooled.append(layers.GlobalMaxPooling1D()(x))
    context = layers.Dense(1, activation="sigmoid", name="context")(layers.Concatenate()(pooled))
    hidden = layers.Dense(options.hidden, activation="relu", name="hidden")(
        layers.Concatenate()([context, t_in]))
    heads = layers.Dense(len(options.tasks), activation="sigmoid", name="heads")(hidden)
    return tf.keras.Model([i_in, p_in, t_in], heads, name="packetgame_predictor")


def _without_feedback(view: np.ndarray) -> np.ndarray:
    view = view.copy()
    view[:, :, list(FEEDBACK_CHANNELS)] = 0.0
    return view


def train_predictor(dataset: PredictorDataset, options: PredictorOptions, *,
                    validation: float = 0.2) -> ContextualPredictor:
    """Fit the network on logged packets (BCE, RMSprop) and freeze it into numpy weights.

    One compiled graph per epoch rather than ``Model.fit``: the network is so small that
    Keras' per-step bookkeeping would cost ten times the arithmetic.
    """
    from coinfer.sdk.frameworks import import_tensorflow

    tf = import_tensorflow()
    if dataset.labels.ndim != 2 or dataset.labels.shape[1] != len(options.tasks):
        raise GateError(f"labels must be (rows, {len(options.tasks)}) for tasks {options.tasks}, "
                        f"got {dataset.labels.shape}")
    tf.keras.utils.set_random_seed(options.seed)
    model = build_keras_model(options)
    optimizer = tf.keras.optimizers.RMSprop(options.learning_rate)
    bce = tf.keras.losses.BinaryCrossentropy()
    temporal = dataset.temporal.reshape(-1, 1).astype(np.float32)
    i_view, p_view = dataset.i_view.astype(np.float32), dataset.p_view.astype(np.float32)
    if not options.use_temporal:
        temporal = np.zeros_like(temporal)
        i_view, p_view = _without_feedback(i_view), _without_feedback(p_view)
    labels = dataset.labels.astype(np.float32)
    rows = labels.shape[0]
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(rows)
    cut = int(rows * (1.0 - validation))
    arrays = (i_view, p_view, temporal, labels)
    train = [array[order[:cut]] for array in arrays]
    held = [tf.constant(array[order[cut:]]) for array in arrays]
    # The paper's batch of 2,048 assumes logs of millions of packets; on smaller logs keep at
    # least 32 steps per epoch so the network actually trains.
    batch_size = int(min(options.batch_size, max(32, cut // 32)))

    batches = max(1, cut // batch_size)

    @tf.function
    def epoch(i: Any, p: Any, t: Any, y: Any) -> Any:
        total = tf.constant(0.0)
        for b in tf.range(batches):
            with tf.GradientTape() as tape:
                loss = bce(y[b], model([i[b], p[b], t[b]], training=True))
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            total += loss
        return total / batches

    loss = 0.0
    for _ in range(options.epochs):
        # one graph call per epoch over shuffled full batches (the remainder waits a round)
        chosen = rng.permutation(cut)[:batches * batch_size]
        loss = float(epoch(*(array[chosen].reshape(batches, batch_size, *array.shape[1:])
                              for array in train)))
    held_probabilities = model(held[:3], training=False)
    metrics = {
        "loss": loss,
        "val_loss": float(bce(held[3], held_probabilities)),
        "val_binary_accuracy": float(np.mean((held_probabilities.numpy() > 0.5) == (held[3].numpy() > 0.5))),
    }
    weights = {}
    for layer in _LAYERS:
        kernel, bias = model.get_layer(layer).get_weights()
        weights[f"{layer}.w"] = kernel[0] if kernel.ndim == 3 else kernel
        weights[f"{layer}.b"] = bias
    if not options.use_temporal:
        # frozen blind to the temporal view, so every runtime feeds it the same inputs
        for view in ("i", "p"):
            weights[f"{view}_conv1.w"][list(FEEDBACK_CHANNELS)] = 0.0
        weights["hidden.w"][1] = 0.0
    metrics.update(rows=rows, batch_size=batch_size, positive_rate=float(labels.mean()))
    return ContextualPredictor(weights, options, metrics)
