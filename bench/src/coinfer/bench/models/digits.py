"""A small Keras image classifier on scikit-learn's bundled handwritten digits (8x8 grey)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    """Train/test split; images are float32 in [0, 1], shape (N, 8, 8, 1)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsSplit:
    """Deterministic shuffle-and-split of the 1,797 bundled digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = round(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return DigitsSplit(images[train], labels[train], images[test], labels[test])


def train_digits_classifier(split: DigitsSplit, *, epochs: int = 25, seed: int = 0) -> tuple[Any, float]:
    """Train a two-conv CNN; returns the Keras model and its test accuracy."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE, name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="digits_cnn",
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=64, verbose=0)
    predictions = np.argmax(model.predict(split.x_test, verbose=0), axis=1)
    return model, float(np.mean(predictions == split.y_test))
