"""``coinfer demo``: the tour, every capability end to end on embedded defaults.

    coinfer demo [--stages gate,infi,...] [--json D.json] [--report D.html] [--out DIR]

Why one command: a new user should see in a few minutes, on their own machine and without a
download, what each capability does and what it saves, run on real models, real processes
and loopback services rather than described. Each stage runs one capability on generated or
bundled data and checks what it shows (:mod:`coinfer.bench.demo.tour`):

- the export stages of issue #2 (``minilm``, ``ocr``, ``digits``: :mod:`~coinfer.bench.demo.export`),
  whose metrics stay flat at the top level of the JSON;
- ``gate``, ``infi``, ``stip``, ``mlink``, ``split`` and ``evolve``, one module each.

A stage that raises or fails a check is reported (``"ok": false`` and its ``"error"``), the
others still run, and the command then exits 1 with one line naming the failed stages.
``--json`` writes every metric, the seconds per stage and a ``stages`` object (each stage's
headline metrics and ``ok``); ``--report`` (default ``coinfer-demo.html`` here) a
self-contained HTML page with every stage's metrics and plots (:mod:`~coinfer.bench.demo.report`).
Both are written atomically once every stage has run. The stages work in a temporary folder
unless ``--out`` keeps what they write.

>>> parse_stages("gate, infi")
['gate', 'infi']
>>> parse_stages("gate,bogus")
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: unknown stage(s) ['bogus']; choose from minilm, ocr, ...
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.sdk.cli.flags import output_file, work_directory
from coinfer.sdk.errors import CoinferError, InvalidArgumentError

#: Where ``--report`` goes by default: the current folder.
DEFAULT_REPORT = "coinfer-demo.html"


@dataclass(frozen=True)
class Stage:
    """One stage: its name, what it shows, and ``module:function`` running it (imported only
    when it runs, so ``coinfer demo --help`` loads no framework). An ``export`` stage's
    function takes the work folder and returns flat metrics; the others take the
    :class:`~coinfer.bench.demo.tour.Tour` and return a
    :class:`~coinfer.bench.demo.tour.StageResult`."""

    name: str
    title: str
    target: str
    export: bool = False

    def function(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(f"coinfer.bench.demo.{module}"), name)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("minilm", "MiniLM-L6 PyTorch -> ONNX on ONNXRunner", "export:stage_minilm", export=True),
    Stage("ocr", "PP-OCRv4 text detection on ONNXRunner", "export:stage_ocr", export=True),
    Stage("digits", "digits CNN Keras -> TFLite float32/int8 on TFLiteRunner", "export:stage_digits",
          export=True),
    Stage("gate", "PacketGame: cameras gated under a decode budget vs decode-all", "gate:run_gate"),
    Stage("infi", "InFi: a skip filter trained on frames, run as TFLite on a held-out camera",
          "infi:run_infi"),
    Stage("stip", "STIP: SmolLM2-135M answering through a separate model server process", "stip:run_stip"),
    Stage("mlink", "MLink: links between the zoo's models, a plan and serving under a budget",
          "mlink:run_mlink"),
    Stage("split", "split: EfficientNet-Lite0 cut between this device and a tail server process",
          "split:run_split"),
    Stage("evolve", "evolve: one NestEvo round for drifted cameras", "evolve:run_evolve"),
)}


def parse_stages(text: str) -> list[str]:
    """The stage names of ``--stages`` (comma-separated), refused in one line when unknown or none."""
    selected = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in selected if name not in STAGES]
    if unknown or not selected:
        problem = f"unknown stage(s) {unknown}" if unknown else f"no stage in --stages {text!r}"
        raise InvalidArgumentError(f"{problem}; choose from {', '.join(STAGES)}")
    return selected


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=output_file, metavar="PATH",
                        help="write every metric and each stage's result as JSON")
    parser.add_argument("--report", type=output_file, default=Path(DEFAULT_REPORT), metavar="PATH",
                        help=f"write the HTML report with the plots here (default ./{DEFAULT_REPORT})")
    parser.add_argument("--out", type=work_directory, metavar="DIR",
                        help="keep what the stages write here (default: a temporary directory)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (default: all)")


def run_stage(stage: Stage, tour: Any) -> Any:
    """Run one stage and return its :class:`~coinfer.bench.demo.tour.StageResult`; an
    exception becomes a failed result (Ctrl-C still stops the tour)."""
    from coinfer.bench.demo.export import EXPORT_CHECKS
    from coinfer.bench.demo.tour import StageResult

    try:
        if stage.export:
            metrics = stage.function()(tour.workdir)
            return StageResult(metrics, EXPORT_CHECKS[stage.name](metrics))
        return stage.function()(tour)
    except Exception as error:  # one stage's failure is reported; the tour goes on
        return StageResult.from_error(error)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from coinfer.bench.demo.report import write_report
    from coinfer.bench.demo.tour import StageResult, Tour
    from coinfer.bench.machine import machine_description
    from coinfer.sdk._version import __version__
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json

    selected = parse_stages(args.stages)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    console = Console(stderr=True)
    results: dict[str, StageResult] = {}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="coinfer-demo-") as scratch:
        workdir = args.out or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console) as progress:
            overall = progress.add_task("coinfer demo", total=len(selected))
            current = [""]

            def say(line: str) -> None:
                progress.update(overall, description=escape(f"[{current[0]}] {line}"))

            tour = Tour(workdir, say)
            for name in selected:
                current[0] = name
                say(STAGES[name].title)
                start = time.perf_counter()
                results[name] = run_stage(STAGES[name], tour)
                timings[name] = round(time.perf_counter() - start, 2)
                verdict = "ok" if results[name].ok else f"FAILED: {results[name].entry()['error']}"
                progress.console.print(escape(f"[{name}] {verdict} ({timings[name]:.1f} s)"))
                progress.advance(overall)
    flat = {key: value for name in selected if STAGES[name].export
            for key, value in results[name].metrics.items()}
    if flat:
        print_metrics(f"coinfer {__version__} demo", flat)
    for name in selected:
        if not STAGES[name].export:
            print_metrics(f"{name}: {'ok' if results[name].ok else 'FAILED'}", results[name].entry())
    machine = machine_description()
    if args.json:
        atomic_write_json(args.json, {
            **flat,
            "coinfer_version": __version__,
            "stage_seconds": timings,
            "machine": machine,
            "stages": {name: results[name].entry() for name in selected},
        })
        console.print(f"metrics written to {args.json}")
    write_report(args.report, [(STAGES[name].name, STAGES[name].title, results[name], timings[name])
                               for name in selected], version=__version__, machine=machine)
    console.print(f"report written to {args.report}")
    failed = [name for name in selected if not results[name].ok]
    if failed:
        raise CoinferError(f"{len(failed)} of {len(selected)} stage(s) failed: {', '.join(failed)} "
                           f"(see {args.report})")
    return 0
