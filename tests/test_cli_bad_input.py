"""Every command of the catalogue, given bad input, says why in one line and exits non-zero.

DESIGN.md promises it ("Bad input: one line, non-zero exit"): a usage error exits 2 through
argparse, any other bad input raises a :class:`~coinfer.sdk.errors.CoinferError` that
``coinfer`` reports as ``coinfer GROUP ACTION: error: ...`` with exit status 1, never a
traceback, and nothing is (half-)written where the command would have put its output.

The commands are walked from the catalogue (:data:`coinfer.sdk.cli.registry.GROUPS`), so a new
command without cases in :data:`CASES` fails :func:`test_every_command_has_bad_input_cases`.
The cases run in process and fail before any long work: services are checked for argument
errors and missing inputs only (``uvicorn.run`` fails the test if it is reached), benches,
generators and the demo for argument and output-path errors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from coinfer.sdk.cli.main import main
from coinfer.sdk.cli.registry import GROUPS


@dataclass(frozen=True)
class Case:
    """``argv`` after the command's words; ``{name}`` is replaced by the path of input ``name``
    (see :func:`inputs`). ``usage``: an argparse error (exit 2) rather than a CoinferError (1).
    ``says``: words the error line must hold, where the case has more than one thing wrong and
    the one named must be the one checked first (an output path before the inputs are read)."""

    name: str
    argv: tuple[str, ...]
    usage: bool = False
    says: str = ""


def usage(name: str, *argv: str, says: str = "") -> Case:
    """Input argparse refuses (exit 2): a missing required argument, a number out of range."""
    return Case(name, argv, usage=True, says=says)


def error(name: str, *argv: str, says: str = "") -> Case:
    """Input the command refuses with a CoinferError (exit 1): a missing or corrupt file, ..."""
    return Case(name, argv, says=says)


OUT = ("--out", "{out}")
PRIVATE = ("--provenance", "private")
AUDIT = ("--provenance", "private", "--corpus", "{missing}")
CORPUS = ("--provenance", "private", "--corpus", "{corpus}")
EXISTING_OUT = ("--out", "{existing}")
LINKS = ("--links", "{links}", "--records", "{table}")
CLIENTS = ("--clients", "{clients}")
PROFILES = ("--device-profile", "{profile}", "--edge-profile", "{profile}")


def out_below_file(*argv: str) -> Case:
    """``--out`` below a regular file can never be written: refused before ``argv`` is read."""
    return error("out below a file", *argv, "--out", "{junk_npz}/out", says="cannot be written")


def out_below_dangling(*argv: str) -> Case:
    """``--out`` below a link to a folder that does not exist (no folder can be made there)."""
    return error("out below a dangling link", *argv, "--out", "{dangling}/out", says="cannot be written")


def json_below_file(*argv: str) -> Case:
    """``--json`` below a regular file: refused when the arguments are parsed."""
    return usage("json below a file", *argv, "--json", "{junk_npz}/report.json", says="cannot be written")


def json_below_dangling(*argv: str) -> Case:
    """``--json`` below a link to a folder that does not exist: refused when parsed."""
    return usage("json below a dangling link", *argv, "--json", "{dangling}/report.json",
                 says="cannot be written")


#: Bad input per command (``"group action"``, or ``"group"`` for a command without actions).
CASES: dict[str, tuple[Case, ...]] = {
    "gate run": (
        usage("no sources"),
        usage("budget fraction above 1", "{junk_mp4}", "--budget-fraction", "2"),
        usage("negative budget", "{junk_mp4}", "--budget", "-5"),
        usage("zero workers", "{junk_mp4}", "--workers", "0"),
        usage("malformed redundancy", "{junk_mp4}", "--redundancy", "faces"),
        usage("json into a directory", "{junk_mp4}", "--json", "{existing}"),
        json_below_file("{junk_mp4}"),
        json_below_dangling("{junk_mp4}"),
        error("missing source", "{missing}"),
        error("corrupt source", "{junk_mp4}"),
        error("missing predictor", "{junk_mp4}", "--predictor", "{missing}"),
        error("corrupt predictor", "{junk_mp4}", "--predictor", "{broken}"),
        error("links as predictor", "{junk_mp4}", "--predictor", "{links}"),
        error("unknown redundancy measure", "{junk_mp4}", "--redundancy", "faces=bogus"),
        error("unknown task", "{junk_mp4}", "--tasks", "bogus"),
    ),
    "gate train": (
        usage("no out", "--scenes", "{missing}"),
        usage("videos and scenes", "--videos", "{missing}", "--scenes", "{missing}", *OUT),
        usage("negative epochs", "--scenes", "{missing}", "--epochs", "-1", *OUT),
        usage("zero window", "--scenes", "{missing}", "--window", "0", *OUT),
        error("nothing to train on", *OUT),
        error("missing videos", "--videos", "{missing}", "--detector", "faces", *OUT),
        error("videos without detector", "--videos", "{missing}", *OUT),
        error("unknown detector", "--videos", "{missing}", "--detector", "bogus", *OUT),
        error("missing logs", "--logs", "{missing}", *OUT),
        error("missing scenes", "--scenes", "{missing}", *OUT),
        error("scenes.json not JSON", "--scenes", "{broken}", *OUT),
        error("scenes is a file", "--scenes", "{junk_npz}", *OUT),
        error("out exists", "--scenes", "{broken}", *EXISTING_OUT),
        out_below_file("--scenes", "{broken}"),
        out_below_dangling("--scenes", "{broken}"),
    ),
    "gate serve": (
        usage("port out of range", "--port", "70000"),
        usage("zero streams", "--max-streams", "0"),
        usage("zero request size", "--max-request-mib", "0"),
        error("missing token file", "--token-file", "{missing}"),
        error("unknown task", "--tasks", "bogus"),
    ),
    "gate bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        json_below_file("--quick"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        error("missing scenes", "--quick", "--scenes", "{missing}"),
        error("scenes.json not JSON", "--quick", "--scenes", "{broken}"),
    ),
    "infi train": (
        usage("no records", "--measurement", "empty", *OUT),
        usage("no measurement", "--records", "{records}", *OUT),
        usage("negative epochs", "--records", "{records}", "--measurement", "empty", "--epochs", "-1", *OUT),
        error("missing records", "--records", "{missing}", "--measurement", "empty", *OUT),
        error("corrupt records", "--records", "{junk_npz}", "--measurement", "empty", *OUT),
        error("target accuracy above 1", "--records", "{records}", "--measurement", "empty",
              "--target-accuracy", "2", *OUT),
        error("malformed option", "--records", "{records}", "--measurement", "empty", "--option", "x", *OUT),
        error("out exists", "--records", "{records}", "--measurement", "empty", *EXISTING_OUT),
        out_below_file("--records", "{records}", "--measurement", "empty"),
    ),
    "infi export": (
        usage("no filter", *OUT),
        usage("unknown quantization", "--filter", "{missing}", "--quantization", "int4", *OUT),
        error("missing filter", "--filter", "{missing}", *OUT),
        error("manifest not JSON", "--filter", "{broken}", *OUT),
        error("links as filter", "--filter", "{links}", *OUT),
        error("int8 without calibration", "--filter", "{broken}", "--quantization", "int8", *OUT),
        error("missing calibration", "--filter", "{broken}", "--quantization", "int8",
              "--calibration", "{missing}", *OUT),
        error("corrupt calibration", "--filter", "{broken}", "--quantization", "int8",
              "--calibration", "{junk_npz}", *OUT),
        error("out exists", "--filter", "{broken}", *EXISTING_OUT),
        out_below_file("--filter", "{broken}"),
    ),
    "infi run": (
        usage("no filter", "--records", "{records}"),
        usage("json into a directory", "--filter", "{broken}", "--records", "{records}", "--json",
              "{existing}"),
        json_below_dangling("--filter", "{broken}", "--records", "{records}"),
        error("missing filter", "--filter", "{missing}", "--records", "{records}"),
        error("manifest not JSON", "--filter", "{broken}", "--records", "{records}"),
        error("links as filter", "--filter", "{links}", "--records", "{records}"),
        error("table as records", "--filter", "{links}", "--records", "{table}"),
        error("missing records", "--filter", "{broken}", "--records", "{missing}"),
        error("corrupt records", "--filter", "{broken}", "--records", "{junk_npz}"),
    ),
    "infi analyze": (
        usage("no measurement"),
        usage("unknown measurement", "--measurement", "bogus"),
        usage("cost not a number", "--measurement", "empty", "--filter-ms", "fast"),
        usage("json into a directory", "--measurement", "empty", "--json", "{existing}"),
        json_below_dangling("--measurement", "empty"),
        error("one cost of two", "--measurement", "empty", "--filter-ms", "1"),
        error("negative cost", "--measurement", "empty", "--filter-ms", "-1", "--model-ms", "5"),
        error("filter rate above 1", "--measurement", "empty", "--filter-rate", "2"),
        error("malformed option", "--measurement", "class-subset", "--option", "keep"),
    ),
    "infi serve": (
        usage("unknown task", "--task", "bogus"),
        usage("port out of range", "--port", "65536"),
        usage("zero request size", "--max-request-mib", "0"),
        error("missing token file", "--token-file", "{missing}"),
    ),
    "infi bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        usage("negative epochs", "--quick", "--epochs", "-1"),
        json_below_file("--quick"),
    ),
    "stip publish": (
        usage("no model", *PRIVATE, *OUT),
        usage("no provenance", "--model", "{missing}", *OUT, says="--provenance"),
        usage("unknown provenance", "--model", "{missing}", "--provenance", "mine", *OUT,
              says="--provenance"),
        usage("zero instances", "--model", "{missing}", *PRIVATE, "--instances", "0", *OUT),
        usage("too many local blocks", "--model", "{missing}", *PRIVATE, "--local-blocks", "65", *OUT,
              says="--local-blocks"),
        error("public-base weights", "--model", "{missing}", "--provenance", "public-base", *OUT,
              says="refusing to publish public-base weights"),
        error("missing model", "--model", "{missing}", *PRIVATE, *OUT),
        error("config.json not JSON", "--model", "{broken}", *PRIVATE, *OUT),
        error("missing gguf", "--model", "{broken}", *PRIVATE, "--gguf", "missing.gguf", *OUT),
        error("out exists", "--model", "{broken}", *PRIVATE, *EXISTING_OUT),
        error("local blocks on gpt2", "--model", "{tiny_gpt2}", *PRIVATE, "--local-blocks", "1", *OUT,
              says="LLaMA-family"),
        out_below_file("--model", "{broken}", *PRIVATE),
    ),
    "stip verify": (
        usage("no model"),
        usage("zero batch", "--model", "{missing}", "--batch", "0"),
        usage("batch too large to allocate", "--model", "{missing}", "--batch", "100000000", says="--batch"),
        usage("negative tokens", "--model", "{missing}", "--tokens", "-1", says="--tokens"),
        usage("json into a directory", "--model", "{missing}", "--json", "{existing}"),
        json_below_dangling("--model", "{missing}"),
        error("tokens beyond the model's positions", "--model", "{tiny_gpt2}", "--tokens", "100000",
              says="--tokens"),
        error("missing model", "--model", "{missing}"),
        error("config.json not JSON", "--model", "{broken}"),
    ),
    "stip audit": (
        usage("no model", *AUDIT),
        usage("no provenance", "--model", "{missing}", "--corpus", "{missing}", says="--provenance"),
        usage("no corpus", "--model", "{missing}", "--provenance", "private", says="--corpus"),
        usage("unknown setting", "--model", "{missing}", *AUDIT, "--settings", "plain,secret", says="secret"),
        usage("zero local blocks", "--model", "{missing}", *AUDIT, "--settings", "local-0", says="local-K"),
        usage("too many attack tokens", "--model", "{missing}", *AUDIT, "--attack-tokens", "100000"),
        usage("json into a directory", "--model", "{missing}", *AUDIT, "--json", "{existing}"),
        json_below_file("--model", "{missing}", *AUDIT),
        error("missing corpus", "--model", "{missing}", *AUDIT, says="corpus"),
        error("corpus not JSON", "--model", "{missing}", "--provenance", "private", "--corpus", "{broken}",
              says="corpus"),
        error("missing model", "--model", "{missing}", *CORPUS),
        error("config.json not JSON", "--model", "{broken}", *CORPUS),
        error("tokenizer gives no tokens", "--model", "{tiny_gpt2}", *CORPUS, says="no tokens"),
    ),
    "split profile": (
        usage("no model", *OUT),
        usage("no out", "--model", "{onnx}"),
        usage("unknown side", "--model", "{missing}", "--side", "cloud", *OUT),
        usage("zero repeats", "--model", "{missing}", "--repeats", "0", *OUT),
        usage("too many threads", "--model", "{missing}", "--threads", "1000", *OUT),
        error("missing model", "--model", "{missing}", *OUT, says="no such ONNX file"),
        error("model not ONNX", "--model", "{junk_npz}", *OUT, says="not a readable ONNX"),
        error("input shape without dims", "--model", "{onnx}", "--input-shape", "x", *OUT,
              says="--input-shape"),
        error("symbolic dimension", "--model", "{onnx}", "--input-shape", "x=1,C", *OUT,
              says="--input-shape"),
        error("cut out of range", "--model", "{onnx}", "--cuts", "2,99", *OUT, says="--cuts"),
        error("malformed cuts", "--model", "{onnx}", "--cuts", "some", *OUT, says="--cuts"),
        error("out exists", "--model", "{onnx}", *EXISTING_OUT),
        out_below_file("--model", "{onnx}"),
        out_below_dangling("--model", "{onnx}"),
    ),
    "split plan": (
        usage("no bandwidth", "--model", "{onnx}", *PROFILES),
        usage("no edge profile", "--model", "{onnx}", "--device-profile", "{profile}", "--bandwidth", "1"),
        usage("zero bandwidth", "--model", "{onnx}", *PROFILES, "--bandwidth", "10,0"),
        usage("malformed bandwidth", "--model", "{onnx}", *PROFILES, "--bandwidth", "fast"),
        usage("negative rtt", "--model", "{onnx}", *PROFILES, "--bandwidth", "1", "--rtt", "-1"),
        usage("unknown encoding", "--model", "{onnx}", *PROFILES, "--bandwidth", "1", "--encodings", "int4"),
        usage("negative device weight", "--model", "{onnx}", *PROFILES, "--bandwidth", "1", "--device-weight",
              "-2"),
        usage("json into a directory", "--model", "{onnx}", *PROFILES, "--bandwidth", "1", "--json",
              "{existing}"),
        json_below_file("--model", "{onnx}", *PROFILES, "--bandwidth", "1"),
        error("missing model", "--model", "{missing}", *PROFILES, "--bandwidth", "1",
              says="no such ONNX file"),
        error("missing profile", "--model", "{onnx}", "--device-profile", "{missing}", "--edge-profile",
              "{profile}", "--bandwidth", "1"),
        error("manifest not JSON", "--model", "{onnx}", "--device-profile", "{broken}", "--edge-profile",
              "{profile}", "--bandwidth", "1"),
        error("links as profile", "--model", "{onnx}", "--device-profile", "{profile}", "--edge-profile",
              "{links}", "--bandwidth", "1"),
        error("profile of another graph", "--model", "{onnx}", "--device-profile", "{other_profile}",
              "--edge-profile", "{profile}", "--bandwidth", "1", says="another graph"),
        error("shapes fixed otherwise", "--model", "{onnx}", "--input-shape", "x=N,4", *PROFILES,
              "--bandwidth", "1", says="another graph"),
        error("heads as tails", "--model", "{onnx}", "--device-profile", "{profile}", "--edge-profile",
              "{heads_profile}", "--bandwidth", "1", says="--edge-profile"),
        error("min-cut without operator model", "--model", "{onnx}", *PROFILES, "--bandwidth", "1",
              "--min-cut", says="--min-cut"),
    ),
    "split export": (
        usage("no model", "--cut", "1", *OUT),
        usage("no cut", "--model", "{missing}", *OUT),
        usage("unknown encoding", "--model", "{missing}", "--cut", "1", "--encoding", "bf16", *OUT),
        error("missing model", "--model", "{missing}", "--cut", "1", *OUT, says="no such ONNX file"),
        error("model not ONNX", "--model", "{junk_npz}", "--cut", "1", *OUT, says="not a readable ONNX"),
        error("input shape without dims", "--model", "{junk_npz}", "--cut", "1", "--input-shape", "x", *OUT,
              says="--input-shape"),
        error("out exists", "--model", "{junk_npz}", "--cut", "1", *EXISTING_OUT),
        out_below_file("--model", "{missing}", "--cut", "1"),
    ),
    "split serve": (
        usage("no bundle"),
        usage("port out of range", "--bundle", "{missing}", "--port", "99999"),
        usage("zero max batch", "--bundle", "{missing}", "--max-batch", "0"),
        error("missing bundle", "--bundle", "{missing}"),
        error("manifest not JSON", "--bundle", "{broken}"),
        error("links as bundle", "--bundle", "{links}"),
        error("missing token file", "--bundle", "{missing}", "--token-file", "{missing}", says="token"),
    ),
    "split run": (
        usage("no bundle", "--inputs", "{npy}"),
        usage("no inputs", "--bundle", "{missing}"),
        usage("zero threads", "--bundle", "{missing}", "--inputs", "{npy}", "--threads", "0"),
        usage("json into a directory", "--bundle", "{missing}", "--inputs", "{npy}", "--json", "{existing}"),
        error("missing inputs", "--bundle", "{missing}", "--inputs", "{missing}", says="no such input file"),
        error("inputs not npy", "--bundle", "{missing}", "--inputs", "{junk_npz}",
              says="not a readable .npy"),
        error("missing bundle", "--bundle", "{missing}", "--inputs", "{npy}"),
        error("manifest not JSON", "--bundle", "{broken}", "--inputs", "{npy}"),
        error("links as bundle", "--bundle", "{links}", "--inputs", "{npy}"),
    ),
    "stip serve": (
        usage("no bundle"),
        usage("port out of range", "--bundle", "{missing}", "--port", "-1"),
        usage("zero replicas", "--bundle", "{missing}", "--replicas", "0"),
        error("missing bundle", "--bundle", "{missing}"),
        error("manifest not JSON", "--bundle", "{broken}"),
        error("links as bundle", "--bundle", "{links}"),
        error("missing token file", "--bundle", "{missing}", "--token-file", "{missing}"),
    ),
    "stip chat": (
        usage("no bundle"),
        usage("zero new tokens", "--bundle", "{missing}", "--max-new-tokens", "0"),
        error("missing bundle", "--bundle", "{missing}", "--prompt", "hi"),
        error("manifest not JSON", "--bundle", "{broken}", "--prompt", "hi"),
        error("links as bundle", "--bundle", "{links}", "--prompt", "hi"),
    ),
    "stip bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        json_below_file("--quick"),
    ),
    "mlink record": (
        usage("no scenes", "--crowd", "{missing}", *OUT),
        usage("no out", "--scenes", "{missing}", "--crowd", "{missing}"),
        error("missing scenes", "--scenes", "{missing}", "--crowd", "{missing}", *OUT),
        error("scenes.json not JSON", "--scenes", "{broken}", "--crowd", "{missing}", *OUT),
        error("videos folder without videos", "--videos", "{existing}", "--crowd", "{links}", *OUT),
        error("out exists", "--scenes", "{broken}", "--crowd", "{missing}", *EXISTING_OUT),
        out_below_file("--scenes", "{broken}", "--crowd", "{missing}"),
        error("out is a directory", "--scenes", "{broken}", "--crowd", "{missing}", *EXISTING_OUT,
              "--overwrite", says="is a directory"),
    ),
    "mlink train": (
        usage("no records", *OUT),
        usage("epochs not a number", "--records", "{table}", "--epochs", "many", *OUT),
        error("missing records", "--records", "{missing}", *OUT),
        error("corrupt records", "--records", "{junk_npz}", *OUT),
        error("records of InFi", "--records", "{records}", *OUT),
        error("manifest as records", "--records", "{broken}/manifest.json", *OUT),
        usage("negative epochs", "--records", "{table}", "--epochs", "-1", *OUT),
        error("train fraction above 1", "--records", "{table}", "--train-fraction", "2", *OUT),
        error("out exists", "--records", "{table}", *EXISTING_OUT),
        out_below_file("--records", "{table}"),
        out_below_dangling("--records", "{table}"),
        usage("json into a directory", "--records", "{table}", "--json", "{existing}", *OUT),
        json_below_file("--records", "{table}", *OUT),
    ),
    "mlink plan": (
        usage("no budget", "--links", "{links}", "--records", "{table}"),
        usage("budget fraction above 1", *LINKS, "--budget-fraction", "2"),
        usage("negative budget", "--links", "{links}", "--records", "{table}", "--budget", "-1"),
        error("missing links", "--links", "{missing}", "--records", "{table}", "--budget-fraction", "0.5"),
        error("manifest not JSON", "--links", "{broken}", "--records", "{table}", "--budget-fraction", "0.5"),
        error("missing records", "--links", "{links}", "--records", "{missing}", "--budget-fraction", "0.5"),
        error("corrupt records", "--links", "{links}", "--records", "{junk_npz}", "--budget-fraction", "0.5"),
        error("links without their models", "--links", "{links}", "--records", "{other_table}",
              "--budget-fraction", "0.5"),
        error("no memory costs", *LINKS, "--budget", "1", "--cost", "mib"),
        usage("json into a directory", *LINKS, "--budget-fraction", "0.5", "--json", "{existing}"),
        json_below_dangling(*LINKS, "--budget-fraction", "0.5"),
    ),
    "mlink run": (
        usage("no links", "--records", "{table}", "--budget-fraction", "0.5"),
        error("missing links", "--links", "{missing}", "--records", "{table}", "--budget-fraction", "0.5"),
        error("missing records", "--links", "{links}", "--records", "{missing}", "--budget-fraction", "0.5"),
        error("corrupt records", "--links", "{links}", "--records", "{junk_npz}", "--budget-fraction", "0.5"),
        error("zero period", "--links", "{links}", "--records", "{table}", "--budget-fraction", "0.5",
              "--period", "0"),
        usage("profile fraction above 1", *LINKS, "--budget-fraction", "0.5", "--profile-fraction", "2"),
        json_below_file(*LINKS, "--budget-fraction", "0.5"),
        json_below_dangling(*LINKS, "--budget-fraction", "0.5"),
        error("scenes without crowd", *LINKS, "--budget-fraction", "0.5", "--scenes", "{missing}"),
        error("missing scenes", *LINKS, "--budget-fraction", "0.5", "--scenes", "{missing}", "--crowd",
              "{missing}"),
    ),
    "mlink federate": (
        usage("no server", "--name", "e1", "--records", "{table}"),
        error("zero rounds", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}",
              "--rounds", "0"),
        error("missing records", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{missing}"),
        error("corrupt records", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{junk_npz}"),
        error("missing token file", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}",
              "--token-file", "{missing}"),
        error("out exists", "--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}",
              *EXISTING_OUT),
        out_below_file("--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}"),
        json_below_dangling("--server", "http://127.0.0.1:9", "--name", "e1", "--records", "{table}"),
    ),
    "mlink serve": (
        usage("no links", "--min-clients", "2", *CLIENTS),
        usage("no client list", "--links", "{links}", "--min-clients", "2"),
        usage("zero clients", "--links", "{links}", "--min-clients", "0", *CLIENTS),
        error("missing links", "--links", "{missing}", "--min-clients", "2", *CLIENTS),
        error("manifest not JSON", "--links", "{broken}", "--min-clients", "2", *CLIENTS),
        error("table as links", "--links", "{table}", "--min-clients", "2", *CLIENTS),
        usage("state dir is a file", "--links", "{links}", "--min-clients", "2", *CLIENTS, "--state-dir",
              "{junk_npz}"),
        error("missing token file", "--links", "{links}", "--min-clients", "2", *CLIENTS, "--token-file",
              "{missing}"),
        error("missing client list", "--links", "{links}", "--min-clients", "2", "--clients", "{missing}"),
        error("corrupt client list", "--links", "{links}", "--min-clients", "2", "--clients", "{junk_npz}"),
        error("fewer clients than a round needs", "--links", "{links}", "--min-clients", "3", *CLIENTS),
        usage("unknown aggregate", "--links", "{links}", "--min-clients", "2", *CLIENTS, "--aggregate",
              "krum"),
        usage("trim of a half", "--links", "{links}", "--min-clients", "2", *CLIENTS, "--trim", "0.5"),
        usage("clip factor below 1", "--links", "{links}", "--min-clients", "2", *CLIENTS, "--clip-factor",
              "0.5"),
        usage("zero sample cap", "--links", "{links}", "--min-clients", "2", *CLIENTS, "--max-samples", "0"),
        usage("growth of 1", "--links", "{links}", "--min-clients", "2", *CLIENTS, "--max-growth", "1"),
    ),
    "split train": (
        usage("no out"),
        usage("zero beta", "--beta", "0", *OUT),
        usage("zero steps", "--steps", "0", *OUT),
        usage("negative latent channels", "--latent-channels", "-4", *OUT),
        error("out exists", *EXISTING_OUT),
    ),
    "evolve bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("unknown part", "--quick", "--part", "bogus"),
        usage("life is not positive", "--quick", "--life-seconds", "0"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        json_below_file("--quick"),
    ),
    "split bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("unknown part", "--quick", "--part", "bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        json_below_file("--quick"),
    ),
    "mlink bench": (
        usage("unknown option", "--quick", "--bogus"),
        usage("json into a directory", "--quick", "--json", "{existing}"),
        usage("workdir is a file", "--quick", "--workdir", "{junk_npz}"),
        usage("negative epochs", "--quick", "--epochs", "-1"),
        json_below_file("--quick"),
    ),
    "data scenes": (
        usage("no out"),
        error("out exists", *EXISTING_OUT),
        error("zero cameras", "--cameras", "0", *OUT),
        error("negative seconds", "--seconds", "-1", *OUT),
        error("malformed size", "--size", "big", *OUT),
        error("unknown codec", "--codec", "bogus", *OUT),
        error("unknown task", "--tasks", "bogus", *OUT),
        error("clock out of range", "--day-start", "25:00", *OUT),
        error("zero workers", "--workers", "0", *OUT),
        error("unknown background", "--backgrounds", "bogus", *OUT, says="unknown background(s) ['bogus']"),
        usage("unknown sensor", "--sensor", "bogus", *OUT, says="invalid choice: 'bogus'"),
        out_below_file(),
        out_below_dangling(),
    ),
    "data drift": (
        usage("no out"),
        usage("malformed size", "--size", "big", *OUT),
        error("out exists", *EXISTING_OUT),
        error("out is an existing file", "--out", "{junk_npz}", says="already exists"),
        error("size out of range", "--size", "8", *OUT, says="size must be an integer in [16, 512]"),
        error("negative seed", "--seed", "-1", *OUT, says="seed must be an integer"),
        error("zero workers", "--workers", "0", *OUT),
        out_below_file(),
        out_below_dangling(),
    ),
    "data corpus": (
        usage("no out"),
        error("out exists", *EXISTING_OUT),
        error("zero messages", "--messages", "0", *OUT),
        error("mixed share above 1", "--mixed", "2", *OUT),
        error("zero batch size", "--batch-size", "0", *OUT),
        out_below_file(),
    ),
    "data speech": (
        usage("no out"),
        usage("malformed snr", "--snr", "loud", *OUT),
        error("out exists", *EXISTING_OUT),
        error("zero clips", "--clips", "0", *OUT),
        error("negative seconds", "--seconds", "-1", *OUT),
        error("unknown noise kind", "--kinds", "bogus", *OUT),
        out_below_file(),
    ),
    "export keras": (
        usage("no model", *OUT),
        usage("no out", "{missing}"),
        error("missing model", "{missing}", *OUT),
        error("corrupt model", "{junk_keras}", *OUT),
        error("missing calibration", "{junk_keras}", "--quantization", "int8", "--calibration", "{missing}",
              *OUT),
        error("corrupt calibration", "{junk_keras}", "--quantization", "int8", "--calibration", "{junk_npz}",
              *OUT),
        error("out exists", "{junk_keras}", *EXISTING_OUT),
        out_below_file("{junk_keras}"),
    ),
    "export torch": (
        usage("no input shape", "--model", "x.py:build", *OUT),
        error("malformed model", "--model", "build", "--input-shape", "1,4", *OUT),
        error("missing model file", "--model", "{missing}.py:build", "--input-shape", "1,4", *OUT),
        error("missing module", "--model", "no_such_module_here:build", "--input-shape", "1,4", *OUT),
        error("malformed input shape", "--model", "{missing}.py:build", "--input-shape", "1,x", *OUT),
        error("negative input shape", "--model", "{missing}.py:build", "--input-shape", "1,-4", *OUT),
        error("unknown input dtype", "--model", "{missing}.py:build", "--input-shape", "1,4", "--input-dtype",
              "bogus", *OUT),
        error("missing weights", "--model", "{missing}.py:build", "--input-shape", "1,4", "--weights",
              "{missing}", *OUT),
        error("missing samples", "--model", "{missing}.py:build", "--input-shape", "1,4", "--samples",
              "{missing}", *OUT),
        error("corrupt samples", "--model", "{missing}.py:build", "--input-shape", "1,4", "--samples",
              "{junk_npz}", *OUT),
        error("out exists", "--model", "{missing}.py:build", "--input-shape", "1,4", *EXISTING_OUT),
        out_below_file("--model", "{missing}.py:build", "--input-shape", "1,4"),
    ),
    "export verify": (
        usage("no artifacts"),
        error("missing artifact", "{missing}"),
        error("manifest not JSON", "{broken}"),
        error("a file, not an artifact", "{junk_npz}"),
        error("one good, one missing", "{links}", "{missing}"),
    ),
    "demo": (
        usage("unknown option", "--bogus"),
        usage("json into a directory", "--json", "{existing}"),
        usage("out is a file", "--out", "{junk_npz}"),
        usage("out below a file", "--out", "{junk_npz}/out", says="cannot be"),
        json_below_file(),
        usage("report into a directory", "--report", "{existing}"),
        usage("report below a file", "--report", "{junk_npz}/report.html", says="cannot be written"),
        error("unknown stage", "--stages", "bogus"),
        error("no stage", "--stages", ","),
    ),
}

# `coinfer split export --head-format` / `--calibration` (TFLite heads, #19): kept apart from the
# table above so that the cases of other commands can be added there without conflicts.
HEAD = ("--model", "{missing}", "--cut", "1")
CASES["split export"] = (
    *CASES["split export"],
    usage("unknown head format", *HEAD, "--head-format", "tflite-fp16", *OUT),
    error("int8 head without calibration", *HEAD, "--head-format", "tflite-int8", *OUT,
          says="pass --calibration"),
    error("calibration for an ONNX head", *HEAD, "--calibration", "{npy}", *OUT,
          says="--calibration is for --head-format tflite-int8 only"),
    error("calibration for a float32 head", *HEAD, "--head-format", "tflite-float32",
          "--calibration", "{npy}", *OUT, says="not tflite-float32"),
    error("missing calibration", *HEAD, "--head-format", "tflite-int8", "--calibration", "{missing}", *OUT,
          says="no such calibration file"),
    error("calibration not npy", *HEAD, "--head-format", "tflite-int8", "--calibration", "{junk_npz}", *OUT,
          says="not a readable .npy"),
    error("tflite head, out exists", *HEAD, "--head-format", "tflite-int8", "--calibration", "{npy}",
          *EXISTING_OUT),
)

# `coinfer split export --encoding entropy --tables` (a bottleneck's latent range-coded, #19): kept
# apart like the block above. {entropy_tables} are valid tables of 4 channels (_split_inputs).
ENTROPY = ("--encoding", "entropy")
CASES["split export"] = (
    *CASES["split export"],
    error("entropy without tables", *HEAD, *ENTROPY, *OUT, says="pass --tables FILE.npz"),
    error("tables for float32", *HEAD, "--tables", "{entropy_tables}", *OUT,
          says="--tables is for --encoding entropy only, not float32"),
    error("tables for int8", *HEAD, "--encoding", "int8", "--tables", "{entropy_tables}", *OUT,
          says="not int8"),
    error("missing tables", *HEAD, *ENTROPY, "--tables", "{missing}", *OUT,
          says="no such entropy tables file"),
    error("tables not npz", *HEAD, *ENTROPY, "--tables", "{junk_npz}", *OUT, says="entropy tables file"),
    error("tables of another kind", *HEAD, *ENTROPY, "--tables", "{table}", *OUT, says="missing array(s)"),
    error("entropy, out exists", *HEAD, *ENTROPY, "--tables", "{entropy_tables}", *EXISTING_OUT),
    error("entropy across two tensors", "--model", "{onnx}", "--cut", "1", *ENTROPY, "--tables",
          "{entropy_tables}", *OUT, says="codes one float tensor"),
    error("entropy of a flat tensor", "--model", "{onnx}", "--cut", "y", *ENTROPY, "--tables",
          "{entropy_tables}", *OUT, says="a latent (batch, C, H, W)"),
)

# `coinfer evolve serve` and `coinfer evolve device` (#20): kept apart like the blocks above.
# {evolve_*} are configurations that parse but name something wrong (_evolve_inputs).
EDGE_URL = ("--edge", "http://127.0.0.1:9")
CAMERA = (*EDGE_URL, "--device", "cam1")
NO_MODEL = (*CAMERA, "--model", "{missing}")
NO_FRAMES = (*NO_MODEL, "--frames", "{missing}")
CASES["evolve serve"] = (
    usage("no config"),
    usage("port out of range", "--config", "{missing}", "--port", "99999"),
    usage("zero request limit", "--config", "{missing}", "--max-request-mib", "0"),
    error("missing config", "--config", "{missing}", says="no such configuration file"),
    error("config is a folder", "--config", "{broken}", says="no such configuration file"),
    error("config not JSON", "--config", "{broken}/config.json", says="not a readable JSON configuration"),
    error("config is binary", "--config", "{junk_npz}", says="not a readable JSON configuration"),
    error("unknown architecture family", "--config", "{evolve_family}",
          says="global.architecture: architecture family must be one of"),
    error("device of another input size", "--config", "{evolve_size}",
          says="devices[0].architecture: input_size 64 differs from the global model's 128"),
    error("unknown key", "--config", "{evolve_key}", says="unknown key(s) ['bogus']"),
    error("uploads over the request limit", "--config", "{evolve_upload}", says="--max-request-mib 64"),
)
CASES["evolve device"] = (
    usage("no edge", "--device", "cam1", "--model", "{missing}", "--frames", "{missing}"),
    usage("no device", *EDGE_URL, "--model", "{missing}", "--frames", "{missing}"),
    usage("no model", *CAMERA, "--frames", "{missing}"),
    usage("no frames or video", *NO_MODEL),
    usage("frames and video", *NO_FRAMES, "--video", "{missing}"),
    usage("zero upload-every", *NO_FRAMES, "--upload-every", "0"),
    usage("negative interval", *NO_FRAMES, "--interval", "-1"),
    usage("cache is a file", *NO_FRAMES, "--cache", "{junk_npz}"),
    usage("json into a directory", *NO_FRAMES, "--json", "{existing}"),
    error("edge is not a URL", "--edge", "edge:8500", "--device", "cam1", "--model", "{missing}", "--frames",
          "{missing}", says="--edge must start with http:// or https://"),
    error("invalid device name", *EDGE_URL, "--device", "../etc", "--model", "{missing}", "--frames",
          "{npy}", says="invalid device name"),
    error("missing frames", *NO_FRAMES, says="no such frames file"),
    error("missing video", *NO_MODEL, "--video", "{missing}", says="no such video file"),
    error("missing token file", *NO_MODEL, "--frames", "{npy}", "--token-file", "{missing}",
          says="no such token file"),
    error("missing model", *NO_MODEL, "--frames", "{npy}", says="not an artifact"),
    error("manifest not JSON", *CAMERA, "--model", "{broken}", "--frames", "{npy}"),
    error("links as model", *CAMERA, "--model", "{links}", "--frames", "{npy}", says="expected 'evolve'"),
)

# `coinfer evolve run`: {evolve_good} parses (its weights files do not exist, which no case
# reaches); {evolve_small} and {evolve_empty} hold frames of another size and none.
ROUND = ("--config", "{evolve_good}", "--mode", "device-only")
CASES["evolve run"] = (
    usage("no config", "--frames", "cam1={npy}"),
    usage("no frames", *ROUND),
    usage("frames without a device", *ROUND, "--frames", "{npy}", says="expected DEVICE=PATH"),
    usage("unknown mode", *ROUND, "--frames", "cam1={npy}", "--mode", "federated"),
    usage("negative gamma", *ROUND, "--frames", "cam1={npy}", "--gamma", "-1"),
    usage("negative epsilon", *ROUND, "--frames", "cam1={npy}", "--epsilon", "-1"),
    usage("zero rounds", *ROUND, "--frames", "cam1={npy}", "--rounds", "0"),
    usage("zero max frames", *ROUND, "--frames", "cam1={npy}", "--max-frames", "0"),
    usage("json into a directory", *ROUND, "--frames", "cam1={npy}", "--json", "{existing}"),
    json_below_file(*ROUND, "--frames", "cam1={npy}"),
    error("missing config", "--config", "{missing}", "--frames", "cam1={npy}",
          says="no such configuration file"),
    error("config not JSON", "--config", "{broken}/config.json", "--frames", "cam1={npy}",
          says="not a readable JSON configuration"),
    error("unknown device", *ROUND, "--frames", "cam9={npy}",
          says="unknown device 'cam9' (configured: cam1)"),
    error("device given twice", *ROUND, "--frames", "cam1={npy}", "--frames", "cam1={npy}",
          says="device 'cam1' is given more than once"),
    error("auto without source statistics", "--config", "{evolve_good}", "--frames", "cam1={npy}",
          says="mode 'auto' needs the configuration's source statistics"),
    error("missing frames", *ROUND, "--frames", "cam1={missing}", says="no such frames file"),
    error("frames not an npz", *ROUND, "--frames", "cam1={junk_npz}", says="frames file"),
    error("frames of another size", *ROUND, "--frames", "cam1={evolve_small}",
          says="frames must be uint8 (N >= 1, 128, 128, 3)"),
    error("no frames in the file", *ROUND, "--frames", "cam1={evolve_empty}",
          says="got uint8 (0, 128, 128, 3)"),
    error("video not readable", *ROUND, "--frames", "cam1={junk_mp4}", says="not a readable video"),
)


def _evolve_inputs(root: Path, paths: dict[str, Path]) -> None:
    """Configurations of ``coinfer evolve serve`` that parse as JSON but are refused before any
    model is loaded, one that is only refused when its weights are read, and frames files of
    ``coinfer evolve run`` that do not fit it."""
    folder = root / "evolve"
    folder.mkdir()

    def config(name: str, global_model: dict, device: dict, **extra: object) -> None:
        paths[f"evolve_{name}"] = folder / f"{name}.json"
        paths[f"evolve_{name}"].write_text(json.dumps({
            "root": "edge", "global": {"architecture": global_model, "state": "global.npz"},
            "devices": [{"id": "cam1", "architecture": device, "state": "cam1.npz"}], **extra}))

    tiny = {"family": "tiny", "input_size": 128}
    config("family", {"family": "resnet"}, tiny)
    config("size", tiny, {"family": "tiny", "input_size": 64})
    config("key", tiny, tiny, bogus=1)
    huge = {"family": "tiny", "input_size": 1024}
    config("upload", huge, huge, max_upload_frames=1024, max_buffer_frames=1)
    config("good", tiny, tiny)
    for name, count, side in (("small", 2, 64), ("empty", 0, 128)):
        paths[f"evolve_{name}"] = folder / f"{name}.npz"
        np.savez(paths[f"evolve_{name}"], frames=np.zeros((count, side, side, 3), np.uint8))


# `coinfer cloud serve --config cloud.toml` (#21): kept apart like the blocks above. {cloud_*} are
# configurations that parse as TOML but are refused, naming their line (_cloud_inputs).
CLOUD = ("--config", "{cloud_good}")
CASES["cloud serve"] = (
    usage("no config"),
    usage("port out of range", "--config", "{missing}", "--port", "70000"),
    usage("zero replicas", "--config", "{missing}", "--replicas", "0"),
    error("missing config", "--config", "{missing}", says="no such configuration file"),
    error("config is a folder", "--config", "{broken}", says="no such configuration file"),
    error("config not TOML", "--config", "{broken}/config.json", says="config.json:1: not valid TOML"),
    error("config is binary", "--config", "{junk_npz}", says="unreadable configuration file"),
    error("port out of range in the file", "--config", "{cloud_port}",
          says="port.toml:2: [server] port must be in [0, 65535], got 70000"),
    error("missing bundle", "--config", "{cloud_bundle}", says="bundle.toml:2: [stip] bundle is "),
    error("unknown key", "--config", "{cloud_key}", says="key.toml:5: [mlink] rounds is not a known key"),
    error("evolve table", "--config", "{cloud_evolve}", says="evolve.toml:1: [evolve] has no cloud half"),
    error("no service", "--config", "{cloud_empty}", says="configures no service"),
    error("missing token file", *CLOUD, "--token-file", "{missing}", says="no such token file"),
    error("fewer clients than a round needs", "--config", "{cloud_round}",
          says="round.toml:4: [mlink] min_clients is 3, but only 2 clients are listed"),
    error("replicas of an aggregator", *CLOUD, "--ray", "--replicas", "2",
          says="holds its round in one process"),
)


def _cloud_inputs(root: Path, paths: dict[str, Path]) -> None:
    """Configurations of ``coinfer cloud serve``: one that is valid ({cloud_good}: MLink on {links}
    and {clients}) and some that parse as TOML but are refused, each at the line that is wrong."""
    folder = root / "cloud"
    folder.mkdir()
    mlink = f'[mlink]\nlinks = "{paths["links"]}"\nclients = "{paths["clients"]}"\n'
    texts = {"good": mlink + "min_clients = 2\n", "round": mlink + "min_clients = 3\n",
             "key": mlink + "min_clients = 2\nrounds = 5\n", "port": "[server]\nport = 70000\n" + mlink,
             "bundle": f'[stip]\nbundle = "{root / "missing"}"\n', "evolve": "[evolve]\nrounds = 3\n",
             "empty": "[server]\nport = 8200\n"}
    for name, text in texts.items():
        paths[f"cloud_{name}"] = folder / f"{name}.toml"
        paths[f"cloud_{name}"].write_text(text)


# `coinfer edge gateway --config gateway.toml` (#21): kept apart like the blocks above. {gateway_*}
# are configurations that parse as TOML but are refused, naming their line (_gateway_inputs).
CASES["edge gateway"] = (
    usage("no config"),
    usage("port out of range", "--config", "{missing}", "--port", "70000"),
    error("missing config", "--config", "{missing}", says="no such configuration file"),
    error("config is a folder", "--config", "{broken}", says="no such configuration file"),
    error("config not TOML", "--config", "{broken}/config.json", says="config.json:1: not valid TOML"),
    error("config is binary", "--config", "{junk_npz}", says="unreadable configuration file"),
    error("budget out of range", "--config", "{gateway_budget}",
          says="budget.toml:2: [gate] budget_fraction must be in [0, 1], got 2.0"),
    error("missing video", "--config", "{gateway_video}", says="video.toml:2: [[streams]] #1 url "),
    error("corrupt filter", "--config", "{gateway_filter}",
          says="filter.toml:3: [[streams]] #1 filter is unusable"),
    error("unknown key", "--config", "{gateway_key}", says="key.toml:2: [uploads] bogus is not a known key"),
    error("mlink links missing", "--config", "{gateway_mlink}",
          says="mlink.toml:2: [mlink] links"),
    error("nothing to host", "--config", "{gateway_empty}", says="configures nothing to host"),
    error("missing token file", "--config", "{gateway_good}", "--token-file", "{missing}",
          says="no such token file"),
)


def _gateway_inputs(root: Path, paths: dict[str, Path]) -> None:
    """Configurations of ``coinfer edge gateway``: one that is valid ({gateway_good}: uploads only)
    and some that parse as TOML but are refused, each at the line that is wrong."""
    folder = root / "gateway"
    folder.mkdir()
    texts = {"good": "[uploads]\n", "budget": "[gate]\nbudget_fraction = 2.0\n[uploads]\n",
             "video": '[[streams]]\nurl = "missing.mp4"\n',
             "filter": f'[[streams]]\nurl = "{paths["junk_mp4"]}"\nfilter = "{paths["broken"]}"\n',
             "key": "[uploads]\nbogus = 1\n", "mlink": '[mlink]\nlinks = "links"\n',
             "empty": "[server]\nport = 8100\n"}
    for name, text in texts.items():
        paths[f"gateway_{name}"] = folder / f"{name}.toml"
        paths[f"gateway_{name}"].write_text(text)


def commands() -> list[str]:
    """Every implemented command of the catalogue, as the words that run it."""
    found = []
    for group in GROUPS:
        if group.distribution is not None:
            found.append(group.name)
        found.extend(f"{group.name} {action.name}" for action in group.actions)
    return found


def test_every_command_has_bad_input_cases():
    implemented = commands()
    assert [name for name in implemented if not CASES.get(name)] == []
    assert sorted(set(CASES) - set(implemented)) == []


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The paths the cases name: missing, corrupt and valid inputs, and output paths."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    junk = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    paths = {"missing": root / "missing", "out": root / "out", "existing": root / "existing",
             "broken": root / "broken"}
    for name in ("junk.npz", "junk.mp4", "junk.keras"):
        (root / name).write_bytes(junk)
        paths[name.replace(".", "_")] = root / name
    paths["broken"].mkdir()
    for name in ("manifest.json", "scenes.json", "config.json", "corpus.json"):
        (paths["broken"] / name).write_text("{this is not JSON")
    paths["corpus"] = root / "corpus"  # two messages in the `coinfer data corpus` format
    paths["corpus"].mkdir()
    messages = paths["corpus"] / "messages.jsonl"
    messages.write_text('{"text": "Rain expected downtown"}\n{"text": "Team wins the final"}\n')
    (paths["corpus"] / "corpus.json").write_text(json.dumps({
        "format": "coinfer-corpus", "version": 1,
        "files": {"messages.jsonl": hashlib.sha256(messages.read_bytes()).hexdigest()}}))
    paths["existing"].mkdir()
    (paths["existing"] / "keep.txt").write_text("left alone")

    from coinfer.sdk.infi import Records

    paths["records"] = Records(rng.random((24, 6)).astype(np.float32),
                               rng.integers(0, 3, 24)).save(root / "records.npz")

    from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec
    from coinfer.sdk.mlink.table import OutputTable

    steps = 24
    table = OutputTable(
        {"cats": OutputSpec.presence(), "faces": OutputSpec.classes(3)},
        {"cats": rng.random((steps, 1)).astype(np.float32),
         "faces": np.eye(3, dtype=np.float32)[rng.integers(0, 3, steps)]},
        {"camera": np.repeat([0, 1], steps // 2)},
        {"cats": {"ms": 1.0, "ms_mean": 1.0}, "faces": {"ms": 2.0, "ms_mean": 2.0}})
    paths["table"] = root / "table.npz"
    table.save(paths["table"])
    paths["other_table"] = root / "other.npz"
    OutputTable({"speech": OutputSpec.presence()}, {"speech": rng.random((steps, 1)).astype(np.float32)},
                costs={"speech": {"ms": 1.0}}).save(paths["other_table"])
    paths["links"] = root / "links"
    LinkGraph.train(table.outputs, table.specs, LinkOptions(epochs=1)).save(paths["links"])
    paths["npy"] = root / "batch.npy"
    np.save(paths["npy"], np.zeros((1, 3, 8, 8), np.float32))
    _split_inputs(root, paths)
    _evolve_inputs(root, paths)
    _gateway_inputs(root, paths)
    paths["clients"] = root / "clients.txt"
    paths["clients"].write_text("edge-1\nedge-2\n")
    _cloud_inputs(root, paths)
    # A link to a folder that does not exist: nothing can be created below it. It lives outside
    # ``root`` so that the snapshot of what the commands wrote can stat every path in there.
    paths["dangling"] = tmp_path_factory.mktemp("links") / "dangling"
    paths["dangling"].symlink_to(paths["dangling"].parent / "gone" / "folder")

    import transformers

    paths["tiny_gpt2"] = root / "tiny-gpt2"  # learned positions: a longer input cannot be embedded
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=2,
        architectures=["GPT2LMHeadModel"])).save_pretrained(paths["tiny_gpt2"])
    return paths


def _split_inputs(root: Path, paths: dict[str, Path]) -> None:
    """A small ONNX graph, ``y = relu(x) + sigmoid(x)``, and profiles of it (both sides, heads
    only) and of another graph, made up rather than measured: the cases never plan."""
    import onnx
    from onnx import TensorProto, helper

    from coinfer.sdk.split.graph import SplitGraph
    from coinfer.sdk.split.profile import CutTimes, graph_fingerprint, save_profile

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")]))
    paths["onnx"] = root / "graph.onnx"
    onnx.save(model, str(paths["onnx"]))
    fingerprint = graph_fingerprint(SplitGraph(model))
    times = CutTimes(fingerprint, (0, 1, 2, 3), (0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0), 3.0, 1, 1, 1, 5)
    paths["profile"] = save_profile(root / "profile", times)
    paths["heads_profile"] = save_profile(root / "heads", replace(times, side="device"))
    paths["other_profile"] = save_profile(root / "other-profile", replace(times, graph_sha256="0" * 64))
    from coinfer.sdk.split.entropy import EntropyTables

    paths["entropy_tables"] = root / "entropy-tables.npz"
    EntropyTables.from_probabilities([np.ones(3)] * 4, [-1] * 4).save(paths["entropy_tables"])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


@pytest.fixture
def no_binding(monkeypatch):
    """A service that got as far as binding a port failed to refuse its bad input."""
    import uvicorn

    def bind(*args, **kwargs):
        pytest.fail("the service reached uvicorn.run: bad input must be refused before binding")

    monkeypatch.setattr(uvicorn, "run", bind)


@pytest.mark.parametrize(("command", "case"), [(command, case) for command in commands()
                                               for case in CASES.get(command, ())],
                         ids=lambda value: value if isinstance(value, str) else value.name)
def test_bad_input_is_one_line_and_a_non_zero_exit(command, case, inputs, no_binding, capsys, monkeypatch):
    monkeypatch.setenv("COINFER_TOKEN", "test-token")
    argv = [*command.split(), *(word.format(**{key: str(path) for key, path in inputs.items()})
                                for word in case.argv)]
    root = inputs["existing"].parent
    before = _snapshot(root)
    if case.usage:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        status = exited.value.code
    else:
        status = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), captured.err
    assert status == (2 if case.usage else 1), captured.err
    # argparse reports options no parser knows from the top: "coinfer: error: unrecognized arguments"
    prefix = "coinfer" if case.usage else f"coinfer {command}"
    assert lines[0].startswith(prefix) and ": error: " in lines[0], captured.err
    assert case.says in lines[0], captured.err
    assert _snapshot(root) == before, "the command wrote (or left) files"
    assert not os.path.exists(inputs["out"])


def test_bench_plots_go_next_to_a_json_whose_folder_is_not_made_yet(tmp_path):
    """``--json new/report.json`` is a good path: the plots a full bench draws next to it must
    not fail, after the whole bench, because ``new/`` does not exist until the JSON is written."""
    from coinfer.bench.gate.bench import write_plots as gate_plots
    from coinfer.bench.stip.bench import write_plots as stip_plots

    curve = {"fractions": [0.5, 1.0], "packetgame": [0.8, 1.0]}
    written = gate_plots({"accuracy_vs_budget": curve}, tmp_path / "gate" / "report")
    assert [path.name for path in written] == ["report-accuracy-vs-budget.png"]
    row = {"layers": 2, "batch": 1, "tokens_per_s_plain": 2.0, "tokens_per_s_stip": 1.0}
    assert len(stip_plots({"by_batch": [row], "by_layers": [row]}, tmp_path / "stip")) == 2


def test_an_output_folder_this_process_may_not_write_in_is_refused(tmp_path, monkeypatch):
    """Root writes anywhere, so the check of a read-only folder is seen through ``os.access``."""
    from coinfer.sdk.cli import flags

    monkeypatch.setattr(flags.os, "access", lambda path, mode: Path(path) != tmp_path)
    assert flags.unwritable(tmp_path / "new" / "report.json", file=True) == (
        f"{tmp_path / 'new' / 'report.json'} cannot be written: {tmp_path} is not writable")
    assert flags.unwritable(tmp_path.parent / "report.json", file=True) is None
