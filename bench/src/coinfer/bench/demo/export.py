"""Export stages of ``coinfer demo`` (issue #2): real models through the export and device-runtime path.

- ``minilm``: MiniLM-L6 (PyTorch) -> ONNX, run by ``ONNXRunner``: sentence embeddings vs PyTorch;
- ``ocr``: the RapidOCR PP-OCRv4 text detector (ONNX) on a rendered text image: text lines found;
- ``digits``: a Keras CNN trained on the bundled digits -> float32 and int8 TFLite, run by
  ``TFLiteRunner``: top-1 agreement with Keras.

Their metrics sit flat at the top level of ``coinfer demo --json`` (as before the tour), and
each also gets its entry in ``stages`` with the checks below.

>>> sorted(EXPORT_CHECKS)
['digits', 'minilm', 'ocr']
>>> EXPORT_CHECKS["ocr"]({"ocr_lines_expected": 4, "ocr_lines_matched": 3, "ocr_lines_found": 4})
{'every rendered line found (IoU >= 0.5)': False}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


#: Per export stage: its checks on its metrics (the bounds its tests hold it to).
EXPORT_CHECKS: dict[str, Callable[[Metrics], dict[str, bool]]] = {
    "minilm": lambda m: {"ONNX embeddings within 1e-4 of PyTorch": m["minilm_onnx_max_abs_err"] <= 1e-4,
                         "a paraphrase is closer than an unrelated sentence":
                             m["minilm_paraphrase_cosine"] > m["minilm_unrelated_cosine"]},
    "ocr": lambda m: {"every rendered line found (IoU >= 0.5)":
                      m["ocr_lines_matched"] == m["ocr_lines_expected"] == m["ocr_lines_found"]},
    "digits": lambda m: {"float32 TFLite agrees with Keras": m["digits_float32_top1_agreement"] == 1.0,
                         "int8 TFLite agrees with Keras on >= 98%": m["digits_int8_top1_agreement"] >= 0.98},
}
