"""Split inference: where to cut a DNN between device and edge, and what crosses the cut.

:mod:`coinfer.sdk.split.graph` finds the cuts of an ONNX graph and extracts both halves;
:mod:`coinfer.sdk.split.profile` measures (and predicts, per operator) how long each half
takes; :mod:`coinfer.sdk.split.planner` chooses the cut and encoding for the link as it is;
:mod:`coinfer.sdk.split.mincut` finds the best cut of a DAG over all its down-sets;
:mod:`coinfer.sdk.split.bottleneck` trains a FrankenSplit encoder/decoder pair and
:mod:`coinfer.sdk.split.entropy` codes its integers with tables that decode bit-exactly anywhere.
"""

from coinfer.sdk.split.bundle import SplitBundleError, SplitSide, SplitSpec, export_split, load_split
from coinfer.sdk.split.entropy import EntropyCodingError, EntropyTables, decode, encode, quantize
from coinfer.sdk.split.graph import Cut, SplitGraph, SplitGraphError
from coinfer.sdk.split.planner import Link, Option, Plan, Replanner, Weights, cut_options, plan
from coinfer.sdk.split.profile import CutTimes, OperatorModel, load_profile, measure_cuts, save_profile

__all__ = ["Cut", "CutTimes", "EntropyCodingError", "EntropyTables", "Link", "OperatorModel", "Option",
           "Plan", "Replanner", "SplitBundleError", "SplitGraph", "SplitGraphError", "SplitSide", "SplitSpec",
           "Weights", "cut_options", "decode", "encode", "export_split", "load_profile", "load_split",
           "measure_cuts", "plan", "quantize", "save_profile"]
