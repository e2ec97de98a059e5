"""Split inference: where to cut a DNN between device and edge, and what crosses the cut.

:mod:`coinfer.sdk.split.graph` finds the cuts of an ONNX graph and extracts both halves.
"""

from coinfer.sdk.split.graph import Cut, SplitGraph, SplitGraphError

__all__ = ["Cut", "SplitGraph", "SplitGraphError"]
