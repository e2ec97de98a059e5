"""``coinfer gate run``: gate many streams under a decode budget, decode in workers, run the detectors.

    coinfer gate run cam0.mp4 cam1.mp4 tcp://127.0.0.1:9000 --budget-fraction 0.4 \\
        --policy temporal --tasks faces,cats --workers 2 --json run.json

Shows a live status line while it runs, then a metrics table; ``--json`` writes the
options, the totals and, per stream, the reported detection count of every frame
(atomically: an interrupted run leaves no partial file). Only the standard library is
imported here, so ``coinfer --help`` stays fast; the runtime is imported by :func:`run`.
"""

from __future__ import annotations

import argparse
import sys

from coinfer.sdk.cli.flags import add_budget, add_json, add_renamed, add_seed, positive

#: The runtime's policies (kept here as strings so this module imports nothing heavy).
POLICIES = ("packetgame", "temporal", "round-robin", "random", "decode-all")
#: Totals shown in the final table.
TABLE = ("rounds", "packets", "inferred", "decoded", "skipped", "cost_fraction", "spent_cost_s",
         "budget_cost_s", "decode_all_cost_s", "decode_seconds", "infer_seconds", "results", "necessary",
         "stalls", "decoder_errors", "corrupt_frames", "lost_frames", "parse_errors", "failed_sources",
         "packets_per_second")


def _redundancy(text: str) -> tuple[str, str]:
    task, _, measure = text.partition("=")
    if not task or not measure:
        raise argparse.ArgumentTypeError(f"expected TASK=MEASURE (e.g. faces=iou), got {text!r}")
    return task, measure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="video files or live URLs (rtsp://, tcp://, ...); stream i is the i-th")
    add_budget(parser, default_fraction=0.5)
    add_renamed(parser, "--budget", "--budget-ms")
    parser.add_argument("--predictor", metavar="DIR",
                        help="trained contextual predictor (coinfer gate train)")
    parser.add_argument("--policy", choices=POLICIES,
                        help="who gets decoded (default: packetgame with --predictor, else temporal)")
    parser.add_argument("--tasks", default="faces,cats",
                        help="comma-separated detection tasks: faces, cats, people, text "
                             "(default faces,cats)")
    parser.add_argument("--redundancy", type=_redundancy, action="append", default=[], metavar="TASK=MEASURE",
                        help="how a task's results are compared: count (default), iou, label, class-subset")
    parser.add_argument("--workers", type=positive(int), default=2, help="decoder processes (default 2)")
    parser.add_argument("--max-rounds", type=positive(int), metavar="N", help="stop after N rounds")
    parser.add_argument("--round-timeout", type=positive(float), default=1.0, metavar="S",
                        help="seconds a round waits for live sources before counting them stalled "
                             "(default 1)")
    add_seed(parser, "the random policy")
    add_json(parser, "the summary and per-frame counts")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from coinfer.edge.gate.runtime import GateRuntime, RuntimeOptions
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json

    options = RuntimeOptions(
        budget_s=args.budget / 1000.0 if args.budget is not None else None,
        budget_fraction=args.budget_fraction, policy=args.policy, predictor=args.predictor,
        tasks=tuple(task.strip() for task in args.tasks.split(",") if task.strip()),
        redundancy=dict(args.redundancy), workers=args.workers, round_timeout_s=args.round_timeout,
        max_rounds=args.max_rounds, seed=args.seed)
    announced: set[int] = set()

    def announce_failures() -> None:
        for report in runtime.streams:
            if report.error is not None and report.stream not in announced:
                announced.add(report.stream)
                tqdm.write(f"coinfer gate run: stream {report.stream} ({report.url}): {report.error}",
                           file=sys.stderr)

    with GateRuntime(args.sources, options) as runtime:
        metrics = runtime.metrics
        announce_failures()
        with tqdm(total=args.max_rounds, unit="round", desc=f"gate {options.policy_name}",
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for _ in runtime.rounds():
                announce_failures()
                bar.update(1)
                bar.set_postfix_str(
                    f"packets {metrics.packets} inferred {metrics.inferred} decoded {metrics.decoded} "
                    f"cost {metrics.cost_fraction:.0%} of decode-all, errors {metrics.decoder_errors}",
                    refresh=False)
        announce_failures()
        summary = runtime.summary()
    print_metrics(f"coinfer gate run: {options.policy_name}, {len(args.sources)} streams",
                  {key: summary["metrics"][key] for key in TABLE})
    if args.json:
        atomic_write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0
