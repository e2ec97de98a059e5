"""InFi's Keras networks: one feature network per modality, fused, under siamese heads.

Feature networks (paper sec. 3.3) map an input to an embedding ``e``:

- image (and audio spectrograms): two residual blocks, ``ConvStep(x) = LayerNorm(SepConv(ReLU(x)))``
  and ``ConvRes(x) = MaxPool(ConvStep(ConvStep(x))) + ConvStep_1x1,stride 2(x)``, with 32 then
  64 filters, global max and mean pooling (the paper pools with max only; the mean keeps
  how much of the frame responds, which counting needs), Dense(200, sigmoid), Dropout(0.5);
- video: one such stack per frame, embeddings concatenated;
- text: Embedding(32) pooled (mean and max over tokens), Dense(200, sigmoid);
- vector: Dense(128, relu) -> Dense(128, sigmoid).

Several inputs (multi-modal) are fused by concatenating their embeddings. On top:

- skip: ``sigmoid(W |e(x) - e(0)| + b)``, one unit per task (skipping is reusing the result
  of the all-zero input, so skip and reuse share one formulation);
- reuse: the pair classifier ``sigmoid(w |e(x1) - e(x2)| + b)``: the probability that two
  inputs have different results, used as the learned distance of the reuse cache.

TensorFlow is imported only here, inside functions: the device tier runs exported TFLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from coinfer.sdk.infi.modalities import ModalitySpec

IMAGE_EMBEDDING = 200
VECTOR_UNITS = 128
TEXT_EMBEDDING = 32


def keras_module() -> Any:
    from coinfer.sdk.frameworks import import_tensorflow

    return import_tensorflow().keras


def _conv_step(keras: Any, x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    layers = keras.layers
    # A separable convolution of one channel is a plain one, and oneDNN's depthwise
    # gradient crashes the process on single-channel inputs (spectrograms, grey images).
    conv = layers.Conv2D if x.shape[-1] == 1 else layers.SeparableConv2D
    x = layers.ReLU(name=f"{name}_relu")(x)
    x = conv(filters, kernel, strides=stride, padding="same", name=f"{name}_conv")(x)
    return layers.LayerNormalization(name=f"{name}_norm")(x)


def _conv_res(keras: Any, x: Any, filters: int, name: str) -> Any:
    layers = keras.layers
    main = _conv_step(keras, x, filters, 3, 1, f"{name}_a")
    main = _conv_step(keras, main, filters, 3, 1, f"{name}_b")
    main = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(main)
    shortcut = _conv_step(keras, x, filters, 1, 2, f"{name}_skip")
    return layers.Add(name=f"{name}_add")([main, shortcut])


def _image_stack(keras: Any, x: Any, name: str) -> Any:
    layers = keras.layers
    x = _conv_res(keras, x, 32, f"{name}_res1")
    x = _conv_res(keras, x, 64, f"{name}_res2")
    x = layers.Concatenate(name=f"{name}_pool")([layers.GlobalMaxPooling2D(name=f"{name}_gmp")(x),
                                                 layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)])
    x = layers.Dense(IMAGE_EMBEDDING, activation="sigmoid", name=f"{name}_embed")(x)
    return layers.Dropout(0.5, name=f"{name}_dropout")(x)


def _modality_features(keras: Any, x: Any, spec: ModalitySpec, name: str) -> Any:
    layers = keras.layers
    if spec.kind == "image":
        return _image_stack(keras, x, name)
    if spec.kind == "audio":
        return _image_stack(keras, layers.Reshape((*spec.shape, 1), name=f"{name}_channel")(x), name)
    if spec.kind == "video":
        frames = [_image_stack(keras, x[:, t], f"{name}_frame{t}") for t in range(spec.shape[0])]
        return layers.Concatenate(name=f"{name}_frames")(frames) if len(frames) > 1 else frames[0]
    if spec.kind == "text":
        tokens = layers.Embedding(spec.vocabulary, TEXT_EMBEDDING, name=f"{name}_tokens")(x)
        pooled = layers.Concatenate(name=f"{name}_pool")([
            layers.GlobalAveragePooling1D(name=f"{name}_mean")(tokens),
            layers.GlobalMaxPooling1D(name=f"{name}_max")(tokens)])
        return layers.Dense(IMAGE_EMBEDDING, activation="sigmoid", name=f"{name}_embed")(pooled)
    flat = layers.Flatten(name=f"{name}_flat")(x) if len(spec.shape) > 1 else x
    hidden = layers.Dense(VECTOR_UNITS, activation="relu", name=f"{name}_dense")(flat)
    return layers.Dense(VECTOR_UNITS, activation="sigmoid", name=f"{name}_embed")(hidden)


def feature_network(inputs: Mapping[str, ModalitySpec]) -> Any:
    """inputs -> embedding: every modality's network, concatenated when there are several."""
    keras = keras_module()
    tensors = _input_tensors(keras, inputs)
    parts = [_modality_features(keras, tensor, spec, name)
             for tensor, (name, spec) in zip(tensors, inputs.items(), strict=True)]
    embedding = keras.layers.Concatenate(name="fusion")(parts) if len(parts) > 1 else parts[0]
    return keras.Model(tensors, embedding, name="features")


