"""Stage ``gate`` of ``coinfer demo``: PacketGame gating the shared cameras under a decode budget.

Why this shape: gating is only worth something if what it reports stays close to what
decoding everything would have reported, at a fraction of the decoding. So the stage runs the
edge runtime (:class:`~coinfer.edge.gate.runtime.GateRuntime`: demuxing, the gate, decoder
worker processes, the real Haar detectors) three times over the same camera files: once decoding
every packet, once under :data:`BUDGET` of that decode cost with the temporal policy and once with a
random choice under the same budget, and compares the detection counts reported for every
frame with decode-all's. The runs price decoding with one cost model, calibrated once, so
their cost fractions are comparable. The temporal policy is PacketGame's
gate without its trained contextual predictor: four eight-second cameras are too little to
train one on (tried: a predictor trained on two of them chose as the temporal policy did).

>>> count_agreement({"faces": [[0, 1, 1]]}, {"faces": [[0, 1, 2]]})
0.6667
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coinfer.bench.demo.tour import SCENE_TASKS, Plot, StageResult, Tour, figure_png, new_figure

#: The decode budget of the gated run, as a fraction of decoding every packet.
BUDGET = 0.5
#: The budget-blind baseline at the same budget: which frames a random choice reports right.
BASELINE = "random"
#: What the gate may overspend its budget by over a whole run: it banks what a round leaves
#: unspent for a few rounds, and the last round's bank may still be spent.
BUDGET_SLACK = 0.02
POLICY = "temporal"


def count_agreement(gated: Mapping[str, Sequence[Sequence[Any]]],
                    decode_all: Mapping[str, Sequence[Sequence[Any]]]) -> float:
    """Share of the frames (every stream's) on which every task's reported count equals
    decode-all's; ``gated[task][stream][frame]`` as :meth:`StreamReport.counts` gives them."""
    tasks = list(decode_all)
    same = [all(gated[task][stream][frame] == decode_all[task][stream][frame] for task in tasks)
            for stream in range(len(decode_all[tasks[0]]))
            for frame in range(len(decode_all[tasks[0]][stream]))]
    return round(float(np.mean(same)), 4) if same else 0.0


def _counts(runtime: Any) -> dict[str, list[list[int | None]]]:
    return {task: [report.counts(task) for report in runtime.streams] for task in SCENE_TASKS}


def run_gate(tour: Tour) -> StageResult:
    """Decode-all and the gated run over the shared cameras; savings, agreement and checks."""
    from coinfer.edge.gate.runtime import GateRuntime, RuntimeOptions
    from coinfer.sdk.gate.costs import calibrate_decode_costs

    scenes = tour.scenes()
    videos = [str(camera.video_path) for camera in scenes.cameras]
    index = scenes.index
    costs = calibrate_decode_costs(index["codec"], index["width"], index["height"], gop=index["gop"])
    runs: dict[str, Any] = {}
    for name, policy, budget in (("decode_all", "decode-all", 1.0), ("gated", POLICY, BUDGET),
                                 (BASELINE, BASELINE, BUDGET)):
        tour.say(f"{name.replace('_', '-')}: {len(videos)} cameras")
        options = RuntimeOptions(budget_fraction=budget, policy=policy, tasks=SCENE_TASKS, workers=2,
                                 costs=costs)
        with GateRuntime(videos, options) as runtime:
            runtime.run()
            runs[name] = runtime
    everything, gated = runs["decode_all"].metrics, runs["gated"].metrics
    agreement = count_agreement(_counts(runs["gated"]), _counts(runs["decode_all"]))
    metrics = {
        "policy": POLICY, "budget_fraction": BUDGET, "streams": len(videos), "packets": gated.packets,
        "decoded": gated.decoded, "skipped": gated.skipped, "inferred": gated.inferred,
        "cost_fraction": round(gated.cost_fraction, 4),
        "decode_saved": round(1.0 - gated.cost_fraction, 4),
        "measured_decode_saved": round(1.0 - gated.decode_seconds / everything.decode_seconds, 4)
        if everything.decode_seconds else None,
        "accuracy_vs_decode_all": agreement,
        f"{BASELINE}_accuracy_vs_decode_all": count_agreement(_counts(runs[BASELINE]),
                                                              _counts(runs["decode_all"])),
        "corrupt_frames": gated.corrupt_frames,
        "decoder_errors": gated.decoder_errors + everything.decoder_errors,
        "failed_sources": gated.failed_sources + everything.failed_sources,
    }
    checks = {
        f"cost_fraction <= budget {BUDGET} + {BUDGET_SLACK}": gated.cost_fraction <= BUDGET + BUDGET_SLACK,
        "decode-all decoded every packet": everything.decoded == everything.packets == gated.packets > 0,
        "the gate skipped packets": gated.skipped > 0,
        "no corrupt frame, decoder error or failed source":
            metrics["corrupt_frames"] == metrics["decoder_errors"] == metrics["failed_sources"] == 0,
    }
    return StageResult(metrics, checks, [_streams_plot(runs["gated"]), _counts_plot(runs)])


def _streams_plot(runtime: Any) -> Plot:
    figure, axis = new_figure()
    streams = [f"cam{report.stream}" for report in runtime.streams]
    decoded = np.array([report.decoded for report in runtime.streams])
    skipped = np.array([report.packets - report.decoded for report in runtime.streams])
    axis.bar(streams, decoded, label="decoded")
    axis.bar(streams, skipped, bottom=decoded, label="skipped")
    axis.set(ylabel="packets",
             title=f"gate: packets decoded and skipped per stream ({POLICY}, budget {BUDGET})")
    axis.legend()
    return Plot("packets decoded and skipped per stream", figure_png(figure))


def _counts_plot(runs: Mapping[str, Any]) -> Plot:
    figure, axis = new_figure(7.0)
    for name, style in (("decode_all", "-"), ("gated", "--")):
        counts = runs[name].streams[0].counts(SCENE_TASKS[0])
        axis.step(range(len(counts)), [np.nan if c is None else c for c in counts], style,
                  where="post", label=name.replace("_", "-"))
    axis.set(xlabel="frame", ylabel=f"{SCENE_TASKS[0]} reported",
             title=f"gate: reported {SCENE_TASKS[0]} count on cam0, gated vs decode-all")
    axis.legend()
    return Plot("reported counts on one camera, gated vs decode-all", figure_png(figure))
