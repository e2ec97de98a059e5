"""``coinfer demo``: the end-to-end job on embedded defaults.

Stage "export" (issue #2): real models through the export and device-runtime path:
- MiniLM-L6 (PyTorch) -> ONNX, run by ``ONNXRunner``: sentence embeddings vs PyTorch;
- RapidOCR PP-OCRv4 text detector (ONNX) on a rendered text image: text lines found;
- a Keras CNN trained on the bundled digits -> float32 and int8 TFLite, run by
  ``TFLiteRunner``: top-1 agreement with Keras.
Later capabilities add their stages here.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coinfer.bench.machine import machine_description
from coinfer.sdk._version import __version__
from coinfer.sdk.cli.flags import output_file, work_directory
from coinfer.sdk.fsutil import atomic_write_json

Metrics = dict[str, Any]

DEMO_SENTENCES = (
    "A cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply after the quarterly report.",
    "Edge servers decode video streams from many cameras.",
    "The gateway skips packets whose frames add nothing new.",
    "Rain is expected over the mountains tomorrow afternoon.",
    "Secure inference keeps model weights and user data private.",
    "ok",
)
HELD_OUT_SENTENCES = (
    "hi",
    "A much longer sentence about an edge server that decodes many video streams from the "
    "cameras of a whole campus, all at once, under a tight decode budget.",
    "Phones run small filters.",
)
DEMO_TEXT_LINES = (
    "coinfer edge gateway",
    "packet gating before decoding",
    "secure transformer inference",
    "learnable input filters",
)


def stage_minilm(workdir: Path) -> Metrics:
    """MiniLM-L6 PyTorch -> ONNX, embeddings compared on ``ONNXRunner``."""
    import numpy as np
    import torch

    from coinfer.bench.models import minilm
    from coinfer.converters import ExportOptions, torch_to_onnx
    from coinfer.device.runtime import create_runner
    from coinfer.sdk import metrics

    encoder = minilm.load_sentence_encoder()
    feeds = minilm.tokenize(list(DEMO_SENTENCES))
    names = ["input_ids", "attention_mask"]
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names} | {"embedding": {0: "batch"}}
    result = torch_to_onnx(
        encoder, [feeds[n] for n in names], workdir / "minilm-onnx", input_names=names,
        output_names=["embedding"], dynamic_axes=dynamic,
        options=ExportOptions(capability="demo", kind="sentence-encoder", overwrite=True,
                              metadata={"model": "all-MiniLM-L6-v2"},
                              preprocessing={"tokenizer": "minilm", "max_length": 128}),
    )
    runner = create_runner(result.artifact)
    # The export's own batch and one of another size and length: the axes must really be dynamic.
    errors, cosines = [], []
    for batch in (feeds, minilm.tokenize(list(HELD_OUT_SENTENCES))):
        with torch.no_grad():
            reference = encoder(*[torch.from_numpy(batch[n]) for n in names]).numpy()
        produced = runner.run(batch)["embedding"]
        errors.append(metrics.max_abs_error(reference, produced))
        cosines.append(float(np.min(metrics.cosine_similarity(reference, produced))))
    embeddings = runner.run(feeds)["embedding"]
    similarity = embeddings @ embeddings.T
    return {
        "minilm_onnx_max_abs_err": max(errors),
        "minilm_onnx_min_cosine": min(cosines),
        "minilm_paraphrase_cosine": float(similarity[0, 1]),
        "minilm_unrelated_cosine": float(similarity[0, 2]),
        "minilm_onnx_ms": result.parity.latency_ms,
        "minilm_torch_ms": result.parity.reference_latency_ms,
        "minilm_onnx_bytes": result.parity.model_bytes,
    }


def stage_ocr(workdir: Path) -> Metrics:
    """The real PP-OCRv4 text detector on ``ONNXRunner`` finds rendered text lines."""
    from coinfer.device.runtime import ONNXRunner
    from coinfer.edge.models import ocr

    image, truth = ocr.render_text_image(DEMO_TEXT_LINES)
    runner = ONNXRunner.create_from_file(ocr.detector_model_path())
    output = runner.output_specs[0].name
    start = time.perf_counter()
    boxes = ocr.detect_text(image, lambda tensor: runner.run(tensor)[output])
    elapsed_ms = (time.perf_counter() - start) * 1e3
    matched = [max((box.iou(line) for box in boxes), default=0.0) for line in truth]
    return {
        "ocr_lines_expected": len(truth),
        "ocr_lines_found": len(boxes),
        "ocr_lines_matched": sum(iou >= 0.5 for iou in matched),
        "ocr_min_line_iou": min(matched),
        "ocr_detect_ms": elapsed_ms,
    }


def stage_digits(workdir: Path) -> Metrics:
    """Keras digits CNN -> float32 / int8 TFLite on ``TFLiteRunner``."""
    import numpy as np

    from coinfer.bench.models import digits
    from coinfer.converters import ExportOptions, keras_to_tflite
    from coinfer.device.runtime import create_runner
    from coinfer.sdk import metrics

    split = digits.load_digits_split()
    model, accuracy = digits.train_digits_classifier(split)
    reference = np.asarray(model.predict(split.x_test, verbose=0))
    found: Metrics = {"digits_keras_test_accuracy": accuracy}
    for quantization in ("float32", "int8"):
        result = keras_to_tflite(
            model, workdir / f"digits-{quantization}", quantization=quantization,
            representative_data=split.x_train, samples=split.x_test,
            options=ExportOptions(capability="demo", kind=f"digits-classifier-{quantization}",
                                  overwrite=True),
        )
        predicted = create_runner(result.artifact).run(split.x_test)["output_0"]
        labels = np.argmax(predicted, axis=1)
        found |= {
            f"digits_{quantization}_top1_agreement": metrics.top1_agreement(reference, predicted),
            f"digits_{quantization}_test_accuracy": float(np.mean(labels == split.y_test)),
            f"digits_{quantization}_max_abs_err": metrics.max_abs_error(reference, predicted),
            f"digits_{quantization}_bytes": result.parity.model_bytes,
            f"digits_{quantization}_ms": result.parity.latency_ms,
        }
    return found


STAGES: dict[str, tuple[str, Callable[[Path], Metrics]]] = {
    "minilm": ("MiniLM-L6 PyTorch -> ONNX on ONNXRunner", stage_minilm),
    "ocr": ("PP-OCRv4 text detection on ONNXRunner", stage_ocr),
    "digits": ("digits CNN Keras -> TFLite float32/int8 on TFLiteRunner", stage_digits),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=output_file, metavar="PATH", help="write the metrics as JSON")
    parser.add_argument("--out", type=work_directory, metavar="DIR",
                        help="keep the exported artifacts here (default: a temporary directory)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)}")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.errors import CoinferError

    selected = [name.strip() for name in args.stages.split(",") if name.strip()]
    unknown = [name for name in selected if name not in STAGES]
    if unknown or not selected:
        problem = f"unknown stage(s) {unknown}" if unknown else f"no stage in --stages {args.stages!r}"
        raise CoinferError(f"{problem}; choose from {', '.join(STAGES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    console = Console(stderr=True)
    found: Metrics = {}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="coinfer-demo-") as scratch:
        workdir = args.out or Path(scratch)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console) as progress:
            overall = progress.add_task("coinfer demo", total=len(selected))
            for name in selected:
                title, stage = STAGES[name]
                progress.update(overall, description=f"[{name}] {title}")
                start = time.perf_counter()
                found |= stage(workdir)
                timings[name] = round(time.perf_counter() - start, 2)
                progress.advance(overall)
    print_metrics(f"coinfer {__version__} demo", found)
    if args.json:
        atomic_write_json(args.json, {
            **found,
            "coinfer_version": __version__,
            "stage_seconds": timings,
            "machine": machine_description(),
        })
        console.print(f"metrics written to {args.json}")
    return 0
