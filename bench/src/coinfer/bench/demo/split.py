"""Stage ``split`` of ``coinfer demo``: EfficientNet-Lite0 cut between this device and an edge process.

Why this shape: split inference pays off when the device is slower than the edge and the link
is neither very slow nor very fast, so where to cut depends on the bandwidth (Neurosurgeon).
The stage exports the real ImageNet EfficientNet-Lite0 to ONNX, times the head and the tail of
every cut where one tensor crosses (:func:`coinfer.sdk.split.profile.measure_cuts`), and plans
the cut (:func:`coinfer.sdk.split.planner.plan`) for :data:`BANDWIDTHS`. This one machine
plays both sides, so the device is modelled :data:`DEVICE_SLOWDOWN` times slower than it (a
Raspberry Pi against an edge server's core): the heads' measured times are scaled by that
factor, and every plan and plot says so. Then the cut planned for :data:`SERVE_BANDWIDTH`
(among cuts that leave work on both sides) is exported (``coinfer split export``), its tail is
served by a separate ``coinfer split serve`` process on 127.0.0.1 and its head runs here
(:class:`coinfer.device.split.SplitClient`) on bundled photographs (``skimage.data``): the
top-1 class must agree with the unsplit model's, and the bytes sent across the cut are counted.

>>> [cut for cut in (0, 5, 9) if leaves_both_sides_work(cut, nodes=9)]
[5]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from coinfer.bench.demo.tour import Plot, StageResult, Tour, figure_png, new_figure

#: How many times slower than this machine the modelled device runs a head.
DEVICE_SLOWDOWN = 8.0
#: Mbit/s of the links the cut is planned for, and the one whose plan is exported and served.
BANDWIDTHS = (1.0, 10.0, 100.0)
SERVE_BANDWIDTH = 10.0
RTT_MS = 10.0
ENCODINGS = ("float32", "float16", "int8")
#: Photos per request to the tail server.
BATCH = 4
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
#: The unsplit model and the split must agree on at least this share of the photos' top-1 class.
MIN_AGREEMENT = 0.75


def leaves_both_sides_work(cut: int, nodes: int) -> bool:
    """Whether prefix cut ``cut`` leaves nodes on both sides (0 runs all on the edge, ``nodes``
    all on the device)."""
    return 0 < cut < nodes


def photos() -> np.ndarray:
    """The bundled photographs and their mirror images, preprocessed for EfficientNet-Lite0."""
    import skimage.data

    from coinfer.bench.models.efficientnet_lite import preprocess

    images = [getattr(skimage.data, name)() for name in PHOTOS]
    return preprocess([*images, *(image[:, ::-1].copy() for image in images)])


def run_split(tour: Tour) -> StageResult:
    """Profile, plan, export the planned cut, serve its tail in a process, run its head here."""
    import onnxruntime as ort

    from coinfer.bench.demo.services import ServiceProcess
    from coinfer.bench.models.efficientnet_lite import INPUT_NAME, export_onnx
    from coinfer.device.split import SplitClient
    from coinfer.sdk.split.bundle import export_split
    from coinfer.sdk.split.graph import SplitGraph
    from coinfer.sdk.split.planner import Link, cut_options, plan
    from coinfer.sdk.split.profile import measure_cuts

    folder = tour.folder("split")
    tour.say("exporting EfficientNet-Lite0 to ONNX")
    model_path = export_onnx(folder / "efficientnet-lite0.onnx", tour.pretrained())
    graph = SplitGraph.load(model_path)
    every = graph.cuts()
    single = [index for index, cut in enumerate(every) if len(cut.tensors) == 1]
    tour.say(f"timing the head and tail of {len(single)} cuts")
    feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    times = measure_cuts(graph, feeds, threads=1, repeats=3, cuts=single)
    device_ms = [DEVICE_SLOWDOWN * ms for ms in times.device_ms]
    options = cut_options([every[i] for i in times.cuts], device_ms, times.edge_ms, ENCODINGS)
    options = [replace(option, cut=times.cuts[int(option.cut)]) for option in options]
    planned = {bandwidth: plan(options, Link(bandwidth, RTT_MS)) for bandwidth in BANDWIDTHS}
    nodes = len(graph.nodes)
    served_plan = plan([option for option in options if leaves_both_sides_work(int(option.cut), nodes)],
                       Link(SERVE_BANDWIDTH, RTT_MS))
    cut_index, encoding = int(served_plan.option.cut), served_plan.option.encoding
    tour.say(f"exporting cut {cut_index} ({encoding}) and serving its tail in a process")
    device, edge = export_split(graph, every[cut_index], folder / "bundles", encoding, overwrite=True)
    images = photos()
    whole = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    reference = whole.run(None, {INPUT_NAME: images})[0]
    argv = ["split", "serve", "--bundle", str(edge.artifact.path), "--max-batch", str(BATCH)]
    server = ServiceProcess(argv, "/v1/split/info", folder / "split-serve.log")
    with server:
        server.wait_ready()
        client = SplitClient.create_from_bundle(device, server.url, server.token, max_batch=BATCH)
        outputs = [next(iter(client.infer(images[start:start + BATCH]).values()))
                   for start in range(0, len(images), BATCH)]
        sent, head_ms = client.bytes_sent, client.head_ms
    split_logits = np.concatenate(outputs)
    agreement = float(np.mean(np.argmax(split_logits, axis=1) == np.argmax(reference, axis=1)))
    metrics: dict[str, Any] = {
        "model": "EfficientNet-Lite0 (ImageNet)", "nodes": nodes, "cuts_profiled": len(times.cuts),
        "device_slowdown": DEVICE_SLOWDOWN, "rtt_ms": RTT_MS,
        **{f"chosen_cut@{bandwidth:g}Mbps": f"{chosen.option.cut} ({chosen.option.encoding}, "
           f"{chosen.total_ms:.1f} ms)" for bandwidth, chosen in planned.items()},
        "served_cut": cut_index, "served_encoding": encoding, "crossing_tensor": every[cut_index].tensors[0],
        "photos": len(images), "top1_agreement": round(agreement, 4),
        "bytes_per_photo_across_cut": round(sent / len(images)),
        "input_bytes_per_photo": int(images[0].nbytes),
        "head_ms_per_photo_here": round(head_ms / len(images), 3),
        "max_abs_logit_err": float(np.max(np.abs(split_logits - reference))),
    }
    checks = {
        f"split and unsplit top-1 agree on >= {MIN_AGREEMENT:.0%} of the photos": agreement >= MIN_AGREEMENT,
        "fewer bytes cross the cut than the input holds": sent / len(images) < images[0].nbytes,
    }
    return StageResult(metrics, checks, [_latency_plot(options, nodes)])


def _latency_plot(options: Sequence[Any], nodes: int) -> Plot:
    from coinfer.sdk.split.planner import Link, plan

    bandwidths = np.logspace(-0.5, 3, 40)
    figure, axis = new_figure(7.0)
    for label, chosen in (("all on the edge", [o for o in options if o.cut == 0]),
                          ("all on the device", [o for o in options if o.cut == nodes]),
                          ("planned cut", list(options))):
        axis.plot(bandwidths, [plan(chosen, Link(b, RTT_MS)).total_ms for b in bandwidths], label=label)
    axis.set(xscale="log", yscale="log", xlabel="bandwidth (Mbit/s)", ylabel="predicted latency (ms)",
             title=f"split: latency vs bandwidth (device {DEVICE_SLOWDOWN:g}x slower, rtt {RTT_MS:g} ms)")
    axis.legend()
    return Plot("predicted latency vs bandwidth: planned cut vs all-edge and all-device", figure_png(figure))
