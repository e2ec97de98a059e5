"""STIP: three-party secure transformer inference by feature-space permutation.

The model developer draws keys and transforms the model (:func:`transform_model`); the
model server runs the transformed model on permuted embeddings; the data owner permutes
its embeddings with pi and un-permutes outputs with pi_c. See ``keys`` for why the keys
are structured by heads, groups and rotary dimensions.
"""

from coinfer.sdk.stip.architectures import ARCHITECTURES, UnsupportedModelError
from coinfer.sdk.stip.keys import (
    DeveloperKeys,
    LayerKeys,
    ModelLayout,
    StipKeyError,
    UserKeys,
    generate_keys,
)
from coinfer.sdk.stip.transform import device_embedding_table, transform_model
from coinfer.sdk.stip.verify import EquivalenceReport, compare

__all__ = [
    "ARCHITECTURES",
    "DeveloperKeys",
    "EquivalenceReport",
    "LayerKeys",
    "ModelLayout",
    "StipKeyError",
    "UnsupportedModelError",
    "UserKeys",
    "compare",
    "device_embedding_table",
    "generate_keys",
    "transform_model",
]
