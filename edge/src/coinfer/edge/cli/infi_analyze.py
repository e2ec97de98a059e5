"""``coinfer infi analyze``: is a task filterable, and would a filter pay off at these costs?

    coinfer infi analyze --measurement empty --filter-ms 0.9 --model-ms 6.5 --filter-rate 0.4
    coinfer infi analyze --measurement class-subset --option keep=sports,finance --json out.json
"""

from __future__ import annotations

import argparse
import json

from coinfer.edge.cli.infi_arguments import add_measurement_arguments, measurement_from_args
from coinfer.sdk.cli.flags import add_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_measurement_arguments(parser)
    parser.add_argument("--filter-ms", type=float, help="measured cost of the filter per input, C(g)")
    parser.add_argument("--model-ms", type=float, help="measured cost of the model per input, C(h)")
    parser.add_argument("--filtered-ms", type=float, default=0.0,
                        help="cost of producing a filtered input's result, C(h_hat) (default 0: skip)")
    parser.add_argument("--filter-rate", type=float, help="a filter rate measured at the target accuracy")
    add_json(parser, "the report")


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.cli.report import print_metrics
    from coinfer.sdk.fsutil import atomic_write_json
    from coinfer.sdk.infi import analyze

    measurement = measurement_from_args(args)
    report = analyze(measurement, filter_ms=args.filter_ms, model_ms=args.model_ms,
                     filtered_ms=args.filtered_ms, filter_rate=args.filter_rate)
    data = report.to_dict()
    print_metrics("coinfer infi analyze", {key: value for key, value in data.items() if key != "reason"})
    print(f"why: {report.reason}")
    if args.json is not None:
        atomic_write_json(args.json, json.loads(json.dumps(data, default=float)))
    return 0
