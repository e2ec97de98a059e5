"""Split inference: where to cut a DNN between device and edge, and what crosses the cut.

:mod:`coinfer.sdk.split.graph` finds the cuts of an ONNX graph and extracts both halves;
:mod:`coinfer.sdk.split.planner` chooses the cut and encoding for the link as it is.
"""

from coinfer.sdk.split.graph import Cut, SplitGraph, SplitGraphError
from coinfer.sdk.split.planner import Link, Option, Plan, Replanner, Weights, cut_options, plan

__all__ = ["Cut", "Link", "Option", "Plan", "Replanner", "SplitGraph", "SplitGraphError", "Weights",
           "cut_options", "plan"]