def skip_network(features: Any, inputs: Mapping[str, ModalitySpec], tasks: int) -> Any:
    """Trainable skip model: per-task probability that the input's result is redundant."""
    keras = keras_module()
    tensors = _input_tensors(keras, inputs)
    zeros = [keras.ops.zeros_like(tensor) for tensor in tensors]
    distance = keras.ops.abs(features(tensors) - features(zeros))
    heads = keras.layers.Dense(tasks, activation="sigmoid", name="skip_heads")(distance)
    return keras.Model(tensors, heads, name="skip")


def frozen_skip_network(features: Any, heads: Any, inputs: Mapping[str, ModalitySpec]) -> Any:
    """The skip model for inference: ``e(0)`` computed once and baked in as a constant, so
    the exported filter runs the feature network once per input, not twice.

    It outputs the heads' logits, not probabilities: trained filters put their thresholds
    near 0.99, where an int8 sigmoid output (steps of 1/256) cannot tell the scores apart;
    the logits keep that resolution (int8 faces filter: 0.825 agreement with Keras as
    probabilities). Apply :func:`sigmoid` to get P(redundant)."""
    keras = keras_module()
    reference = features(feeds(features, [spec.zeros() for spec in inputs.values()]), training=False)
    constant = np.asarray(reference, dtype=np.float32)[0]
    tensors = _input_tensors(keras, inputs)
    distance = keras.ops.abs(features(tensors) - constant)
    logits = keras.layers.Dense(heads.units, name="skip_logits")
    model = keras.Model(tensors, logits(distance), name="skip_filter")
    logits.set_weights(heads.get_weights())
    return model


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """P(redundant) from the frozen skip network's logits, in float32."""
    logits = np.asarray(logits, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def pair_network(features: Any, inputs: Mapping[str, ModalitySpec]) -> Any:
    """Trainable reuse model: probability that two inputs' results differ."""
    keras = keras_module()
    first = _input_tensors(keras, inputs, "_a")
    second = _input_tensors(keras, inputs, "_b")
    distance = keras.ops.abs(features(first) - features(second))
    different = keras.layers.Dense(1, activation="sigmoid", name="pair_head")(distance)
    return keras.Model([*first, *second], different, name="reuse")


def _input_tensors(keras: Any, inputs: Mapping[str, ModalitySpec], suffix: str = "") -> list[Any]:
    return [keras.Input(spec.shape, dtype=str(spec.dtype), name=f"{name}{suffix}")
            for name, spec in inputs.items()]


def feeds(model: Any, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays keyed by the model's input names, the structure Keras expects for any arity."""
    return {tensor.name: array for tensor, array in zip(model.inputs, arrays, strict=True)}
